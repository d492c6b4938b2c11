"""Index specs: the small string vocabulary that names a Faiss binary index.

==============================  ===========================================  ============================
spec                            Faiss index                                  search parameters
==============================  ===========================================  ============================
``flat``                        ``IndexBinaryFlat`` (exact)                  —
``IVF<nlist>``                  ``IndexBinaryIVF`` over a flat quantiser     ``nprobe`` (default 1)
``IVF<nlist>_HNSW<M>``          ``IndexBinaryIVF`` over an HNSW quantiser    ``nprobe`` (default 1),
                                                                             ``quantizer_efSearch`` (16)
``IVF<nlist>_HNSW<M>_sampled``  the same, centroids sampled (no k-means)     the same
``HNSW<M>``                     ``IndexBinaryHNSW``                          ``efSearch`` (default 16)
``MultiHash<n>x<b>``            ``IndexBinaryMultiHash``, n tables of b bits ``nflip`` (default 0)
``Hash<b>``                     ``IndexBinaryHash``, one table of b bits     ``nflip`` (default 0)
==============================  ===========================================  ============================

Search parameters may follow the index name, comma separated:
``"IVF1024,nprobe=32"``, ``"HNSW32,efSearch=64"``, ``"MultiHash4x16,nflip=1"``,
``"IVF65536_HNSW32_sampled,nprobe=8,quantizer_efSearch=64"`` (how deep the HNSW quantiser
searches for the ``nprobe`` nearest lists; Faiss's default, 16, misses lists at 65,536).
``str(parse_spec(s))`` gives back the canonical form of ``s``. Faiss's own
``index_binary_factory`` strings are accepted too (``"BFlat"``, ``"BIVF1024"``,
``"BIVF1024_HNSW32"``, ``"BHNSW32"``, ``"BHash4x16"``, ``"BHash16"``) and print in the
canonical form; every index is built by ``faiss.index_binary_factory``.

Codes added to an IVF over an HNSW quantiser go to the list that quantiser finds at depth
:data:`ADD_QUANTIZER_EF_SEARCH` (8), whatever ``quantizer_efSearch`` searches use: the fill is
10M quantiser searches at 10M codes, and depth 8 costs about half the CPU of Faiss's default 16.

``_sampled`` IVF takes ``nlist`` random database codes as its centroids instead of running
k-means. With many lists per mode of the data (e.g. 65,536 lists for 10M codes from 10,000
modes) that partitions as well as k-means and trains in well under a second instead of minutes:
every mode holds several sampled centroids, and a query probes those nearest to it.

Each kind is one :class:`IndexKind` record in :data:`KINDS` (its forms, builder string,
search parameters, whether it trains, whether it answers range queries): the parser, the
printer, :meth:`IndexSpec.build`, :class:`~hashindex.HashIndex`, autotune and the benchmark
all read it, so a new kind is one :func:`register_kind` call here.

``auto`` (``"auto,recall=0.95"``) names a request rather than an index: ``HashIndex``
picks flat or a tuned approximate kind at the first add (:mod:`hashindex.autotune`).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Callable

import faiss
import numpy as np

from .codes import check_bits


@dataclass(frozen=True)
class SearchParam:
    """A search-time parameter: its smallest value and how it is set on a Faiss index."""

    name: str
    minimum: int
    apply: Callable[[faiss.IndexBinary, int], None]


SEARCH_PARAMS = {p.name: p for p in (
    SearchParam("nprobe", 1, lambda index, value: setattr(index, "nprobe", value)),
    SearchParam("efSearch", 1, lambda index, value: setattr(index.hnsw, "efSearch", value)),
    SearchParam("nflip", 0, lambda index, value: setattr(index, "nflip", value)),
    SearchParam("quantizer_efSearch", 1,
                lambda index, value: setattr(faiss.downcast_IndexBinary(index.quantizer).hnsw, "efSearch", value)),
)}


@dataclass(frozen=True)
class IndexKind:
    """One index kind. ``form`` and ``factory`` hold one ``{}`` per integer argument:
    ``form`` is the canonical spec (``"IVF{}"``), ``factory`` the ``faiss.index_binary_factory``
    string (``"BIVF{}"``), ``grammar`` how errors show it (``"IVF<nlist>"``).
    ``trains``: needs training, on ``TRAIN_CODES_PER_LIST`` codes per list, the first argument
    being the number of lists; ``sampled``: trained by taking that many codes as the centroids.
    ``table_bits``: the argument(s) whose product must fit the code."""

    name: str
    form: str
    factory: str
    grammar: str
    params: tuple[str, ...] = ()
    trains: bool = False
    sampled: bool = False
    range_search: bool = False
    table_bits: tuple[int, ...] = ()

    def patterns(self) -> tuple[re.Pattern, ...]:
        def compile_(template: str, flags: int = 0) -> re.Pattern:
            return re.compile(re.escape(template).replace(r"\{\}", r"(\d+)"), flags)

        return (compile_(self.form, re.IGNORECASE if self.name == "flat" else 0), compile_(self.factory))


KINDS: dict[str, IndexKind] = {}


def register_kind(kind: IndexKind) -> IndexKind:
    """Add an index kind to the vocabulary; a duplicate name is an error."""
    if kind.name in KINDS:
        raise ValueError(f"index kind {kind.name!r} is already registered")
    unknown = set(kind.params) - set(SEARCH_PARAMS)
    if unknown:
        raise ValueError(f"index kind {kind.name!r}: unknown search parameters {sorted(unknown)}")
    KINDS[kind.name] = kind
    return kind


register_kind(IndexKind("flat", "flat", "BFlat", "flat", range_search=True))
register_kind(IndexKind("IVF", "IVF{}", "BIVF{}", "IVF<nlist>", ("nprobe",), trains=True, range_search=True))
register_kind(IndexKind("IVF_HNSW", "IVF{}_HNSW{}", "BIVF{}_HNSW{}", "IVF<nlist>_HNSW<M>",
                        ("nprobe", "quantizer_efSearch"), trains=True, range_search=True))
register_kind(IndexKind("IVF_HNSW_sampled", "IVF{}_HNSW{}_sampled", "BIVF{}_HNSW{}", "IVF<nlist>_HNSW<M>_sampled",
                        ("nprobe", "quantizer_efSearch"), trains=True, sampled=True, range_search=True))
register_kind(IndexKind("HNSW", "HNSW{}", "BHNSW{}", "HNSW<M>", ("efSearch",)))
register_kind(IndexKind("MultiHash", "MultiHash{}x{}", "BHash{}x{}", "MultiHash<nhash>x<bits>", ("nflip",),
                        range_search=True, table_bits=(0, 1)))
register_kind(IndexKind("Hash", "Hash{}", "BHash{}", "Hash<bits>", ("nflip",), range_search=True, table_bits=(0,)))

AUTO_GRAMMAR = "auto[,recall=<0..1>][,k=<int>][,latency_ms=<float>][,memory_mb=<float>][,noise=<0..0.5>]"
_AUTO_PARAM_TYPES = {"recall": float, "k": int, "latency_ms": float, "memory_mb": float, "noise": float}
#: Code widths with a specialised Faiss Hamming kernel worth padding to (4, 8, 16, 20 and
#: 32 bytes). Other widths take Faiss's generic path, about 3x slower here; 512 bits (64 bytes)
#: is specialised too but measured no faster than the generic path, so wider codes stay as they are.
FAST_HAMMING_BITS = (32, 64, 128, 160, 256)
#: ``efSearch`` of an HNSW quantiser when it assigns added codes to lists. At 10M clustered codes
#: and 65,536 lists, 8 takes 15 µs of CPU per code against 27 µs at Faiss's default 16, and lowered
#: recall@8 by 0-0.008 at every search setting on tuning queries (<= 0.005 above recall 0.93; 4 costs 0.02-0.03).
ADD_QUANTIZER_EF_SEARCH = 8


def spec_grammar() -> str:
    """The valid spec forms, for help texts and errors."""
    return (" | ".join(k.grammar for k in KINDS.values()) + ", optionally followed by ,param=value"
            " (or the faiss.index_binary_factory form, e.g. BIVF<nlist>) | " + AUTO_GRAMMAR)


SPEC_GRAMMAR = spec_grammar()


@dataclass(frozen=True)
class IndexSpec:
    """A parsed spec: the index kind, its build arguments and its search parameters."""

    kind: str
    args: tuple[int, ...] = ()
    params: dict = field(default_factory=dict)

    def __str__(self) -> str:
        name = "auto" if self.kind == "auto" else KINDS[self.kind].form.format(*self.args)
        return ",".join([name] + [f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}"
                                  for k, v in sorted(self.params.items())])

    @property
    def needs_training(self) -> bool:
        return self.kind != "auto" and KINDS[self.kind].trains

    @property
    def supports_range_search(self) -> bool:
        return self.kind != "auto" and KINDS[self.kind].range_search

    def check_fits(self, bits: int) -> None:
        """Raise if this spec's hash tables are wider than a ``bits``-bit code."""
        if self.kind == "auto":
            return
        table = math.prod(self.args[i] for i in KINDS[self.kind].table_bits)
        if KINDS[self.kind].table_bits and table > bits:
            raise ValueError(f"spec {self}: {' x '.join(str(self.args[i]) for i in KINDS[self.kind].table_bits)}"
                             f" bits of hash tables exceed the {bits}-bit code")

    def train(self, index: faiss.IndexBinary, codes: np.ndarray) -> None:
        """Train a new ``index`` built by :meth:`build` on ``codes`` (a random sample, at the
        index's width): k-means, or for a ``sampled`` kind ``nlist`` of its rows, drawn at random, as the centroids."""
        if not KINDS[self.kind].sampled:
            index.train(codes)
            return
        nlist = self.args[0]
        if len(codes) < nlist:
            raise ValueError(f"spec {self} needs at least {nlist} codes to train, got {len(codes)}")
        rows = np.sort(np.random.default_rng(0).choice(len(codes), size=nlist, replace=False))
        index.quantizer.add(np.ascontiguousarray(codes[rows]))
        index.is_trained = True

    def add(self, index: faiss.IndexBinary, codes: np.ndarray) -> None:
        """Add ``codes`` (at the index's width) to ``index``, built by :meth:`build` and trained.
        An HNSW quantiser assigns them to lists at depth :data:`ADD_QUANTIZER_EF_SEARCH`; its
        search-time depth is left as it is."""
        if "quantizer_efSearch" not in KINDS[self.kind].params:
            index.add(codes)
            return
        codes = np.ascontiguousarray(codes)
        depth = faiss.SearchParametersHNSW()
        depth.efSearch = ADD_QUANTIZER_EF_SEARCH
        _, lists = faiss.downcast_IndexBinary(index.quantizer).search(codes, 1, params=depth)
        index.add_core(len(codes), faiss.swig_ptr(codes), None, faiss.swig_ptr(np.ascontiguousarray(lists[:, 0])))

    def build(self, bits: int) -> faiss.IndexBinary:
        """A new, empty Faiss binary index for ``bits``-bit codes with this spec's parameters."""
        bits = check_bits(bits)
        if self.kind == "auto":
            raise ValueError("the auto spec picks its index from the data: HashIndex(spec='auto') resolves "
                             "it at the first add (see hashindex.autotune)")
        self.check_fits(bits)
        index = faiss.index_binary_factory(bits, KINDS[self.kind].factory.format(*self.args))
        apply_search_params(index, self.kind, self.params)
        return index


def apply_search_params(index: faiss.IndexBinary, kind: str, params: dict) -> None:
    """Set search-time parameters (``nprobe`` / ``efSearch`` / ``nflip``) on a Faiss index."""
    allowed = () if kind == "auto" else KINDS[kind].params
    for name, value in params.items():
        if name not in allowed:  # parse_spec rejects these already; kept for direct callers
            raise ValueError(f"unknown search parameter {name!r} for a {kind} index")
        SEARCH_PARAMS[name].apply(index, value)


def parse_spec(spec: "str | IndexSpec") -> IndexSpec:
    """Parse a spec string (see the module docstring); errors list the valid forms."""
    if isinstance(spec, IndexSpec):
        return spec
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(f"index spec must be a non-empty string; valid specs: {spec_grammar()}")
    head, *param_tokens = [tok.strip() for tok in spec.split(",")]
    if head.lower() == "auto":
        return IndexSpec("auto", (), parse_auto_params(spec, param_tokens))
    for kind in KINDS.values():
        match = next((m for m in (p.fullmatch(head) for p in kind.patterns()) if m), None)
        if match:
            args = tuple(int(g) for g in match.groups())
            if any(a <= 0 for a in args):
                raise ValueError(f"index spec {spec!r}: numbers must be positive; valid specs: {spec_grammar()}")
            return IndexSpec(kind.name, args, _parse_params(spec, param_tokens, kind.params))
    raise ValueError(f"unknown index spec {spec!r}; valid specs: {spec_grammar()}")


def parse_auto_params(spec: str, tokens: list[str]) -> dict:
    """Parse the ``name=value`` tokens after ``auto``; errors name the valid parameters."""
    params: dict = {}
    for token in tokens:
        name, sep, raw = token.partition("=")
        kind = _AUTO_PARAM_TYPES.get(name)
        try:
            value = kind(raw) if sep and kind else None
        except ValueError:
            value = None
        if value is None or not math.isfinite(value) or not (
                0 <= value <= 0.5 if name == "noise" else 0 < value <= (1 if name == "recall" else math.inf)):
            raise ValueError(f"index spec {spec!r}: bad parameter {token!r}; {AUTO_GRAMMAR} "
                             "(recall in (0, 1], noise in [0, 0.5], the others positive)")
        params[name] = value
    return params


def padded_bits(bits: int) -> int:
    """The width Faiss should store ``bits``-bit codes at: the next :data:`FAST_HAMMING_BITS`
    width (zero bytes appended change no Hamming distance), or ``bits`` itself above 256."""
    bits = check_bits(bits)
    return next((fast for fast in FAST_HAMMING_BITS if fast >= bits), bits)


def _parse_params(spec: str, tokens: list[str], allowed: tuple[str, ...]) -> dict:
    params = {}
    for token in tokens:
        name, sep, value = token.partition("=")
        if (not sep or name not in allowed or not value.isdigit()
                or int(value) < SEARCH_PARAMS[name].minimum):
            valid = ", ".join(f"{a}=<int>" for a in allowed) or "none"
            raise ValueError(f"index spec {spec!r}: bad parameter {token!r}; parameters for this index: {valid}")
        params[name] = int(value)
    return params
