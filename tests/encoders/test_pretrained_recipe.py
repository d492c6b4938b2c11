"""The training defaults that depend on the backbone, and the switches behind them."""

import numpy as np
import pytest
import torch

from encoders import create_backbone, create_encoder
from encoders.data import list_images
from encoders.losses import CODE_TERMS, add_code_terms, bit_correlation, code_terms
from encoders.dlbhc import DLBHC
from encoders.hashnet import HashNet
from encoders.training import (DEFAULT_EPOCHS, DEFAULT_LR, PRETRAINED_RECIPE, SCRATCH_RECIPE, TrainConfig,
                               epochs_for_budget, resolve_stages, resolve_train_config, train_model)
from hashapp.pipeline import train_encoder, training_code_health

#: EfficientNet-Lite0 with its ImageNet weights, at 32 px so that a CPU step is quick.
LITE = dict(backbone="efficientnet_lite0", input_size=32)


def _lite(method="dlbhc", pretrained=True):
    torch.manual_seed(0)
    return create_encoder(method, bits=16, num_classes=4, pretrained=pretrained, **LITE)


def _snapshot(modules):
    return [p.detach().clone() for m in modules for p in m.parameters()]


def _changed(before, modules):
    return [not torch.equal(a, p) for a, p in zip(before, (p for m in modules for p in m.parameters()))]


class CommonRecipeHashNet(HashNet):
    """HashNet without its own changes to the pretrained recipe."""

    pretrained_recipe = {}


def _common_recipe_model():
    return CommonRecipeHashNet(create_backbone("efficientnet_lite0", pretrained=True, input_size=32), 16)


def test_pretrained_backbone_gets_the_pretrained_recipe():
    config = resolve_train_config(_common_recipe_model())
    assert (config.lr, config.backbone_lr_scale, config.warmup_epochs, config.freeze_early) == (
        PRETRAINED_RECIPE["lr"], PRETRAINED_RECIPE["backbone_lr_scale"], PRETRAINED_RECIPE["warmup_epochs"], True)
    assert config.batch_size == 32  # EfficientNet-Lite0's default batch
    scratch = resolve_train_config(_lite(pretrained=False))
    assert (scratch.lr, scratch.backbone_lr_scale, scratch.freeze_early, scratch.batch_size) == (
        DEFAULT_LR, 1.0, False, 32)
    small = resolve_train_config(create_encoder("dlbhc", backbone="small_cnn", bits=16, num_classes=4))
    assert (small.backbone_lr_scale, small.freeze_early, small.batch_size) == (1.0, False, 64)


def test_a_method_changes_the_pretrained_recipe():
    # At the common head rate, DLBHC's and HashNet's heads pull each class onto a few codes.
    for method, cls in (("dlbhc", DLBHC), ("hashnet", HashNet)):
        config = resolve_train_config(_lite(method))
        assert cls.pretrained_recipe and config.lr == cls.pretrained_recipe["lr"] != PRETRAINED_RECIPE["lr"]
        assert config.backbone_lr_scale == {**PRETRAINED_RECIPE, **cls.pretrained_recipe}["backbone_lr_scale"]
    common = resolve_train_config(_common_recipe_model())
    assert (common.lr, common.backbone_lr_scale) == (PRETRAINED_RECIPE["lr"], PRETRAINED_RECIPE["backbone_lr_scale"])
    assert resolve_train_config(_lite(pretrained=False)).lr == DEFAULT_LR


def test_explicit_values_win_and_staged_models_keep_their_schedule():
    config = resolve_train_config(_lite(), TrainConfig(lr=5e-4, batch_size=8, backbone_lr_scale=0.5, warmup_epochs=2,
                                                       freeze_early=False))
    assert (config.lr, config.batch_size, config.backbone_lr_scale, config.warmup_epochs, config.freeze_early) == (
        5e-4, 8, 0.5, 2, False)
    bilinear = create_encoder("bilinear_hashnet", bits=16, num_classes=4, **LITE)
    config = resolve_train_config(bilinear)
    assert (config.lr, config.backbone_lr_scale, config.warmup_epochs, config.freeze_early) == (
        DEFAULT_LR, 1.0, 0, True)


def test_pretrained_default_is_a_step_budget():
    budget = PRETRAINED_RECIPE["step_budget"]
    for images, batch in ((640, 32), (320, 32), (64, 32), (10_000, 32)):
        config = resolve_train_config(_lite("hashnet"), num_images=images)
        assert (config.step_budget, config.epochs) == (budget, epochs_for_budget(budget, images, batch))
    assert [epochs_for_budget(20, n, 32) for n in (640, 320, 64, 10_000)] == [1, 2, DEFAULT_EPOCHS, 1]
    assert epochs_for_budget(20, 200, 32) == 3  # 7 steps an epoch: 21 steps is closer to 20 than 14
    # The number of images is needed first: until then epochs stay open, and no stage runs without them.
    unresolved = resolve_train_config(_lite("hashnet"))
    assert unresolved.epochs is None
    with pytest.raises(ValueError, match="num_images"):
        resolve_stages(_lite("hashnet"), unresolved)
    # Trained from scratch: no budget, the usual 10 epochs.
    scratch = resolve_train_config(_lite(pretrained=False), num_images=640)
    assert (scratch.step_budget, scratch.epochs) == (None, DEFAULT_EPOCHS)
    # An explicit epoch count wins and records no budget; an explicit budget replaces the default.
    explicit = resolve_train_config(_lite("hashnet"), TrainConfig(epochs=3), num_images=640)
    assert (explicit.step_budget, explicit.epochs) == (None, 3)
    assert resolve_train_config(_lite("hashnet"), TrainConfig(step_budget=60), num_images=640).epochs == 3
    # Bilinear-HashNet's three stages split the epochs the budget gives (at least one each).
    bilinear = create_encoder("bilinear_hashnet", bits=16, num_classes=4, **LITE)
    stages = resolve_stages(bilinear, resolve_train_config(bilinear, num_images=640))
    assert [s.epochs for s in stages] == [1, 1, 1]


def test_config_rejects_negative_values():
    with pytest.raises(ValueError, match="backbone_lr_scale must be >= 0"):
        TrainConfig(backbone_lr_scale=-1)
    with pytest.raises(ValueError, match="lr must be >= 0"):
        TrainConfig(lr=-1e-3)
    with pytest.raises(ValueError, match="batch_size must be >= 2"):
        TrainConfig(batch_size=1)
    with pytest.raises(ValueError, match="step_budget must be >= 1"):
        TrainConfig(step_budget=0)


@pytest.fixture(scope="module")
def images(digits_folder):
    return list_images(digits_folder)


def test_frozen_early_layers_and_zero_backbone_rate(images):
    model = _lite()
    early = model.backbone.early_layers()
    late = [b for b in model.backbone._blocks[6:]]
    before_early, before_late, before_head = _snapshot(early), _snapshot(late), _snapshot([model.latent])
    train_model(model, images, TrainConfig(epochs=1, batch_size=60, backbone_lr_scale=0.0), progress=False)
    assert not any(_changed(before_early, early)) and not any(_changed(before_late, late))
    assert all(_changed(before_head, [model.latent]))
    # Early layers stay in eval mode while frozen: their batch-norm statistics are the ImageNet ones.
    assert torch.equal(early[1].running_mean, _lite().backbone.early_layers()[1].running_mean)

    model = _lite()
    before_early, before_late = _snapshot(early := model.backbone.early_layers()), _snapshot(model.backbone._blocks[6:])
    train_model(model, images, TrainConfig(epochs=1, batch_size=60, freeze_early=False), progress=False)
    assert any(_changed(before_early, early)) and any(_changed(before_late, model.backbone._blocks[6:]))


def _late_batch_norms(model):
    return [m for b in model.backbone._blocks[6:] for m in b.modules() if isinstance(m, torch.nn.BatchNorm2d)]


@pytest.mark.parametrize("freeze_bn", [True, False])
def test_freeze_bn_keeps_the_stored_statistics_and_trains_scale_and_shift(images, freeze_bn):
    model = _lite()
    norms = _late_batch_norms(model)
    stats = [(m.running_mean.clone(), m.running_var.clone()) for m in norms]
    affine = _snapshot(norms)
    train_model(model, images, TrainConfig(epochs=1, batch_size=60, freeze_bn=freeze_bn), progress=False)
    kept = [torch.equal(mean, m.running_mean) and torch.equal(var, m.running_var) for (mean, var), m in zip(stats, norms)]
    assert all(kept) if freeze_bn else not any(kept)
    assert all(_changed(affine, norms))


def test_hashnet_and_dlbhc_keep_the_batch_norm_statistics_by_default(tmp_path, digits_folder):
    assert PRETRAINED_RECIPE["freeze_bn"] is False
    # Their recipes change it (README "Real photos").
    assert resolve_train_config(_lite("hashnet")).freeze_bn is True
    assert resolve_train_config(_lite("dlbhc")).freeze_bn is True
    assert resolve_train_config(_common_recipe_model()).freeze_bn is False
    assert resolve_train_config(_lite("hashnet", pretrained=False)).freeze_bn is False
    assert resolve_train_config(_lite("hashnet"), TrainConfig(freeze_bn=False)).freeze_bn is False
    path = train_encoder(digits_folder, tmp_path / "h.pt", method="hashnet", backbone="efficientnet_lite0", bits=16,
                         config=TrainConfig(epochs=1, lr=0.0, device="cpu"), encoder_kwargs={"input_size": 32},
                         progress=False)
    assert torch.load(path, weights_only=True)["extra"]["train_config"]["freeze_bn"] is True
    from click.testing import CliRunner

    from hashapp.cli import main

    # The flag wins over the recipe (a backbone trained from scratch defaults to False).
    out = tmp_path / "c.pt"
    result = CliRunner().invoke(main, ["train", str(digits_folder), "--out", str(out), "--method", "hashnet",
                                       "--bits", "16", "--epochs", "1", "--lr", "0", "--freeze-bn"])
    assert result.exit_code == 0, result.output
    assert torch.load(out, weights_only=True)["extra"]["train_config"]["freeze_bn"] is True


def test_backbone_rate_is_scaled(images):
    seen = []

    class Spy(torch.optim.Adam):
        def step(self, closure=None):
            seen.append(sorted((g["lr"], len(g["params"])) for g in self.param_groups))
            return super().step(closure)

    model = _lite()
    original, torch.optim.Adam = torch.optim.Adam, Spy
    try:
        train_model(model, images, TrainConfig(epochs=1, batch_size=60, lr=1e-3, backbone_lr_scale=0.1),
                    progress=False)
    finally:
        torch.optim.Adam = original
    (backbone_lr, _), (head_lr, head_params) = seen[0]
    assert backbone_lr == pytest.approx(1e-4) and head_lr == pytest.approx(1e-3)
    assert head_params == 4  # DLBHC's latent and classifier: weight and bias each


def test_warmup_trains_only_the_head_first(images):
    model = _lite()
    backbone = [model.backbone]
    snapshots = {}
    before = _snapshot(backbone)
    history = train_model(model, images, TrainConfig(epochs=2, batch_size=60, warmup_epochs=1), progress=False,
                          on_epoch_end=lambda epoch, _: snapshots.setdefault(epoch, _snapshot(backbone)))
    assert [h["stage"] for h in history] == ["warmup", "train"]
    assert all(torch.equal(a, b) for a, b in zip(before, snapshots[1]))
    assert any(not torch.equal(a, b) for a, b in zip(before, snapshots[2]))
    with pytest.raises(ValueError, match="warmup_epochs .* must be fewer than epochs"):
        train_model(_lite(), images, TrainConfig(epochs=1, warmup_epochs=1), progress=False)


def test_code_terms_hand_worked():
    b = torch.tensor([[1.0, -1.0], [1.0, 1.0], [0.5, 0.0]])
    terms = code_terms(b, quantization=2.0, bit_balance=3.0)
    # |b| - 1: 0, 0, 0, 0, -0.5, -1 -> squares sum 1.25 over 6.
    assert terms["quantization"].item() == pytest.approx(2.0 * 1.25 / 6)
    # Bit means 2.5 / 3 and 0: mean of squares (25 / 36) / 2.
    assert terms["bit_balance"].item() == pytest.approx(3.0 * 25 / 72)
    assert code_terms(b) == {}
    total = add_code_terms({"loss": torch.tensor(1.0), "x": torch.tensor(1.0)}, b, bit_balance=3.0)
    assert total["loss"].item() == pytest.approx(1 + 3.0 * 25 / 72) and "quantization" not in total


def test_decorrelation_term_against_numpy():
    generator = torch.Generator().manual_seed(0)
    b = torch.tanh(torch.randn(40, 6, generator=generator))
    b[:, 3] = -b[:, 1]  # bit 3 repeats bit 1 (inverted): correlation -1
    b[:, 5] = 0.25  # a constant bit: correlation 0 with every other bit, not NaN
    b.requires_grad_(True)
    term = code_terms(b, decorrelation=2.0)["decorrelation"]
    corr = np.corrcoef(b.detach().double().numpy()[:, :5].T)
    off = ~np.eye(5, dtype=bool)
    # numpy's sum of squared off-diagonal correlations of the five varying bits, over the 6 x 5 pairs of all six.
    assert term.item() == pytest.approx(2.0 * (corr[off] ** 2).sum() / 30, rel=1e-5)
    assert bit_correlation(b)[1, 3].item() == pytest.approx(-1.0, abs=1e-5)
    term.backward()
    assert torch.isfinite(b.grad).all() and b.grad[:, 5].abs().max() == 0


def test_decorrelation_term_parts_repeated_bits():
    # Bits 8-15 start as copies of bits 0-7 plus a little noise; descending the term alone parts them.
    generator = torch.Generator().manual_seed(1)
    base = torch.randn(64, 8, generator=generator)
    x = torch.cat([base, base + 0.1 * torch.randn(64, 8, generator=generator)], dim=1).requires_grad_(True)
    optimizer = torch.optim.Adam([x], lr=0.05)
    with torch.no_grad():
        assert float(bit_correlation(torch.tanh(x)).diagonal(offset=8).min()) > 0.9
    for _ in range(100):
        optimizer.zero_grad()
        code_terms(torch.tanh(x), decorrelation=1.0)["decorrelation"].backward()
        optimizer.step()
    with torch.no_grad():
        assert float(bit_correlation(torch.tanh(x)).diagonal(offset=8).abs().max()) < 0.3


def test_bit_balance_term_is_logged_and_spreads_the_bits(images):
    model = create_encoder("dlbhc", backbone="small_cnn", width=4, feature_dim=12, input_size=16, bits=16,
                           num_classes=4)
    history = train_model(model, images, TrainConfig(epochs=1, batch_size=60, bit_balance=1.0, quantization=0.5),
                          progress=False)
    assert {"classification", "bit_balance", "quantization", "loss"} <= set(history[0])


def test_dlbhc_balances_its_bits_by_default_on_a_pretrained_backbone(tmp_path, digits_folder):
    weight = DLBHC.pretrained_recipe["bit_balance"]
    assert weight > 0 and PRETRAINED_RECIPE["bit_balance"] == PRETRAINED_RECIPE["quantization"] == 0.0
    assert resolve_train_config(_lite("dlbhc")).bit_balance == weight
    for others in (_lite("hashnet"), _lite("dlbhc", pretrained=False), _common_recipe_model()):
        assert (resolve_train_config(others).bit_balance, resolve_train_config(others).quantization) == (0.0, 0.0)
    assert resolve_train_config(_lite("dlbhc"), TrainConfig(bit_balance=0.0)).bit_balance == 0.0
    # A real (tiny) training run at the defaults adds the term and the model file records its weight.
    path = train_encoder(digits_folder, tmp_path / "d.pt", method="dlbhc", backbone="efficientnet_lite0", bits=16,
                         config=TrainConfig(epochs=1, device="cpu"), encoder_kwargs={"input_size": 32},
                         progress=False)
    extra = torch.load(path, weights_only=True)["extra"]
    assert extra["train_config"]["bit_balance"] == weight and extra["history"][0]["bit_balance"] > 0
    from click.testing import CliRunner

    from hashapp.cli import main

    # Through the CLI (small_cnn, trained from scratch): no term by default, each flag adds its own.
    for flag in (None, *CODE_TERMS):
        out = tmp_path / f"c{flag}.pt"
        flags = [] if flag is None else ["--" + flag.replace("_", "-"), "0.5"]
        result = CliRunner().invoke(main, ["train", str(digits_folder), "--out", str(out), "--method", "dlbhc",
                                           "--bits", "16", "--epochs", "1", *flags])
        assert result.exit_code == 0, result.output
        saved = torch.load(out, weights_only=True)["extra"]
        for name in CODE_TERMS:
            assert saved["train_config"][name] == (0.5 if name == flag else 0.0)
            assert (name in saved["history"][0]) == (name == flag)


def test_decorrelation_is_off_for_every_model_unless_asked():
    assert PRETRAINED_RECIPE["decorrelation"] == SCRATCH_RECIPE["decorrelation"] == 0.0
    for model in (_lite("dlbhc"), _lite("hashnet"), _lite("dlbhc", pretrained=False), _common_recipe_model()):
        assert resolve_train_config(model).decorrelation == 0.0
        assert resolve_train_config(model, TrainConfig(decorrelation=1.0)).decorrelation == 1.0
    with pytest.raises(ValueError, match="decorrelation must be >= 0"):
        TrainConfig(decorrelation=-1.0)


def test_collapsed_codes_warn(images):
    model = create_encoder("dlbhc", backbone="small_cnn", width=4, feature_dim=12, input_size=16, bits=16,
                           num_classes=4)
    with torch.no_grad():
        model.latent.weight.zero_()
        model.latent.bias.fill_(-5.0)  # every bit off for every image
    lines = []
    with pytest.warns(UserWarning) as caught:
        health = training_code_health(model, images, TrainConfig(batch_size=64, device="cpu"), echo=lines.append)
    messages = [str(w.message) for w in caught]
    assert any("only 1 distinct codes for 120 images" in m for m in messages)
    assert any("16 of 16 bits are near-constant" in m and "--bit-balance" in m for m in messages)
    assert health.distinct == 1 and "1/120 distinct codes" in lines[0]


def test_model_file_records_the_resolved_recipe_and_code_health(tmp_path, digits_folder):
    path = train_encoder(digits_folder, tmp_path / "m.pt", method="dlbhc", backbone="efficientnet_lite0", bits=16,
                         config=TrainConfig(epochs=1, device="cpu"), encoder_kwargs={"input_size": 32},
                         progress=False)
    extra = torch.load(path, weights_only=True)["extra"]
    config = extra["train_config"]
    recipe = {**PRETRAINED_RECIPE, **DLBHC.pretrained_recipe}
    assert (config["lr"], config["batch_size"], config["backbone_lr_scale"], config["freeze_early"]) == (
        recipe["lr"], 32, recipe["backbone_lr_scale"], True)
    assert extra["code_health"]["images"] == 120 and len(extra["code_health"]["bit_balance"]) == 16
    assert 0 < extra["code_health"]["mean_hamming"] <= 16


def test_training_follows_the_step_budget_and_records_it(tmp_path, digits_folder):
    # 120 images in batches of 8: 15 steps an epoch, so the default budget of 20 steps is 1 epoch.
    kwargs = dict(method="hashnet", backbone="efficientnet_lite0", bits=16, encoder_kwargs={"input_size": 32},
                  progress=False)
    path = train_encoder(digits_folder, tmp_path / "m.pt", config=TrainConfig(batch_size=8, device="cpu"), **kwargs)
    extra = torch.load(path, weights_only=True)["extra"]
    config = extra["train_config"]
    assert (config["step_budget"], config["epochs"], len(extra["history"])) == (PRETRAINED_RECIPE["step_budget"], 1, 1)
    # An explicit number of epochs overrides it, and the file records no budget.
    path = train_encoder(digits_folder, tmp_path / "e.pt", config=TrainConfig(batch_size=8, epochs=2, device="cpu"),
                         **kwargs)
    extra = torch.load(path, weights_only=True)["extra"]
    config = extra["train_config"]
    assert (config["step_budget"], config["epochs"], len(extra["history"])) == (None, 2, 2)


def test_bilinear_hash_layer_starts_from_sign_random_projections():
    # Its descriptor has unit norm: nn.Linear's default init would project it to sd ~0.006, no larger than the bias.
    torch.manual_seed(0)
    model = create_encoder("bilinear_hashnet", bits=64, num_classes=4, **LITE).eval()
    with torch.no_grad():
        z = model.hash_layer.fc(model.descriptor(model.forward_features(torch.rand(8, 3, 32, 32))))
    assert 0.5 < float(z.std()) < 2 and not model.hash_layer.fc.bias.any()
