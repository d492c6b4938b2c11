"""Starting the hash layer from the frozen features (``TrainConfig.head_init``): ITQ, or centred random."""

import numpy as np
import pytest
import torch

from encoders import create_encoder, load_encoder
from encoders.classical import ITQ
from encoders.data import list_images
from encoders.encode import encode_files
from encoders.head_init import centre_code_layer, init_code_layer_from_itq
from encoders.training import PRETRAINED_RECIPE, SCRATCH_RECIPE, TrainConfig, resolve_train_config, train_model
from hashapp.pipeline import train_encoder
from hashindex.codes import unpack_codes

#: EfficientNet-Lite0 with its ImageNet weights, at 32 px so that a CPU step is quick.
LITE = dict(backbone="efficientnet_lite0", input_size=32)


def _lite(method, pretrained=True, bits=16):
    torch.manual_seed(0)
    return create_encoder(method, bits=bits, num_classes=4, pretrained=pretrained, **LITE)


@pytest.fixture(scope="module")
def images(digits_folder):
    return list_images(digits_folder)


def _paths(images):
    return [path for path, _ in images.samples]


@pytest.mark.parametrize("method", ["dlbhc", "hashnet"])
def test_codes_after_the_init_are_the_itq_codes_of_the_features(images, method):
    model = _lite(method)
    _, features, _, _ = encode_files(model, _paths(images), batch_size=32, device="cpu")
    with torch.no_grad():
        own_sd = float(model.code_layer()(torch.as_tensor(features)).std())
    init_code_layer_from_itq(model, images, seed=3, batch_size=32, device="cpu")
    codes, features, _, _ = encode_files(model, _paths(images), batch_size=32, device="cpu")
    # ITQ fitted apart on the same features, its codes computed in numpy.
    itq = ITQ(bits=16, seed=3).fit(features)
    z = (features.astype(np.float64) - itq.mean.double().numpy()) @ itq.projection.double().numpy()
    np.testing.assert_array_equal(unpack_codes(codes, 16), z > 0)
    assert 4 < len({tuple(row) for row in (z > 0)}) and (z > 0).any(axis=0).all()  # not a trivial code
    with torch.no_grad():
        out = model.code_layer()(torch.as_tensor(features))
    assert float(out.std()) == pytest.approx(own_sd, rel=1e-3)  # the scale of the layer's own init


@pytest.mark.parametrize("method", ["dlbhc", "hashnet"])
def test_centred_start_puts_every_hyperplane_through_the_features_mean(images, method):
    model = _lite(method)
    weight = model.code_layer().weight.detach().clone()
    before, features, _, _ = encode_files(model, _paths(images), batch_size=32, device="cpu")
    centre_code_layer(model, images, batch_size=32, device="cpu")
    codes, features, _, _ = encode_files(model, _paths(images), batch_size=32, device="cpu")
    assert torch.equal(model.code_layer().weight, weight)  # only the bias moves
    # The codes are sign(W (f - mean)), computed in numpy from the same features.
    f = features.astype(np.float64)
    z = (f - f.mean(axis=0)) @ weight.double().numpy().T
    np.testing.assert_array_equal(unpack_codes(codes, 16), z > 0)
    # Through the mean, each bit splits the images: no bit on for under a quarter or over three quarters of them.
    on = unpack_codes(codes, 16).mean(axis=0)
    assert 0.25 < on.min() and on.max() < 0.75
    # The random start alone (the same weights, its own bias) is lopsided on these features.
    assert np.abs(unpack_codes(before, 16).mean(axis=0) - 0.5).max() > 0.25


def test_every_model_starts_at_random_by_default_and_explicit_values_win():
    assert PRETRAINED_RECIPE["head_init"] == SCRATCH_RECIPE["head_init"] == "random"
    # DLBHC started from ITQ until its frozen batch-norm statistics kept ITQ's code collisions (README "Real photos").
    for method in ("dlbhc", "hashnet"):
        assert resolve_train_config(_lite(method)).head_init == "random"
        assert resolve_train_config(_lite(method), TrainConfig(head_init="random")).head_init == "random"
        assert resolve_train_config(_lite(method), TrainConfig(head_init="itq")).head_init == "itq"
        assert resolve_train_config(_lite(method, pretrained=False)).head_init == "random"
    # Bilinear-HashNet's hash layer sits on its bilinear descriptor, not on F7: nothing to start from ITQ.
    assert resolve_train_config(_lite("bilinear_hashnet")).head_init == "random"
    assert resolve_train_config(_lite("dlbhc"), TrainConfig(head_init="random_centred")).head_init == "random_centred"
    with pytest.raises(ValueError, match="unknown head_init 'pca'"):
        TrainConfig(head_init="pca")


@pytest.mark.parametrize("head_init", ["itq", "random_centred"])
def test_a_fitted_start_on_a_model_without_a_code_layer_is_refused(images, head_init):
    model = _lite("bilinear_hashnet")
    refused = f"head_init '{head_init}' needs a linear code layer .* use head_init 'random'"
    with pytest.raises(ValueError, match=refused):
        train_model(model, images, TrainConfig(head_init=head_init, epochs=1, device="cpu"), progress=False)


def _orthogonality_error(layer) -> float:
    """How far the rows of the layer's weight are from orthogonal with equal norms (ITQ's
    projection has orthonormal columns; a random layer's rows are not)."""
    w = layer.weight.detach().double()
    gram = w @ w.T
    return float((gram / gram.diagonal().mean() - torch.eye(len(w), dtype=w.dtype)).abs().max())


def test_training_starts_from_itq_and_the_model_file_records_it(tmp_path, digits_folder):
    kwargs = dict(method="dlbhc", backbone="efficientnet_lite0", bits=16, encoder_kwargs={"input_size": 32},
                  progress=False)
    # At lr 0 the layer keeps its start: ITQ's orthogonal projection when asked, nn.Linear's init by default.
    errors = {}
    for head_init in ("itq", None):
        path = train_encoder(digits_folder, tmp_path / f"{head_init}.pt", config=TrainConfig(
            lr=0.0, batch_size=32, device="cpu", head_init=head_init), **kwargs)
        recorded = torch.load(path, weights_only=True)["extra"]["train_config"]["head_init"]
        errors[recorded] = _orthogonality_error(load_encoder(path).code_layer())
    assert errors["itq"] < 1e-4 < 0.01 < errors["random"]


def test_training_starts_centred_and_the_model_file_records_it(tmp_path, digits_folder, images):
    # At lr 0, with DLBHC's kept batch-norm statistics, the features do not move during training: the saved
    # layer's hyperplanes pass through their mean, its weights are nn.Linear's (not orthogonal).
    path = train_encoder(digits_folder, tmp_path / "c.pt", method="dlbhc", backbone="efficientnet_lite0", bits=16,
                         encoder_kwargs={"input_size": 32}, progress=False,
                         config=TrainConfig(lr=0.0, batch_size=32, device="cpu", head_init="random_centred"))
    assert torch.load(path, weights_only=True)["extra"]["train_config"]["head_init"] == "random_centred"
    model = load_encoder(path)
    _, features, _, _ = encode_files(model, _paths(images), batch_size=32, device="cpu")
    layer = model.code_layer()
    with torch.no_grad():
        outputs = layer(torch.as_tensor(features)).double()
    assert float(outputs.mean(dim=0).abs().max()) < 1e-4 * float(outputs.std())
    assert _orthogonality_error(layer) > 0.01


def test_cli_head_init_flag_overrides_the_default(tmp_path, digits_folder):
    from click.testing import CliRunner

    from hashapp.cli import main

    out = tmp_path / "m.pt"
    # A backbone trained from scratch defaults to a random start; the flag asks for ITQ.
    result = CliRunner().invoke(main, ["train", str(digits_folder), "--out", str(out), "--method",
                                       "hashnet", "--bits", "16", "--epochs", "1", "--lr", "0", "--head-init", "itq"])
    assert result.exit_code == 0, result.output
    assert torch.load(out, weights_only=True)["extra"]["train_config"]["head_init"] == "itq"
    assert _orthogonality_error(load_encoder(out).code_layer()) < 1e-4
