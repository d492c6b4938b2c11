"""Every bad input of the reliability issue gets one clear error (or a documented skip):
image folders, shard stores, API calls, model and index files, and a GPU that is not there."""

from __future__ import annotations

import json
import re
import os
import shutil
import struct
import warnings
import zlib

import h5py
import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from encoders import create_encoder, load_encoder, save_encoder
from encoders.data import ImageFileDataset, ImageList, image_transform, list_images, load_rgb
from encoders.encode import SKIPPED_REPORT, encode_folder
from hashindex import MISSING_DISTANCE, HashIndex, ShardError, ShardReader, ShardWriter
from hashapp.cli import main
from hashindex.testing import assert_same_knn, brute_force_knn, hamming_matrix

# --------------------------------------------------------------------------- image files


def _png_claiming(width: int, height: int) -> bytes:
    """A tiny, well-formed PNG whose header claims ``width`` x ``height`` pixels."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 8))
            + chunk(b"IEND", b""))


def _encoded(image: Image.Image, fmt: str) -> bytes:
    import io

    buf = io.BytesIO()
    image.save(buf, fmt)
    return buf.getvalue()


def _half(image: Image.Image, fmt: str) -> bytes:
    data = _encoded(image, fmt)
    return data[: len(data) // 2]


_NOISE = Image.fromarray(np.random.default_rng(0).integers(0, 256, size=(24, 24, 3), dtype=np.uint8))

#: name -> (how to make it in a folder, the reason it is skipped with)
BAD_FILES = {
    "zero.png": (lambda p: p.write_bytes(b""), r"UnidentifiedImageError: cannot identify image file"),
    "text.jpg": (lambda p: p.write_text("not an image at all"), r"UnidentifiedImageError: cannot identify image file"),
    "truncated.png": (lambda p: p.write_bytes(_half(_NOISE, "PNG")), r"OSError: image file is truncated"),
    "truncated.jpg": (lambda p: p.write_bytes(_half(_NOISE, "JPEG")), r"OSError: Truncated File Read"),
    "huge.png": (lambda p: p.write_bytes(_png_claiming(100_000, 100_000)),
                 r"DecompressionBombError: Image size \(10000000000 pixels\) exceeds limit"),
    "dangling.png": (lambda p: p.symlink_to(p.with_name("gone.png")), r"FileNotFoundError: .*No such file"),
    "loop.png": (lambda p: (p.with_name("loop2.png").symlink_to(p), p.symlink_to(p.with_name("loop2.png"))),
                 r"OSError: .*Too many levels of symbolic links"),
    "fifo.png": (lambda p: os.mkfifo(p), r"ValueError: .*fifo.png: not a regular file"),
}


@pytest.mark.parametrize("name", sorted(BAD_FILES))
def test_unreadable_image_raises_its_specific_error(tmp_path, name):
    make, reason = BAD_FILES[name]
    make(tmp_path / name)
    images = ImageList(root=tmp_path, samples=[(str(tmp_path / name), 0)])
    tensor, label, image_id, error = ImageFileDataset(images, image_transform(
        {"input_size": (3, 16, 16), "mean": (0.5,) * 3, "std": (0.5,) * 3}))[0]
    assert tensor is None and image_id == 0
    assert error is not None and re.search(reason, error), error


def test_image_over_a_lowered_pixel_limit_is_refused(tmp_path, monkeypatch):
    """PIL's MAX_IMAGE_PIXELS is the limit: past it (a warning in PIL) the file is refused too."""
    _NOISE.save(tmp_path / "big.png")
    assert load_rgb(str(tmp_path / "big.png")).size == (24, 24)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 400)
    with pytest.raises(Image.DecompressionBombWarning, match=r"Image size \(576 pixels\) exceeds limit of 400"):
        load_rgb(str(tmp_path / "big.png"))


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their permissions")
def test_file_without_read_permission_is_unreadable(tmp_path):
    _NOISE.save(tmp_path / "secret.png")
    (tmp_path / "secret.png").chmod(0)
    with pytest.raises(PermissionError):
        load_rgb(str(tmp_path / "secret.png"))


@pytest.mark.parametrize("mode, fmt, pixel, expected", [
    ("L", "PNG", 100, (100, 100, 100)),
    ("LA", "PNG", (100, 7), (100, 100, 100)),
    ("RGBA", "PNG", (10, 20, 30, 0), (10, 20, 30)),
    ("P", "PNG", None, (200, 10, 50)),
    ("I;16", "PNG", 40000, (156, 156, 156)),  # 16-bit scaled to 8 bits: 40000 / 256
    ("I", "TIFF", 51200, (200, 200, 200)),
    ("1", "PNG", 1, (255, 255, 255)),
    ("CMYK", "JPEG", (0, 0, 0, 0), None),
])
def test_grey_alpha_palette_16_bit_images_are_accepted_as_rgb(tmp_path, mode, fmt, pixel, expected):
    if mode == "P":
        image = Image.new("P", (6, 5), 3)
        palette = [0] * 768
        palette[9:12] = expected
        image.putpalette(palette)
    else:
        image = Image.new(mode, (6, 5), pixel)
    path = tmp_path / f"image.{fmt.lower()}"
    image.save(path, fmt)
    rgb = load_rgb(str(path))
    assert rgb.mode == "RGB" and rgb.size == (6, 5)
    if expected is not None:
        assert rgb.getpixel((2, 2)) == expected


# --------------------------------------------------------------------------- image folders


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    torch.manual_seed(0)
    model = create_encoder("dlbhc", backbone="small_cnn", bits=16, num_classes=2, width=4, feature_dim=8,
                           input_size=16)
    return save_encoder(model, tmp_path_factory.mktemp("model") / "m.pt", class_names=["a", "b"])


def test_folder_with_every_kind_of_bad_file_still_builds(tmp_path, model_file):
    """Unreadable files are skipped, counted and listed (path, id, reason); the rest is encoded."""
    root = tmp_path / "images"
    good = {"a/grey.png": Image.new("L", (9, 9), 80), "a/rgba.png": Image.new("RGBA", (9, 9), (1, 2, 3, 4)),
            "b/palette.png": Image.new("P", (9, 9), 5), "b/sixteen.png": Image.new("I;16", (9, 9), 30000),
            "b/rgb.jpg": _NOISE}
    for rel, image in good.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        image.save(root / rel)
    for name, (make, _) in BAD_FILES.items():
        make(root / "b" / name)
    (root / "a" / "cycle").symlink_to(root / "a", target_is_directory=True)  # a directory symlink loop
    Image.new("P", (9, 9)).save(root / "a" / "ignored.gif")  # not one of torchvision's image extensions
    listing = [os.path.relpath(p, root) for p, _ in list_images(root).samples]
    assert not any("cycle" in p or p.endswith(".gif") for p in listing)
    report = encode_folder(load_encoder(model_file), root, tmp_path / "s", progress=False, device="cpu")
    assert report.encoded == len(good) and len(report.skipped) == len(listing) - len(good)
    data = ShardReader(tmp_path / "s").read(("ids", "paths", "labels"))
    assert sorted(data["paths"]) == sorted(good)
    assert data["ids"].tolist() == [listing.index(p) for p in data["paths"]]
    lines = [json.loads(line) for line in (tmp_path / "s" / SKIPPED_REPORT).read_text().splitlines()]
    by_name = {os.path.basename(entry["path"]): entry for entry in lines}
    assert set(by_name) == set(BAD_FILES) | {"loop2.png"} and len(lines) == len(by_name)
    for name, (_, reason) in BAD_FILES.items():
        assert re.search(reason, by_name[name]["reason"]), by_name[name]
        assert by_name[name]["id"] == listing.index(f"b/{name}")
    result = CliRunner().invoke(main, ["encode", str(root), "--model", str(model_file), "--out", str(tmp_path / "c"),
                                       "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert f"skipped {len(lines)} unreadable file(s), listed in {tmp_path / 'c' / SKIPPED_REPORT}" in result.output


def test_empty_folder_is_one_clear_error(tmp_path, model_file):
    (tmp_path / "empty").mkdir()
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "readme.txt").write_text("no images here")
    for folder in ("empty", "notes"):
        with pytest.raises(ValueError, match=f"{folder} holds no image files"):
            encode_folder(load_encoder(model_file), tmp_path / folder, tmp_path / "s", progress=False)
        result = CliRunner().invoke(main, ["encode", str(tmp_path / folder), "--model", str(model_file),
                                           "--out", str(tmp_path / "s")])
        assert result.exit_code == 1 and result.output.startswith("Error: ") and "holds no image files" in result.output
        assert "Traceback" not in result.output
    with pytest.raises(FileNotFoundError, match="does not exist"):
        list_images(tmp_path / "missing")


def test_supervised_method_needs_class_sub_folders(tmp_path):
    from hashapp.pipeline import train_encoder

    flat = tmp_path / "flat"
    flat.mkdir()
    for i in range(3):
        _NOISE.save(flat / f"{i}.png")
    with pytest.raises(ValueError, match="flat has no class sub-folders; a supervised method needs root/<class>/"):
        train_encoder(flat, tmp_path / "m.pt")
    for command in (["train", str(flat), "--out", str(tmp_path / "m.pt")],
                    ["build", str(flat), "--out", str(tmp_path / "b")]):
        result = CliRunner().invoke(main, command)
        assert result.exit_code == 1, result.output
        assert result.output.startswith("Error: ") and "has no class sub-folders" in result.output
    one = tmp_path / "one" / "only"
    one.mkdir(parents=True)
    _NOISE.save(one / "x.png")
    with pytest.raises(ValueError, match="needs at least 2 class sub-folders, found 1"):
        train_encoder(tmp_path / "one", tmp_path / "m.pt")
    assert not (tmp_path / "m.pt").exists()


# --------------------------------------------------------------------------- shard stores


def _store(directory, bits=64, n=14, shard_size=7, features=True, seed=0):
    rng = np.random.default_rng(seed)
    with ShardWriter(directory, bits, feature_dim=4 if features else None, shard_size=shard_size) as writer:
        writer.add(rng.integers(0, 256, size=(n, bits // 8), dtype=np.uint8), labels=rng.integers(0, 3, n),
                   features=rng.normal(size=(n, 4)) if features else None)
    return directory


def _open_both(directory):
    """The two ways a store is read: ShardReader (validation + read) and HashIndex.from_shards."""
    ShardReader(directory).read()
    HashIndex.from_shards(directory, progress=False)


@pytest.mark.parametrize("keep", [0, 96, 500, 2000, -1])
def test_truncated_shard_names_the_file(tmp_path, keep):
    store = _store(tmp_path / "s")
    shard = store / "part-00001.h5"
    data = shard.read_bytes()
    shard.write_bytes(data[: keep if keep >= 0 else len(data) - 1])
    with pytest.raises(ShardError, match=r"part-00001.h5: unreadable shard \(truncated or corrupt HDF5 file"):
        _open_both(store)


def test_foreign_hdf5_file_names_the_file(tmp_path):
    store = _store(tmp_path / "s")
    with h5py.File(store / "part-00000.h5", "w") as f:
        f.create_dataset("codes", data=np.zeros((7, 8), np.uint8))
    with pytest.raises(ShardError, match=r"part-00000.h5: not a hashindex shard \(foreign HDF5 file\)"):
        _open_both(store)


def test_shard_with_other_bits_names_the_file(tmp_path):
    """A 32-bit shard dropped into a 64-bit store: refused by readers and by a resuming writer."""
    store = _store(tmp_path / "s", bits=64)
    other = _store(tmp_path / "other", bits=32)
    shutil.copy(other / "part-00000.h5", store / "part-00002.h5")
    with pytest.raises(ShardError, match="part-00002.h5: shard holds 32-bit codes, store expects 64-bit"):
        ShardWriter(store, 64, feature_dim=4, shard_size=7, resume=True)  # would adopt it otherwise
    manifest = json.loads((store / "manifest.json").read_text())
    manifest["shards"].append({"file": "part-00002.h5", "count": 7, "first_id": 14})
    (store / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ShardError, match="part-00002.h5: shard holds 32-bit codes, store expects 64-bit"):
        _open_both(store)


@pytest.mark.parametrize("dataset", ["codes", "labels", "ids", "features"])
def test_missing_dataset_names_the_file_and_dataset(tmp_path, dataset):
    store = _store(tmp_path / "s")
    with h5py.File(store / "part-00001.h5", "a") as f:
        del f[dataset]
    with pytest.raises(ShardError, match=f"part-00001.h5: missing dataset.* {dataset}"):
        _open_both(store)


def test_duplicate_ids_name_both_files(tmp_path):
    store = _store(tmp_path / "s")
    with h5py.File(store / "part-00001.h5", "a") as f:
        ids = f["ids"][()]
        ids[3] = 2  # id 2 is also in part-00000, in a well-formed shard (checksum updated)
        f["ids"][:] = ids
        f["ids"].attrs["crc32"] = zlib.crc32(ids)
    with pytest.raises(ShardError, match=r"duplicate ids across shards part-00000.h5 and part-00001.h5 \(e.g. id 2"):
        _open_both(store)


def test_records_not_matching_the_manifest_name_the_file(tmp_path):
    store = _store(tmp_path / "s")
    manifest = json.loads((store / "manifest.json").read_text())
    manifest["shards"][1]["count"] = 9
    (store / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ShardError, match=r"part-00001.h5: holds 7 records from id 7, manifest says 9 from id 7"):
        _open_both(store)
    manifest["shards"][1]["count"] = 7
    (store / "manifest.json").write_text(json.dumps(manifest))
    (store / "part-00001.h5").unlink()
    with pytest.raises(ShardError, match="part-00001.h5: listed in manifest.json but missing"):
        _open_both(store)
    (store / "manifest.json").write_text("{not json")
    with pytest.raises(ShardError, match="manifest.json: unreadable manifest"):
        _open_both(store)


def test_leftover_temporary_shard_is_reported_and_never_loaded(tmp_path):
    store = _store(tmp_path / "s")
    shutil.copy(store / "part-00000.h5", store / "part-00002.h5.tmp")
    with pytest.warns(UserWarning, match=r"ignoring incomplete temporary file\(s\) part-00002.h5.tmp"):
        assert len(HashIndex.from_shards(store, progress=False)) == 14
    with pytest.warns(UserWarning, match=r"removed 1 incomplete temporary file\(s\) .*part-00002.h5.tmp"):
        writer = ShardWriter(store, 64, feature_dim=4, shard_size=7, resume=True)
    writer.close()
    assert not (store / "part-00002.h5.tmp").exists() and len(ShardReader(store)) == 14


# --------------------------------------------------------------------------- API calls


@pytest.fixture
def index(rng):
    index = HashIndex(64, class_names=["x", "y", "z"])
    index.add(rng.integers(0, 256, size=(20, 8), dtype=np.uint8), labels=rng.integers(0, 3, 20),
              features=rng.normal(size=(20, 6)))
    return index


Q = np.zeros((2, 8), np.uint8)
F = np.zeros((2, 6), np.float32)


@pytest.mark.parametrize("call, message", [
    (lambda ix: ix.search(np.zeros((2, 4), np.uint8)), r"query codes: wrong code width 4 for 64-bit codes"),
    (lambda ix: ix.search(np.zeros((2, 9), np.uint8)), r"query codes: wrong code width 9 for 64-bit codes"),
    (lambda ix: ix.add(np.zeros((2, 32), bool)), r"codes: wrong code width 32 for 64-bit codes"),
    (lambda ix: ix.search(np.zeros((2, 8), np.float32)), r"packed codes must be uint8, got dtype float32"),
    (lambda ix: ix.search(np.zeros((2, 8), np.int64)), r"packed codes must be uint8, got dtype int64"),
    (lambda ix: ix.search(np.full((2, 64), 2)), r"unpacked codes must hold only 0/1 or -1/\+1, found values 2"),
    (lambda ix: ix.search(np.zeros((2, 64), complex)), r"unsupported dtype complex128"),
    (lambda ix: ix.search(np.zeros(8, np.uint8)), r"got a 1-D array of shape \(8,\)"),
    (lambda ix: ix.search(np.zeros((1, 2, 8), np.uint8)), r"got a 3-D array of shape \(1, 2, 8\)"),
    (lambda ix: ix.search(Q, k=0), r"k must be a positive integer, got 0"),
    (lambda ix: ix.search(Q, k=-1), r"k must be a positive integer, got -1"),
    (lambda ix: ix.search(Q, k=2.0), r"k must be a positive integer, got 2.0"),
    (lambda ix: ix.vote(Q, k=0), r"k must be a positive integer, got 0"),
    (lambda ix: ix.search_rerank(Q, F, k=0), r"k must be a positive integer, got 0"),
    (lambda ix: ix.search_rerank(Q, F, candidates=0), r"candidates must be a positive integer, got 0"),
    (lambda ix: ix.add(np.zeros((1, 8), np.uint8), features=np.full((1, 6), np.nan)),
     r"features contain NaN or infinite values"),
    (lambda ix: ix.add(np.zeros((1, 8), np.uint8), features=np.full((1, 6), np.inf)),
     r"features contain NaN or infinite values"),
    (lambda ix: ix.search_rerank(Q, np.full((2, 6), np.nan)), r"query features contain NaN or infinite values"),
    (lambda ix: ix.search_rerank(Q, np.zeros((2, 5))), r"query features: expected shape \(2, 6\), got \(2, 5\)"),
    (lambda ix: ix.search_rerank(Q, np.full((2, 6), "a")), r"query features: expected real numbers, got dtype <U1"),
    (lambda ix: ix.add(np.zeros((1, 8), np.uint8), features=np.full((1, 6), None)),
     r"features: expected real numbers, got dtype object"),
    (lambda ix: ix.add(np.zeros((1, 8), np.uint8), features=np.zeros((1, 6)), ids=[3]), r"duplicate ids, e.g. \[3\]"),
    (lambda ix: ix.add(np.zeros((1, 8), np.uint8), features=np.zeros((1, 6)), ids=[-1]),
     r"ids must be non-negative"),
])
def test_bad_call_raises_value_error_and_changes_nothing(index, call, message):
    before = (len(index), index.labels.copy(), index.ids.copy(), index.features.copy())
    with pytest.raises(ValueError, match=message):
        call(index)
    after = (len(index), index.labels, index.ids, index.features)
    assert before[0] == after[0] and all(np.array_equal(a, b) for a, b in zip(before[1:], after[1:]))


def test_writer_rejects_nan_features_and_foreign_values(tmp_path):
    with ShardWriter(tmp_path / "s", 64, feature_dim=4) as writer:
        for features, message in [(np.full((2, 4), np.nan), "features contain NaN or infinite values"),
                                  (np.full((2, 4), "x"), "features: expected real numbers, got dtype <U1")]:
            with pytest.raises(ValueError, match=message):
                writer.add(Q, features=features)
    assert len(ShardReader(tmp_path / "s")) == 0


@pytest.mark.parametrize("spec", ["flat", "IVF2,nprobe=2", "HNSW8", "MultiHash2x8"])
def test_k_larger_than_the_index_pads_with_minus_one(rng, spec):
    db = rng.integers(0, 256, size=(6, 8), dtype=np.uint8)
    index = HashIndex(64, spec)
    index.add(db, labels=np.arange(6) % 2, features=rng.normal(size=(6, 3)))
    q = np.concatenate([db[:2], rng.integers(0, 256, size=(2, 8), dtype=np.uint8)])
    D, I = index.search(q, k=10)
    assert D.shape == I.shape == (4, 10)
    true = hamming_matrix(q, db)
    for row in range(4):
        found = I[row] >= 0
        n = int(found.sum())
        assert found[:n].all() and not found[n:].any()  # results first, then padding only
        assert (D[row, n:] == MISSING_DISTANCE).all() and (I[row, n:] == -1).all()
        assert len(set(I[row, :n].tolist())) == n and np.array_equal(D[row, :n], true[row, I[row, :n]])
        assert (np.diff(D[row, :n]) >= 0).all()
        if spec.startswith(("flat", "IVF")):  # exact for these specs
            assert n == 6
        D1, I1 = index.search(q[row : row + 1], k=10)  # one query takes a shortcut: same padding
        assert np.array_equal(D1[0], D[row]) and np.array_equal(I1[0], I[row])
    if spec == "flat":
        assert_same_knn(*brute_force_knn(q, db, 10), D, I)
        Dr, Ir = index.search_rerank(q, rng.normal(size=(4, 3)), k=10, candidates=50)
        assert (Ir[:, 6:] == -1).all() and np.isinf(Dr[:, 6:]).all() and (Ir[:, :6] >= 0).all()


def test_empty_index_returns_padding_everywhere(tmp_path):
    index = HashIndex(64)
    D, I = index.search(Q, k=3)
    assert (I == -1).all() and (D == MISSING_DISTANCE).all()
    assert (index.vote(Q, k=3) == -1).all()
    lims, _, ids = index.range_search(Q, 64)
    assert lims.tolist() == [0, 0, 0] and len(ids) == 0
    D, I = index.search_rerank(Q, F, k=3)
    assert (I == -1).all() and np.isinf(D).all()
    empty_store = tmp_path / "s"
    ShardWriter(empty_store, 64, feature_dim=6).close()
    loaded = HashIndex.from_shards(empty_store, progress=False)
    assert len(loaded) == 0 and (loaded.search(Q, 2)[1] == -1).all()
    loaded.save(tmp_path / "ix")
    assert len(HashIndex.load(tmp_path / "ix")) == 0


# --------------------------------------------------------------------------- model and index files


def test_model_file_of_another_method_or_bits(tmp_path, model_file):
    with pytest.raises(ValueError, match=r"m.pt: encoder file holds 16-bit codes, expected 32-bit"):
        load_encoder(model_file, bits=32)
    with pytest.raises(ValueError, match=r"m.pt: encoder file holds method 'dlbhc', expected 'hashnet'"):
        load_encoder(model_file, method="hashnet")
    torch.save({"something": 1}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="other.pt: not a hashindex encoder file"):
        load_encoder(tmp_path / "other.pt")
    (tmp_path / "junk.pt").write_bytes(b"\x00junk")
    with pytest.raises(ValueError, match="junk.pt: not a readable encoder file"):
        load_encoder(tmp_path / "junk.pt")
    # A 16-bit encoder with a 32-bit index: `search` refuses before encoding anything.
    index = HashIndex(32, metadata={"model": str(model_file)})
    index.add(np.zeros((3, 4), np.uint8))
    index.save(tmp_path / "ix")
    _NOISE.save(tmp_path / "q.png")
    result = CliRunner().invoke(main, ["search", str(tmp_path / "ix"), str(tmp_path / "q.png")])
    assert result.exit_code == 1 and "Error: " in result.output
    assert "encoder file holds 16-bit codes, expected 32-bit" in result.output
    # and a store encoded with one width is not resumed with another
    images = tmp_path / "images" / "a"
    images.mkdir(parents=True)
    _NOISE.save(images / "x.png")
    encode_folder(load_encoder(model_file), tmp_path / "images", tmp_path / "s", progress=False)
    other = create_encoder("dlbhc", backbone="small_cnn", bits=24, num_classes=2, width=4, feature_dim=8, input_size=16)
    with pytest.raises(ValueError, match="cannot resume, the store holds codes of another model"):
        encode_folder(other, tmp_path / "images", tmp_path / "s", progress=False, resume=True)
    # nor overwritten by an encode that was not asked to resume
    result = CliRunner().invoke(main, ["encode", str(tmp_path / "images"), "--model", str(model_file),
                                       "--out", str(tmp_path / "s")])
    assert result.exit_code == 1 and "Error: " in result.output and "already holds a shard store" in result.output
    assert len(ShardReader(tmp_path / "s")) == 1


def test_loading_an_index_of_another_width(tmp_path, index):
    index.save(tmp_path / "ix")
    with pytest.raises(ValueError, match=r"ix: index holds 64-bit codes, expected 32-bit"):
        HashIndex.load(tmp_path / "ix", bits=32)
    with pytest.raises(ValueError, match="not a saved hashindex index"):
        HashIndex.load(tmp_path)
    loaded = HashIndex.load(tmp_path / "ix", bits=64)
    with pytest.raises(ValueError, match="query codes: wrong code width 4 for 64-bit codes"):
        loaded.search(np.zeros((1, 4), np.uint8))


# --------------------------------------------------------------------------- GPU


def test_gpu_asked_for_without_one_warns_and_searches_on_cpu(index, rng):
    import faiss

    from hashindex.gpu import GpuFallbackWarning

    if faiss.get_num_gpus() > 0:
        pytest.skip("a GPU is visible here")
    with pytest.warns(GpuFallbackWarning, match=r"device='gpu' requested but .*; searching on the CPU"):
        on_gpu = HashIndex(64, device="gpu")
    assert on_gpu.device == "cpu"
    db = rng.integers(0, 256, size=(50, 8), dtype=np.uint8)
    on_gpu.add(db)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # reported once, at construction
        D, I = on_gpu.search(db[:5], k=4)
    assert_same_knn(*brute_force_knn(db[:5], db, 4), D, I)
