import numpy as np
import pytest
import torch

from encoders import create_encoder, list_encoders, load_encoder, save_encoder
from encoders.base import HashOutput
from encoders.data import list_images
from encoders.encode import encode_folder
from encoders.metric_hash import METRIC_LOSSES, MetricHashLoss, balance_term, build_metric_loss, quantization_term
from encoders.training import TrainConfig, train_model
from hashindex.index import HashIndex
from hashindex.metrics import vote_accuracy
from hashindex.store import ShardReader

VARIANTS = ["proxy_anchor_hash", "ms_hash", "supcon_hash"]


def _tiny(method, bits=16, **kwargs):
    torch.manual_seed(0)
    return create_encoder(method, backbone="small_cnn", bits=bits, num_classes=4, width=8, feature_dim=32,
                          input_size=16, **kwargs)


def test_variants_are_registered_with_their_own_names():
    assert set(VARIANTS) <= set(list_encoders("*_hash"))
    for method in VARIANTS:
        assert _tiny(method).method == method
    with pytest.raises(ValueError, match="unknown metric loss 'triplet'; expected one of proxy_anchor"):
        build_metric_loss("triplet", 4, 16)
    assert set(METRIC_LOSSES) == {"proxy_anchor", "multi_similarity", "supcon"}


def test_quantization_term_is_zero_at_the_corners_and_pulls_towards_them():
    assert float(quantization_term(torch.tensor([[1.0, -1.0], [-1.0, 1.0]]))) == 0.0
    assert float(quantization_term(torch.tensor([[0.5, -0.5]]))) == pytest.approx(0.25)
    h = torch.tensor([[0.3, -0.6, 0.9, -0.1]], requires_grad=True)
    quantization_term(h).backward()
    moved = h.detach() - 0.5 * h.grad
    assert (moved.abs() > h.detach().abs()).all()  # every bit moves towards its sign's corner
    assert torch.equal(torch.sign(moved), torch.sign(h.detach()))


def test_balance_term_is_zero_for_balanced_bits_and_pushes_bit_means_to_zero():
    balanced = torch.tensor([[1.0, -1.0], [-1.0, 1.0], [1.0, 1.0], [-1.0, -1.0]])
    assert float(balance_term(balanced)) == 0.0
    # Bit means 1 and 0: the mean of their squares is 0.5.
    assert float(balance_term(torch.tensor([[1.0, 1.0], [1.0, -1.0]]))) == pytest.approx(0.5)
    h = torch.tensor([[0.9, 0.2], [0.8, -0.1], [0.7, 0.4]], requires_grad=True)
    balance_term(h).backward()
    moved = h.detach() - 1.0 * h.grad
    assert (moved.mean(0).abs() < h.detach().mean(0).abs()).all()


@pytest.mark.parametrize("loss", METRIC_LOSSES)
def test_loss_terms_are_named_weighted_and_give_gradients(loss):
    torch.manual_seed(0)
    metric, miner = build_metric_loss(loss, num_classes=3, bits=8)
    codes = torch.tanh(torch.randn(12, 8, requires_grad=True))
    codes.retain_grad()
    labels = torch.arange(12) % 3
    out = HashOutput(features=torch.zeros(12, 4), codes=codes)
    terms = MetricHashLoss(metric, miner, quantization_weight=0.5, balance_weight=2.0)(out, labels)
    assert set(terms) == {"metric", "quantization", "balance", "loss"}
    assert terms["quantization"].item() == pytest.approx(0.5 * quantization_term(codes).item())
    assert terms["balance"].item() == pytest.approx(2.0 * balance_term(codes).item())
    assert terms["loss"].item() == pytest.approx(sum(terms[t].item() for t in ("metric", "quantization", "balance")))
    assert terms["metric"].item() > 0
    terms["loss"].backward()
    assert codes.grad is not None and torch.isfinite(codes.grad).all() and codes.grad.abs().sum() > 0
    unweighted = MetricHashLoss(metric, miner, quantization_weight=0.0, balance_weight=0.0)(out, labels)
    assert unweighted["loss"].item() == pytest.approx(terms["metric"].item(), rel=1e-5)


def test_mixup_labels_are_refused():
    model = _tiny("ms_hash")
    out = model(torch.randn(4, 3, 16, 16))
    soft = torch.full((4, 4), 0.25)
    with pytest.raises(ValueError, match="cannot train on mixup's class probabilities"):
        model.default_loss()(out, soft)


def test_proxies_are_trained_saved_and_loaded(tmp_path):
    model = _tiny("proxy_anchor_hash")
    proxies = dict(model.named_parameters())["metric_loss.proxies"]
    assert proxies.shape == (4, 16)
    before = proxies.detach().clone()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    terms = model.default_loss()(model(torch.randn(8, 3, 16, 16)), torch.arange(8) % 4)
    terms["loss"].backward()
    opt.step()
    assert not torch.equal(before, proxies.detach())
    path = save_encoder(model, tmp_path / "m.pt", class_names=["a", "b", "c", "d"])
    loaded = load_encoder(path)
    assert loaded.method == "proxy_anchor_hash"
    assert torch.equal(dict(loaded.named_parameters())["metric_loss.proxies"], proxies.detach())
    x = torch.randn(5, 3, 16, 16)
    model.eval()
    np.testing.assert_array_equal(loaded.encode(x)[0], model.encode(x)[0])


@pytest.mark.parametrize("method,extra,training", [
    ("proxy_anchor_hash", {}, {}), ("ms_hash", {}, {}), ("proxy_anchor_hash", {"blur_sigma": 0.8}, {}),
    ("proxy_anchor_hash", {"contrastive_weight": 0.5}, {"augment": "shift_noise", "views": 2})])
def test_training_beats_chance_on_a_tiny_set(method, extra, training, digits_folder, tmp_path):
    # 4 classes x 30 digits: vote among each image's 8 nearest codes (itself left out);
    # chance is 0.25. With a blur stem too (encoders/backbones/blur.py), and with two views of
    # each image and the NT-Xent term across them (tests/encoders/test_views.py).
    images = list_images(digits_folder, supervised=True)
    model = _tiny(method, **extra)
    history = train_model(model, images, TrainConfig(epochs=8, batch_size=24, lr=3e-3, device="cpu", **training),
                          progress=False)
    for term in ("loss", *(["contrastive"] if "contrastive_weight" in extra else [])):
        assert history[-1][term] < history[0][term], term
    encode_folder(model.eval(), digits_folder, tmp_path / "codes", progress=False)
    data = ShardReader(tmp_path / "codes").read(("codes", "labels"))
    index = HashIndex(bits=16)
    index.add(data["codes"], labels=data["labels"])
    _, ids = index.search(data["codes"], k=9)
    neighbours = np.array([[i for i in row if i != q][:8] for q, row in enumerate(ids)])
    votes = [np.bincount(index.labels_of(row), minlength=4).argmax() for row in neighbours]
    assert vote_accuracy(np.array(votes), data["labels"]) > 0.6


def test_proxies_learn_at_their_own_rate(digits_folder, tmp_path):
    # One step of plain SGD: each part moves by lr x its scale x its gradient, so the proxies'
    # step over the hash layer's (per unit of gradient) is proxy_lr_scale.
    images = list_images(digits_folder, supervised=True)
    steps = {}
    for scale in (1.0, 50.0):
        model = _tiny("proxy_anchor_hash", proxy_lr_scale=scale)
        params = dict(model.named_parameters())
        before = {n: params[n].detach().clone() for n in ("metric_loss.proxies", "hash_fc.weight")}
        train_model(model, images, TrainConfig(epochs=1, batch_size=120, lr=1e-3, optimizer="sgd", momentum=0.0,
                                               weight_decay=0.0, device="cpu", amp=False), progress=False)
        steps[scale] = {n: (params[n].detach() - b).abs().sum().item() for n, b in before.items()}
    ratio = steps[50.0]["metric_loss.proxies"] / steps[1.0]["metric_loss.proxies"]
    assert ratio == pytest.approx(50.0, rel=1e-3)
    assert steps[50.0]["hash_fc.weight"] == pytest.approx(steps[1.0]["hash_fc.weight"], rel=1e-3)
    assert load_encoder(save_encoder(model, tmp_path / "m.pt", class_names=list("abcd"))).proxy_lr_scale == 50.0
    with pytest.raises(ValueError, match="proxy_lr_scale must be > 0"):
        _tiny("proxy_anchor_hash", proxy_lr_scale=0)


def test_classification_term_trains_a_classifier_on_the_codes(digits_folder):
    images = list_images(digits_folder, supervised=True)
    plain = _tiny("proxy_anchor_hash")
    assert plain.classifier is None and plain(torch.randn(2, 3, 16, 16)).logits is None
    model = _tiny("proxy_anchor_hash", classification_weight=0.5)
    out = model(torch.randn(6, 3, 16, 16))
    assert out.logits.shape == (6, 4)
    labels = torch.arange(6) % 4
    terms = model.default_loss()(out, labels)
    expected = 0.5 * torch.nn.functional.cross_entropy(out.logits, labels)
    assert terms["classification"].item() == pytest.approx(expected.item(), rel=1e-5)
    history = train_model(model, images, TrainConfig(epochs=6, batch_size=40, lr=3e-3, device="cpu"), progress=False)
    assert history[-1]["classification"] < history[0]["classification"]
    assert history[-1]["train_accuracy"] > 0.6  # chance is 0.25
    with pytest.raises(ValueError, match="needs a model that returns logits"):
        MetricHashLoss(*build_metric_loss("proxy_anchor", 4, 16), classification_weight=1.0)(
            plain(torch.randn(4, 3, 16, 16)), torch.arange(4))


@pytest.mark.parametrize("method", VARIANTS)
def test_every_variant_rebuilds_from_its_file(method, tmp_path):
    model = _tiny(method, classification_weight=0.5).eval()
    loaded = load_encoder(save_encoder(model, tmp_path / "m.pt", class_names=list("abcd")))
    assert loaded.classification_weight == 0.5 and loaded.classifier is not None
    x = torch.randn(3, 3, 16, 16)
    np.testing.assert_array_equal(loaded.encode(x)[0], model.encode(x)[0])
