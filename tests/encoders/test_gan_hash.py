"""GAN hashing: the KNN similarity matrix against hand-worked and brute-force numpy
constructions, the named loss terms on hand-computed cases, training steps, save / load,
GAN > LSH, and the label-free image-folder route through the pipeline and the CLI."""

import numpy as np
import pytest

import torch
from click.testing import CliRunner
from torch import nn

from encoders import create_encoder, load_encoder, save_encoder
from encoders.encode import encode_folder
from encoders.feature_hashing import FeatureHashModel, is_feature_method
from encoders.gan_hash import (
    GANHash,
    critic_terms,
    generator_terms,
    gradient_penalty,
    neighbourhood_loss,
    perceptual_loss,
    quantization_loss,
)
from encoders.similarity import cosine_knn, knn_similarity, similarity_block
from encoders.training import TrainConfig
from hashindex import ShardReader
from hashindex.datasets import load_digits_images
from hashindex.metrics import mean_average_precision
from hashapp.pipeline import train_encoder

#: Small settings that train in seconds on a CPU.
FAST = dict(hidden=128, batch_size=64, epochs=10)


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """These MLPs are too small to gain from threads, and on a busy machine OpenMP threads
    spinning on each tiny matmul make the tests many times slower."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def brute_force_similarity(x: np.ndarray, k1: int, k2: int) -> np.ndarray:
    """Dense M in {-1, +1} straight from the definition, with a dense cosine matrix."""
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    cos = unit @ unit.T
    np.fill_diagonal(cos, -np.inf)
    order = np.argsort(-cos, axis=1, kind="stable")
    n = len(x)
    m = -np.ones((n, n))
    for i in range(n):
        m[i, i] = 1
        m[i, order[i, :k1]] = 1
        for j in order[i, :k2]:
            m[i, order[j, :k1]] = 1
    return m


def test_similarity_matrix_on_a_hand_worked_case():
    # Unit vectors at 0, 10, 35, 65, 110 and 170 degrees (no ties in angular distance).
    # Nearest neighbour (k1 = 1): 0->1, 1->0, 2->1, 3->2, 4->3, 5->4.
    # Two nearest (k2 = 2):       0->{1,2}, 1->{0,2}, 2->{1,3}, 3->{2,4}, 4->{3,5}, 5->{4,3}.
    # Row i = {i} + NN1(i) + NN1 of each of its two nearest.
    angles = np.deg2rad([0, 10, 35, 65, 110, 170])
    x = np.column_stack([np.cos(angles), np.sin(angles)])
    x[3] *= 5.0  # cosine similarity ignores the length
    expected_rows = [{0, 1}, {0, 1}, {0, 1, 2}, {1, 2, 3}, {2, 3, 4}, {2, 3, 4, 5}]
    expected = -np.ones((6, 6))
    for i, row in enumerate(expected_rows):
        expected[i, sorted(row)] = 1
    similar = knn_similarity(x, k1=1, k2=2)
    np.testing.assert_array_equal(np.where(similar.toarray(), 1.0, -1.0), expected)
    np.testing.assert_array_equal(brute_force_similarity(x, 1, 2), expected)
    block = similarity_block(similar, [5, 2, 0])
    np.testing.assert_array_equal(block.numpy(), expected[np.ix_([5, 2, 0], [5, 2, 0])])


@pytest.mark.parametrize("k1,k2", [(3, 4), (5, 2), (1, 0)])
def test_similarity_matrix_matches_brute_force(k1, k2, rng):
    x = rng.normal(size=(60, 8))
    similar = knn_similarity(x, k1=k1, k2=k2)
    np.testing.assert_array_equal(np.where(similar.toarray(), 1.0, -1.0), brute_force_similarity(x, k1, k2))
    # Stored sparse: only the +1 entries, at most 1 + k1 + k1 * k2 per row.
    assert similar.nnz == (brute_force_similarity(x, k1, k2) > 0).sum()
    assert np.diff(similar.indptr).max() <= 1 + k1 + k1 * k2


def test_cosine_knn_excludes_self_and_orders_by_similarity(rng):
    x = rng.normal(size=(40, 5))
    knn = cosine_knn(x, 6)
    assert knn.shape == (40, 6) and not (knn == np.arange(40)[:, None]).any()
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    sims = np.take_along_axis(unit @ unit.T, knn, axis=1)
    assert np.all(np.diff(sims, axis=1) <= 1e-6)


def test_similarity_rejects_bad_k():
    with pytest.raises(ValueError, match="k1 >= 1"):
        knn_similarity(np.eye(4), k1=0, k2=1)


def test_neighbourhood_and_quantization_losses_by_hand():
    h = torch.tensor([[1.0, 1.0], [1.0, -1.0]])
    m = torch.tensor([[1.0, -1.0], [-1.0, 1.0]])
    # h h^T / 2 = I; (I - M)^2 = [[0, 1], [1, 0]]; 1/2 * mean = 1/2 * 2/4.
    assert neighbourhood_loss(h, m).item() == pytest.approx(0.25)
    # 1/2 * ((0.5 - 1)^2 + (-1 + 1)^2) / 2 bits.
    assert quantization_loss(torch.tensor([[0.5, -1.0]])).item() == pytest.approx(0.0625)
    assert quantization_loss(torch.tensor([[1.0, -1.0]])).item() == 0.0
    same = torch.tensor([[1.0, 2.0]])
    assert perceptual_loss(same, 3 * same).item() == pytest.approx(0.0, abs=1e-6)
    assert perceptual_loss(torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]])).item() == pytest.approx(1.0)


class _LinearCritic(nn.Module):
    def __init__(self, w):
        super().__init__()
        self.w = nn.Parameter(torch.tensor(w))

    def forward(self, y):
        return y @ self.w


def test_gradient_penalty_of_a_linear_critic():
    # A linear critic's gradient is w everywhere: the penalty is (||w|| - 1)^2 = (5 - 1)^2.
    critic = _LinearCritic([3.0, 4.0])
    real, fake = torch.randn(8, 2), torch.randn(8, 2)
    assert gradient_penalty(critic, real, fake).item() == pytest.approx(16.0, rel=1e-5)


def test_loss_terms_are_named_and_combine_with_the_weights():
    torch.manual_seed(0)
    model = GANHash(bits=16, input_dim=10, target_dim=12, hidden=8, lambda_content=0.3, lambda_adversarial=0.05,
                    quantization_weight=2.0)
    h = torch.tanh(model.hash_net(torch.randn(6, 10)))
    fake = model.generator(h, torch.ones(6, model.settings["noise_bits"]))
    real = torch.randn(6, 12)
    m = torch.where(torch.rand(6, 6) > 0.5, 1.0, -1.0)
    terms = generator_terms(h, m, fake, real, model.critic)
    assert set(terms) == {"neighbourhood", "pixel", "perceptual", "quantization", "adversarial"}
    assert terms["pixel"].item() == pytest.approx(((fake - real) ** 2).mean().item())
    assert terms["adversarial"].item() == pytest.approx(-model.critic(fake).mean().item())
    expected = terms["neighbourhood"] + 0.3 * (terms["pixel"] + terms["perceptual"] + 2.0 * terms["quantization"]) \
        + 0.05 * terms["adversarial"]
    assert model.total_loss(terms).item() == pytest.approx(expected.item())
    c_terms = critic_terms(model.critic, real, fake.detach())
    assert set(c_terms) == {"wasserstein", "gradient_penalty"}
    assert c_terms["wasserstein"].item() == pytest.approx(
        (model.critic(fake).mean() - model.critic(real).mean()).item(), rel=1e-5)


def test_training_steps_change_all_three_networks(rng):
    x = rng.normal(size=(64, 10)).astype(np.float32)
    model = GANHash(bits=16, seed=0, input_dim=10, target_dim=10, hidden=16, batch_size=16, epochs=2)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.fit(x)
    after = model.state_dict()
    for prefix in ("hash_net.", "generator.", "critic."):
        changed = [k for k in before if k.startswith(prefix) and not torch.equal(before[k], after[k])]
        assert changed, prefix
    assert len(model.history) == 2
    names = {"neighbourhood", "pixel", "perceptual", "quantization", "adversarial", "loss",
             "critic_wasserstein", "critic_gradient_penalty"}
    assert names <= set(model.history[-1]) and all(np.isfinite(v) for v in model.history[-1].values())
    assert model.epsilon.item() > 1.0  # the smooth sign sharpened during training


@pytest.fixture(scope="module")
def digits_split():
    """600 sklearn digits at 16x16 (256-d pixels): every 5th a query, the rest the database."""
    images, labels = load_digits_images(size=16)
    x = images[:600].reshape(600, -1).astype(np.float32) / 255
    q = np.arange(0, 600, 5)
    return x, labels[:600], q, np.setdiff1d(np.arange(600), q)


def test_fit_is_deterministic_and_survives_save_load(digits_split, tmp_path):
    x, _, _, db = digits_split
    a = create_encoder("gan_hash", bits=16, seed=1, **dict(FAST, epochs=2)).fit(x[db])
    b = create_encoder("gan_hash", bits=16, seed=1, **dict(FAST, epochs=2)).fit(x[db])
    np.testing.assert_array_equal(a.encode(x), b.encode(x))
    loaded = load_encoder(save_encoder(a, tmp_path / "gan.pt"), method="gan_hash", bits=16)
    assert isinstance(loaded, GANHash) and loaded.config["input_dim"] == 256
    np.testing.assert_array_equal(loaded.encode(x), a.encode(x))
    c = create_encoder("gan_hash", bits=16, seed=2, **dict(FAST, epochs=2)).fit(x[db])
    assert not np.array_equal(c.encode(x), a.encode(x))


def test_gan_beats_lsh_on_digits(digits_split):
    x, y, q, db = digits_split
    scores = {}
    for method, kwargs in (("gan_hash", FAST), ("lsh", {})):
        hasher = create_encoder(method, bits=32, seed=0, **kwargs).fit(x[db])
        scores[method] = mean_average_precision(hasher.encode(x[q]), y[q], hasher.encode(x[db]), y[db], 32, k=None)
    assert scores["gan_hash"] > scores["lsh"] + 0.05, scores


def test_errors_name_the_problem(rng):
    model = create_encoder("gan_hash", bits=16, **FAST)
    assert is_feature_method("gan_hash")
    with pytest.raises(RuntimeError, match="fit"):
        model.encode(np.zeros((2, 5)))
    with pytest.raises(ValueError, match="differ in length"):
        model.fit(rng.normal(size=(10, 5)), rng.normal(size=(9, 5)))
    with pytest.raises(ValueError, match="batch_size"):
        create_encoder("gan_hash", bits=16, batch_size=1)


@pytest.fixture(scope="module")
def flat_folder(tmp_path_factory, write_unlabelled_digits):
    """80 digit images directly in one folder: no class sub-folders, no labels."""
    return write_unlabelled_digits(tmp_path_factory.mktemp("unlabelled") / "images", 80)


def test_train_encoder_on_an_unlabelled_folder(flat_folder, tmp_path):
    path = train_encoder(flat_folder, tmp_path / "gan.pt", method="gan_hash", backbone="pixels", bits=16,
                         config=TrainConfig(epochs=2, batch_size=32), encoder_kwargs={"hidden": 32, "recon_size": 8},
                         progress=False)
    model = load_encoder(path)
    assert isinstance(model, FeatureHashModel) and model.method == "gan_hash"
    # Fitted on the 784 pixel features; the generator reconstructs 3 x 8 x 8 downsampled images.
    assert model.config["input_dim"] == 784 and model.config["target_dim"] == 3 * 8 * 8
    assert model.config["epochs"] == 2
    history = torch.load(path, weights_only=True)["extra"]["history"]
    assert len(history) == 2
    report = encode_folder(model, flat_folder, tmp_path / "shards", progress=False)
    stored = ShardReader(tmp_path / "shards").read(("codes", "labels"))
    assert report.encoded == 80 and stored["codes"].shape == (80, 2) and np.all(stored["labels"] == -1)


def test_cli_train_gan_hash_without_labels(flat_folder, tmp_path):
    from hashapp.cli import main

    out = tmp_path / "gan.pt"
    result = CliRunner().invoke(main, ["train", str(flat_folder), "--method", "gan_hash", "--bits", "32",
                                       "--backbone", "pixels", "--epochs", "1", "--out", str(out)])
    assert result.exit_code == 0, result.output
    model = load_encoder(out, method="gan_hash", bits=32)
    codes, features = model.encode(torch.rand(3, 3, 28, 28))
    assert codes.shape == (3, 4) and features.shape == (3, 784)
