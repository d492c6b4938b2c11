"""Day-two edits of a saved index: add images encoded with the index's own model, remove records.

An add appends the new records to the index's shard store (one new shard file; new class
names appended to the store's list, so existing labels never change) and then saves the
index with the new codes added. A removal marks the records removed in the store first (see
:mod:`hashindex.store.removal`: an index rebuilt from the store leaves them out too), then
removes them from the index. Nothing already stored is re-encoded, and a flat or IVF index is
neither rebuilt nor rewritten: its save is a delta version holding only the change (see
:meth:`HashIndex.save`). Each edit runs inside :func:`~hashindex.persistence.edit_saved`: under the
index directory's lock, on the latest saved version, so two writers (a CLI ``add`` and a
running ``serve-http``) never lose each other's change.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import click
import numpy as np

from hashindex.index import HashIndex
from hashindex.persistence import edit_saved
from hashindex.store import ShardReader, ShardWriter, extend_class_names, read_store_info, remove_from_store
from hashindex.store.format import last_id

from .query import PathLookup


KNOWN = "already in the index"  #: how a skipped image that the index holds is reported


@dataclass
class AddReport:
    """What an add did: the ids given to the new records, the classes it created, skipped files."""

    ids: np.ndarray
    new_classes: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  #: (path, reason)
    recovered: int = 0  #: records a stopped earlier add had left in the store only (see reconcile_with_store)


def collect_images(sources: Sequence["str | os.PathLike"], label: str | None = None) -> list[tuple[str, str | None]]:
    """``(path, class name or None)`` of every image in ``sources`` (files or folders).

    A folder with class sub-folders gives each image its sub-folder's class; other images get
    ``label`` (None: unlabelled). ``label`` given overrides the sub-folders.
    """
    from encoders.data import list_images

    found: list[tuple[str, str | None]] = []
    for source in sources:
        if Path(source).is_dir():
            images = list_images(source, supervised=False)
            found.extend((path, label if label is not None or cls < 0 else images.classes[cls])
                         for path, cls in images.samples)
        elif Path(source).is_file():
            found.append((os.fspath(source), label))
        else:
            raise FileNotFoundError(f"{source}: no such image file or folder")
    return found


def store_of(index: HashIndex) -> Path:
    """The shard store the index was built from (recorded in its metadata)."""
    store = index.metadata.get("shards")
    if not store or not Path(store).is_dir():
        raise ValueError("the index records no shard store (build it with `hashindex index SHARDS`); "
                         "images can only be added to an index that has one")
    return Path(store)


def already_stored(index: HashIndex, paths: Sequence[str], lookup: PathLookup | None = None) -> dict[int, str]:
    """``{position: reason}`` for the paths the index already holds (stored by an earlier encode
    or add) and for repeats within ``paths``: adding them again would count their votes twice.
    ``lookup``: a :class:`PathLookup` of the index to reuse (it caches the shards it read)."""
    known = (lookup or PathLookup(index)).stored_ids(list(paths), index.ids)
    first: dict[str, int] = {}
    skip = {}
    for position, path in enumerate(paths):
        if path in known:
            skip[position] = f"{KNOWN} as id {known[path]}"
        elif first.setdefault(os.path.abspath(path), position) != position:
            skip[position] = "given twice"
    return skip


def append_records(index: HashIndex, codes: np.ndarray, features: np.ndarray, paths: Sequence[str],
                   classes: Sequence[str | None], lookup: PathLookup | None = None) -> AddReport:
    """Append encoded images to the index's store and to the index in memory (the caller saves it,
    see :func:`add_images`). The index is first reconciled with its store (see
    :func:`reconcile_with_store`); images it already holds (see :func:`already_stored`) are left out
    and listed in the report's ``skipped``."""
    recovered = reconcile_with_store(index)[0]
    skip = already_stored(index, paths, lookup)
    keep = [i for i in range(len(paths)) if i not in skip]
    report = AddReport(ids=np.empty(0, np.int64), recovered=recovered,
                       skipped=[(paths[i], reason) for i, reason in skip.items()])
    if not keep:
        return report
    store = store_of(index)
    info = read_store_info(store)
    names = extend_class_names(store, [classes[i] for i in keep if classes[i] is not None])
    report.new_classes = names[len(index.class_names):]
    labels = np.array([-1 if classes[i] is None else names.index(classes[i]) for i in keep], dtype=np.int64)
    features = features[keep].astype(info.feature_dtype) if info.feature_dim is not None else None
    # shard_size = the batch: one shard whose HDF5 chunks fit it (default-sized chunks made a
    # 50-image add write 1.6 MB of mostly empty chunks).
    with ShardWriter(store, info.bits, feature_dim=info.feature_dim, feature_dtype=info.feature_dtype,
                     class_names=names, resume=True, shard_size=len(keep)) as writer:
        report.ids = writer.add(codes[keep], labels=labels, features=features,
                                paths=[os.path.abspath(paths[i]) for i in keep])  # absolute: outside the image root
    index.class_names = names
    index.add(codes[keep], labels=labels, ids=report.ids,
              features=features if index.feature_dim is not None else None)
    return report


def reconcile_with_store(index: HashIndex) -> tuple[int, int]:
    """Bring the index in memory in line with its store where an edit stopped half-way (a crash
    between the store write and the index save): records the store holds and the index lacks are
    added to it (with class names the store appended), records the store lists removed leave it.
    Returns ``(added, removed)``; only shards whose live count differs from the index's are read."""
    store = store_of(index)
    info = read_store_info(store)  # the manifest only: shards are opened where counts differ
    if info.bits != index.bits:
        raise ValueError(f"{store}: {info.bits}-bit store for a {index.bits}-bit index")
    if info.class_names[:len(index.class_names)] != index.class_names:
        raise ValueError(f"{store}: the store's class names {info.class_names} do not extend the index's "
                         f"{index.class_names}; rebuild the index from the store first")
    index.class_names = list(info.class_names)
    store_removed = np.asarray(info.removed_ids, dtype=np.int64)
    removed = index.remove(store_removed) if len(store_removed) else 0
    held = index.ids
    if len(held) > 1 and not (held[1:] > held[:-1]).all():  # ids usually arrive in order: no sort
        held = np.sort(held)

    def within(ids: np.ndarray, entry: dict) -> int:
        return int(np.searchsorted(ids, last_id(entry), "right") - np.searchsorted(ids, entry["first_id"]))

    added = 0
    for entry in info.shards:
        if within(held, entry) + within(store_removed, entry) >= entry["count"]:
            continue
        reader = ShardReader(store, files=[entry["file"]])
        with_features = index.feature_dim is not None and reader.feature_dim is not None
        shard = reader.read_shard(store / entry["file"],
                                  ("codes", "labels", "ids") + (("features",) if with_features else ()))
        new = ~np.isin(shard.ids, held)
        index.add(shard.codes[new], labels=shard.labels[new], ids=shard.ids[new],
                  features=shard.features[new] if with_features else None)
        added += int(new.sum())
    return added, removed


def add_images(index_dir: "str | os.PathLike", sources: Sequence["str | os.PathLike"], *, label: str | None = None,
               model_path: "str | os.PathLike | None" = None, batch_size: int = 64,
               index: HashIndex | None = None, model=None) -> AddReport:
    """Encode the images in ``sources`` with the index's model and add them to its store and index
    (see :func:`collect_images` for labels). ``index`` / ``model``: already loaded ones to use."""
    from encoders.encode import encode_files

    from .query import load_index_model

    index = HashIndex.load(index_dir) if index is None else index
    if model is None:
        model = load_index_model(index, model_path, f"index {index_dir}")
    items = collect_images(sources, label)
    # Known images are left out before encoding (a re-run on a grown folder encodes only the new
    # ones); append_records checks again under the lock, against the latest saved version.
    lookup = PathLookup(index)  # one read of the stored paths serves both checks
    known = already_stored(index, [path for path, _ in items], lookup)
    skipped = [(items[i][0], reason) for i, reason in known.items()]
    items = [item for i, item in enumerate(items) if i not in known]
    codes, features, encoded, failed = encode_files(model, [path for path, _ in items], batch_size=batch_size)
    if not encoded:
        return AddReport(ids=np.empty(0, np.int64), skipped=skipped + failed)
    with edit_saved(index_dir, index) as latest:
        report = append_records(latest, codes, features, [items[i][0] for i in encoded],
                                [items[i][1] for i in encoded], lookup)
    report.skipped = skipped + failed + report.skipped
    return report


def drop_records(index: HashIndex, *, ids: Sequence[int] | None = None, label: str | None = None) -> int:
    """Remove records by id and / or class name from the index's store (if it has one) and then
    from the index in memory (the caller saves it); returns how many left the index."""
    if ids is None and label is None:
        raise ValueError("give ids or a label to remove")
    chosen = np.asarray(list(ids or []), dtype=np.int64)
    if label is not None:
        if label not in index.class_names:
            raise ValueError(f"unknown class {label!r}; the index has {index.class_names}")
        chosen = np.concatenate([chosen, index.ids[index.labels == index.class_names.index(label)]])
    if index.metadata.get("shards"):
        reconcile_with_store(index)
        remove_from_store(store_of(index), chosen)
    return index.remove(chosen)


def remove_records(index_dir: "str | os.PathLike", *, ids: Sequence[int] | None = None,
                   label: str | None = None) -> int:
    """Remove records by id and / or class name from the saved index and its store (see
    :func:`drop_records`); returns how many went."""
    with edit_saved(index_dir) as index:
        return drop_records(index, ids=ids, label=label)


@click.command("add")
@click.argument("index_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.argument("sources", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
@click.option("--label", default=None, help="Class name for every added image (new names are allowed). "
                                            "Default: a folder's class sub-folders, else unlabelled.")
@click.option("--model", "model_path", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="Encoder file (default: the one recorded with the index).")
@click.option("--batch-size", type=click.IntRange(min=1), default=64)
def add_command(index_dir, sources, label, model_path, batch_size):
    """Encode the images in SOURCES (files or folders) with the index's model and add them
    to the index at INDEX_DIR and to its shard store."""
    report = add_images(index_dir, sources, label=label, model_path=model_path, batch_size=batch_size)
    known = [path for path, reason in report.skipped if reason.startswith(KNOWN)]
    for path, reason in report.skipped:
        if not reason.startswith(KNOWN):
            click.echo(f"skipped {path}: {reason}", err=True)
    note = f" ({len(known)} image(s) already in the index left out)" if known else ""
    if report.recovered:
        click.echo(f"recovered {report.recovered} record(s) that a stopped add had left in the store only")
    if len(report.ids):
        click.echo(f"added {len(report.ids)} image(s) to {index_dir} as ids {report.ids[0]}..{report.ids[-1]}"
                   + (f"; new classes: {', '.join(report.new_classes)}" if report.new_classes else "") + note)
    elif known and len(known) == len(report.skipped):
        click.echo(f"nothing to add: all {len(known)} image(s) are already in {index_dir}")
    else:
        raise click.ClickException("no readable image to add" + note)


@click.command("remove")
@click.argument("index_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--ids", default=None, help="Comma-separated ids to remove.")
@click.option("--label", default=None, help="Remove every record of this class.")
def remove_command(index_dir, ids, label):
    """Remove records from the index at INDEX_DIR, and from its shard store, by id and / or class."""
    try:
        id_list = None if ids is None else [int(i) for i in ids.split(",") if i.strip()]
    except ValueError as exc:
        raise click.BadParameter(f"--ids takes comma-separated integers ({exc})") from exc
    if id_list is None and label is None:
        raise click.UsageError("give --ids and / or --label")
    click.echo(f"removed {remove_records(index_dir, ids=id_list, label=label)} record(s) from {index_dir}")

