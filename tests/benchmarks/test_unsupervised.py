"""Smoke run of the unsupervised comparison on a slice of the digits: every output written,
every figure a valid precision / recall value."""

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "unsupervised.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_unsupervised", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop(spec.name, None)


def test_tiny_run_writes_json_table_and_curves(bench, tmp_path):
    methods = ["lsh", "itq", "sph", "gan_hash"]
    payload = bench.run(["digits"], methods, [16], tmp_path, limit=400, n_queries=50, gan_epochs=1, echo=lambda s: None)
    assert (tmp_path / "unsupervised.json").is_file()
    assert json.loads((tmp_path / "unsupervised.json").read_text())["results"][0]["database"] == 350
    png = tmp_path / "unsupervised_pr_digits.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = (tmp_path / "unsupervised.md").read_text()
    assert "| ITQ |" in table and "digits 16 bits" in table and "P@100" in table

    rows = payload["results"][0]["rows"]
    assert [r["method"] for r in rows] == methods
    for r in rows:
        for name in ("mAP", "P@10", "P@100", "P@r2"):
            assert 0.0 <= r[name] <= 1.0, (r["method"], name)
        recall = np.array(r["curve"]["recall"])
        assert len(recall) == 17 and np.all(np.diff(recall) >= -1e-12)
        assert recall[-1] == pytest.approx(1.0)  # radius = bits retrieves everything
        # At radius = bits every database item is retrieved: precision = the share of the query's class.
        assert r["curve"]["precision"][-1] == pytest.approx(rows[0]["curve"]["precision"][-1])


def test_render_only_redraws_from_the_json(bench, tmp_path):
    bench.run(["digits"], ["lsh", "pcah"], [16], tmp_path, limit=200, n_queries=20, echo=lambda s: None)
    (tmp_path / "unsupervised.md").unlink()
    bench.main(["--render-only", "--out", str(tmp_path)])
    assert "| PCAH |" in (tmp_path / "unsupervised.md").read_text()
