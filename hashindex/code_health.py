"""Is a set of binary codes healthy? Distinct codes, bit balance, mean pairwise Hamming distance.

Collapsed codes (many images on one code, bits that are the same for nearly every image)
make Hamming ranking a tie-break by database order; these statistics, taken on the training
images after training, show it. Pure numpy: no model is needed, only the packed codes.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from .codes import as_packed_codes, unpack_codes

#: Fewer distinct codes than this fraction of the images: collapsed.
MIN_DISTINCT_FRACTION = 0.9
#: A bit that is on for fewer than this fraction of the images (or off for fewer) is near-constant.
NEAR_CONSTANT = 0.05


@dataclass
class CodeHealth:
    """Statistics of ``images`` packed codes of ``bits`` bits; see :func:`code_health`."""

    images: int
    bits: int
    distinct: int  #: number of different codes
    bit_balance: list[float] = field(repr=False)  #: fraction of images with each bit on
    near_constant_bits: int  #: bits whose balance is below NEAR_CONSTANT or above 1 - NEAR_CONSTANT
    mean_hamming: float  #: mean Hamming distance over all pairs of images (bits / 2 for random codes)

    @property
    def distinct_fraction(self) -> float:
        return self.distinct / self.images if self.images else 0.0

    @property
    def collapsed(self) -> bool:
        return self.distinct_fraction < MIN_DISTINCT_FRACTION or self.near_constant_bits > 0

    def warnings(self) -> list[str]:
        """One line per sign of collapse (empty when healthy)."""
        out = []
        if self.distinct_fraction < MIN_DISTINCT_FRACTION:
            out.append(f"only {self.distinct} distinct codes for {self.images} images "
                       f"({self.distinct_fraction:.0%} < {MIN_DISTINCT_FRACTION:.0%}): Hamming ties will be broken "
                       "by database order")
        if self.near_constant_bits:
            out.append(f"{self.near_constant_bits} of {self.bits} bits are near-constant (on for < "
                       f"{NEAR_CONSTANT:.0%} or > {1 - NEAR_CONSTANT:.0%} of the images)")
        return out

    def summary(self) -> str:
        """One line: distinct codes, bit balance range, mean pairwise Hamming distance."""
        balance = np.asarray(self.bit_balance)
        return (f"{self.distinct}/{self.images} distinct codes ({self.distinct_fraction:.1%}), bit balance "
                f"{balance.min():.2f}-{balance.max():.2f} (mean {balance.mean():.2f}), "
                f"{self.near_constant_bits} near-constant bits, mean pairwise Hamming {self.mean_hamming:.1f} "
                f"of {self.bits}")

    def as_dict(self) -> dict:
        return {**asdict(self), "distinct_fraction": self.distinct_fraction, "collapsed": self.collapsed}


def code_health(codes: np.ndarray, bits: int) -> CodeHealth:
    """Health statistics of packed ``(n, bits // 8)`` uint8 codes.

    The mean pairwise Hamming distance is exact without forming the pairs: bit ``b``, on for
    ``c_b`` of ``n`` images, differs in ``c_b (n - c_b)`` of the ``n (n - 1) / 2`` pairs.
    """
    packed = as_packed_codes(codes, bits, "codes")
    n = len(packed)
    ones = unpack_codes(packed, bits).sum(axis=0, dtype=np.int64) if n else np.zeros(bits, np.int64)
    balance = ones / max(n, 1)
    pairs = n * (n - 1) // 2
    mean_hamming = float((ones * (n - ones)).sum() / pairs) if pairs else 0.0
    distinct = len(np.unique(packed, axis=0)) if n else 0
    near_constant = int(((balance < NEAR_CONSTANT) | (balance > 1 - NEAR_CONSTANT)).sum()) if n else 0
    return CodeHealth(images=n, bits=bits, distinct=distinct, bit_balance=balance.tolist(),
                      near_constant_bits=near_constant, mean_hamming=mean_hamming)
