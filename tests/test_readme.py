"""The README's first Python example runs as written."""

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_first_python_example_runs(tmp_path, monkeypatch):
    block = re.search(r"```python\n(.*?)```", README.read_text(), re.S).group(1)
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(block, "README.md", "exec"), namespace)
    index = namespace["index"]
    assert namespace["D"].shape == (5, 8) and len(index) == 10_000
    assert (tmp_path / "my-index" / "CURRENT").exists()
