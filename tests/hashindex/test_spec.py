import numpy as np
import pytest

import faiss

from hashindex import HashIndex, parse_spec
from hashindex.spec import ADD_QUANTIZER_EF_SEARCH, KINDS
from hashindex.bench import distance_recall
from hashindex.datasets import synthetic_codes
from hashindex.testing import assert_same_knn, brute_force_knn, hamming_matrix

DOCUMENTED_SPECS = ["flat", "IVF16", "IVF16,nprobe=4", "IVF16_HNSW8", "IVF16_HNSW8,nprobe=4", "IVF16_HNSW8_sampled",
                    "IVF16_HNSW8_sampled,nprobe=4", "HNSW16",
                    "HNSW16,efSearch=32", "MultiHash4x16", "MultiHash2x8,nflip=1", "Hash16", "Hash16,nflip=1"]
FACTORY_STRINGS = {"BFlat": "flat", "BIVF16": "IVF16", "BIVF16_HNSW8,nprobe=2": "IVF16_HNSW8,nprobe=2",
                   "BHNSW16": "HNSW16", "BHash4x16": "MultiHash4x16", "BHash16,nflip=1": "Hash16,nflip=1"}


def test_every_registered_kind_is_documented_and_tested():
    assert {parse_spec(spec).kind for spec in DOCUMENTED_SPECS} == set(KINDS)
    # A sampled kind builds the same Faiss index as its k-means twin: no factory string of its own.
    assert {parse_spec(spec).kind for spec in FACTORY_STRINGS} == {k.name for k in KINDS.values() if not k.sampled}


def test_sampled_ivf_takes_database_codes_as_centroids_and_finds_the_neighbours():
    data = synthetic_codes(3000, 40, 64, "clustered", n_clusters=20, queries="perturbed", seed=3)
    index = HashIndex(64, "IVF64_HNSW8_sampled")
    index.add(data.database)
    quantiser = faiss.downcast_IndexBinary(index.faiss_index.quantizer)
    centroids = quantiser.storage.reconstruct_n(0, quantiser.ntotal)
    assert len(centroids) == 64
    stored = {bytes(row) for row in data.database}
    assert all(bytes(c) in stored for c in centroids)  # no k-means: every centroid is a stored code
    kth = brute_force_knn(data.queries, data.database, 8)[0][:, 7]
    recalls = []
    for nprobe in (1, 8, 32):
        index.set_search_params(nprobe=nprobe)
        recalls.append(distance_recall(data.queries, data.database, index.search(data.queries, k=8)[1], kth))
    assert recalls[0] < recalls[-1] and recalls[-1] >= 0.95, recalls


def test_quantizer_ef_search_is_set_on_the_hnsw_quantiser_and_survives_save_load(tmp_path, rng):
    index = HashIndex(64, "IVF16_HNSW8_sampled,quantizer_efSearch=48,nprobe=3")
    assert str(index.spec) == "IVF16_HNSW8_sampled,nprobe=3,quantizer_efSearch=48"
    index.add(rng.integers(0, 256, size=(400, 8), dtype=np.uint8))
    index.save(tmp_path / "idx")
    for ix in (index, HashIndex.load(tmp_path / "idx")):
        assert faiss.downcast_IndexBinary(ix.faiss_index.quantizer).hnsw.efSearch == 48
        assert ix.faiss_index.nprobe == 3
    with pytest.raises(ValueError, match="parameters for this index"):
        parse_spec("IVF16,quantizer_efSearch=4")  # a flat quantiser has no search depth


@pytest.mark.parametrize("spec", ["IVF256_HNSW8_sampled,quantizer_efSearch=64,nprobe=6", "IVF64_HNSW8,nprobe=3"])
def test_hnsw_quantiser_fills_lists_at_the_add_depth_and_search_is_exact_over_the_probed_lists(spec):
    data = synthetic_codes(6000, 60, 64, "clustered", n_clusters=300, queries="perturbed", seed=5)
    index = HashIndex(64, spec)
    index.add(data.database[:4000])
    index.add(data.database[4000:])  # a second add assigns the same way
    ivf, quantiser = index.faiss_index, faiss.downcast_IndexBinary(index.faiss_index.quantizer)
    assert quantiser.hnsw.efSearch == index.spec.params.get("quantizer_efSearch", 16)  # search depth untouched
    stored = np.empty(len(data.database), dtype=np.int64)
    for lst in range(ivf.nlist):
        stored[faiss.rev_swig_ptr(ivf.invlists.get_ids(lst), ivf.invlists.list_size(lst)).copy()] = lst
    depth = faiss.SearchParametersHNSW()
    depth.efSearch = ADD_QUANTIZER_EF_SEARCH
    np.testing.assert_array_equal(stored, quantiser.search(data.database, 1, params=depth)[1][:, 0])
    deeper = quantiser.search(data.database, 1)[1][:, 0]
    assert 0 < np.mean(stored != deeper) < 0.2  # the add depth is shallower, and it matters (a little)

    D, I = index.search(data.queries, k=8)
    probed = quantiser.search(data.queries, ivf.nprobe)[1]
    for row, query in enumerate(data.queries):
        members = np.flatnonzero(np.isin(stored, probed[row]))
        D_ref, I_ref = brute_force_knn(query[None], data.database[members], 8)
        I_ref = np.where(I_ref >= 0, members[np.maximum(I_ref, 0)], -1)
        assert_same_knn(D_ref, I_ref, D[row:row + 1], I[row:row + 1], database=data.database, queries=query[None])


def test_sampled_ivf_needs_as_many_codes_as_lists(rng):
    with pytest.raises(ValueError, match="at least 64 codes"):
        HashIndex(64, "IVF64_HNSW8_sampled").add(rng.integers(0, 256, size=(40, 8), dtype=np.uint8))


@pytest.mark.parametrize("factory", sorted(FACTORY_STRINGS))
def test_faiss_factory_strings_parse_to_the_canonical_spec(factory):
    spec = parse_spec(factory)
    assert str(spec) == FACTORY_STRINGS[factory]
    head = factory.split(",")[0]
    assert type(spec.build(64)) is type(faiss.index_binary_factory(64, head))


@pytest.mark.parametrize("spec", DOCUMENTED_SPECS)
def test_round_trip_string(spec):
    assert str(parse_spec(spec)) == spec
    assert parse_spec(str(parse_spec(spec))) == parse_spec(spec)


@pytest.mark.parametrize("spec", DOCUMENTED_SPECS)
def test_every_spec_builds_saves_loads_searches(tmp_path, rng, spec):
    db = rng.integers(0, 256, size=(600, 8), dtype=np.uint8)
    q = db[:20] ^ rng.integers(0, 2, size=(20, 8), dtype=np.uint8)
    index = HashIndex(64, spec)
    index.add(db)
    D, I = index.search(q, k=5)
    assert D.dtype == np.int32 and I.dtype == np.int64 and D.shape == I.shape == (20, 5)
    valid = I >= 0
    true = np.bitwise_count(q[:, None, :] ^ db[np.maximum(I, 0)]).sum(2)
    np.testing.assert_array_equal(D[valid], true[valid])  # every id at its stated distance
    index.save(tmp_path / "idx")
    loaded = HashIndex.load(tmp_path / "idx")
    assert str(loaded.spec) == str(index.spec)
    D2, I2 = loaded.search(q, k=5)
    np.testing.assert_array_equal(D2, D)
    np.testing.assert_array_equal(I2, I)
    for row in range(len(q)):
        ids = I[row][valid[row]]
        assert len(set(ids.tolist())) == len(ids)
        assert np.all(np.diff(D[row][valid[row]]) >= 0)
    # Nothing closer than the exact nearest neighbour can be returned.
    assert np.all(D[:, 0] >= brute_force_knn(q, db, 1)[0][:, 0])


@pytest.mark.parametrize("bad", ["", "IVF", "IVF0", "ivfx", "HNSW16,nprobe=3", "IVF8,nprobe=x", "flat,foo=1", 64])
def test_bad_specs_list_the_grammar(bad):
    with pytest.raises(ValueError) as err:
        parse_spec(bad)
    assert "IVF<nlist>" in str(err.value) or "parameters for this index" in str(err.value)


def test_multihash_wider_than_code_is_rejected():
    with pytest.raises(ValueError, match="exceed"):
        HashIndex(32, "MultiHash4x16")


@pytest.mark.parametrize("spec", [s for s in DOCUMENTED_SPECS if parse_spec(s).supports_range_search])
def test_range_search_of_every_kind_stays_within_the_radius(rng, spec):
    db = rng.integers(0, 256, size=(600, 8), dtype=np.uint8)
    q = db[:10] ^ rng.integers(0, 2, size=(10, 8), dtype=np.uint8)
    index = HashIndex(64, spec)
    index.add(db)
    lims, D, I = index.range_search(q, 6)
    exact = hamming_matrix(q, db)
    for row in range(len(q)):
        ids, dist = I[lims[row]:lims[row + 1]], D[lims[row]:lims[row + 1]]
        np.testing.assert_array_equal(dist, exact[row, ids])
        assert np.all(dist <= 6) and len(set(ids.tolist())) == len(ids)
        if spec == "flat":  # the exact kind finds every one
            assert set(ids.tolist()) == set(np.flatnonzero(exact[row] <= 6).tolist())
