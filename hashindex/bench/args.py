"""Command-line argument types shared by the benchmark scripts."""

from __future__ import annotations

import argparse
from typing import Callable, Iterable


def name_list(known: Iterable[str], what: str) -> Callable[[str], list[str]]:
    """An argparse ``type``: a comma-separated list of names, each one of ``known``, in the order given."""
    known = list(known)

    def parse(text: str) -> list[str]:
        names = [n for n in text.split(",") if n]
        unknown = [n for n in names if n not in known]
        if unknown:
            raise argparse.ArgumentTypeError(f"unknown {what} {unknown}; expected from {', '.join(known)}")
        return names

    return parse
