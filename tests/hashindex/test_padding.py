"""Zero-padding of code widths without a fast Faiss Hamming kernel: invisible to the caller."""

import json

import numpy as np
import pytest

from hashindex import HashIndex
from hashindex.codes import unpack_codes
from hashindex.spec import FAST_HAMMING_BITS, padded_bits
from hashindex.testing import assert_same_knn, brute_force_knn, hamming_matrix


@pytest.mark.parametrize("bits, expected", [(8, 32), (24, 32), (32, 32), (40, 64), (48, 64), (64, 64), (80, 128),
                                            (96, 128), (128, 128), (136, 160), (160, 160), (168, 256), (248, 256),
                                            (256, 256), (264, 264), (384, 384), (512, 512)])
def test_padded_bits_is_the_next_fast_width(bits, expected):
    assert padded_bits(bits) == expected


def test_fast_widths_are_faiss_specialised_code_sizes():
    # Faiss specialises HammingComputer for 4, 8, 16, 20, 32 (and 64) bytes.
    assert {b // 8 for b in FAST_HAMMING_BITS} <= {4, 8, 16, 20, 32, 64}


def _codes(rng, n, bits):
    return rng.integers(0, 256, size=(n, bits // 8), dtype=np.uint8)


@pytest.mark.parametrize("bits", [48, 80, 96])
def test_flat_search_on_padded_codes_matches_brute_force(rng, bits):
    db, q = _codes(rng, 700, bits), _codes(rng, 25, bits)
    index = HashIndex(bits, "flat")
    assert index.faiss_bits == padded_bits(bits) > bits
    assert index.faiss_index.d == index.faiss_bits
    index.add(db)
    D, I = index.search(q, k=10)
    D_ref, I_ref = brute_force_knn(q, db, 10)
    assert_same_knn(D_ref, I_ref, D, I, database=db, queries=q)


def test_unpacked_codes_are_accepted_at_the_callers_width(rng):
    db = _codes(rng, 300, 48)
    index = HashIndex(48)
    index.add(unpack_codes(db, 48))  # (n, 48) bits, padded inside
    D, I = index.search(unpack_codes(db[:5], 48).astype(np.int8) * 2 - 1, k=1)  # +-1 codes
    np.testing.assert_array_equal(D[:, 0], 0)
    with pytest.raises(ValueError, match="width"):
        index.search(np.zeros((1, 8), dtype=np.uint8), k=1)  # a padded-width code is not a 48-bit code


@pytest.mark.parametrize("spec", ["IVF8,nprobe=8", "MultiHash3x16,nflip=1", "HNSW8,efSearch=64"])
def test_other_index_kinds_on_padded_codes_return_true_distances(rng, spec):
    bits = 48
    centres = _codes(rng, 8, bits)
    db = centres[rng.integers(0, 8, 800)] ^ (rng.random((800, bits // 8)) < 0.05).astype(np.uint8)
    q = db[:30] ^ (rng.random((30, bits // 8)) < 0.05).astype(np.uint8)
    padded, plain = HashIndex(bits, spec), HashIndex(bits, spec, pad=False)
    assert (padded.faiss_bits, plain.faiss_bits) == (64, 48)
    padded.add(db)
    plain.add(db)
    D, I = padded.search(q, k=5)
    valid = I >= 0
    true = hamming_matrix(q, db)[np.arange(len(q))[:, None], np.maximum(I, 0)]
    np.testing.assert_array_equal(D[valid], true[valid])
    if spec.startswith("IVF"):  # nprobe = nlist is exhaustive: exact on both widths
        D_ref, I_ref = brute_force_knn(q, db, 5)
        assert_same_knn(D_ref, I_ref, D, I)
        assert_same_knn(D_ref, I_ref, *plain.search(q, k=5))


def test_range_search_and_rerank_on_padded_codes(rng):
    bits = 96
    db, q = _codes(rng, 500, bits), _codes(rng, 10, bits)
    feats = rng.standard_normal((500, 6)).astype(np.float32)
    index = HashIndex(bits)
    index.add(db, features=feats)
    radius = 44
    lims, D, I = index.range_search(q, radius)
    dist = hamming_matrix(q, db)
    for row in range(len(q)):
        want = set(np.flatnonzero(dist[row] <= radius).tolist())
        assert set(I[lims[row] : lims[row + 1]].tolist()) == want
        np.testing.assert_array_equal(D[lims[row] : lims[row + 1]], dist[row, I[lims[row] : lims[row + 1]]])
    qf = rng.standard_normal((10, 6)).astype(np.float32)
    _, I_rr = index.search_rerank(q, qf, k=3, candidates=500)  # every code is a candidate: exact Euclidean
    exact = np.argsort(np.linalg.norm(feats[None] - qf[:, None], axis=2), axis=1, kind="stable")[:, :3]
    np.testing.assert_array_equal(I_rr, exact)


def test_save_load_records_the_stored_width(tmp_path, rng):
    db, q = _codes(rng, 400, 80), _codes(rng, 8, 80)
    index = HashIndex(80, "IVF4,nprobe=4")
    index.add(db)
    target = index.save(tmp_path / "idx")
    meta = json.loads((target / "meta.json").read_text())
    assert (meta["bits"], meta["faiss_bits"]) == (80, 128)
    loaded = HashIndex.load(tmp_path / "idx")
    assert (loaded.bits, loaded.faiss_bits) == (80, 128)
    D, I = index.search(q, k=6)
    D2, I2 = loaded.search(q, k=6)
    np.testing.assert_array_equal(D2, D)
    np.testing.assert_array_equal(I2, I)
    assert_same_knn(*brute_force_knn(q, db, 6), D2, I2)


def test_unpadded_index_saves_and_loads_unpadded(tmp_path, rng):
    db = _codes(rng, 200, 48)
    index = HashIndex(48, pad=False)
    index.add(db)
    index.save(tmp_path / "idx")
    loaded = HashIndex.load(tmp_path / "idx")
    assert loaded.faiss_bits == 48
    assert_same_knn(*brute_force_knn(db[:5], db, 4), *loaded.search(db[:5], k=4))


def test_multihash_tables_must_fit_the_callers_width_not_the_padded_one():
    with pytest.raises(ValueError, match="exceed"):
        HashIndex(48, "MultiHash4x16")  # 64 table bits > 48, although 64 are stored
