import pytest
import torch

from encoders.mixup import mixup_batch


def test_mixed_images_and_labels_are_the_same_blend():
    # Image i is filled with the value i and has class i: a mixed image's value must then be
    # the mean class under its class probabilities.
    n = 6
    images = torch.arange(n, dtype=torch.float32)[:, None, None, None].expand(n, 3, 4, 4).clone()
    labels = torch.arange(n)
    torch.manual_seed(1)
    mixed, probs = mixup_batch(images, labels, num_classes=n, alpha=1.0)
    assert mixed.shape == images.shape and probs.shape == (n, n)
    torch.testing.assert_close(probs.sum(1), torch.ones(n))
    expected = probs @ torch.arange(n, dtype=torch.float32)
    torch.testing.assert_close(mixed, expected[:, None, None, None].expand_as(mixed))
    assert ((probs > 0).sum(1) <= 2).all()  # each image blends with one partner at most
    assert not torch.equal(mixed, images)


def test_mixup_follows_the_torch_seed():
    images, labels = torch.randn(8, 3, 4, 4), torch.randint(0, 3, (8,))
    runs = []
    for _ in range(2):
        torch.manual_seed(7)
        runs.append(mixup_batch(images, labels, 3, alpha=0.4))
    assert torch.equal(runs[0][0], runs[1][0]) and torch.equal(runs[0][1], runs[1][1])


@pytest.mark.parametrize("labels,alpha,match", [
    (torch.tensor([0, 1]), 0.0, "alpha must be > 0"),
    (torch.tensor([0, -1]), 1.0, r"unlabelled images \(-1\) cannot be mixed"),
    (torch.tensor([0, 3]), 1.0, r"class indices in \[0, 3\)"),
    (torch.tensor([[0.5, 0.5, 0.0], [0.0, 1.0, 0.0]]), 1.0, "needs class indices of shape"),
])
def test_bad_mixup_input_is_a_clear_error(labels, alpha, match):
    with pytest.raises(ValueError, match=match):
        mixup_batch(torch.zeros(2, 3, 4, 4), labels, 3, alpha)
