"""`hashindex add` / `hashindex remove` on a saved index and its store."""

import json

import numpy as np
import pytest
from click.testing import CliRunner

from hashapp.cli import main
from hashindex import HashIndex, ShardReader, read_store_info
from hashindex.index_dir import read_current


def _invoke(*args):
    result = CliRunner().invoke(main, [str(a) for a in args])
    return result


def test_add_a_new_class_folder_is_voted_for_its_own_images_at_once(tiny_build, new_class_folder):
    index_dir, shards = tiny_build / "index", tiny_build / "shards"
    before = HashIndex.load(index_dir)
    result = _invoke("add", index_dir, new_class_folder)
    assert result.exit_code == 0, result.output
    assert "added 30 image(s)" in result.output and "new classes: 4" in result.output
    index = HashIndex.load(index_dir)
    assert index.class_names == ["0", "1", "2", "3", "4"] and len(index) == len(before) + 30
    # Saved as a delta: the new records only, not the whole index again.
    assert sorted(p.name for p in read_current(index_dir).iterdir()) == ["delta.h5", "meta.json"]
    # The store stays one consistent store: same class list, unique ids, the index's ids.
    store = ShardReader(shards)
    data = store.read(("labels", "ids", "paths"))
    assert store.class_names == index.class_names and np.array_equal(np.sort(data["ids"]), np.sort(index.ids))
    assert np.array_equal(index.ids[:len(before)], before.ids) and index.ids[len(before)] == before.ids.max() + 1
    assert (data["labels"][-30:] == 4).all() and all(p.startswith(str(new_class_folder)) for p in data["paths"][-30:])
    # Each new image is voted class 4 from its 8 nearest neighbours.
    new = sorted(str(p) for p in (new_class_folder / "4").iterdir())
    search = _invoke("search", index_dir, *new, "-k", "8", "--json", "--no-rerank")
    assert search.exit_code == 0, search.output
    items = json.loads(search.output)
    votes = [item["voted_class"] for item in items]
    assert votes.count("4") >= 24, votes  # 80 %: with labels lost or shifted it is 0
    assert all(item["neighbours"][0]["distance"] == 0 for item in items)  # each one is indexed


def test_add_files_with_a_label_then_an_existing_class(tiny_build, new_class_folder):
    index_dir = tiny_build / "index"
    files = sorted((new_class_folder / "4").iterdir())
    assert _invoke("add", index_dir, *files[:5], "--label", "four").exit_code == 0
    result = _invoke("add", index_dir, *files[5:8], "--label", "2")  # an existing class keeps its label
    assert result.exit_code == 0 and "new classes" not in result.output
    index = HashIndex.load(index_dir)
    assert index.class_names == ["0", "1", "2", "3", "four"]
    assert (index.labels[-8:] == [4] * 5 + [2] * 3).all()


def test_add_skips_unreadable_files_and_refuses_nothing_readable(tiny_build, tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png")
    result = _invoke("add", tiny_build / "index", bad, "--label", "x")
    assert result.exit_code == 1 and "no readable image" in result.output and "skipped" in result.output
    assert len(HashIndex.load(tiny_build / "index")) == 120
    assert ShardReader(tiny_build / "shards").class_names == ["0", "1", "2", "3"]  # nothing written


def test_adding_the_same_images_again_stores_and_indexes_them_once(tiny_build, new_class_folder, digits_folder):
    index_dir, shards = tiny_build / "index", tiny_build / "shards"
    assert _invoke("add", index_dir, new_class_folder).exit_code == 0
    after_first = HashIndex.load(index_dir)
    result = _invoke("add", index_dir, new_class_folder)  # a re-run: nothing new
    assert result.exit_code == 0 and "nothing to add: all 30 image(s) are already in" in result.output
    # Images stored by the first encode (relative paths under the image root) are known too,
    # as is a file named twice in one call; only the one new file goes in.
    old = sorted((digits_folder / "0").iterdir())[:2]
    extra = sorted((new_class_folder / "4").iterdir())[0].parent.parent / "extra.png"
    extra.write_bytes(old[0].read_bytes())
    try:
        result = _invoke("add", index_dir, *old, extra, extra, "--label", "0")
    finally:
        extra.unlink()
    assert result.exit_code == 0 and "added 1 image(s)" in result.output, result.output
    assert "2 image(s) already in the index left out" in result.output and "given twice" in result.output
    index = HashIndex.load(index_dir)
    assert len(index) == len(after_first) + 1 and len(ShardReader(shards)) == len(index)
    paths = [p for p in ShardReader(shards).read(fields=("paths",))["paths"]]
    assert len(paths) == len(set(paths))


def test_a_removed_image_can_be_added_again(tiny_build, new_class_folder):
    index_dir = tiny_build / "index"
    assert _invoke("add", index_dir, new_class_folder).exit_code == 0
    assert _invoke("remove", index_dir, "--label", "4").exit_code == 0
    result = _invoke("add", index_dir, new_class_folder)
    assert result.exit_code == 0 and "added 30 image(s)" in result.output, result.output
    assert (HashIndex.load(index_dir).labels == 4).sum() == 30


def _crash_at_index_save(monkeypatch):
    """Make the next index save die after the store was written: a crash in between."""
    import hashindex.persistence

    def crash(*args, **kwargs):
        raise OSError("simulated crash before the index save")
    monkeypatch.setattr(hashindex.persistence, "save_version", crash)


def test_the_next_edit_repairs_what_a_crashed_add_or_removal_left_half_done(tiny_build, new_class_folder,
                                                                           monkeypatch):
    index_dir, shards = tiny_build / "index", tiny_build / "shards"
    with monkeypatch.context() as patch:
        _crash_at_index_save(patch)
        assert _invoke("add", index_dir, new_class_folder).exit_code != 0
    assert len(HashIndex.load(index_dir)) == 120 and len(ShardReader(shards)) == 150  # store only
    assert ShardReader(shards).class_names[-1] == "4"
    result = _invoke("add", index_dir, new_class_folder)  # re-run: adopts the 30, stores nothing twice
    assert result.exit_code == 0, result.output
    assert "recovered 30 record(s)" in result.output and "nothing to add: all 30" in result.output
    index = HashIndex.load(index_dir)
    stored = ShardReader(shards).read(fields=("codes", "labels", "ids"))
    order = np.argsort(stored["ids"])
    assert index.class_names[-1] == "4" and np.array_equal(np.sort(index.ids), stored["ids"][order])
    assert np.array_equal(index.labels_of(stored["ids"][order]), stored["labels"][order])
    D, I = index.search(stored["codes"][order][-30:], k=1)  # the adopted codes are searchable
    assert (D[:, 0] == 0).all()

    with monkeypatch.context() as patch:
        _crash_at_index_save(patch)
        assert _invoke("remove", index_dir, "--label", "4").exit_code != 0
    assert len(HashIndex.load(index_dir)) == 150 and len(ShardReader(shards)) == 120
    assert _invoke("remove", index_dir, "--ids", "0").exit_code == 0  # any later edit finishes it
    index = HashIndex.load(index_dir)
    assert len(index) == 119 and not (index.labels == 4).any() and 0 not in index.ids


def test_remove_by_ids_and_label_reaches_the_store(tiny_build):
    index_dir = tiny_build / "index"
    before = HashIndex.load(index_dir)
    before_ids_of_3 = before.ids[before.labels == 3].tolist()
    result = _invoke("remove", index_dir, "--ids", "0,1,2,999")
    assert result.exit_code == 0 and "removed 3 record(s)" in result.output
    assert sorted(p.name for p in read_current(index_dir).iterdir()) == ["delta.h5", "meta.json"]
    result = _invoke("remove", index_dir, "--label", "3")  # a quarter of the index: saved in full
    assert result.exit_code == 0 and "removed 30 record(s)" in result.output
    index = HashIndex.load(index_dir)
    assert len(index) == 87 and not np.isin(index.ids, [0, 1, 2]).any() and not (index.labels == 3).any()
    # The store lists them removed (its shard files unchanged): a rebuild does not bring them back.
    store = read_store_info(tiny_build / "shards")
    assert store.num_records == 120 and store.removed_ids == sorted([0, 1, 2] + before_ids_of_3)
    assert len(ShardReader(tiny_build / "shards")) == 87
    rebuilt = HashIndex.from_shards(tiny_build / "shards", progress=False)
    np.testing.assert_array_equal(np.sort(rebuilt.ids), np.sort(index.ids))
    np.testing.assert_array_equal(rebuilt.labels[np.argsort(rebuilt.ids)], index.labels[np.argsort(index.ids)])
    for bad in (("--ids", "a,b"), ("--label", "nope"), ()):
        result = _invoke("remove", index_dir, *bad)
        assert result.exit_code != 0 and "Error" in result.output


def test_add_needs_the_index_store(tiny_build, tmp_path, new_class_folder):
    from hashapp.update import add_images

    index = HashIndex.load(tiny_build / "index")
    index.metadata.pop("shards")
    index.save(tmp_path / "bare")
    with pytest.raises(ValueError, match="records no shard store"):
        add_images(tmp_path / "bare", [new_class_folder])


def test_add_with_another_model_is_refused_and_changes_nothing(tiny_build, new_class_folder, tmp_path):
    from encoders import create_encoder, load_encoder, save_encoder

    made_by = load_encoder(HashIndex.load(tiny_build / "index").metadata["model"])
    other = save_encoder(create_encoder(made_by.method, **made_by.config), tmp_path / "other.pt")  # new weights
    result = _invoke("add", tiny_build / "index", new_class_folder, "--model", other)
    assert result.exit_code == 1 and "holds codes of another model" in result.output
    assert len(HashIndex.load(tiny_build / "index")) == 120
    assert ShardReader(tiny_build / "shards").class_names == ["0", "1", "2", "3"]
