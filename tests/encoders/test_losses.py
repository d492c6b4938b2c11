import math

import pytest
import torch

from encoders.base import HashOutput
from encoders.losses import HashNetLoss, create_loss, hashnet_pair_weights


def _out(codes):
    codes = torch.as_tensor(codes, dtype=torch.float32)
    return HashOutput(features=codes, codes=codes)


def test_pair_weights_balance_similar_and_dissimilar_pairs():
    # Labels 0, 0, 1: of the 6 ordered pairs i != j, 2 are similar ((0,1), (1,0)) and 4 not.
    weights, similar, pairs = hashnet_pair_weights(torch.tensor([0, 0, 1]))
    expected_similar = torch.tensor([[0, 1, 0], [1, 0, 0], [0, 0, 0]], dtype=torch.bool)
    assert torch.equal(similar, expected_similar)
    assert torch.equal(pairs, ~torch.eye(3, dtype=torch.bool))
    expected = torch.tensor([[0, 6 / 2, 6 / 4], [6 / 2, 0, 6 / 4], [6 / 4, 6 / 4, 0]])
    torch.testing.assert_close(weights, expected)
    # Each kind of pair weighs |S| in total.
    assert float(weights[similar].sum()) == pytest.approx(6.0)
    assert float(weights[pairs & ~similar].sum()) == pytest.approx(6.0)


def test_pair_weights_when_every_pair_is_dissimilar():
    weights, similar, _ = hashnet_pair_weights(torch.tensor([3, 1, 2]))
    assert not similar.any()
    torch.testing.assert_close(weights, 1.0 - torch.eye(3))


def test_hashnet_loss_hand_computed():
    # k = 2 bits, so alpha = 10 / 2 = 5. Codes h0 = (1, 1), h1 = (1, -1), h2 = (1, 1).
    codes = [[1.0, 1.0], [1.0, -1.0], [1.0, 1.0]]
    labels = torch.tensor([0, 0, 1])
    # Inner products: <h0,h1> = 0, <h0,h2> = 2, <h1,h2> = 0.
    # Similar pair (0,1): log(1 + e^0) - 5 * 0 = log 2, weight 3, counted twice (both orders).
    # Dissimilar (0,2): log(1 + e^10), weight 1.5, twice; (1,2): log 2, weight 1.5, twice.
    total = 2 * 3 * math.log(2) + 2 * 1.5 * math.log1p(math.exp(10)) + 2 * 1.5 * math.log(2)
    terms = HashNetLoss()(_out(codes), labels)
    assert set(terms) == {"similarity", "loss"}
    assert float(terms["loss"]) == pytest.approx(total / 6, rel=1e-6)
    assert float(terms["similarity"]) == float(terms["loss"])


def test_hashnet_loss_rewards_aligned_similar_codes():
    labels = torch.tensor([0, 0])
    # One similar pair, alpha = 10 / 4: loss = softplus(a * ip) - a * ip.
    aligned = HashNetLoss()(_out([[1, 1, 1, 1], [1, 1, 1, 1]]), labels)["loss"]
    opposed = HashNetLoss()(_out([[1, 1, 1, 1], [-1, -1, -1, -1]]), labels)["loss"]
    assert float(aligned) == pytest.approx(math.log1p(math.exp(10)) - 10, rel=1e-5)
    assert float(opposed) == pytest.approx(math.log1p(math.exp(-10)) + 10, rel=1e-5)


def test_hashnet_loss_explicit_alpha():
    terms = HashNetLoss(alpha=1.0)(_out([[1.0, 0.0], [0.5, 0.0]]), torch.tensor([2, 5]))
    # One dissimilar pair (both orders, weight 1): log(1 + e^0.5).
    assert float(terms["loss"]) == pytest.approx(math.log1p(math.exp(0.5)), rel=1e-6)


def test_hashnet_loss_is_stable_for_huge_inner_products():
    codes = torch.full((2, 8), 1e4)  # alpha * <h, h> = 1.25 * 8e8: exp would overflow
    similar = HashNetLoss()(_out(codes), torch.tensor([0, 0]))["loss"]
    dissimilar = HashNetLoss()(_out(codes), torch.tensor([0, 1]))["loss"]
    assert torch.isfinite(similar) and float(similar) == pytest.approx(0.0, abs=1e-3)
    assert float(dissimilar) == pytest.approx(10 / 8 * 8 * 1e8, rel=1e-5)  # softplus(x) ~ x
    codes = codes.clone().requires_grad_(True)
    HashNetLoss()(_out(codes), torch.tensor([0, 1]))["loss"].backward()
    assert torch.isfinite(codes.grad).all()


def test_create_loss_by_name():
    assert isinstance(create_loss("hashnet"), HashNetLoss)
    with pytest.raises(ValueError, match="unknown loss 'nope'; available: classification, hashnet"):
        create_loss("nope")
