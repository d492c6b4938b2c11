import itertools

import numpy as np
import pytest

from hashindex.code_health import NEAR_CONSTANT, code_health
from hashindex.codes import pack_bits


def _brute_mean_hamming(bits: np.ndarray) -> float:
    pairs = list(itertools.combinations(range(len(bits)), 2))
    return float(np.mean([np.sum(bits[i] != bits[j]) for i, j in pairs]))


def test_hand_worked_codes():
    bits = np.array([[1, 0, 0, 0, 0, 0, 0, 1],
                     [1, 0, 0, 0, 0, 0, 0, 1],
                     [1, 1, 0, 0, 0, 0, 0, 0],
                     [1, 1, 1, 0, 0, 0, 0, 0]], dtype=bool)
    health = code_health(pack_bits(bits), 8)
    assert (health.images, health.distinct) == (4, 3)
    assert health.bit_balance == [1.0, 0.5, 0.25, 0.0, 0.0, 0.0, 0.0, 0.5]
    # Pair distances: (0,1) 0, (0,2) 2, (0,3) 3, (1,2) 2, (1,3) 3, (2,3) 1 -> 11 / 6.
    assert health.mean_hamming == pytest.approx(11 / 6)
    assert health.near_constant_bits == 5  # bit 0 always on, bits 3-6 always off
    assert health.collapsed and len(health.warnings()) == 2
    assert "3 distinct codes for 4 images" in health.warnings()[0]


@pytest.mark.parametrize("n,bits", [(2, 8), (37, 16), (200, 64)])
def test_mean_hamming_matches_brute_force(rng, n, bits):
    unpacked = rng.random((n, bits)) < rng.random(bits)  # bits of unequal balance
    health = code_health(pack_bits(unpacked), bits)
    assert health.mean_hamming == pytest.approx(_brute_mean_hamming(unpacked))
    assert health.distinct == len({row.tobytes() for row in unpacked})
    np.testing.assert_allclose(health.bit_balance, unpacked.mean(axis=0))


def test_random_codes_are_healthy(rng):
    health = code_health(rng.integers(0, 256, (500, 8), dtype=np.uint8), 64)
    assert not health.collapsed and health.warnings() == []
    assert health.distinct == 500 and abs(health.mean_hamming - 32) < 1
    assert min(health.bit_balance) > NEAR_CONSTANT
    assert "500/500 distinct codes" in health.summary()
    assert health.as_dict()["distinct_fraction"] == 1.0


def test_one_code_for_all_is_collapsed():
    health = code_health(np.zeros((50, 4), np.uint8), 32)
    assert health.distinct == 1 and health.mean_hamming == 0.0 and health.near_constant_bits == 32
    assert health.collapsed


def test_empty_and_bad_input():
    assert code_health(np.zeros((0, 8), np.uint8), 64).distinct == 0
    with pytest.raises(ValueError):
        code_health(np.zeros((3, 5), np.uint8), 64)


def _brute_mixed(bits: np.ndarray, labels: np.ndarray) -> int:
    return sum(any(labels[j] != labels[i] and (bits[j] == bits[i]).all() for j in range(len(bits)))
               for i in range(len(bits)))


@pytest.mark.parametrize("n,bits,classes", [(30, 8, 3), (120, 8, 5), (60, 16, 2)])
def test_mixed_count_matches_brute_force(rng, n, bits, classes):
    # Few bits on almost-constant patterns: many shared codes, some across classes.
    unpacked = rng.random((n, bits)) < np.where(rng.random(bits) < 0.7, 0.02, 0.5)
    labels = rng.integers(0, classes, n)
    health = code_health(pack_bits(unpacked), bits, labels=labels)
    assert health.mixed == _brute_mixed(unpacked, labels)
    assert health.classes == len(np.unique(labels))


def test_codes_shared_within_classes_are_class_level_not_collapse(rng):
    # 4 classes, 3 codes each, 10 images per code: what classification training gives.
    class_codes = rng.integers(0, 256, (12, 8), dtype=np.uint8)
    codes = np.repeat(class_codes, 10, axis=0)
    labels = np.repeat(np.arange(4), 30)
    health = code_health(codes, 64, labels=labels)
    assert (health.distinct, health.classes, health.mixed) == (12, 4, 0)
    assert health.class_level and not health.collapsed and health.warnings() == []
    assert len(health.notes()) == 1 and "12 distinct codes for 120 images of 4 classes" in health.notes()[0]
    # Without labels the same codes are reported as collapsed.
    assert code_health(codes, 64).collapsed and code_health(codes, 64).notes() == []


def test_codes_shared_across_classes_are_collapse(rng):
    class_codes = rng.integers(0, 256, (12, 8), dtype=np.uint8)
    codes = np.repeat(class_codes, 10, axis=0)
    labels = np.repeat(np.arange(4), 30)
    labels[:5] = 1  # half of code 0's images now belong to class 1 as well
    health = code_health(codes, 64, labels=labels)
    assert health.mixed == 10 and not health.class_level and health.collapsed
    assert "10 images share a code with another class" in health.warnings()[0]


def test_labels_must_match_codes():
    with pytest.raises(ValueError, match="expected 3 labels"):
        code_health(np.zeros((3, 8), np.uint8), 64, labels=[0, 1])
