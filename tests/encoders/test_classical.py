"""The six classical unsupervised baselines: shapes, seeds, save / load, balanced bits,
what each algorithm promises (checked against independent computations), ITQ > LSH,
and the image-folder route through the pipeline and the CLI with no labels."""

import numpy as np
import pytest

import torch
from click.testing import CliRunner

from encoders import create_encoder, list_encoders, load_encoder, save_encoder
from encoders.classical import CLASSICAL_METHODS
from encoders.encode import encode_folder
from encoders.feature_hashing import FeatureHashModel, is_feature_method
from encoders.training import TrainConfig
from hashindex import HashIndex, ShardReader
from hashindex.codes import unpack_codes
from hashindex.datasets import load_digits_images
from hashindex.metrics import mean_average_precision
from hashapp.pipeline import train_encoder

#: Methods meant to split the data evenly with every bit. SH is not: its bits cut the PCA
#: bounding box, so a direction with a long tail gives a bit that few points set.
BALANCING = ("lsh", "pcah", "itq", "sph", "dsh")


@pytest.fixture(scope="module")
def digits16():
    """sklearn digits at 16x16 as 256-d pixel features in [0, 1], a fixed split: every
    6th image a query (300), the rest the database (1,497)."""
    images, labels = load_digits_images(size=16)
    x = images.reshape(len(images), -1).astype(np.float32) / 255
    queries = np.arange(0, len(x), 6)
    database = np.setdiff1d(np.arange(len(x)), queries)
    return {"x": x, "labels": labels, "q": queries, "db": database}


def _map(hasher, data, bits):
    x, y, q, db = data["x"], data["labels"], data["q"], data["db"]
    return mean_average_precision(hasher.encode(x[q]), y[q], hasher.encode(x[db]), y[db], bits, k=None)


def test_all_six_are_registered_as_feature_methods():
    assert set(CLASSICAL_METHODS) <= set(list_encoders())
    assert all(is_feature_method(m) for m in CLASSICAL_METHODS)
    assert not is_feature_method("dlbhc")


@pytest.mark.parametrize("method", CLASSICAL_METHODS)
@pytest.mark.parametrize("bits", [16, 64])
def test_fit_encode_shapes_and_bit_order(method, bits, digits16):
    x = digits16["x"][digits16["db"]]
    hasher = create_encoder(method, bits=bits, seed=0).fit(x)
    codes = hasher.encode(x[:10])
    assert codes.dtype == np.uint8 and codes.shape == (10, bits // 8)
    relaxed = hasher.project(x[:10])
    assert relaxed.shape == (10, bits)
    # Packed LSB-first: bit j of the code is "relaxed value j > 0".
    np.testing.assert_array_equal(unpack_codes(codes, bits), (relaxed > 0).numpy().astype(np.uint8))


@pytest.mark.parametrize("method", CLASSICAL_METHODS)
def test_same_seed_same_codes(method, digits16):
    x = digits16["x"][digits16["db"]]
    a = create_encoder(method, bits=32, seed=3).fit(x).encode(x)
    b = create_encoder(method, bits=32, seed=3).fit(x).encode(x)
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("method", ["lsh", "itq", "sph", "dsh"])
def test_randomised_methods_depend_on_the_seed(method, digits16):
    x = digits16["x"][digits16["db"]]
    a = create_encoder(method, bits=32, seed=0).fit(x).encode(x)
    b = create_encoder(method, bits=32, seed=1).fit(x).encode(x)
    assert not np.array_equal(a, b)


@pytest.mark.parametrize("method", CLASSICAL_METHODS)
def test_save_load_roundtrip_gives_identical_codes(method, digits16, tmp_path):
    x = digits16["x"]
    hasher = create_encoder(method, bits=32, seed=0).fit(x[digits16["db"]])
    path = save_encoder(hasher, tmp_path / f"{method}.pt")
    loaded = load_encoder(path, method=method, bits=32)
    assert type(loaded) is type(hasher) and loaded.config == hasher.config
    np.testing.assert_array_equal(loaded.encode(x), hasher.encode(x))


@pytest.mark.parametrize("method", CLASSICAL_METHODS)
def test_no_constant_bit_on_varied_data(method, digits16):
    x = digits16["x"][digits16["db"]]
    for bits in (16, 32, 64):
        means = unpack_codes(create_encoder(method, bits=bits, seed=0).fit(x).encode(x), bits).mean(axis=0)
        assert 0 < means.min() and means.max() < 1, (bits, means.min(), means.max())
        assert np.median(np.abs(means - 0.5)) < 0.15, (bits, means)
        if method in BALANCING:
            assert 0.25 <= means.min() and means.max() <= 0.75, (bits, means.min(), means.max())


@pytest.mark.parametrize("bits", [32, 64])
def test_itq_beats_lsh_in_map(bits, digits16):
    db = digits16["x"][digits16["db"]]
    itq = _map(create_encoder("itq", bits=bits, seed=0).fit(db), digits16, bits)
    lsh = _map(create_encoder("lsh", bits=bits, seed=0).fit(db), digits16, bits)
    assert itq > lsh + 0.05, (itq, lsh)


def test_itq_rotation_lowers_the_quantisation_error(digits16):
    x = digits16["x"][digits16["db"]]
    random_rotation = create_encoder("itq", bits=32, seed=0, iterations=0).fit(x)
    learned = create_encoder("itq", bits=32, seed=0, iterations=50).fit(x)
    assert learned.quantization_error(x) < 0.9 * random_rotation.quantization_error(x)
    # The projection stays an orthonormal basis of the PCA subspace, so it only rotates it.
    w = learned.projection.double()
    np.testing.assert_allclose((w.T @ w).numpy(), np.eye(32), atol=1e-4)


def test_pcah_bits_are_signs_of_sklearn_pca(digits16):
    from sklearn.decomposition import PCA

    x = digits16["x"][digits16["db"]].astype(np.float64)
    ours = unpack_codes(create_encoder("pcah", bits=16).fit(x).encode(x), 16).astype(bool)
    theirs = PCA(n_components=16, svd_solver="full").fit_transform(x) > 0
    for j in range(16):  # a principal direction is defined up to its sign
        agree = np.mean(ours[:, j] == theirs[:, j])
        assert max(agree, 1 - agree) > 0.99, j


def test_sh_picks_the_smallest_eigenvalue_modes_of_the_box(rng):
    # Uniform on a 4 x 1 rectangle: eigenvalues grow as (k / width)^2, so 8 bits take
    # frequencies 1..7 along the long side and 1 along the short side (1/16, 4/16, 9/16,
    # 16/16 = 1/1, 25/16, 36/16, 49/16 < 4/1).
    x = np.column_stack([rng.uniform(0, 4, 5000), rng.uniform(0, 1, 5000)])
    sh = create_encoder("sh", bits=8).fit(x)
    dims = sh.mode_dim.numpy()
    assert sorted(np.bincount(dims, minlength=2).tolist()) == [1, 7]
    long_side = np.bincount(dims).argmax()
    freqs = sorted(np.round(sh.omega.numpy()[dims == long_side] * 4 / np.pi).astype(int).tolist())
    assert freqs == [1, 2, 3, 4, 5, 6, 7]
    # The first bit is the lowest mode: it splits the long side in half.
    bit0 = unpack_codes(sh.encode(x), 8)[:, np.argmin(sh.omega.numpy())]
    assert abs(bit0.mean() - 0.5) < 0.05


def test_sph_spheres_halve_the_data_and_overlap_by_a_quarter(digits16):
    x = digits16["x"][digits16["db"]]
    sph = create_encoder("sph", bits=16, seed=0).fit(x)
    bits = unpack_codes(sph.encode(x), 16).astype(np.float64)
    assert np.all(np.abs(bits.mean(axis=0) - 0.5) < 0.01)  # radius = median distance
    assert sph.rounds_run < sph.iterations  # the balancing loop converged
    overlap = (bits.T @ bits / len(x))[~np.eye(16, dtype=bool)]
    assert abs(overlap.mean() - 0.25) < 0.1 * 0.25 + 0.01


def test_dsh_separates_well_separated_groups(rng):
    centres = rng.normal(scale=10.0, size=(6, 20))
    labels = rng.integers(0, 6, 1200)
    x = centres[labels] + rng.normal(size=(1200, 20))
    dsh = create_encoder("dsh", bits=16, seed=0).fit(x)
    codes = dsh.encode(x)
    assert mean_average_precision(codes[:200], labels[:200], codes[200:], labels[200:], 16, k=None) > 0.95


def test_errors_name_the_problem(digits16):
    x = digits16["x"][:100, :20]
    with pytest.raises(ValueError, match="bits need features of dimension >= 32"):
        create_encoder("pcah", bits=32).fit(x)
    with pytest.raises(RuntimeError, match="fit"):
        create_encoder("lsh", bits=16).encode(x)
    hasher = create_encoder("lsh", bits=16).fit(x)
    with pytest.raises(ValueError, match=r"\(n, 20\)"):
        hasher.encode(np.zeros((3, 21)))
    with pytest.raises(ValueError, match="NaN"):
        create_encoder("itq", bits=16).fit(np.full((5, 20), np.nan))
    with pytest.raises(ValueError, match="multiple of 8"):
        create_encoder("sh", bits=12)


@pytest.fixture(scope="module")
def flat_folder(tmp_path_factory, write_unlabelled_digits):
    """120 digit images directly in one folder: no class sub-folders, no labels."""
    return write_unlabelled_digits(tmp_path_factory.mktemp("unlabelled") / "images", 120)


@pytest.mark.parametrize("method", CLASSICAL_METHODS)
def test_train_encode_index_an_unlabelled_folder(method, flat_folder, tmp_path):
    path = train_encoder(flat_folder, tmp_path / "model.pt", method=method, backbone="pixels", bits=16,
                         config=TrainConfig(batch_size=32), progress=False)
    model = load_encoder(path)
    assert isinstance(model, FeatureHashModel) and model.method == method and model.bits == 16
    report = encode_folder(model, flat_folder, tmp_path / "shards", progress=False)
    assert report.encoded == 120
    stored = ShardReader(tmp_path / "shards").read(("codes", "features", "labels"))
    assert np.all(stored["labels"] == -1)
    # The stored codes are the hasher's codes of the stored F7 (= pixel) features.
    agree = unpack_codes(model.hasher.encode(stored["features"].astype(np.float32)), 16) == unpack_codes(
        stored["codes"], 16)
    assert agree.mean() > 0.99
    index = HashIndex.from_shards(tmp_path / "shards", spec="flat", progress=False)
    _, ids = index.search(stored["codes"][:5], k=1)
    assert len(index) == 120 and ids.shape == (5, 1)


def test_cli_train_itq_without_labels(flat_folder, tmp_path):
    from hashapp.cli import main

    out = tmp_path / "itq.pt"
    result = CliRunner().invoke(main, ["train", str(flat_folder), "--method", "itq", "--backbone", "pixels",
                                       "--bits", "32", "--out", str(out)])
    assert result.exit_code == 0, result.output
    model = load_encoder(out, method="itq", bits=32)
    codes, features = model.encode(torch.rand(4, 3, 28, 28))
    assert codes.shape == (4, 4) and features.shape == (4, 784)


def test_any_backbone_can_feed_a_classical_method(flat_folder, tmp_path):
    # Backbone keywords go through encoder_kwargs, as for the deep methods; the backbone is
    # frozen and saved with the hasher.
    path = train_encoder(flat_folder, tmp_path / "lsh.pt", method="lsh", backbone="small_cnn", bits=16,
                         encoder_kwargs={"width": 4, "feature_dim": 24, "input_size": 16}, progress=False)
    model = load_encoder(path)
    assert model.config["backbone"] == "small_cnn" and model.feature_dim == 24
    assert model.hasher.input_dim == 24
    images = torch.rand(5, 3, 16, 16)
    codes, features = model.encode(images)
    np.testing.assert_array_equal(codes, model.hasher.encode(features))
