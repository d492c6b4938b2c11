import numpy as np
import pytest

from hashindex.codes import as_packed_codes, check_bits, pack_bits, unpack_codes


def test_pack_order_matches_faiss_real_to_binary(rng):
    import faiss

    x = rng.normal(size=(5, 64)).astype(np.float32)
    expected = np.empty((5, 8), dtype=np.uint8)
    faiss.real_to_binary(5 * 64, faiss.swig_ptr(x), faiss.swig_ptr(expected))
    np.testing.assert_array_equal(pack_bits(x > 0), expected)


@pytest.mark.parametrize("bits", [8, 48, 64, 96, 128])
def test_unpacked_forms_agree(rng, bits):
    b = rng.integers(0, 2, size=(7, bits))
    packed = pack_bits(b)
    for form in (b.astype(bool), b.astype(np.int64), b.astype(np.float32), (2 * b - 1).astype(np.int8)):
        np.testing.assert_array_equal(as_packed_codes(form, bits), packed)
    np.testing.assert_array_equal(unpack_codes(packed, bits), b)
    assert as_packed_codes(packed, bits) is not None


@pytest.mark.parametrize(
    "codes, message",
    [
        (np.zeros(8, np.uint8), "1-D"),
        (np.zeros((2, 7), np.uint8), "wrong code width 7"),
        (np.zeros((2, 8), np.int32), "must be uint8"),
        (np.full((2, 64), 2), r"only 0/1 or -1/\+1"),
        (np.full((2, 64), "a"), "unsupported dtype"),
    ],
)
def test_bad_codes_name_the_expected_shape(codes, message):
    with pytest.raises(ValueError, match=message) as err:
        as_packed_codes(codes, 64)
    assert "(n, 8)" in str(err.value) or "1-D" in str(err.value)


@pytest.mark.parametrize("bits", [0, -8, 12, 6.0, True])
def test_check_bits_rejects(bits):
    with pytest.raises(ValueError):
        check_bits(bits)
