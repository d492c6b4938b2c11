"""The Gaussian blur stem of ``small_cnn``: a fixed low-pass filter checked against a direct 2-D
convolution in numpy, recorded in the model file and trained through the CLI."""

import numpy as np
import pytest
import torch

from encoders import create_backbone, create_encoder, load_encoder, save_encoder
from encoders.backbones.blur import GaussianBlur, gaussian_kernel


def _blur_numpy(image: np.ndarray, sigma: float) -> np.ndarray:
    """Direct 2-D convolution of one (h, w) image with the outer product of the 1-D kernel,
    edges replicated: the reference the separable torch filter must match."""
    k1 = gaussian_kernel(sigma).numpy().astype(np.float64)
    k2, r = np.outer(k1, k1), len(k1) // 2
    padded = np.pad(image.astype(np.float64), r, mode="edge")
    h, w = image.shape
    return np.array([[(padded[y:y + 2 * r + 1, x:x + 2 * r + 1] * k2).sum() for x in range(w)] for y in range(h)])


@pytest.mark.parametrize("sigma", [0.5, 1.0, 1.7])
def test_blur_matches_a_direct_convolution(sigma):
    rng = np.random.default_rng(0)
    images = rng.normal(size=(2, 3, 12, 10)).astype(np.float32)
    out = GaussianBlur(sigma)(torch.from_numpy(images)).numpy()
    assert out.shape == images.shape
    for n in range(2):
        for c in range(3):
            np.testing.assert_allclose(out[n, c], _blur_numpy(images[n, c], sigma), atol=1e-5)
    assert gaussian_kernel(sigma).sum().item() == pytest.approx(1.0, abs=1e-6)


def test_blur_keeps_flat_images_damps_noise_and_commutes_with_normalisation():
    blur = GaussianBlur(1.0)
    flat = torch.full((1, 3, 16, 16), 0.3)
    torch.testing.assert_close(blur(flat), flat)  # replicated edges: no dark or bright border
    noise = torch.randn(1, 3, 200, 200, generator=torch.Generator().manual_seed(0))
    expected_sd = float((gaussian_kernel(1.0) ** 2).sum())  # separable: variance x (sum k^2)^2
    assert blur(noise)[..., 10:-10, 10:-10].std().item() == pytest.approx(expected_sd, rel=0.05)
    x = torch.rand(2, 3, 16, 16)
    torch.testing.assert_close(blur((x - 0.5) / 0.5), (blur(x) - 0.5) / 0.5, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="blur sigma must be > 0"):
        gaussian_kernel(0.0)


def test_small_cnn_blur_stem_is_the_plain_network_on_blurred_images():
    torch.manual_seed(0)
    plain = create_backbone("small_cnn", width=4, feature_dim=12, input_size=16).eval()
    stemmed = create_backbone("small_cnn_blur", width=4, feature_dim=12, input_size=16).eval()
    assert stemmed.stem.sigma == 1.0 and not list(stemmed.stem.parameters())
    assert set(stemmed.state_dict()) == set(plain.state_dict())  # the kernel is not stored: old files load
    stemmed.load_state_dict(plain.state_dict())
    x = torch.randn(3, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(stemmed(x), plain(GaussianBlur(1.0)(x)))
        torch.testing.assert_close(stemmed.conv_trunk()(x), plain.conv_trunk()(GaussianBlur(1.0)(x)))
    with pytest.raises(ValueError, match="blur_sigma must be >= 0"):
        create_backbone("small_cnn", blur_sigma=-1.0)


def test_blur_stem_is_recorded_in_the_model_file(tmp_path):
    # Real training with the stem: tests/encoders/test_metric_hash.py (blur_sigma case).
    torch.manual_seed(0)
    model = create_encoder("proxy_anchor_hash", backbone="small_cnn", bits=16, num_classes=4, width=8,
                           feature_dim=32, input_size=16, blur_sigma=0.8).eval()
    loaded = load_encoder(save_encoder(model, tmp_path / "m.pt", class_names=list("abcd")))
    assert loaded.config["blur_sigma"] == 0.8 and loaded.backbone.stem.sigma == 0.8
    x = torch.randn(4, 3, 16, 16)
    np.testing.assert_array_equal(loaded.encode(x)[0], model.encode(x)[0])
    variant = load_encoder(save_encoder(create_encoder("proxy_anchor_hash", backbone="small_cnn_blur", bits=16,
                                                       num_classes=4, width=8, feature_dim=32, input_size=16),
                                        tmp_path / "v.pt", class_names=list("abcd")))
    assert variant.config["backbone"] == "small_cnn_blur" and variant.backbone.stem.sigma == 1.0


def test_the_cli_trains_the_readme_recipe_with_the_blur_stem(tmp_path, digits_folder):
    from click.testing import CliRunner

    from hashapp.cli import main

    result = CliRunner().invoke(main, ["train", str(digits_folder), "--method", "proxy_anchor_hash", "--backbone",
                                       "small_cnn_blur", "--epochs", "1", "--bits", "16", "--batch-size", "40",
                                       "--lr-schedule", "cosine", "--augment", "shift_noise",
                                       "--out", str(tmp_path / "m.pt")])
    assert result.exit_code == 0, result.output
    model = load_encoder(tmp_path / "m.pt")
    assert model.method == "proxy_anchor_hash" and model.backbone.stem.sigma == 1.0
