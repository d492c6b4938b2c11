"""Start-up cost of the command line: the wall time of a command that does no work.

Each case runs in a fresh interpreter ``--repeats`` times; the median is reported:

- ``hashindex --help`` and ``hashindex list`` (neither needs torch);
- the imports of a search (``hashindex search`` encodes its query images, so it loads the CLI,
  the query module, the encoders and torch before any work).

``--compare PATH`` times the same cases with another checkout first on ``PYTHONPATH`` (e.g. the
commit before a change). Writes ``benchmarks/results/startup.json`` and ``startup.md``.

    python benchmarks/startup.py --repeats 5 --compare /path/to/older/checkout
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = ROOT / "benchmarks" / "results"
_CLI = "import sys; from hashapp.cli import main; sys.argv[0] = 'hashindex'; main()"
CASES = {
    "hashindex --help": ["-c", _CLI, "--help"],
    "hashindex list": ["-c", _CLI, "list"],
    "imports of a search": ["-c", "import hashapp.cli, hashapp.query, encoders, encoders.checkpoint"],
}


def time_case(argv: list[str], checkout: Path, repeats: int) -> list[float]:
    """Wall seconds of ``python ARGV`` with ``checkout`` first on the path, ``repeats`` times."""
    env = {**os.environ, "PYTHONPATH": str(checkout)}
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run([sys.executable, *argv], env=env, stdout=subprocess.DEVNULL, check=True, cwd=checkout)
        times.append(time.perf_counter() - start)
    return times


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--compare", type=Path, default=None, help="another checkout to time first")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR)
    args = parser.parse_args(argv)
    checkouts = {"this checkout": ROOT, **({f"{args.compare}": args.compare.resolve()} if args.compare else {})}
    rows = []
    for case, case_argv in CASES.items():
        for label, checkout in reversed(checkouts.items()):
            times = time_case(case_argv, checkout, args.repeats)
            rows.append({"case": case, "checkout": label, "median_s": statistics.median(times), "times_s": times})
            print(f"{case:22s} {label:30s} median {statistics.median(times):.2f} s")
    payload = {"benchmark": "startup", "repeats": args.repeats, "rows": rows, "environment": {
        "python": platform.python_version(), "platform": platform.platform(), "cpu_count": os.cpu_count(),
        "load_average_at_end": os.getloadavg()}}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "startup.json").write_text(json.dumps(payload, indent=2))
    lines = ["| command | checkout | median s | runs s |", "|---|---|---|---|"]
    lines += [f"| {r['case']} | {r['checkout']} | {r['median_s']:.2f} | "
              f"{', '.join(f'{t:.2f}' for t in r['times_s'])} |" for r in rows]
    (args.out / "startup.md").write_text(
        f"Start-up, median of {args.repeats} fresh interpreters; load average at the end "
        f"{os.getloadavg()[0]:.1f}.\n\n" + "\n".join(lines) + "\n")
    return payload


if __name__ == "__main__":
    main(sys.argv[1:])
