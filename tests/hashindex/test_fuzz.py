"""Fuzzing: malformed query arrays raise ValueError and nothing else; damaged shard files raise
ShardError or read back unchanged (never altered records); damaged image files are encoded or
skipped and listed, never fatal.
"""

from __future__ import annotations

import json
import shutil
import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from PIL import Image

from hashindex import HashIndex, ShardError, ShardReader, ShardWriter, as_packed_codes
from hashindex.testing import assert_same_knn, brute_force_knn

FUZZ = settings(max_examples=150, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
BITS = 32
DB = np.random.default_rng(0).integers(0, 256, size=(40, BITS // 8), dtype=np.uint8)
FEATS = np.random.default_rng(1).normal(size=(40, 5)).astype(np.float32)

DTYPES = [np.uint8, np.int8, np.int16, np.int64, np.uint16, np.uint64, np.float16, np.float32, np.float64, np.bool_,
          np.complex64, np.dtype("U3"), np.dtype("S2"), np.dtype("datetime64[s]"), np.dtype("m8[s]")]


def _index() -> HashIndex:
    index = HashIndex(BITS)
    index.add(DB, labels=np.arange(40) % 3, features=FEATS)
    return index


@st.composite
def arrays(draw, widths=(0, 1, 2, 4, 5, 31, 32, 33, 64), shape=None):
    """Arrays of random rank, shape (often a plausible code width, or often ``shape`` when
    given), dtype and values."""
    kind = draw(st.sampled_from(["numeric", "numeric", "object", "plain"]))
    if shape is not None and draw(st.integers(0, 3)):
        shape = tuple(shape)
    else:
        rank = draw(st.sampled_from([0, 1, 2, 2, 2, 3]))
        shape = tuple(draw(st.integers(0, 4)) for _ in range(max(0, rank - 1))) + (
            (draw(st.sampled_from(widths)),) if rank else ())
    if kind == "object":
        values = st.one_of(st.none(), st.integers(-2, 300), st.text(max_size=2), st.floats(allow_nan=True))
        return draw(hnp.arrays(object, shape, elements=values))
    if kind == "plain":
        return draw(st.one_of(st.none(), st.integers(), st.text(max_size=4), st.just([[0, 1], [1]]),
                              st.lists(st.lists(st.integers(-1, 1), min_size=BITS, max_size=BITS), max_size=3)))
    dtype = np.dtype(draw(st.sampled_from(DTYPES)))
    if dtype.kind in "iub" and draw(st.booleans()):  # often valid-looking bit values
        return draw(hnp.arrays(dtype, shape, elements=st.sampled_from([0, 1] if dtype.kind in "ub" else [-1, 1])))
    return draw(hnp.arrays(dtype, shape))


@st.composite
def valid_codes(draw):
    """Well-formed queries, packed or unpacked, so that the fuzzing reaches the later checks."""
    n = draw(st.integers(0, 4))
    form = draw(st.sampled_from(["packed", "bool", "01", "pm1"]))
    if form == "packed":
        return draw(hnp.arrays(np.uint8, (n, BITS // 8)))
    bits = draw(hnp.arrays(np.bool_, (n, BITS)))
    return {"bool": bits, "01": bits.astype(np.int32), "pm1": 2 * bits.astype(np.float32) - 1}[form]


codes = st.one_of(valid_codes(), arrays(widths=(BITS // 8, BITS)))
ks = st.one_of(st.integers(-3, 60), st.sampled_from([0.5, 8.0, True, None, "8", np.int64(5), np.uint8(3)]))


def _only_value_errors(call):
    """Run ``call``; a ValueError is the documented failure; any other exception fails the test."""
    try:
        return call()
    except ValueError:
        return None


@FUZZ
@given(queries=st.one_of(valid_codes(), arrays()), k=ks)
def test_fuzzed_search_raises_only_value_error(queries, k):
    index = _index()
    out = _only_value_errors(lambda: index.search(queries, k=k))
    if out is not None:  # accepted: the queries really were codes, and the answer is the exact kNN
        packed = as_packed_codes(queries, BITS)
        assert_same_knn(*brute_force_knn(packed, DB, int(k)), *out, database=DB, queries=packed)
    votes = _only_value_errors(lambda: index.vote(queries, k=k))
    assert votes is None or votes.shape == (len(queries),)
    result = _only_value_errors(lambda: index.range_search(queries, radius=k))
    assert result is None or len(result[0]) == len(queries) + 1


def _rows(values) -> int:
    shape = np.shape(values) if isinstance(values, np.ndarray) else ()
    return shape[0] if shape else 1


@FUZZ
@given(queries=codes, data=st.data(), k=ks, candidates=ks)
def test_fuzzed_rerank_raises_only_value_error(queries, data, k, candidates):
    features = data.draw(arrays(widths=(0, 4, 5, 6), shape=(_rows(queries), 5)))
    index = _index()
    out = _only_value_errors(lambda: index.search_rerank(queries, features, k=k, candidates=candidates))
    if out is not None:
        D, I = out
        assert D.shape == I.shape == (len(queries), k) and D.dtype == np.float32
        ok = I >= 0
        got = np.linalg.norm(FEATS[I[ok]] - np.asarray(features, np.float32)[np.nonzero(ok)[0]], axis=1)
        np.testing.assert_allclose(D[ok], got, rtol=1e-5, atol=1e-5)
    _only_value_errors(lambda: index.vote(queries, k=k, features=features, candidates=candidates))


@FUZZ
@given(codes=codes, data=st.data())
def test_fuzzed_add_raises_only_value_error_and_adds_nothing_on_error(codes, data):
    n = _rows(codes)
    labels = data.draw(arrays(widths=(0, 1, 2, 3, 4), shape=(n,)))
    features = data.draw(arrays(widths=(5, 4), shape=(n, 5)))
    ids = data.draw(st.one_of(st.none(), arrays(widths=(0, 1, 2, 3, 4), shape=(n,))))
    index = _index()
    result = _only_value_errors(lambda: index.add(codes, labels=labels, features=features, ids=ids) or "added")
    if result is None:
        assert len(index) == 40 and len(index.labels) == len(index.ids) == len(index.features) == 40
    else:
        n = len(as_packed_codes(codes, BITS))
        assert len(index) == len(index.labels) == len(index.ids) == len(index.features) == 40 + n
        assert len(np.unique(index.ids)) == len(index.ids)


# --------------------------------------------------------------------------- shard files


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzz-store")
    rng = np.random.default_rng(5)
    n = 30
    data = {"codes": rng.integers(0, 256, size=(n, 8), dtype=np.uint8), "labels": rng.integers(0, 4, n),
            "features": rng.normal(size=(n, 6)).astype(np.float32),
            "paths": [f"c{i % 4}/img_{i}é.png" for i in range(n)]}
    with ShardWriter(root / "s", 64, feature_dim=6, class_names=list("abcd"), shard_size=20) as w:
        w.add(**data)
    return root / "s"


def _read_all(directory):
    out = ShardReader(directory).read(("codes", "labels", "ids", "features", "paths"))
    index = HashIndex.from_shards(directory, progress=False)
    return out, index


@pytest.mark.parametrize("victim", ["part-00000.h5", "part-00001.h5"])
def test_fuzzed_shard_files_raise_shard_error_or_read_back_intact(store, tmp_path, victim):
    """Random bit flips and truncations of a valid shard: every read either raises ShardError
    naming the file or returns exactly the original records (checksums catch the rest)."""
    original, _ = _read_all(store)
    work = tmp_path / "s"
    shutil.copytree(store, work)
    good = (store / victim).read_bytes()
    rng = np.random.default_rng(int(victim[5:10]))
    outcomes = {"ShardError": 0, "intact": 0}
    for trial in range(120):
        damaged = bytearray(good)
        if trial % 4 == 0:
            damaged = damaged[: int(rng.integers(0, len(good)))]
        else:
            for _ in range(int(rng.integers(1, 4))):
                damaged[int(rng.integers(0, len(damaged)))] ^= 1 << int(rng.integers(0, 8))
        (work / victim).write_bytes(bytes(damaged))
        try:
            out, index = _read_all(work)
        except ShardError as exc:
            assert victim in str(exc)
            outcomes["ShardError"] += 1
            continue
        for name, values in original.items():
            assert np.array_equal(np.asarray(out[name]), np.asarray(values)), f"trial {trial}: {name} altered"
        np.testing.assert_array_equal(index.ids, original["ids"])
        outcomes["intact"] += 1
    assert outcomes["ShardError"] >= 30 and outcomes["intact"] >= 1, outcomes


def test_shards_without_checksums_still_read(tmp_path, monkeypatch):
    """Stores written before shards carried checksums (old HDF5 format, no fletcher32, no paths CRC)."""
    import h5py

    import hashindex.store.writer as writer_mod
    from hashindex.store.format import PATHS_CRC_ATTR

    monkeypatch.setattr(writer_mod, "_LIBVER", "earliest")
    monkeypatch.setattr(writer_mod, "_CHECKSUM", {})
    codes = np.arange(24, dtype=np.uint8).reshape(3, 8)
    with ShardWriter(tmp_path / "s", 64) as writer:
        writer.add(codes, paths=["a.png", "b.png", "c.png"])
    with h5py.File(tmp_path / "s" / "part-00000.h5", "a") as f:
        assert f["codes"].fletcher32 is False
        del f.attrs[PATHS_CRC_ATTR]
    out = ShardReader(tmp_path / "s").read(("codes", "paths"))
    np.testing.assert_array_equal(out["codes"], codes)
    assert out["paths"] == ["a.png", "b.png", "c.png"]


def test_paths_crc_catches_an_altered_path(store, tmp_path):
    import h5py

    shutil.copytree(store, tmp_path / "s")
    with h5py.File(tmp_path / "s" / "part-00001.h5", "a") as f:
        paths = f["paths"].asstr()[()]
        paths[0] = paths[0].replace("img", "imh")
        f["paths"][:] = paths
    assert ShardReader(tmp_path / "s").read(("ids",))["ids"].tolist() == list(range(30))
    with pytest.raises(ShardError, match=r"part-00001.h5: paths fail their CRC-32 check"):
        ShardReader(tmp_path / "s").read(("paths",))


# --------------------------------------------------------------------------- image files


def _mutations(rng, payload: bytes, count: int):
    for i in range(count):
        data = bytearray(payload)
        choice = i % 4
        if choice == 0:
            data = data[: int(rng.integers(0, len(data)))]
        elif choice == 1:
            for _ in range(int(rng.integers(1, 6))):
                data[int(rng.integers(0, len(data)))] = int(rng.integers(0, 256))
        elif choice == 2:  # damage the header, where sizes and modes live
            for _ in range(int(rng.integers(1, 3))):
                data[int(rng.integers(0, min(64, len(data))))] ^= 1 << int(rng.integers(0, 8))
        else:
            at = int(rng.integers(0, len(data)))
            data[at:at] = rng.integers(0, 256, size=int(rng.integers(1, 32)), dtype=np.uint8).tobytes()
        yield bytes(data)


@pytest.mark.slow
def test_fuzzed_image_files_are_encoded_or_skipped_and_listed(tmp_path):
    import torch

    from encoders import create_encoder
    from encoders.data import ImageFileDataset, image_transform, list_images
    from encoders.encode import SKIPPED_REPORT, encode_folder

    rng = np.random.default_rng(9)
    pixels = rng.integers(0, 256, size=(20, 24, 3), dtype=np.uint8)
    sources = {}
    for fmt, ext, mode in [("PNG", "png", "RGB"), ("JPEG", "jpg", "RGB"), ("GIF", "gif", "P"), ("BMP", "bmp", "L"),
                           ("TIFF", "tif", "RGBA")]:
        path = tmp_path / f"src.{ext}"
        Image.fromarray(pixels).convert(mode).save(path, fmt)
        sources[ext] = path.read_bytes()
    folder = tmp_path / "images" / "x"
    folder.mkdir(parents=True)
    for ext, payload in sources.items():
        for i, data in enumerate(_mutations(rng, payload, 40)):
            (folder / f"{ext}_{i:03d}.{ext}").write_bytes(data)
    images = list_images(tmp_path / "images", supervised=False)
    dataset = ImageFileDataset(images, image_transform({"input_size": (3, 16, 16), "mean": (0.5,) * 3,
                                                        "std": (0.5,) * 3}))
    readable = set()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # PIL warns about some damaged files it still decodes
        for i in range(len(dataset)):
            tensor, label, image_id, error = dataset[i]
            assert image_id == i
            if error is None:
                assert tensor.shape == (3, 16, 16) and torch.isfinite(tensor).all()
                readable.add(i)
            else:
                assert tensor is None and error.split(":")[0].isidentifier()  # "ExceptionType: message"
        torch.manual_seed(0)
        model = create_encoder("dlbhc", backbone="small_cnn", bits=16, num_classes=2, width=4, feature_dim=8,
                               input_size=16)
        report = encode_folder(model, tmp_path / "images", tmp_path / "s", shard_size=64, batch_size=32,
                               device="cpu", progress=False)
    assert 0 < len(readable) < len(images)
    ids = ShardReader(tmp_path / "s").read(("ids",))["ids"]
    assert set(ids.tolist()) == readable and report.encoded == len(readable)
    listed = [json.loads(line) for line in (tmp_path / "s" / SKIPPED_REPORT).read_text().splitlines()]
    assert sorted(entry["id"] for entry in listed) == sorted(set(range(len(images))) - readable)
    assert len(report.skipped) == len(images) - len(readable)
