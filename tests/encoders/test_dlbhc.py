import numpy as np
import pytest
import torch

from encoders import create_encoder, list_encoders, load_encoder, save_encoder


def _tiny(bits=16):
    torch.manual_seed(0)
    return create_encoder("dlbhc", backbone="small_cnn", bits=bits, num_classes=3, width=4, feature_dim=12,
                          input_size=16)


def test_registered_and_unknown_names_listed():
    assert "dlbhc" in list_encoders("dl*")
    with pytest.raises(ValueError, match="unknown encoder 'nope'; available: .*dlbhc"):
        create_encoder("nope")


def test_forward_and_codes_are_latent_above_half():
    model = _tiny().eval()
    x = torch.randn(5, 3, 16, 16)
    out = model(x)
    assert out.features.shape == (5, 12) and out.codes.shape == (5, 16) and out.logits.shape == (5, 3)
    assert ((out.codes > 0) & (out.codes < 1)).all()  # sigmoid layer H
    codes, feats = model.encode(x)
    assert codes.dtype == np.uint8 and codes.shape == (5, 2)
    bits = np.unpackbits(codes, axis=1, bitorder="little")
    np.testing.assert_array_equal(bits, (out.codes > 0.5).numpy())
    np.testing.assert_allclose(feats, out.features.detach().numpy(), rtol=1e-6)


def test_classification_loss_decreases_on_a_tiny_batch():
    model = _tiny()
    x, y = torch.randn(12, 3, 16, 16), torch.arange(12) % 3
    loss = model.default_loss()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    first = None
    for _ in range(30):
        terms = loss(model(x), y)
        first = first if first is not None else float(terms["loss"].detach())
        opt.zero_grad()
        terms["loss"].backward()
        opt.step()
    assert set(terms) == {"classification", "loss"}
    assert float(terms["loss"].detach()) < 0.5 * first


def test_loss_checks_labels():
    model = _tiny()
    out = model(torch.randn(4, 3, 16, 16))
    with pytest.raises(ValueError, match=r"labels: expected class indices of shape \(4,\) or float class probabilities"):
        model.default_loss()(out, torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="needs labels"):
        model.default_loss()(out)


def test_dlbhc_needs_classes():
    with pytest.raises(ValueError, match="num_classes >= 2"):
        create_encoder("dlbhc", num_classes=1)


def test_save_load_round_trip(tmp_path):
    model = _tiny().eval()
    save_encoder(model, tmp_path / "m.pt", class_names=["x", "y", "z"])
    loaded = load_encoder(tmp_path / "m.pt")
    x = torch.randn(3, 3, 16, 16)
    np.testing.assert_array_equal(loaded.encode(x)[0], model.encode(x)[0])
    assert loaded.class_names == ["x", "y", "z"]
    with pytest.raises(ValueError, match="holds 16-bit codes, expected 64-bit"):
        load_encoder(tmp_path / "m.pt", bits=64)
    with pytest.raises(ValueError, match="holds method 'dlbhc', expected 'hashnet'"):
        load_encoder(tmp_path / "m.pt", method="hashnet")
    (tmp_path / "junk.pt").write_bytes(b"junk")
    with pytest.raises(ValueError, match="not a readable encoder file"):
        load_encoder(tmp_path / "junk.pt")
