import os
import resource
import subprocess
import sys

import pytest

from encoders import memory
from encoders.memory import keep_freed_memory

pytestmark = pytest.mark.skipif(memory._LIBC is None, reason="glibc malloc only")

#: Counts minor page faults while 64 MB blocks (above glibc's largest mmap threshold, 32 MB)
#: are malloc'ed, written and freed 8 times, outside and then inside keep_freed_memory. It runs
#: in a fresh interpreter, so that the test process's heap history is not measured, with numpy's
#: huge pages off, so that a fault is one 4 KB page.
_PROBE = """
import resource
import numpy as np
from encoders.memory import keep_freed_memory

np._core.multiarray._set_madvise_hugepage(False)

def faults():
    start = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(8):
        block = np.ones(16 * 2**20, np.float32)
        del block
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - start

outside = faults()
with keep_freed_memory():
    inside = faults()
print(outside, inside)
"""


def test_freed_blocks_are_reused_inside():
    out = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    outside, inside = map(int, out.stdout.split())
    pages = 64 * 2**20 // resource.getpagesize()
    # Outside, each fresh mmap faults in every page again; inside, the first block does and the
    # others reuse its pages.
    assert outside >= 7 * pages
    assert inside <= 2 * pages


def test_nesting_keeps_the_setting_until_the_outer_block_ends(monkeypatch):
    calls = []

    class Recorder:
        def mallopt(self, param, value):
            calls.append(("mallopt", param, value))

        def malloc_trim(self, pad):
            calls.append(("malloc_trim", pad))

    monkeypatch.setattr(memory, "_LIBC", Recorder())
    with keep_freed_memory():
        with keep_freed_memory():
            pass
        assert len(calls) == 2  # the inner block neither set nor restored anything
    assert calls == [("mallopt", memory._M_MMAP_MAX, 0), ("mallopt", memory._M_TRIM_THRESHOLD, memory._NEVER_TRIM),
                     ("mallopt", memory._M_MMAP_MAX, memory._DEFAULT_MMAP_MAX),
                     ("mallopt", memory._M_TRIM_THRESHOLD, memory._DEFAULT_TRIM_THRESHOLD), ("malloc_trim", 0)]
    with pytest.raises(RuntimeError):
        with keep_freed_memory():
            raise RuntimeError("an error inside still restores the defaults")
    assert calls[-1] == ("malloc_trim", 0) and memory._depth == 0
