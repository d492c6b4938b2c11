"""The engine registry: built-ins, plug-ins by entry point, the core staying torch-free."""

import configparser
import logging
from importlib import metadata
from pathlib import Path

import faiss
import numpy as np
import pytest

from hashindex import MISSING_DISTANCE
from hashindex import engines as engines_mod
from hashindex.engines import (Engine, EngineUnavailable, FaissCpuEngine, create_engine, list_engines,
                               register_engine)
from hashindex.gpu import gpu_unavailable_reason, order_ties_by_row
from hashindex.testing import brute_force_knn, tie_heavy_codes

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def registry(monkeypatch):
    """A private copy of the registry, rediscovering plug-ins from whatever ``_entry_points`` returns."""
    monkeypatch.setattr(engines_mod, "_FACTORIES", dict(engines_mod._FACTORIES))
    monkeypatch.setattr(engines_mod, "_discovered", False)
    return engines_mod


def test_builtins_are_listed_and_filtered():
    assert {"faiss-cpu", "faiss-gpu"} <= set(list_engines())
    assert list_engines("faiss-*") == ["faiss-cpu", "faiss-gpu"]


def test_unknown_engine_lists_the_known_ones():
    with pytest.raises(ValueError, match=r"unknown engine 'nope'; available: .*faiss-cpu, faiss-gpu"):
        create_engine("nope")


def test_a_taken_name_refuses_another_factory(registry):
    register_engine("faiss-cpu", FaissCpuEngine)  # the same factory again: fine
    with pytest.raises(ValueError, match="'faiss-cpu' is already registered"):
        register_engine("faiss-cpu", lambda: None)


def test_plug_ins_come_from_entry_points_and_a_broken_one_is_logged(registry, monkeypatch, caplog):
    points = [metadata.EntryPoint("from-plugin", "hashindex.engines:FaissCpuEngine", engines_mod.ENTRY_POINT_GROUP),
              metadata.EntryPoint("broken", "no_such_module_here:Engine", engines_mod.ENTRY_POINT_GROUP)]
    monkeypatch.setattr(registry, "_entry_points", lambda: points)
    with caplog.at_level(logging.WARNING, "hashindex.engines"):
        names = list_engines()
    assert "from-plugin" in names and "broken" not in names
    assert "'broken' (no_such_module_here:Engine) failed to load" in caplog.text
    assert isinstance(create_engine("from-plugin"), FaissCpuEngine)


def test_setup_cfg_declares_the_torch_engine():
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    declared = config["options.entry_points"][engines_mod.ENTRY_POINT_GROUP].split("=")
    point = metadata.EntryPoint(declared[0].strip(), declared[1].strip(), engines_mod.ENTRY_POINT_GROUP)
    pytest.importorskip("torch")
    from hashtorch import TorchEngine

    assert point.name == "torch" and point.load() is TorchEngine
    assert "hashtorch" in config["options.packages.find"]["include"].split()


def test_faiss_cpu_engine_equals_brute_force(rng):
    db = tie_heavy_codes(rng, 2000, 64)
    q = np.concatenate([db[:10], rng.integers(0, 256, size=(10, 8), dtype=np.uint8)])
    engine = create_engine("faiss-cpu")
    assert isinstance(engine, Engine) and engine.ntotal == 0
    assert (engine.search(q, 3)[1] == -1).all()
    engine.fit(db[:1500])
    engine.add(db[1500:])
    for k in (1, 16, 2100):
        D, I = engine.search(q, k)
        D_ref, I_ref = brute_force_knn(q, db, k)
        np.testing.assert_array_equal(D, D_ref)
        np.testing.assert_array_equal(I, I_ref)
    assert (engine.search(q, 2100)[0][:, 2000:] == MISSING_DISTANCE).all()


def test_an_engine_over_a_shared_index_does_not_fill_it(rng):
    index = faiss.IndexBinaryFlat(64)
    index.add(rng.integers(0, 256, size=(30, 8), dtype=np.uint8))
    engine = FaissCpuEngine.over(index)
    assert engine.ntotal == 30
    with pytest.raises(ValueError, match="owner fills"):
        engine.add(rng.integers(0, 256, size=(3, 8), dtype=np.uint8))


def test_faiss_gpu_engine_without_a_gpu_says_why():
    if gpu_unavailable_reason() is None:
        pytest.skip("a GPU is visible here")
    with pytest.raises(EngineUnavailable, match="engine 'faiss-gpu' cannot run here: .*(faiss-cpu|get_num_gpus)"):
        create_engine("faiss-gpu")


@pytest.mark.parametrize("shape,ascending", [((50, 40), True), ((50, 40), False),
                                             ((1100, 1000), True)])  # the last is sorted on threads
def test_order_ties_by_row_equals_a_lexsort(rng, shape, ascending):
    D = rng.integers(0, 5, size=shape).astype(np.int32)
    if ascending:  # as Faiss returns them; the other case reads distances back from the keys
        D.sort(axis=1)
    rows = np.stack([rng.permutation(5000)[: shape[1]] for _ in range(shape[0])])
    rows[::7, -3:] = -1  # missing neighbours, last
    D[rows < 0] = MISSING_DISTANCE
    order = np.lexsort((np.where(rows < 0, np.iinfo(np.int64).max, rows), D), axis=1)
    D2, rows2 = order_ties_by_row(D, rows)
    np.testing.assert_array_equal(D2, np.take_along_axis(D, order, axis=1))
    np.testing.assert_array_equal(rows2, np.take_along_axis(rows, order, axis=1))
    assert D2.dtype == np.int32 and rows2.dtype == np.int64
