import math

import numpy as np
import pytest
import torch

from encoders import create_encoder, load_encoder
from encoders.bilinear import paper_schedule
from encoders.data import list_images
from encoders.losses import HashNetLoss
from encoders.encode import encode_folder
from encoders.training import (Stage, TrainConfig, learning_rate, model_classes, resolve_stages, rotate_batch,
                               train_model, train_transform)
from hashapp.pipeline import train_encoder
from hashindex.store import ShardReader

TINY = dict(backbone="small_cnn", width=4, feature_dim=12, input_size=16)


def _model(method, **extra):
    torch.manual_seed(0)
    return create_encoder(method, bits=16, **{"num_classes": 4, **TINY, **extra})


class Interrupted(Exception):
    pass


def _interrupt_after(epoch):
    def hook(done, record):
        if done == epoch:
            raise Interrupted
    return hook


def _assert_same_state(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert torch.equal(sa[key], sb[key]), f"{key} differs"


#: (method, extra encoder kwargs, config kwargs, epoch to interrupt after)
RESUME_CASES = {
    "dlbhc-adam": ("dlbhc", {}, dict(epochs=3, optimizer="adam", lr=1e-3), 1),
    # Random shifts too: the augmentation draws from the per-epoch seed, so a resume replays it.
    "hashnet-sgd-cosine-augmented": ("hashnet", {"step_size": 3}, dict(epochs=3, optimizer="sgd", lr=0.05,
                                                                       lr_schedule="cosine", augment="shift"), 2),
    # Mixup draws its blend weights and partners from the per-epoch seed too.
    "dlbhc-mixup": ("dlbhc", {}, dict(epochs=2, optimizer="adam", lr=1e-3, mixup=0.4), 1),
    # The quarter turns of label rotations draw from the per-epoch seed too (4 classes x 4 turns).
    "proxy-anchor-rotations": ("proxy_anchor_hash", {"num_classes": 16},
                               dict(epochs=2, lr=1e-3, augment="shift_noise", label_rotations=True), 1),
    # Interrupted inside the second stage: its momentum buffers must come back from the checkpoint.
    "bilinear-stages-mid-stage": ("bilinear_hashnet", {"pooling": "compact", "sketch_dim": 32}, dict(stages=[
        Stage(1, train=("classifier",), lr=0.5, optimizer="sgd", loss="classification"),
        Stage(2, train=("backbone", "classifier"), lr=0.05, lr_end=0.005, lr_schedule="exponential",
              optimizer="sgd", loss="classification"),
        Stage(1, train=("hash",), lr=0.5, optimizer="sgd", loss="hashnet")]), 2),
    # Interrupted exactly at a stage boundary: the next stage starts a fresh optimiser.
    "bilinear-paper-boundary": ("bilinear_hashnet", {"pooling": "full"},
                                dict(stages=paper_schedule(3, fine_tune_lr=(0.01, 0.001))), 1),
}


@pytest.mark.parametrize("case", list(RESUME_CASES))
def test_resume_gives_the_weights_of_an_uninterrupted_run(case, digits_folder, tmp_path):
    method, extra, config_kwargs, stop = RESUME_CASES[case]
    images = list_images(digits_folder)
    base = dict(batch_size=32, seed=3, **config_kwargs)

    straight = _model(method, **extra)
    history = train_model(straight, images, TrainConfig(**base), progress=False)

    resumed = _model(method, **extra)
    config = TrainConfig(**base, checkpoint_dir=str(tmp_path / "ckpt"), resume=True)
    with pytest.raises(Interrupted):
        train_model(resumed, images, config, progress=False, on_epoch_end=_interrupt_after(stop))
    fresh = _model(method, **extra)  # a new process: the model is rebuilt, the checkpoint restores it
    resumed_history = train_model(fresh, images, config, progress=False)

    _assert_same_state(fresh, straight)
    assert resumed_history == history
    assert len(history) == sum(s.epochs for s in resolve_stages(straight, TrainConfig(**base)))


def test_frozen_parts_do_not_change_and_trainable_ones_do(digits_folder):
    model = _model("bilinear_hashnet", pooling="compact", sketch_dim=32)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    config = TrainConfig(batch_size=32, stages=[Stage(1, train=("classifier",), lr=0.5, optimizer="sgd",
                                                      loss="classification")])
    train_model(model, list_images(digits_folder), config, progress=False)
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    # Only the classifier moved; the trunk's weights and batch-norm statistics stayed put.
    assert changed == {"classifier.weight", "classifier.bias"}
    assert all(p.requires_grad for p in model.parameters())  # restored after training


def test_hashnet_beta_follows_the_stage_step(digits_folder):
    model = _model("hashnet", step_size=2, gamma=1.0)
    # 120 images, batch 32: 4 steps per epoch, 2 epochs -> last step 7 -> t = 6.
    history = train_model(model, list_images(digits_folder), TrainConfig(epochs=2, batch_size=32), progress=False)
    assert model.beta == pytest.approx(math.sqrt(1 + 6))
    assert [h["epoch"] for h in history] == [1, 2]
    assert all(set(h) >= {"similarity", "loss", "lr", "stage"} for h in history)


def test_mixup_trains_every_supervised_loss_and_needs_one(digits_folder):
    images = list_images(digits_folder)
    for method in ("dlbhc", "hashnet"):
        history = train_model(_model(method), images, TrainConfig(epochs=1, batch_size=32, mixup=1.0), progress=False)
        assert math.isfinite(history[0]["loss"])

    class NoLabels(HashNetLoss):
        requires_labels = False

    with pytest.raises(ValueError, match="mixup needs a supervised loss, NoLabels uses no labels"):
        train_model(_model("hashnet"), images, TrainConfig(epochs=1, mixup=1.0), loss=NoLabels(), progress=False)
    with pytest.raises(ValueError, match="mixup must be >= 0"):
        TrainConfig(mixup=-1.0)


def test_train_encoder_starts_from_another_encoders_trunk(digits_folder, tmp_path):
    kwargs = {k: v for k, v in TINY.items() if k != "backbone"}
    dlbhc = train_encoder(digits_folder, tmp_path / "dlbhc.pt", method="dlbhc", bits=16, encoder_kwargs=kwargs,
                          config=TrainConfig(epochs=1, batch_size=32), progress=False)
    # Zero epochs: the saved HashNet holds exactly the trunk it started from.
    hashnet = train_encoder(digits_folder, tmp_path / "hashnet.pt", method="hashnet", bits=16, encoder_kwargs=kwargs,
                            config=TrainConfig(epochs=0), init_trunk_from=dlbhc, progress=False)
    _assert_same_state(load_encoder(hashnet).backbone, load_encoder(dlbhc).backbone)
    with pytest.raises(ValueError, match="'itq' is fitted on fixed features; init_trunk_from is for trained methods"):
        train_encoder(digits_folder, tmp_path / "itq.pt", method="itq", backbone="pixels", bits=16,
                      init_trunk_from=dlbhc, progress=False)


def test_learning_rate_schedules():
    constant = Stage(1, lr=0.1, lr_end=0.001, lr_schedule="constant")
    assert learning_rate(constant, 5, 10) == 0.1
    cosine = Stage(1, lr=0.1, lr_end=0.001, lr_schedule="cosine")
    assert learning_rate(cosine, 0, 11) == pytest.approx(0.1)
    assert learning_rate(cosine, 5, 11) == pytest.approx((0.1 + 0.001) / 2)
    assert learning_rate(cosine, 10, 11) == pytest.approx(0.001)
    exponential = Stage(1, lr=1e-4, lr_end=1e-5, lr_schedule="exponential")
    assert learning_rate(exponential, 0, 11) == pytest.approx(1e-4)
    assert learning_rate(exponential, 5, 11) == pytest.approx(1e-4 * 0.1 ** 0.5)
    assert learning_rate(exponential, 10, 11) == pytest.approx(1e-5)


def test_resolve_stages_fills_defaults_and_uses_the_model_schedule():
    model = _model("bilinear_hashnet")
    stages = resolve_stages(model, TrainConfig(epochs=10))
    assert [s.name for s in stages] == ["last_layer", "fine_tune", "hash"]
    assert [s.epochs for s in stages] == [2, 4, 4]
    assert [(s.lr, s.weight_decay, s.optimizer, s.loss) for s in stages] == [
        (1.0, 5e-6, "sgd", "classification"), (1e-4, 5e-4, "sgd", "classification"), (1.0, 5e-6, "sgd", "hashnet")]
    assert stages[1].lr_end == 1e-5 and stages[1].train == ("backbone", "classifier")
    single = resolve_stages(_model("dlbhc"), TrainConfig(epochs=4, lr=0.01, lr_schedule="cosine"))
    assert len(single) == 1 and single[0].epochs == 4 and single[0].lr_end == pytest.approx(1e-4)
    # Stages given as dicts (e.g. read from JSON) are accepted.
    config = TrainConfig(stages=[{"epochs": 2, "train": ["hash"], "loss": "hashnet"}])
    assert resolve_stages(model, config)[0].train == ["hash"]
    with pytest.raises(ValueError, match="unknown lr_schedule 'linear'"):
        resolve_stages(model, TrainConfig(lr_schedule="linear"))


def test_unknown_part_is_a_clear_error(digits_folder):
    config = TrainConfig(stages=[Stage(1, train=("decoder",))])
    with pytest.raises(ValueError, match=r"unknown part\(s\) \['decoder'\]; model parts: backbone, hash"):
        train_model(_model("hashnet"), list_images(digits_folder), config, progress=False)


@pytest.mark.parametrize("method,extra", [("dlbhc", {}), ("hashnet", {}),
                                          ("bilinear_hashnet", {"pooling": "compact", "sketch_dim": 64})])
def test_train_encoder_then_encode_for_every_supervised_method(method, extra, digits_folder, tmp_path):
    config = TrainConfig(epochs=3, batch_size=32)
    path = train_encoder(digits_folder, tmp_path / "model.pt", method=method, backbone="small_cnn", bits=24,
                         config=config, encoder_kwargs={k: v for k, v in {**TINY, **extra}.items()
                                                        if k != "backbone"}, progress=False)
    model = load_encoder(path, method=method, bits=24)
    assert model.class_names == ["0", "1", "2", "3"]
    encode_folder(model, digits_folder, tmp_path / "shards", progress=False)
    data = ShardReader(tmp_path / "shards").read(("codes", "labels", "features"))
    assert data["codes"].shape == (120, 3) and data["features"].shape == (120, model.feature_dim)
    np.testing.assert_array_equal(np.bincount(data["labels"]), [30, 30, 30, 30])


def test_shift_augmentation_keeps_size_and_scale():
    from PIL import Image

    cfg = {"input_size": (3, 16, 16), "mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5)}
    image = Image.fromarray((np.arange(24 * 24, dtype=np.uint8).reshape(24, 24) % 251))
    plain = train_transform(cfg)(image.convert("RGB"))
    torch.manual_seed(0)
    shifted = [train_transform(cfg, "shift")(image.convert("RGB")) for _ in range(8)]
    assert all(x.shape == plain.shape == (3, 16, 16) for x in shifted)
    assert any(not torch.equal(x, plain) for x in shifted)  # moved by up to 2 px
    torch.manual_seed(0)
    again = [train_transform(cfg, "shift")(image.convert("RGB")) for _ in range(8)]
    assert all(torch.equal(a, b) for a, b in zip(shifted, again))  # seeded by torch's RNG
    with pytest.raises(ValueError, match="unknown augment 'rotate'"):
        train_transform(cfg, "rotate")


def test_pixel_noise_hits_the_given_share_of_images_with_the_given_sd():
    from encoders.training import PixelNoise

    grey = torch.full((1, 20, 20), 0.5)
    torch.manual_seed(0)
    noisy = [PixelNoise(0.1, p=0.5)(grey) for _ in range(200)]
    changed = [x for x in noisy if not torch.equal(x, grey)]
    assert 70 < len(changed) < 130
    residual = torch.stack(changed) - 0.5
    assert float(residual.std()) == pytest.approx(0.1, rel=0.05)
    assert float(PixelNoise(1.0)(grey).min()) >= 0.0 and float(PixelNoise(1.0)(grey).max()) <= 1.0

    cfg = {"input_size": (3, 16, 16), "mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5)}
    steps = train_transform(cfg, "shift_noise").transforms
    assert any(isinstance(s, PixelNoise) for s in steps)  # applied before Normalize, on [0, 1] pixels
    from torchvision import transforms

    assert isinstance(steps[-1], transforms.Normalize)


def _digit_batch(folder, n=64):
    from encoders.data import ImageFileDataset, image_transform

    dataset = ImageFileDataset(list_images(folder), image_transform(_model("dlbhc").input_cfg))
    items = [dataset[i] for i in range(0, len(dataset), len(dataset) // n)][:n]
    return torch.stack([item[0] for item in items]), torch.tensor([item[1] for item in items])


def test_label_rotations_turn_each_image_and_pair_its_class_with_the_turn(digits_folder):
    images, labels = _digit_batch(digits_folder)
    turned, pairs = rotate_batch(images, labels, torch.Generator().manual_seed(5))
    turns = pairs % 4
    np.testing.assert_array_equal(pairs // 4, labels)
    assert sorted(set(turns.tolist())) == [0, 1, 2, 3]  # 64 draws: every turn comes up
    for image, out, r in zip(images.numpy(), turned.numpy(), turns.tolist()):
        np.testing.assert_array_equal(out, np.rot90(image, r, axes=(1, 2)))  # counter-clockwise quarter turns
    # Seeded: the same generator seed turns the same images the same way; another seed does not.
    again, again_pairs = rotate_batch(images, labels, torch.Generator().manual_seed(5))
    assert torch.equal(again, turned) and torch.equal(again_pairs, pairs)
    assert not torch.equal(rotate_batch(images, labels, torch.Generator().manual_seed(6))[1], pairs)
    with pytest.raises(ValueError, match="label rotations need square images, got 16 x 12"):
        rotate_batch(images[..., :12], labels, torch.Generator())


def test_a_model_trained_on_rotation_classes_tells_the_turns_apart(digits_folder, tmp_path):
    # DLBHC's classifier sees (class, turn) pairs: after training it names the turn of an image.
    config = TrainConfig(epochs=30, batch_size=32, lr=1e-2, label_rotations=True)
    kwargs = dict(width=8, feature_dim=32, input_size=16)
    path = train_encoder(digits_folder, tmp_path / "rot.pt", method="dlbhc", backbone="small_cnn", bits=16,
                         config=config, encoder_kwargs=kwargs, progress=False)
    model = load_encoder(path)
    assert model.num_classes == 16 == model_classes(4, config) and model.class_names == ["0", "1", "2", "3"]
    assert torch.load(path, weights_only=True)["extra"]["train_config"]["label_rotations"] is True
    images, labels = _digit_batch(digits_folder)
    turned, pairs = rotate_batch(images, labels, torch.Generator().manual_seed(1))
    with torch.no_grad():
        predicted = model(turned).logits.argmax(dim=1)
    turn_accuracy = float((predicted % 4 == pairs % 4).float().mean())
    assert turn_accuracy > 0.7, turn_accuracy  # chance: 0.25


def test_label_rotations_are_refused_where_they_cannot_apply(digits_folder, tmp_path):
    images = list_images(digits_folder)
    with pytest.raises(ValueError, match="label_rotations cannot be combined with mixup"):
        TrainConfig(label_rotations=True, mixup=1.0)
    config = TrainConfig(epochs=1, batch_size=32, label_rotations=True)
    with pytest.raises(ValueError, match=r"must be built with num_classes=16 \(4 classes x 4 rotations.*got 4"):
        train_model(_model("proxy_anchor_hash"), images, config, progress=False)
    wide = _model("dlbhc", num_classes=16)
    wide.backbone.input_cfg = {**wide.backbone.input_cfg, "input_size": (3, 16, 12)}
    with pytest.raises(ValueError, match="label rotations need square inputs, dlbhc takes 16 x 12"):
        train_model(wide, images, config, progress=False)

    class NoLabels(HashNetLoss):
        requires_labels = False

    with pytest.raises(ValueError, match="label_rotations needs a supervised loss, NoLabels uses no labels"):
        train_model(_model("hashnet", num_classes=16), images, config, loss=NoLabels(), progress=False)
    with pytest.raises(ValueError, match="'itq' is fitted on fixed features without labels; label rotations"):
        train_encoder(digits_folder, tmp_path / "itq.pt", method="itq", backbone="pixels", bits=16, config=config,
                      progress=False)


def test_train_command_rotation_classes(digits_folder, tmp_path):
    from click.testing import CliRunner

    from hashapp.cli import main

    args = ["train", str(digits_folder), "--method", "proxy_anchor_hash", "--bits", "16", "--epochs", "1",
            "--batch-size", "32", "--rotation-classes", "--out", str(tmp_path / "pa.pt")]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    saved = torch.load(tmp_path / "pa.pt", weights_only=True)
    assert saved["extra"]["train_config"]["label_rotations"] is True
    assert saved["state_dict"]["metric_loss.proxies"].shape == (16, 16)  # 4 classes x 4 turns, 16 bits
    refused = CliRunner().invoke(main, [*args, "--mixup", "1"])
    assert refused.exit_code == 1 and refused.output.count("\n") == 1
    assert refused.output.startswith("Error: label_rotations cannot be combined with mixup")
