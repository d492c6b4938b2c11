"""Bilinear-HashNet: a bilinear CNN (Lin et al., 2015) on a backbone's last conv map
(VGG-16 conv5_3 in the paper, 448 x 448 inputs) with a HashNet hash layer on top.

The map ``(n, C, h, w)`` is pooled symmetrically -- the outer product of each location's
C-vector with itself, averaged over locations (full: ``C**2``-d), or its Tensor Sketch
approximation (compact: ``sketch_dim``-d, Gao et al., 2016) -- then passed through a signed
square root and l2-normalised. A classifier on that descriptor trains the bilinear module
(stages 1-2), and the hash layer ``tanh(beta z)`` is trained with the HashNet loss (stage 3);
see :func:`paper_schedule`.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from .base import ConvBackbone, HashModel, HashOutput
from .hashnet import DEFAULT_GAMMA, DEFAULT_POWER, DEFAULT_STEP_SIZE, HashLayer
from .losses import ClassificationLoss
from .registry import create_backbone, register_encoder
from .training import Stage

#: Above this many channels, ``pooling="auto"`` picks the compact form (C**2 gets too wide).
MAX_FULL_CHANNELS = 512
#: Input size of the paper's VGG-16 bilinear model.
VGG_BILINEAR_INPUT = 448
SQRT_EPS = 1e-8


def signed_sqrt(x: torch.Tensor, eps: float = SQRT_EPS) -> torch.Tensor:
    """``sign(x) * sqrt(|x|)``, with ``eps`` bounding the slope near 0."""
    return torch.sign(x) * torch.sqrt(x.abs() + eps)


class BilinearPool(nn.Module):
    """Full symmetric bilinear pooling: ``(n, C, h, w) -> (n, C * C)``, averaged over the
    ``h * w`` locations (sum pooling up to a constant, which the l2 normalisation removes)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.channels = channels
        self.out_dim = channels * channels

    def forward(self, fmap: torch.Tensor) -> torch.Tensor:
        x = fmap.float().flatten(2)  # (n, C, L)
        return (x @ x.transpose(1, 2)).flatten(1) / x.shape[2]


class TensorSketchPool(nn.Module):
    """Compact bilinear pooling by Tensor Sketch: ``(n, C, h, w) -> (n, dim)``.

    Each location's vector ``x`` is count-sketched twice with fixed random hashes
    ``h_k: [C] -> [dim]`` and signs ``s_k``; the circular convolution of the two sketches
    (a product in the Fourier domain) is an unbiased sketch of ``x x^T``, with
    ``<TS(x), TS(y)> ~ <x, y>**2``. Averaged over locations like :class:`BilinearPool`.
    The hashes are buffers drawn from ``seed``, so a saved model reloads identically.
    """

    def __init__(self, channels: int, dim: int = 8192, seed: int = 0) -> None:
        super().__init__()
        if dim < 2:
            raise ValueError(f"sketch dim must be >= 2, got {dim}")
        self.channels, self.out_dim = channels, dim
        gen = torch.Generator().manual_seed(seed)
        for k in (1, 2):
            self.register_buffer(f"hash{k}", torch.randint(0, dim, (channels,), generator=gen))
            self.register_buffer(f"sign{k}", torch.randint(0, 2, (channels,), generator=gen).float() * 2 - 1)

    def _count_sketch(self, x: torch.Tensor, index: torch.Tensor, sign: torch.Tensor) -> torch.Tensor:
        out = x.new_zeros(x.shape[:-1] + (self.out_dim,))
        return out.index_add(-1, index, x * sign)

    def forward(self, fmap: torch.Tensor) -> torch.Tensor:
        x = fmap.float().flatten(2).transpose(1, 2)  # (n, L, C)
        a = torch.fft.rfft(self._count_sketch(x, self.hash1, self.sign1), dim=-1)
        b = torch.fft.rfft(self._count_sketch(x, self.hash2, self.sign2), dim=-1)
        # The inverse FFT is linear, so average the spectra over locations first.
        return torch.fft.irfft((a * b).mean(dim=1), n=self.out_dim, dim=-1)


class BilinearHashNet(HashModel):
    """Conv trunk -> bilinear pooling -> signed sqrt -> l2 norm -> classifier and hash layer.

    ``forward`` returns: ``features``, the conv map averaged over locations (``map_channels``
    wide, what the fine rerank compares); ``codes``, the hash layer's ``tanh(beta z)``;
    ``logits``, the classifier's (stages 1-2 of :func:`paper_schedule`).
    """

    method = "bilinear_hashnet"

    def __init__(self, trunk: nn.Module, map_channels: int, input_cfg: dict, bits: int, num_classes: int, *,
                 pooling: str = "auto", sketch_dim: int = 8192, sketch_seed: int = 0,
                 gamma: float = DEFAULT_GAMMA, power: float = DEFAULT_POWER, step_size: int = DEFAULT_STEP_SIZE,
                 init_scale: float = 1.0, **config) -> None:
        if not num_classes or num_classes < 2:
            raise ValueError(f"Bilinear-HashNet trains its bilinear module by classification and needs "
                             f"num_classes >= 2, got {num_classes}")
        if pooling not in ("auto", "full", "compact"):
            raise ValueError(f"pooling must be 'auto', 'full' or 'compact', got {pooling!r}")
        super().__init__(trunk, bits, num_classes, pooling=pooling, sketch_dim=sketch_dim, sketch_seed=sketch_seed,
                         gamma=gamma, power=power, step_size=step_size, init_scale=init_scale, **config)
        if pooling == "auto":
            pooling = "full" if map_channels <= MAX_FULL_CHANNELS else "compact"
        self.pooling = pooling
        self.map_channels = int(map_channels)
        self._input_cfg = dict(input_cfg)
        self.pool = BilinearPool(map_channels) if pooling == "full" else TensorSketchPool(map_channels, sketch_dim,
                                                                                          sketch_seed)
        self.classifier = nn.Linear(self.pool.out_dim, num_classes)
        self.hash_layer = HashLayer(self.pool.out_dim, bits, gamma, power, step_size, init_scale)
        # The descriptor has unit norm: at nn.Linear's default scale (weights and bias ~ 1/sqrt(dim)) the
        # projections are no larger than the bias (sd ~0.006 for 8192-d), so bits start lopsided and the relaxed
        # codes too small for the loss to move in a short run. Start from sign random projections of the
        # descriptor (SimHash: the Hamming distance tracks its angle) instead.
        nn.init.normal_(self.hash_layer.fc.weight)
        nn.init.zeros_(self.hash_layer.fc.bias)

    @property
    def feature_dim(self) -> int:
        return self.map_channels

    @property
    def input_cfg(self) -> dict:
        return self._input_cfg

    @property
    def descriptor_dim(self) -> int:
        """Width of the bilinear descriptor (``C**2`` full, ``sketch_dim`` compact)."""
        return self.pool.out_dim

    @property
    def beta(self) -> float:
        return float(self.hash_layer.beta)

    def forward_features(self, images: torch.Tensor) -> torch.Tensor:
        """Images -> the conv map ``(n, map_channels, h', w')`` (not pooled: the head pools it)."""
        return self.backbone(images)

    def descriptor(self, fmap: torch.Tensor) -> torch.Tensor:
        """Conv map -> l2-normalised, signed-square-rooted bilinear descriptor (float32)."""
        with torch.autocast(fmap.device.type, enabled=False):
            return F.normalize(signed_sqrt(self.pool(fmap)), dim=1)

    def forward_head(self, fmap: torch.Tensor) -> HashOutput:
        z = self.descriptor(fmap)
        return HashOutput(features=fmap.mean(dim=(2, 3)), codes=self.hash_layer(z), logits=self.classifier(z))

    def binarize(self, codes: torch.Tensor) -> torch.Tensor:
        return codes > 0

    def default_loss(self) -> ClassificationLoss:
        """The loss of a single-stage run; :func:`paper_schedule` names each stage's loss."""
        return ClassificationLoss()

    def on_train_step(self, step: int) -> None:
        self.hash_layer.set_step(step)

    def module_groups(self) -> dict[str, list[nn.Module]]:
        """Parts a stage can train: ``backbone`` (the conv trunk), ``classifier``, ``hash``."""
        return {"backbone": [self.backbone], "classifier": [self.classifier], "hash": [self.hash_layer]}

    def default_stages(self, epochs: int) -> list[Stage]:
        return paper_schedule(epochs)


def paper_schedule(epochs: int = 10, *, last_layer_lr: float = 1.0, fine_tune_lr: tuple[float, float] = (1e-4, 1e-5),
                   hash_lr: float = 1.0, split: tuple[float, float] = (0.2, 0.4)) -> list[Stage]:
    """The three-stage schedule of Bilinear-HashNet, SGD with momentum 0.9 throughout:

    1. ``last_layer``: only the classifier on the bilinear descriptor, lr 1.0, weight decay 5e-6;
    2. ``fine_tune``: the whole bilinear module (trunk + classifier), lr 1e-4 -> 1e-5
       (exponential per step), weight decay 5e-4;
    3. ``hash``: the hash layer with the HashNet loss, weight decay 5e-6 (``hash_lr`` 1.0,
       like stage 1, since the layer also sits on the unit-norm descriptor).

    ``epochs`` are split ``split[0]`` / ``split[1]`` / the rest, at least one each.
    The paper's learning rates assume an ImageNet-pretrained trunk; pass larger
    ``fine_tune_lr`` for a trunk trained from scratch.
    """
    e1 = max(1, round(epochs * split[0]))
    e2 = max(1, round(epochs * split[1]))
    e3 = max(1, epochs - e1 - e2)
    return [
        Stage(e1, train=("classifier",), lr=last_layer_lr, weight_decay=5e-6, optimizer="sgd",
              loss="classification", name="last_layer"),
        Stage(e2, train=("backbone", "classifier"), lr=fine_tune_lr[0], lr_end=fine_tune_lr[1],
              lr_schedule="exponential", weight_decay=5e-4, optimizer="sgd", loss="classification", name="fine_tune"),
        Stage(e3, train=("hash",), lr=hash_lr, weight_decay=5e-6, optimizer="sgd", loss="hashnet", name="hash"),
    ]


@register_encoder
def bilinear_hashnet(backbone: str = "vgg16", bits: int = 64, num_classes: int = 10, pooling: str = "auto",
                     sketch_dim: int = 8192, sketch_seed: int = 0, gamma: float = DEFAULT_GAMMA,
                     power: float = DEFAULT_POWER, step_size: int = DEFAULT_STEP_SIZE, init_scale: float = 1.0,
                     **backbone_kwargs) -> BilinearHashNet:
    """Bilinear-HashNet on a backbone with a conv map (``conv_trunk``); VGG defaults to 448 px.
    ``pooling``: ``"full"`` (C**2-d), ``"compact"`` (Tensor Sketch, ``sketch_dim``-d) or
    ``"auto"`` (full up to 512 channels). Extra keywords go to the backbone builder."""
    if backbone.startswith("vgg") and "input_size" not in backbone_kwargs:
        backbone_kwargs["input_size"] = VGG_BILINEAR_INPUT
    net = create_backbone(backbone, **backbone_kwargs)
    if not isinstance(net, ConvBackbone):
        raise ValueError(f"backbone {backbone!r} has no convolutional map to pool; Bilinear-HashNet needs one of "
                         "small_cnn, alexnet, vgg16, vgg19, efficientnet_lite0")
    return BilinearHashNet(net.conv_trunk(), net.map_channels, net.input_cfg, bits, num_classes, pooling=pooling,
                           sketch_dim=sketch_dim, sketch_seed=sketch_seed, gamma=gamma, power=power,
                           step_size=step_size, init_scale=init_scale, backbone=backbone, **backbone_kwargs)
