"""Is a set of binary codes healthy? Distinct codes, bit balance, mean pairwise Hamming distance.

Collapsed codes (many images on one code, bits that are the same for nearly every image)
make Hamming ranking a tie-break by database order; these statistics, taken on the training
images after training, show it. Given the images' labels, shared codes are told apart: codes
shared only within a class (what classification training gives: a class maps to one code or
a few) are expected and reported as such; codes shared across classes are collapse. Pure
numpy: no model is needed, only the packed codes.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from .codes import as_packed_codes, unpack_codes

#: Fewer distinct codes than this fraction of the images: collapsed.
MIN_DISTINCT_FRACTION = 0.9
#: A bit that is on for fewer than this fraction of the images (or off for fewer) is near-constant.
NEAR_CONSTANT = 0.05
#: With labels: more images than this fraction on a code that another class also holds is collapse.
MAX_MIXED_FRACTION = 0.01


@dataclass
class CodeHealth:
    """Statistics of ``images`` packed codes of ``bits`` bits; see :func:`code_health`."""

    images: int
    bits: int
    distinct: int  #: number of different codes
    bit_balance: list[float] = field(repr=False)  #: fraction of images with each bit on
    near_constant_bits: int  #: bits whose balance is below NEAR_CONSTANT or above 1 - NEAR_CONSTANT
    mean_hamming: float  #: mean Hamming distance over all pairs of images (bits / 2 for random codes)
    classes: int | None = None  #: number of classes (None: no labels given)
    mixed: int | None = None  #: images whose code an image of another class also has (None: no labels)

    @property
    def distinct_fraction(self) -> float:
        return self.distinct / self.images if self.images else 0.0

    @property
    def class_level(self) -> bool:
        """Few distinct codes, but shared only within classes (at most MAX_MIXED_FRACTION of the
        images on a code another class holds) and at least one per class: classification codes."""
        return (self.mixed is not None and self.distinct_fraction < MIN_DISTINCT_FRACTION
                and self.distinct >= self.classes and self.mixed <= MAX_MIXED_FRACTION * self.images)

    @property
    def collapsed(self) -> bool:
        few = self.distinct_fraction < MIN_DISTINCT_FRACTION and not self.class_level
        return few or self.near_constant_bits > 0

    def notes(self) -> list[str]:
        """Lines on what is expected but worth knowing: codes shared only within classes."""
        if not self.class_level:
            return []
        return [f"{self.distinct} distinct codes for {self.images} images of {self.classes} classes, shared only "
                f"within a class ({self.mixed} images on a code of two classes): classification codes give a class "
                "one code or a few, so Hamming ties within a class are broken by database order"]

    def warnings(self) -> list[str]:
        """One line per sign of collapse (empty when healthy)."""
        out = []
        if self.distinct_fraction < MIN_DISTINCT_FRACTION and not self.class_level:
            out.append(f"only {self.distinct} distinct codes for {self.images} images "
                       f"({self.distinct_fraction:.0%} < {MIN_DISTINCT_FRACTION:.0%}): Hamming ties will be broken "
                       "by database order" + ("" if self.mixed is None else
                                              f"; {self.mixed} images share a code with another class"))
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
        return {**asdict(self), "distinct_fraction": self.distinct_fraction, "class_level": self.class_level,
                "collapsed": self.collapsed}


def code_health(codes: np.ndarray, bits: int, labels: np.ndarray | None = None) -> CodeHealth:
    """Health statistics of packed ``(n, bits // 8)`` uint8 codes, and with integer ``labels``
    ``(n,)`` how many images share their code with another class.

    The mean pairwise Hamming distance is exact without forming the pairs: bit ``b``, on for
    ``c_b`` of ``n`` images, differs in ``c_b (n - c_b)`` of the ``n (n - 1) / 2`` pairs.
    """
    packed = as_packed_codes(codes, bits, "codes")
    n = len(packed)
    ones = unpack_codes(packed, bits).sum(axis=0, dtype=np.int64) if n else np.zeros(bits, np.int64)
    balance = ones / max(n, 1)
    pairs = n * (n - 1) // 2
    mean_hamming = float((ones * (n - ones)).sum() / pairs) if pairs else 0.0
    # code_of[i]: which distinct code image i has.
    distinct_codes, code_of = np.unique(packed, axis=0, return_inverse=True)
    code_of = code_of.reshape(-1)
    near_constant = int(((balance < NEAR_CONSTANT) | (balance > 1 - NEAR_CONSTANT)).sum()) if n else 0
    classes = mixed = None
    if labels is not None:
        labels = np.asarray(labels).reshape(-1)
        if len(labels) != n:
            raise ValueError(f"labels: expected {n} labels (one per code), got {len(labels)}")
        classes = len(np.unique(labels))
        mixed = _images_on_mixed_codes(code_of, labels)
    return CodeHealth(images=n, bits=bits, distinct=len(distinct_codes), bit_balance=balance.tolist(),
                      near_constant_bits=near_constant, mean_hamming=mean_hamming, classes=classes, mixed=mixed)


def _images_on_mixed_codes(code_of: np.ndarray, labels: np.ndarray) -> int:
    """How many images have a code (``code_of``: index of each image's distinct code) that
    images of two or more classes share."""
    if not len(code_of):
        return 0
    code_class = np.unique(np.stack([code_of, np.unique(labels, return_inverse=True)[1].reshape(-1)]), axis=1)
    classes_per_code = np.bincount(code_class[0], minlength=code_of.max() + 1)
    return int((classes_per_code[code_of] > 1).sum())
