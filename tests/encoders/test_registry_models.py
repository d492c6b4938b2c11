"""Every gradient-trained method on every registered backbone, at tiny sizes (timm's
test_models pattern): forward shapes, packed codes, a gradient for every parameter."""

import numpy as np
import pytest
import torch

from encoders import Backbone, ConvBackbone, HashModel, create_backbone, create_encoder, list_backbones, list_encoders
from encoders.feature_hashing import is_feature_method
from encoders.losses import ClassificationLoss, HashNetLoss
from encoders.training import module_groups, resolve_stages, TrainConfig
from hashindex.index import HashIndex
from hashindex.testing import assert_same_knn, brute_force_knn

#: Tiny settings per backbone; a new backbone needs an entry here.
TINY_BACKBONES = {
    "small_cnn": dict(width=4, feature_dim=12, input_size=16),
    "small_cnn_blur": dict(width=4, feature_dim=12, input_size=16),
    "alexnet": dict(width=1 / 16, fc_dim=16, input_size=64),
    "vgg16": dict(width=1 / 16, fc_dim=16, input_size=32),
    "vgg19": dict(width=1 / 16, fc_dim=16, input_size=32),
    "efficientnet_lite0": dict(pretrained=False, input_size=32),
    "pixels": dict(input_size=8),
}
#: Methods trained by gradient on labelled batches (the feature-fitted ones have their own tests).
DEEP_METHODS = [m for m in list_encoders() if not is_feature_method(m)]
COMBINATIONS = [(m, b) for m in DEEP_METHODS for b in list_backbones()]
NUM_CLASSES = 3


def _build(method, backbone, bits=16, **extra):
    if backbone not in TINY_BACKBONES:
        pytest.fail(f"backbone {backbone!r} has no tiny settings in TINY_BACKBONES")
    torch.manual_seed(0)
    return create_encoder(method, backbone=backbone, bits=bits, num_classes=NUM_CLASSES,
                          **TINY_BACKBONES[backbone], **extra)


@pytest.mark.parametrize("backbone", list_backbones())
def test_every_backbone_implements_the_backbone_protocol(backbone):
    if backbone not in TINY_BACKBONES:
        pytest.fail(f"backbone {backbone!r} has no tiny settings in TINY_BACKBONES")
    torch.manual_seed(0)
    net = create_backbone(backbone, **TINY_BACKBONES[backbone]).eval()
    assert isinstance(net, Backbone)
    channels, height, width = net.input_cfg["input_size"]
    assert len(net.input_cfg["mean"]) == len(net.input_cfg["std"]) == channels == 3
    x = torch.randn(2, channels, height, width)
    with torch.no_grad():
        assert net(x).shape == (2, net.feature_dim)
        if isinstance(net, ConvBackbone):
            conv_map = net.conv_trunk()(x)
            assert conv_map.ndim == 4 and conv_map.shape[:2] == (2, net.map_channels)


def _conv_map_missing(method, backbone):
    return method == "bilinear_hashnet" and backbone == "pixels"


def test_the_supervised_methods_and_backbones_are_registered():
    assert {"dlbhc", "hashnet", "bilinear_hashnet"} <= set(DEEP_METHODS)
    assert {"small_cnn", "alexnet", "vgg16", "vgg19", "efficientnet_lite0"} <= set(list_backbones())


@pytest.mark.parametrize("method,backbone", COMBINATIONS)
def test_forward_encode_and_gradients(method, backbone):
    if _conv_map_missing(method, backbone):
        with pytest.raises(ValueError, match="has no convolutional map to pool"):
            _build(method, backbone)
        return
    model = _build(method, backbone)
    assert isinstance(model, HashModel) and model.method == method
    x = torch.randn(4, *model.input_cfg["input_size"])
    out = model(x)
    assert out.codes.shape == (4, 16)
    assert out.features.shape == (4, model.feature_dim)
    if out.logits is not None:
        assert out.logits.shape == (4, NUM_CLASSES)

    # Every part of the model learns from one of the losses a schedule can name.
    y = torch.tensor([0, 1, 0, 2])
    loss = HashNetLoss()(out, y)["loss"]
    if out.logits is not None:
        loss = loss + ClassificationLoss()(out, y)["loss"]
    loss = loss + model.default_loss()(out, y)["loss"]
    assert torch.isfinite(loss)
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, f"{name} got no gradient"
        assert torch.isfinite(p.grad).all(), f"{name} has a non-finite gradient"

    # The model's parts cover every parameter and its schedule names only existing parts.
    groups = module_groups(model)
    for stage in resolve_stages(model, TrainConfig(epochs=3)):
        assert stage.train is None or set(stage.train) <= set(groups)

    model.eval()
    codes, features = model.encode(x)
    assert codes.dtype == np.uint8 and codes.shape == (4, 2)
    bits = np.unpackbits(codes, axis=1, bitorder="little")
    assert set(np.unique(bits)) <= {0, 1}
    with torch.no_grad():
        expected = model.binarize(model(x).codes).numpy()
    np.testing.assert_array_equal(bits, expected)
    assert features.shape == (4, model.feature_dim) and np.isfinite(features).all()


@pytest.mark.parametrize("pooling", ["full", "compact"])
@pytest.mark.parametrize("bits", [48, 64, 80, 96])
def test_bilinear_code_lengths_index_end_to_end(bits, pooling):
    model = _build("bilinear_hashnet", "small_cnn", bits=bits, pooling=pooling, sketch_dim=64).eval()
    torch.manual_seed(1)
    db_codes, db_features = model.encode(torch.randn(40, 3, 16, 16))
    q_codes, _ = model.encode(torch.randn(5, 3, 16, 16))
    assert db_codes.shape == (40, bits // 8)
    index = HashIndex(bits=bits)
    index.add(db_codes, labels=np.arange(40) % 3, features=db_features)
    D, I = index.search(q_codes, k=6)
    D_ref, I_ref = brute_force_knn(q_codes, db_codes, 6)
    assert_same_knn(D_ref, I_ref, D, I, database=db_codes, queries=q_codes)
