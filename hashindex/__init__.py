"""hashindex: large-scale image retrieval with deep binary hashing.

Codes and F7 features live in HDF5 shards (:class:`ShardWriter`, :class:`ShardReader`),
load into a Faiss binary index (:class:`HashIndex`), and are searched by Hamming kNN,
optionally reranked by Euclidean distance on features, with top-k label voting.
"""

from .codes import MISSING_DISTANCE, as_packed_codes, pack_bits, unpack_codes
from .index import HashIndex
from .rerank import rerank_euclidean
from .spec import IndexSpec, parse_spec
from .store import Shard, ShardError, ShardReader, ShardWriter, read_store_info
from .vote import majority_vote

__version__ = "0.1.0"

__all__ = [
    "HashIndex",
    "IndexSpec",
    "MISSING_DISTANCE",
    "Shard",
    "ShardError",
    "ShardReader",
    "ShardWriter",
    "as_packed_codes",
    "majority_vote",
    "pack_bits",
    "parse_spec",
    "read_store_info",
    "rerank_euclidean",
    "unpack_codes",
]
