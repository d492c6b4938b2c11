import numpy as np
import pytest
import torch

from encoders import create_encoder, load_encoder, save_encoder
from encoders.hashnet import HashNet, continuation_beta


def _tiny(bits=16, **kwargs):
    torch.manual_seed(0)
    return create_encoder("hashnet", backbone="small_cnn", bits=bits, num_classes=3, width=4, feature_dim=12,
                          input_size=16, **kwargs)


def test_continuation_is_a_staircase_that_rises():
    # beta = (1 + gamma * t) ** 0.5 with t rounded down to a multiple of step_size.
    assert continuation_beta(0) == 1.0
    assert continuation_beta(199) == 1.0
    assert continuation_beta(200) == pytest.approx((1 + 0.005 * 200) ** 0.5)
    assert continuation_beta(399) == continuation_beta(200)
    assert continuation_beta(1000, gamma=0.01, power=0.5, step_size=300, init_scale=2.0) == pytest.approx(
        2.0 * (1 + 0.01 * 900) ** 0.5)
    betas = [continuation_beta(s, step_size=10) for s in range(0, 101, 10)]
    assert all(b2 > b1 for b1, b2 in zip(betas, betas[1:]))
    with pytest.raises(ValueError, match="step_size must be >= 1"):
        continuation_beta(5, step_size=0)


def test_on_train_step_raises_beta_and_sharpens_codes():
    model = _tiny(step_size=10, gamma=1.0).eval()
    x = torch.randn(6, 3, 16, 16)
    model.on_train_step(0)
    soft = model(x).codes
    assert model.beta == 1.0
    model.on_train_step(100)
    assert model.beta == pytest.approx(101 ** 0.5)
    sharp = model(x).codes
    assert (sharp.abs() >= soft.abs()).all() and sharp.abs().mean() > soft.abs().mean()
    assert torch.equal(sharp > 0, soft > 0)  # the code is sign(z), whatever beta


def test_forward_shapes_and_codes_are_signs():
    model = _tiny().eval()
    x = torch.randn(5, 3, 16, 16)
    with torch.no_grad():
        out = model(x)
    assert out.features.shape == (5, 12) and out.codes.shape == (5, 16) and out.logits is None
    assert (out.codes.abs() < 1).all()
    codes, feats = model.encode(x)
    assert codes.shape == (5, 2) and codes.dtype == np.uint8
    np.testing.assert_array_equal(np.unpackbits(codes, axis=1, bitorder="little"), (out.codes > 0).numpy())
    np.testing.assert_allclose(feats, out.features.numpy(), rtol=1e-6)


def test_loss_decreases_on_a_tiny_batch():
    model = _tiny()
    x, y = torch.randn(12, 3, 16, 16), torch.arange(12) % 3
    loss = model.default_loss()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    values = []
    for step in range(40):
        model.on_train_step(step)
        terms = loss(model(x), y)
        values.append(terms["loss"].item())
        opt.zero_grad()
        terms["loss"].backward()
        opt.step()
    assert set(terms) == {"similarity", "loss"}
    assert values[-1] < 0.6 * values[0]
    model.eval()
    bits = model(x).codes > 0
    same = (bits[:, None, :] == bits[None, :, :]).float().mean(-1)
    similar = y[:, None] == y[None, :]
    # After training, codes of the same class agree on more bits than codes of different classes.
    assert same[similar].mean() > same[~similar].mean() + 0.2


def test_save_load_keeps_beta_and_codes(tmp_path):
    model = _tiny()
    model.on_train_step(1000)
    model.eval()
    save_encoder(model, tmp_path / "h.pt", class_names=["a", "b", "c"])
    loaded = load_encoder(tmp_path / "h.pt", method="hashnet", bits=16)
    assert isinstance(loaded, HashNet) and loaded.beta == model.beta
    x = torch.randn(4, 3, 16, 16)
    np.testing.assert_array_equal(loaded.encode(x)[0], model.encode(x)[0])
