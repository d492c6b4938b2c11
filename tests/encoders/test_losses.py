import math

import pytest
import torch

from encoders.base import HashOutput
from torch.nn import functional as F

from encoders.losses import ClassificationLoss, HashNetLoss, create_loss, hashnet_pair_weights, label_similarity


def _out(codes):
    codes = torch.as_tensor(codes, dtype=torch.float32)
    return HashOutput(features=codes, codes=codes)


def test_pair_weights_balance_similar_and_dissimilar_pairs():
    # Labels 0, 0, 1: of the 6 ordered pairs i != j, 2 are similar ((0,1), (1,0)) and 4 not.
    similarity = label_similarity(torch.tensor([0, 0, 1]))
    torch.testing.assert_close(similarity, torch.tensor([[1.0, 1, 0], [1, 1, 0], [0, 0, 1]]))
    w_similar, w_dissimilar, pairs = hashnet_pair_weights(similarity)
    assert torch.equal(pairs, ~torch.eye(3, dtype=torch.bool))
    assert float(w_similar) == pytest.approx(6 / 2) and float(w_dissimilar) == pytest.approx(6 / 4)


def test_pair_weights_when_every_pair_is_dissimilar():
    w_similar, w_dissimilar, _ = hashnet_pair_weights(label_similarity(torch.tensor([3, 1, 2])))
    assert float(w_dissimilar) == pytest.approx(1.0)
    assert float(w_similar) == pytest.approx(6.0)  # clamped count; multiplies only zero similarities


def test_soft_label_similarity_is_the_chance_of_sharing_a_class():
    probs = torch.tensor([[1.0, 0.0], [0.5, 0.5], [0.25, 0.75]])
    expected = torch.tensor([[1.0, 0.5, 0.25], [0.5, 0.5, 0.5], [0.25, 0.5, 0.625]])
    torch.testing.assert_close(label_similarity(probs), expected)


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


def test_hashnet_loss_one_hot_probabilities_equal_class_indices():
    codes = torch.tensor([[0.9, -0.2, 0.4], [0.1, 0.8, -0.7], [-0.5, 0.3, 0.6], [0.2, 0.2, -0.9]])
    labels = torch.tensor([0, 2, 0, 1])
    hard = HashNetLoss()(_out(codes), labels)["loss"]
    soft = HashNetLoss()(_out(codes), F.one_hot(labels, 3).float())["loss"]
    assert float(soft) == pytest.approx(float(hard), rel=1e-6)


def test_hashnet_loss_soft_labels_hand_computed():
    # Two codes, alpha = 1, x = <h0, h1> = 0.5; s_01 = 0.5 * 1 + 0.5 * 0 = 0.5.
    # |S| = 2 ordered pairs, |S1| = |S0| = 1, so both weights are 2; each ordered pair costs
    # 2 * 0.5 * softplus(-x) + 2 * 0.5 * softplus(x); the mean over the 2 pairs is the same.
    labels = torch.tensor([[1.0, 0.0], [0.5, 0.5]])
    terms = HashNetLoss(alpha=1.0)(_out([[1.0, 0.0], [0.5, 0.0]]), labels)
    expected = math.log1p(math.exp(-0.5)) + math.log1p(math.exp(0.5))
    assert float(terms["loss"]) == pytest.approx(expected, rel=1e-6)


def test_classification_loss_on_class_probabilities():
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    probs = torch.tensor([[0.75, 0.25], [0.0, 1.0]])
    output = HashOutput(features=logits, codes=logits, logits=logits)
    log_p = torch.log_softmax(logits, dim=1)
    expected = -(0.75 * log_p[0, 0] + 0.25 * log_p[0, 1] + log_p[1, 1]) / 2
    assert float(ClassificationLoss()(output, probs)["loss"]) == pytest.approx(float(expected), rel=1e-6)


@pytest.mark.parametrize("labels", [torch.tensor([0, 1, 0]), torch.zeros(2, 3, dtype=torch.long), torch.zeros(2)[None]])
def test_labels_of_the_wrong_shape_or_type_are_rejected(labels):
    with pytest.raises(ValueError, match=r"labels: expected class indices of shape \(2,\) or float class probabilities"):
        HashNetLoss()(_out([[1.0, 0.0], [0.5, 0.0]]), labels)


def test_create_loss_by_name():
    assert isinstance(create_loss("hashnet"), HashNetLoss)
    with pytest.raises(ValueError, match="unknown loss 'nope'; available: classification, hashnet"):
        create_loss("nope")
