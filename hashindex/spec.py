"""Index specs: the small string vocabulary that names a Faiss binary index.

=======================  ==========================================  ======================
spec                     Faiss index                                 search parameters
=======================  ==========================================  ======================
``flat``                 ``IndexBinaryFlat`` (exact)                 —
``IVF<nlist>``           ``IndexBinaryIVF`` over a flat quantiser    ``nprobe`` (default 1)
``HNSW<M>``              ``IndexBinaryHNSW``                         ``efSearch`` (default 16)
``MultiHash<n>x<b>``     ``IndexBinaryMultiHash``, n tables of b bits ``nflip`` (default 0)
=======================  ==========================================  ======================

Search parameters may follow the index name, comma separated:
``"IVF1024,nprobe=32"``, ``"HNSW32,efSearch=64"``, ``"MultiHash4x16,nflip=1"``.
``str(parse_spec(s))`` gives back the canonical form of ``s``.

``auto`` (``"auto,recall=0.95"``) names a request rather than an index: ``HashIndex``
picks flat or IVF with its ``nlist`` / ``nprobe`` at the first add (:mod:`hashindex.autotune`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import faiss

from .codes import check_bits

_KINDS = {
    "flat": (re.compile(r"flat", re.IGNORECASE), ()),
    "IVF": (re.compile(r"IVF(\d+)"), ("nprobe",)),
    "HNSW": (re.compile(r"HNSW(\d+)"), ("efSearch",)),
    "MultiHash": (re.compile(r"MultiHash(\d+)x(\d+)"), ("nflip",)),
}
SPEC_GRAMMAR = ("flat | IVF<nlist> | HNSW<M> | MultiHash<nhash>x<bits>, optionally followed by ,param=value"
                " | auto[,recall=<0..1>][,k=<int>][,latency_ms=<float>][,memory_mb=<float>]")
#: Code widths with a specialised Faiss Hamming kernel worth padding to (4, 8, 16, 20 and
#: 32 bytes). Other widths take Faiss's generic path, about 3x slower here; 512 bits (64 bytes)
#: is specialised too but measured no faster than the generic path, so wider codes stay as they are.
FAST_HAMMING_BITS = (32, 64, 128, 160, 256)
#: Index kinds that answer range (radius) queries.
RANGE_SEARCH_KINDS = frozenset({"flat", "IVF", "MultiHash"})


@dataclass(frozen=True)
class IndexSpec:
    """A parsed spec: the index kind, its build arguments and its search parameters."""

    kind: str
    args: tuple[int, ...] = ()
    params: dict = field(default_factory=dict)

    def __str__(self) -> str:
        name = {
            "flat": "flat",
            "IVF": "IVF{}",
            "HNSW": "HNSW{}",
            "MultiHash": "MultiHash{}x{}",
            "auto": "auto",
        }[self.kind].format(*self.args)
        return ",".join([name] + [f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}"
                                  for k, v in sorted(self.params.items())])

    @property
    def needs_training(self) -> bool:
        return self.kind == "IVF"

    @property
    def supports_range_search(self) -> bool:
        return self.kind in RANGE_SEARCH_KINDS

    def build(self, bits: int) -> faiss.IndexBinary:
        """A new, empty Faiss binary index for ``bits``-bit codes with this spec's parameters."""
        bits = check_bits(bits)
        if self.kind == "auto":
            raise ValueError("the auto spec picks its index from the data: HashIndex(spec='auto') resolves "
                             "it at the first add (see hashindex.autotune)")
        if self.kind == "flat":
            index = faiss.IndexBinaryFlat(bits)
        elif self.kind == "IVF":
            quantizer = faiss.IndexBinaryFlat(bits)
            index = faiss.IndexBinaryIVF(quantizer, bits, self.args[0])
            index.own_fields = True
            quantizer.this.disown()
        elif self.kind == "HNSW":
            index = faiss.IndexBinaryHNSW(bits, self.args[0])
        else:
            nhash, hash_bits = self.args
            if nhash * hash_bits > bits:
                raise ValueError(f"spec {self}: {nhash} tables x {hash_bits} bits exceed the {bits}-bit code")
            index = faiss.IndexBinaryMultiHash(bits, nhash, hash_bits)
        apply_search_params(index, self.kind, self.params)
        return index


def apply_search_params(index: faiss.IndexBinary, kind: str, params: dict) -> None:
    """Set search-time parameters (``nprobe`` / ``efSearch`` / ``nflip``) on a Faiss index."""
    for name, value in params.items():
        if name == "nprobe":
            index.nprobe = value
        elif name == "efSearch":
            index.hnsw.efSearch = value
        elif name == "nflip":
            index.nflip = value
        else:  # parse_spec rejects these already; kept for direct callers
            raise ValueError(f"unknown search parameter {name!r} for a {kind} index")


def parse_spec(spec: "str | IndexSpec") -> IndexSpec:
    """Parse a spec string (see the module docstring); errors list the valid forms."""
    if isinstance(spec, IndexSpec):
        return spec
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(f"index spec must be a non-empty string; valid specs: {SPEC_GRAMMAR}")
    head, *param_tokens = [tok.strip() for tok in spec.split(",")]
    if head.lower() == "auto":
        from .autotune import parse_auto_params

        return IndexSpec("auto", (), parse_auto_params(spec, param_tokens))
    for kind, (pattern, allowed) in _KINDS.items():
        match = pattern.fullmatch(head)
        if match:
            args = tuple(int(g) for g in match.groups())
            if any(a <= 0 for a in args):
                raise ValueError(f"index spec {spec!r}: numbers must be positive; valid specs: {SPEC_GRAMMAR}")
            return IndexSpec(kind, args, _parse_params(spec, param_tokens, allowed))
    raise ValueError(f"unknown index spec {spec!r}; valid specs: {SPEC_GRAMMAR}")


def padded_bits(bits: int) -> int:
    """The width Faiss should store ``bits``-bit codes at: the next :data:`FAST_HAMMING_BITS`
    width (zero bytes appended change no Hamming distance), or ``bits`` itself above 256."""
    bits = check_bits(bits)
    return next((fast for fast in FAST_HAMMING_BITS if fast >= bits), bits)


def _parse_params(spec: str, tokens: list[str], allowed: tuple[str, ...]) -> dict:
    params = {}
    for token in tokens:
        name, sep, value = token.partition("=")
        if not sep or name not in allowed or not value.isdigit() or int(value) < (name != "nflip"):
            valid = ", ".join(f"{a}=<int>" for a in allowed) or "none"
            raise ValueError(f"index spec {spec!r}: bad parameter {token!r}; parameters for this index: {valid}")
        params[name] = int(value)
    return params
