"""HashNet (Cao et al., ICCV 2017): a hash layer ``tanh(beta z)`` on F7, trained with the
weighted pairwise cross-entropy, where ``beta`` grows by continuation so that the relaxed
codes converge to +-1; the binary code is ``sign(z)``."""

from __future__ import annotations

import torch
from torch import nn

from .base import LOW_LR_EVERYWHERE, HashModel, HashOutput
from .losses import HashNetLoss
from .registry import create_backbone, register_encoder

#: HashNet's published continuation: beta = (1 + 0.005 * iter) ** 0.5, updated every 200 iterations.
DEFAULT_GAMMA = 0.005
DEFAULT_POWER = 0.5
DEFAULT_STEP_SIZE = 200


def continuation_beta(step: int, gamma: float = DEFAULT_GAMMA, power: float = DEFAULT_POWER,
                      step_size: int = DEFAULT_STEP_SIZE, init_scale: float = 1.0) -> float:
    """``init_scale * (1 + gamma * t) ** power`` with ``t = step`` rounded down to a multiple of
    ``step_size``: beta rises in steps, one every ``step_size`` iterations."""
    if step_size < 1:
        raise ValueError(f"step_size must be >= 1, got {step_size}")
    t = (max(0, int(step)) // step_size) * step_size
    return float(init_scale * (1.0 + gamma * t) ** power)


class HashLayer(nn.Module):
    """``fc(in_dim -> bits)`` then ``tanh(beta z)``; :meth:`set_step` applies the continuation."""

    def __init__(self, in_dim: int, bits: int, gamma: float = DEFAULT_GAMMA, power: float = DEFAULT_POWER,
                 step_size: int = DEFAULT_STEP_SIZE, init_scale: float = 1.0) -> None:
        super().__init__()
        self.fc = nn.Linear(in_dim, bits)
        self.gamma, self.power, self.step_size, self.init_scale = gamma, power, int(step_size), init_scale
        # A buffer, so a checkpoint or a saved encoder keeps the beta reached.
        self.register_buffer("beta", torch.tensor(float(init_scale)))

    def set_step(self, step: int) -> None:
        self.beta.fill_(continuation_beta(step, self.gamma, self.power, self.step_size, self.init_scale))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Relaxed codes in ``(-1, 1)``, ``(n, bits)``."""
        return torch.tanh(self.beta * self.fc(x))


class HashNet(HashModel):
    """Backbone F7 -> :class:`HashLayer`. ``forward`` returns F7 and the relaxed codes (no logits)."""

    method = "hashnet"
    # As DLBHC: on a pretrained backbone, the head at 1e-3 pulls each class onto a few codes (78-83 % distinct
    # database codes on the tuning partitions of benchmarks/photos.py); 1e-4 everywhere kept them apart.
    # Keeping the backbone's ImageNet batch-norm statistics raised unseen mAP@100 there (0.934 -> 0.957, 93 %
    # distinct); started from ITQ instead of at random, its pairwise loss kept ITQ's code collisions (72 %).
    pretrained_recipe = {**LOW_LR_EVERYWHERE, "freeze_bn": True}

    def __init__(self, net: nn.Module, bits: int, num_classes: int | None = None, *,
                 gamma: float = DEFAULT_GAMMA, power: float = DEFAULT_POWER, step_size: int = DEFAULT_STEP_SIZE,
                 init_scale: float = 1.0, **config) -> None:
        super().__init__(net, bits, num_classes, gamma=gamma, power=power, step_size=step_size,
                         init_scale=init_scale, **config)
        self.hash_layer = HashLayer(net.feature_dim, bits, gamma, power, step_size, init_scale)

    @property
    def beta(self) -> float:
        return float(self.hash_layer.beta)

    def forward_head(self, features: torch.Tensor) -> HashOutput:
        return HashOutput(features=features, codes=self.hash_layer(features))

    def binarize(self, codes: torch.Tensor) -> torch.Tensor:
        return codes > 0  # sign(tanh(beta z)) = sign(z)

    def default_loss(self) -> HashNetLoss:
        return HashNetLoss()

    def code_layer(self) -> nn.Linear:
        return self.hash_layer.fc

    def on_train_step(self, step: int) -> None:
        self.hash_layer.set_step(step)

    def module_groups(self) -> dict[str, list[nn.Module]]:
        """Named parts a training stage can select: ``backbone`` and ``hash``."""
        return {"backbone": [self.backbone], "hash": [self.hash_layer]}


@register_encoder
def hashnet(backbone: str = "small_cnn", bits: int = 64, num_classes: int | None = None,
            gamma: float = DEFAULT_GAMMA, power: float = DEFAULT_POWER, step_size: int = DEFAULT_STEP_SIZE,
            init_scale: float = 1.0, **backbone_kwargs) -> HashNet:
    """HashNet on any registered backbone; extra keywords go to the backbone builder.
    ``num_classes`` is recorded but unused (the loss is pairwise)."""
    net = create_backbone(backbone, **backbone_kwargs)
    return HashNet(net, bits, num_classes, gamma=gamma, power=power, step_size=step_size,
                   init_scale=init_scale, backbone=backbone, **backbone_kwargs)
