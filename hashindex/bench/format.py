"""Number formatting shared by the benchmark's tables, plots and command output."""

from __future__ import annotations


def fmt_n(n: int) -> str:
    for unit, div in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= div:
            return f"{n / div:g}{unit}"
    return str(n)


def fmt(x, digits=3) -> str:
    if x is None:
        return "—"
    if isinstance(x, float):
        if x == 0:
            return "0"
        if abs(x) >= 1000:
            return f"{x:,.0f}"
        return f"{x:.{digits}g}"
    return str(x)
