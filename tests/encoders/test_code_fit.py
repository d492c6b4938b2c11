"""Refitting the code layer after training (``TrainConfig.code_fit``, ``hashindex train --code-fit``)."""

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from encoders import create_encoder, load_encoder
from encoders.classical import ITQ
from encoders.code_fit import DBQ_THRESHOLD_SD, fit_codes
from encoders.data import list_images
from encoders.encode import encode_files
from encoders.training import TrainConfig, train_model
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
    fit_codes(trained, list_images(digits_folder), "itq", seed=2, batch_size=40, device="cpu")
    assert torch.equal(trained.code_layer().weight, model.code_layer().weight)
    assert torch.equal(trained.code_layer().bias, model.code_layer().bias)


def test_dbq_code_fit_gives_two_bits_per_itq_projection_of_unit_features(tmp_path, digits_folder):
    path = tmp_path / "dbq.pt"
    result = CliRunner().invoke(main, ["train", str(digits_folder), *RECIPE, "--code-fit", "dbq", "--out", str(path)])
    assert result.exit_code == 0, result.output
    model = load_encoder(path)  # rebuilt from the file: the unit-length input is part of the model
    assert model.unit_features and model.config["unit_features"] is True
    codes, features = _encode(model, digits_folder)
    # In numpy: ITQ (8 bits) of the unit-length training features, each projection cut at -t and +t sds.
    x = features.astype(np.float64) / np.linalg.norm(features.astype(np.float64), axis=1, keepdims=True)
    itq = ITQ(bits=8, seed=2).fit(x.astype(np.float32))
    v = (x - itq.mean.double().numpy()) @ itq.projection.double().numpy()
    t = DBQ_THRESHOLD_SD * v.std(axis=0)
    expected = np.stack([v > -t, v > t], axis=2).reshape(len(v), 16)
    np.testing.assert_array_equal(unpack_codes(codes, 16), expected)
    levels = (v > -t).astype(int) + (v > t)
    assert {0, 1, 2} <= set(levels.ravel().tolist())  # every projection level is used
    # Hamming distance is the sum of the level differences (01 never occurs: a level is 00, 10 or 11).
    bits = unpack_codes(codes, 16).astype(int)
    assert (bits[:, 1::2] <= bits[:, 0::2]).all()
    np.testing.assert_array_equal(np.abs(bits[:1] - bits).sum(axis=1), np.abs(levels[:1] - levels).sum(axis=1))


def test_code_fit_is_checked(digits_folder, tmp_path):
    with pytest.raises(ValueError, match="unknown code_fit 'pca'; expected one of trained, itq, dbq"):
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
    # A model file without the option keeps its config, so stores made with it still accept it.
    assert "unit_features" not in load_encoder(path).config
    dlbhc = create_encoder("dlbhc", bits=16, num_classes=4)
    with pytest.raises(ValueError, match="code_fit 'dbq' needs a code layer on unit-length F7.* use code_fit 'itq'"):
        train_model(dlbhc, list_images(digits_folder), TrainConfig(code_fit="dbq", epochs=1, device="cpu"))
    with pytest.raises(ValueError, match=r"code_fit 'dbq' needs bits that are a multiple of 16 \(.*\), got 24"):
        train_model(create_encoder("proxy_anchor_hash", bits=24, num_classes=4), list_images(digits_folder),
                    TrainConfig(code_fit="dbq", epochs=1, device="cpu"))
