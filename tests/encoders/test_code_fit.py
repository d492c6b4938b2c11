"""Refitting the code layer after training (``TrainConfig.code_fit``, ``hashindex train --code-fit``)."""

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from encoders import create_encoder, load_encoder
from encoders.classical import ITQ
from encoders.data import list_images
from encoders.encode import encode_files
from encoders.training import TrainConfig, fit_codes, train_model
from hashapp.cli import main
from hashapp.pipeline import train_encoder
from hashindex.codes import unpack_codes

RECIPE = ["--method", "proxy_anchor_hash", "--backbone", "small_cnn_blur", "--bits", "16", "--epochs", "1",
          "--batch-size", "40", "--lr-schedule", "cosine", "--augment", "shift_noise", "--seed", "2"]


def _encode(model, folder):
    paths = [path for path, _ in list_images(folder).samples]
    codes, features, _, _ = encode_files(model, paths, batch_size=64, device="cpu")
    return codes, features


def test_itq_code_fit_gives_itq_codes_of_the_trained_features(tmp_path, digits_folder):
    refit = tmp_path / "itq.pt"
    result = CliRunner().invoke(main, ["train", str(digits_folder), *RECIPE, "--code-fit", "itq", "--out", str(refit)])
    assert result.exit_code == 0, result.output
    assert torch.load(refit, weights_only=True)["extra"]["train_config"]["code_fit"] == "itq"
    model = load_encoder(refit)
    codes, features = _encode(model, digits_folder)
    # ITQ fitted apart on the trained network's features of the training images, codes in numpy.
    itq = ITQ(bits=16, seed=2).fit(features)
    z = (features.astype(np.float64) - itq.mean.double().numpy()) @ itq.projection.double().numpy()
    np.testing.assert_array_equal(unpack_codes(codes, 16), z > 0)
    assert len({tuple(row) for row in (z > 0)}) > 20  # not a trivial code

    # The same training with the trained layer kept: the same network, another code layer; refitting
    # it afterwards gives the refit model exactly (what benchmarks/seen_unseen.py's refit rows rely on).
    kept = tmp_path / "trained.pt"
    result = CliRunner().invoke(main, ["train", str(digits_folder), *RECIPE, "--out", str(kept)])
    assert result.exit_code == 0, result.output
    trained = load_encoder(kept)
    for name, value in trained.backbone.state_dict().items():
        assert torch.equal(value, model.backbone.state_dict()[name]), name
    assert not torch.equal(trained.code_layer().weight, model.code_layer().weight)
    assert (unpack_codes(_encode(trained, digits_folder)[0], 16) != (z > 0)).any()
    fit_codes(trained, list_images(digits_folder), TrainConfig(seed=2, batch_size=40, device="cpu", code_fit="itq"))
    assert torch.equal(trained.code_layer().weight, model.code_layer().weight)
    assert torch.equal(trained.code_layer().bias, model.code_layer().bias)


def test_code_fit_is_checked(digits_folder, tmp_path):
    with pytest.raises(ValueError, match="unknown code_fit 'pca'; expected one of trained, itq"):
        TrainConfig(code_fit="pca")
    torch.manual_seed(0)
    model = create_encoder("bilinear_hashnet", backbone="efficientnet_lite0", input_size=32, pretrained=False,
                           bits=16, num_classes=4)
    # Its hash layer sits on a bilinear descriptor, not on F7: refused before training, not silently kept.
    before = {name: value.clone() for name, value in model.state_dict().items()}
    with pytest.raises(ValueError, match="code_fit 'itq' needs a linear code layer .* use code_fit 'trained'"):
        train_model(model, list_images(digits_folder), TrainConfig(code_fit="itq", epochs=1, device="cpu"),
                    progress=False)
    assert all(torch.equal(value, before[name]) for name, value in model.state_dict().items())
    path = train_encoder(digits_folder, tmp_path / "kept.pt", method="proxy_anchor_hash", bits=16,
                         config=TrainConfig(epochs=1, batch_size=40, device="cpu"), progress=False)
    assert torch.load(path, weights_only=True)["extra"]["train_config"]["code_fit"] == "trained"
