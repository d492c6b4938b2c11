"""Every Python example of the README runs as written (each in a fresh namespace and directory)."""

import re
from pathlib import Path

import numpy as np
import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
SNIPPETS = re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), re.S)


def _params():
    for i, block in enumerate(SNIPPETS):
        ray = "import ray" in block
        yield pytest.param(i, block, id=f"snippet{i}", marks=[pytest.mark.slow] if ray else [])


def _run(block: str, index: int) -> dict:
    namespace: dict = {}
    exec(compile(block, f"README.md python example {index}", "exec"), namespace)
    return namespace


def test_the_readme_has_python_examples():
    assert len(SNIPPETS) >= 3


@pytest.mark.parametrize("index,block", list(_params()))
def test_python_example_runs(index, block, tmp_path, monkeypatch):
    if "import ray" in block:
        pytest.importorskip("ray")
    monkeypatch.chdir(tmp_path)
    namespace = _run(block, index)
    D, I = namespace["D"], namespace["I"]
    assert D.dtype == np.int32 and I.dtype == np.int64 and D.shape == I.shape == (5, 8)
    assert np.all(np.diff(D, axis=1) >= 0)  # nearest first
    if "result" in namespace:  # the image pipeline: database images query themselves
        assert np.all(D[:, 0] == 0)
    if index == 0:
        assert len(namespace["index"]) == 10_000 and (tmp_path / "my-index" / "CURRENT").exists()
