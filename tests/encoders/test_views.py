"""Two augmented views per training image (``TrainConfig.views``) and the NT-Xent term on F7
across them (``contrastive_weight`` of the metric-learning methods)."""

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from encoders import create_encoder, load_encoder
from encoders.base import HashOutput
from encoders.checkpoint import read_encoder_file
from encoders.data import ImageFileDataset, list_images, load_rgb
from encoders.metric_hash import CONTRASTIVE_TEMPERATURE, MetricHashLoss, build_metric_loss
from encoders.augment import train_transform
from encoders.training import TrainConfig, train_model
from encoders.views import Views
from hashapp.cli import main
from hashapp.pipeline import train_encoder
from hashindex.datasets import write_image_folder

TINY = dict(backbone="small_cnn", width=8, feature_dim=32, input_size=16)
CFG = {"input_size": (3, 16, 16), "mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5)}


def _tiny(method="proxy_anchor_hash", **kwargs):
    torch.manual_seed(0)
    return create_encoder(method, bits=16, num_classes=4, **TINY, **kwargs)


def test_views_of_one_image_differ_and_come_from_that_file(digits_folder):
    images = list_images(digits_folder)
    transform = train_transform(CFG, "shift_noise")
    dataset = ImageFileDataset(images, Views(transform, 2))
    torch.manual_seed(5)
    views, label, image_id, error = dataset[7]
    assert error is None and image_id == 7 and label == images.samples[7][1]
    assert views.shape == (2, 3, 16, 16)
    assert not torch.equal(views[0], views[1])  # each view draws its own shift and noise
    # The same draws on that file, one view after the other, give the same two views.
    torch.manual_seed(5)
    image = load_rgb(images.samples[7][0])
    assert torch.equal(views, torch.stack([transform(image), transform(image)]))
    with pytest.raises(ValueError, match="views must be >= 1"):
        Views(transform, 0)


def test_batch_rows_are_view_major_with_labels_and_instance_ids_lined_up(tmp_path):
    # Every image a uniform grey of its own: a shifted view of it is the same grey, so a row's
    # grey names the file it came from.
    greys = np.arange(20) * 12 + 5
    pixels = np.repeat(greys, 16 * 16).reshape(20, 16, 16).astype(np.uint8)
    folder = write_image_folder(pixels, np.arange(20) % 2, tmp_path / "grey")
    label_of_grey = {}
    for path, label in list_images(folder).samples:
        label_of_grey[int(np.asarray(load_rgb(path))[0, 0, 0])] = label

    class Recording(MetricHashLoss):
        def compute_loss(self, output, labels, instances=None):
            seen.append((labels.clone(), instances.clone()))
            return super().compute_loss(output, labels, instances)

    seen, inputs = [], []
    model = _tiny(contrastive_weight=0.5)
    model.num_classes = 2
    model.register_forward_pre_hook(lambda module, args: inputs.append(args[0].detach().clone()))
    loss = Recording(*build_metric_loss("proxy_anchor", 2, 16), contrastive_weight=0.5)
    train_model(model, list_images(folder), TrainConfig(epochs=1, batch_size=8, augment="shift", views=2,
                                                        device="cpu"), loss=loss, progress=False)
    assert [len(labels) for labels, _ in seen] == [16, 16, 8]  # 8 + 8 + 4 images, two views each
    for x, (labels, instances) in zip(inputs, seen):
        n = len(labels) // 2
        assert torch.equal(instances, torch.arange(n).repeat(2))
        assert torch.equal(labels[:n], labels[n:])
        grey = (x[:, 0, 0, 0] * 0.5 + 0.5) * 255  # undo Normalize(0.5, 0.5)
        grey = torch.round(grey).long()
        assert torch.equal(grey[:n], grey[n:])  # row i and row n + i: the same file
        assert [label_of_grey[int(g)] for g in grey] == labels.tolist()


def test_contrastive_term_is_the_librarys_nt_xent_on_f7():
    from pytorch_metric_learning.losses import NTXentLoss

    torch.manual_seed(0)
    features = torch.randn(12, 6, requires_grad=True)
    out = HashOutput(features=features, codes=torch.tanh(torch.randn(12, 8)))
    labels, instances = torch.arange(12) % 3, torch.arange(6).repeat(2)
    loss = MetricHashLoss(*build_metric_loss("proxy_anchor", 3, 8), contrastive_weight=0.5)
    assert isinstance(loss.contrastive_loss, NTXentLoss) and loss.needs_views
    terms = loss(out, labels, instances)
    expected = 0.5 * NTXentLoss(temperature=CONTRASTIVE_TEMPERATURE)(features, instances)
    assert terms["contrastive"].item() == pytest.approx(expected.item(), rel=1e-6)
    assert terms["loss"].item() == pytest.approx(sum(v.item() for k, v in terms.items() if k != "loss"), rel=1e-6)
    terms["contrastive"].backward()
    assert features.grad.abs().sum() > 0  # the term trains F7
    # Views that agree with each other and differ from the rest score lower than random rows.
    agreeing = HashOutput(features=torch.randn(6, 6).repeat(2, 1), codes=out.codes)
    assert loss(agreeing, labels, instances)["contrastive"] < terms["contrastive"]
    with pytest.raises(ValueError, match=r"needs instance ids of shape \(12,\) \(train with views >= 2\)"):
        loss(out, labels)
    assert not MetricHashLoss(*build_metric_loss("proxy_anchor", 3, 8)).needs_views


@pytest.mark.filterwarnings("ignore:collapsed codes")  # one epoch of a tiny model
def test_contrastive_weight_changes_training_and_is_recorded(digits_folder, tmp_path):
    images = list_images(digits_folder)
    config = TrainConfig(epochs=1, batch_size=32, augment="shift", views=2, device="cpu")
    plain, contrastive = _tiny(), _tiny(contrastive_weight=0.5)
    assert torch.equal(plain.hash_fc.weight, contrastive.hash_fc.weight)  # one start
    plain_history = train_model(plain, images, config, progress=False)
    history = train_model(contrastive, images, config, progress=False)
    assert "contrastive" in history[0] and "contrastive" not in plain_history[0]
    assert not torch.equal(plain.hash_fc.weight, contrastive.hash_fc.weight)
    assert "contrastive_weight" not in plain.config  # files without the term keep their identity
    path = train_encoder(digits_folder, tmp_path / "m.pt", method="proxy_anchor_hash", bits=16,
                         encoder_kwargs={k: v for k, v in TINY.items() if k != "backbone"} | {"contrastive_weight": 0.5},
                         config=config, progress=False)
    assert load_encoder(path).contrastive_weight == 0.5
    assert read_encoder_file(path)["extra"]["train_config"]["views"] == 2


def test_refusals(digits_folder, tmp_path):
    with pytest.raises(ValueError, match="views=2 needs an augmentation"):
        TrainConfig(views=2)
    with pytest.raises(ValueError, match="views=2 cannot be combined with mixup"):
        TrainConfig(views=2, augment="shift", mixup=1.0)
    with pytest.raises(ValueError, match="views must be >= 1"):
        TrainConfig(views=0)
    with pytest.raises(ValueError, match="contrastive_weight must be >= 0"):
        _tiny(contrastive_weight=-1.0)
    with pytest.raises(ValueError, match="compares views of each image .* train with views >= 2 .*views=1"):
        train_model(_tiny(contrastive_weight=0.5), list_images(digits_folder), TrainConfig(epochs=1, augment="shift"),
                    progress=False)
    args = ["train", str(digits_folder), "--out", str(tmp_path / "m.pt"), "--epochs", "1", "--bits", "16"]
    result = CliRunner().invoke(main, [*args, "--views", "2"])
    assert result.exit_code == 1 and result.output.strip().startswith("Error: views=2 needs an augmentation")
    result = CliRunner().invoke(main, [*args, "--contrastive-weight", "0.5"])
    assert result.exit_code == 1 and "--contrastive-weight is for the metric-learning methods" in result.output
    assert not (tmp_path / "m.pt").exists()


@pytest.mark.filterwarnings("ignore:collapsed codes")
def test_train_command_with_two_views(digits_folder, tmp_path):
    result = CliRunner().invoke(main, ["train", str(digits_folder), "--out", str(tmp_path / "m.pt"), "--epochs", "1",
                                       "--bits", "16", "--batch-size", "32", "--method", "proxy_anchor_hash",
                                       "--augment", "shift", "--views", "2", "--contrastive-weight", "0.5"])
    assert result.exit_code == 0, result.output
    assert "contrastive" in result.output  # the training summary names the term
    extra = read_encoder_file(tmp_path / "m.pt")["extra"]
    assert extra["train_config"]["views"] == 2 and "contrastive" in extra["history"][0]
    assert load_encoder(tmp_path / "m.pt").contrastive_weight == 0.5
