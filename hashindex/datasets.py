"""Data sources shared by the tests, the demo and the benchmarks.

- :func:`synthetic_codes`: seeded binary codes, uniform or clustered like trained encoder output,
  with queries held out of the database or perturbed from it.
- :func:`benchmark_codes`: the benchmark's named data kinds (``clustered10000-perturbed``, ``encoder``).
- :func:`tiled_codes`: a real encoder's codes copied up to a large collection, with per-copy bit noise.
- :func:`load_digits_images` / :func:`load_mnist`: real labelled images (embedded / shared).
- :func:`write_image_folder`: turn arrays of images into a class-per-sub-folder tree.
"""

from __future__ import annotations

import gzip
import os
import re
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .codes import check_bits

MNIST_ENV = "HASHINDEX_MNIST"


@dataclass(frozen=True)
class SyntheticCodes:
    """Seeded database / query codes with the class each was drawn from. ``query_sources``:
    the database row each query was perturbed from, ``-1`` for a fresh (held-out) query."""

    database: np.ndarray
    queries: np.ndarray
    database_labels: np.ndarray
    query_labels: np.ndarray
    generator: str
    query_sources: np.ndarray | None = None


#: How queries relate to the database (see :func:`synthetic_codes`).
QUERY_MODES = ("fresh", "perturbed")


def synthetic_codes(
    n_database: int,
    n_queries: int,
    bits: int,
    kind: str = "uniform",
    *,
    n_clusters: int = 100,
    flip_probability: float = 0.1,
    queries: str = "fresh",
    query_flip_probability: float = 0.05,
    seed: int = 0,
) -> SyntheticCodes:
    """Draw packed codes. ``kind="uniform"``: every bit a fair coin (the worst case
    for partitioned indexes). ``kind="clustered"``: ``n_clusters`` random centre codes,
    each code a centre with every bit flipped with ``flip_probability`` (what a trained
    encoder's codes look like: tight classes, far apart).

    ``queries="fresh"``: more codes from the same generator, held out of the database.
    ``queries="perturbed"``: random database codes with every bit flipped with
    ``query_flip_probability`` (a near-duplicate of a stored image, itself not stored).
    The database depends on the seed and sizes only, not on the query mode."""
    bits = check_bits(bits)
    if queries not in QUERY_MODES:
        raise ValueError(f"unknown query mode {queries!r}; expected one of {QUERY_MODES}")
    rng = np.random.default_rng(seed)
    nbytes = bits // 8
    total = n_database + n_queries  # fresh queries drawn in every mode: one seed, one database
    if kind == "uniform":
        codes = rng.integers(0, 256, size=(total, nbytes), dtype=np.uint8)
        labels = np.full(total, -1, dtype=np.int64)
        generator = f"uniform random bits, seed {seed}"
    elif kind == "clustered":
        centres = rng.integers(0, 256, size=(n_clusters, nbytes), dtype=np.uint8)
        labels = rng.integers(0, n_clusters, size=total).astype(np.int64)
        codes = centres[labels]
        codes ^= _flip_mask(rng, total, bits, flip_probability)
        generator = (
            f"{n_clusters} random centre codes, each bit flipped with p={flip_probability}, seed {seed}"
        )
    else:
        raise ValueError(f"unknown synthetic code kind {kind!r}; expected 'uniform' or 'clustered'")
    database, database_labels = codes[:n_database], labels[:n_database]
    if queries == "fresh":
        return SyntheticCodes(database, codes[n_database:], database_labels, labels[n_database:],
                              generator + "; queries: fresh codes (not in the database)",
                              np.full(n_queries, -1, dtype=np.int64))
    sources = rng.choice(n_database, size=n_queries, replace=False)
    query_codes, query_labels = perturbed_queries(database, database_labels, sources, query_flip_probability, rng)
    return SyntheticCodes(database, query_codes, database_labels, query_labels,
                          generator + f"; queries: database codes with each bit flipped with "
                                      f"p={query_flip_probability}", sources)


#: Per-copy bit-flip probability when encoder codes are tiled up to a database size.
ENCODER_COPY_NOISE = 0.05
_DATA_KIND = re.compile(r"(uniform|clustered(\d*)|encoder)(-perturbed)?")


def benchmark_codes(data: str, n_database: int, n_queries: int, bits: int, *, seed: int = 0,
                    encoder_codes: str | os.PathLike | None = None) -> SyntheticCodes:
    """Codes of a named data kind: ``uniform``; ``clustered`` (100 centres) or ``clustered<C>``
    (``C`` centres); ``encoder`` (the base codes in the ``encoder_codes`` .npz file written by
    ``benchmarks/encoder_codes.py``, tiled to ``n_database`` with :data:`ENCODER_COPY_NOISE`;
    queries: its held-out codes). A ``-perturbed`` suffix makes the queries database codes with
    5 % of their bits flipped instead of held-out codes."""
    match = _DATA_KIND.fullmatch(data)
    if not match:
        raise ValueError(f"unknown data kind {data!r}; expected uniform, clustered[<centres>] or encoder, "
                         "optionally with -perturbed")
    queries = "perturbed" if match.group(3) else "fresh"
    if match.group(1) != "encoder":
        kind = "uniform" if match.group(1) == "uniform" else "clustered"
        return synthetic_codes(n_database, n_queries, bits, kind, n_clusters=int(match.group(2) or 100),
                               queries=queries, seed=seed)
    if encoder_codes is None:
        raise ValueError("data kind 'encoder' needs the codes file of benchmarks/encoder_codes.py")
    with np.load(encoder_codes) as f:
        base, base_labels, held_out, held_out_labels = f["base"], f["base_labels"], f["queries"], f["query_labels"]
    if base.shape[1] * 8 != bits:
        raise ValueError(f"{encoder_codes}: {base.shape[1] * 8}-bit codes, {bits} asked for")
    database, labels = tiled_codes(base, base_labels, n_database, ENCODER_COPY_NOISE, seed)
    generator = (f"{len(base)} ITQ codes of MNIST / sklearn digits images tiled, each copy's bits flipped with "
                 f"p={ENCODER_COPY_NOISE}, seed {seed}")
    rng = np.random.default_rng(seed + 1)
    if queries == "fresh":
        rows = rng.choice(len(held_out), size=min(n_queries, len(held_out)), replace=False)
        return SyntheticCodes(database, held_out[rows], labels, held_out_labels[rows],
                              generator + "; queries: codes of held-out images", np.full(len(rows), -1))
    sources = rng.choice(n_database, size=n_queries, replace=False)
    query_codes, query_labels = perturbed_queries(database, labels, sources, 0.05, rng)
    return SyntheticCodes(database, query_codes, labels, query_labels,
                          generator + "; queries: database codes with each bit flipped with p=0.05", sources)


def perturbed_queries(database: np.ndarray, labels: np.ndarray, rows: np.ndarray, flip_probability: float,
                      rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Copies of ``database[rows]`` with every bit flipped with ``flip_probability``, and their labels."""
    queries = database[rows] ^ _flip_mask(rng, len(rows), database.shape[1] * 8, flip_probability)
    return queries, labels[rows]


def tiled_codes(base: np.ndarray, base_labels: np.ndarray, n: int, flip_probability: float,
                seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``n`` codes made of copies of ``base`` (packed), every copy's bits flipped with
    ``flip_probability`` (the first copy is ``base`` itself): a large collection with the
    mode structure of a real encoder's codes. Returns the codes and their labels."""
    rng = np.random.default_rng(seed)
    rows = np.arange(n) % len(base)
    codes = base[rows]
    codes[len(base):] ^= _flip_mask(rng, max(0, n - len(base)), base.shape[1] * 8, flip_probability)
    return codes, base_labels[rows]


def _flip_mask(rng: np.random.Generator, n: int, bits: int, p: float) -> np.ndarray:
    """Packed mask with each bit set independently with probability p, built in chunks."""
    out = np.empty((n, bits // 8), dtype=np.uint8)
    chunk = 1 << 20
    for start in range(0, n, chunk):
        stop = min(n, start + chunk)
        bits_set = rng.random((stop - start, bits), dtype=np.float32) < p
        out[start:stop] = np.packbits(bits_set, axis=1, bitorder="little")
    return out


def load_digits_images(size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """sklearn's 1,797 real 8x8 digits, upscaled to ``size`` x ``size`` uint8 greyscale."""
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    small = (digits.images * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)
    images = np.stack(
        [np.asarray(Image.fromarray(im).resize((size, size), Image.BICUBIC)) for im in small]
    )
    return images, digits.target.astype(np.int64)


def default_mnist_dir() -> Path:
    """Where the MNIST test set lives: ``$HASHINDEX_MNIST``, else ``../shared/data/mnist``
    beside the repository checkout."""
    if os.environ.get(MNIST_ENV):
        return Path(os.environ[MNIST_ENV])
    return Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"


def load_mnist(root: str | os.PathLike | None = None, split: str = "t10k") -> tuple[np.ndarray, np.ndarray]:
    """Read MNIST images ``(n, 28, 28)`` uint8 and labels ``(n,)`` int64 from IDX(.gz) files."""
    root = Path(root) if root is not None else default_mnist_dir()
    images = _read_idx(_find_idx(root, f"{split}-images-idx3-ubyte"))
    labels = _read_idx(_find_idx(root, f"{split}-labels-idx1-ubyte"))
    if len(images) != len(labels):
        raise ValueError(f"{root}: {len(images)} images but {len(labels)} labels")
    return images, labels.astype(np.int64)


def _find_idx(root: Path, stem: str) -> Path:
    for candidate in (root / f"{stem}.gz", root / stem):
        if candidate.exists():
            return candidate
    raise FileNotFoundError(f"MNIST file {stem}(.gz) not found in {root}; set ${MNIST_ENV}")


def _read_idx(path: Path) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as fh:
        data = fh.read()
    zero, dtype_code, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype_code != 0x08:
        raise ValueError(f"{path}: not an unsigned-byte IDX file")
    shape = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(shape)):
        raise ValueError(f"{path}: truncated IDX file ({body.size} of {int(np.prod(shape))} bytes)")
    return body.reshape(shape)


def write_image_folder(
    images: np.ndarray,
    labels: np.ndarray,
    root: str | os.PathLike,
    class_names: list[str] | None = None,
    prefix: str = "img",
) -> Path:
    """Write ``images`` as PNG files under ``root/<class name>/``; returns ``root``."""
    from PIL import Image

    root = Path(root)
    names = class_names or [str(c) for c in range(int(labels.max()) + 1)]
    for name in names:
        (root / name).mkdir(parents=True, exist_ok=True)
    for i, (image, label) in enumerate(zip(images, labels)):
        Image.fromarray(image).save(root / names[int(label)] / f"{prefix}{i:06d}.png")
    return root
