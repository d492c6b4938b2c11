"""Smoke test of the start-up benchmark: every case runs and lands in the outputs (no timing assertions)."""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import startup  # noqa: E402


def test_every_case_is_timed_and_written(tmp_path):
    payload = startup.main(["--repeats", "1", "--out", str(tmp_path)])
    saved = json.loads((tmp_path / "startup.json").read_text())
    assert [r["case"] for r in saved["rows"]] == list(startup.CASES) == [r["case"] for r in payload["rows"]]
    assert all(len(r["times_s"]) == 1 and r["median_s"] > 0 for r in saved["rows"])
    assert "| hashindex list | this checkout |" in (tmp_path / "startup.md").read_text()
