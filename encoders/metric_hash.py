"""Metric-learning hashing: deep metric learning losses from ``pytorch-metric-learning`` on
relaxed codes ``tanh(W f7)``, plus a quantisation term and a bit-balance term.

Deep metric learning is trained and evaluated on classes disjoint from training (Cars196,
CUB-200, SOP), which is what recognising classes added after training asks for;
classification-trained codes encode the classifier instead (Sablayrolles et al., 2017).

Registered variants (one builder, the loss is the only difference):

- ``proxy_anchor_hash``: Proxy-Anchor (Kim et al., 2020), one learnt proxy per class;
- ``ms_hash``: Multi-Similarity loss with the Multi-Similarity miner (Wang et al., 2019);
- ``supcon_hash``: supervised contrastive loss (Khosla et al., 2020) over the batch.

With ``contrastive_weight`` > 0, training on two augmented views of each image
(``TrainConfig.views = 2``) adds an instance-level term on F7: NT-Xent (SimCLR, Chen et al.,
2020), each image's views the positive pair and every other row a negative, whatever their
class. It asks F7 to keep what tells one image from another, not only the seen classes apart.

The library's losses compare codes by cosine similarity, which for ``+-1`` codes is
``1 - 2 d_H / bits``: ranking by it is ranking by Hamming distance once the codes are binary.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from .base import HashModel, HashOutput
from .losses import BaseHashLoss
from .registry import create_backbone, register_encoder

#: Registered method name of each metric loss.
VARIANTS_BY_LOSS = {"proxy_anchor": "proxy_anchor_hash", "multi_similarity": "ms_hash", "supcon": "supcon_hash"}
METRIC_LOSSES = tuple(VARIANTS_BY_LOSS)


def quantization_term(codes: torch.Tensor) -> torch.Tensor:
    """Mean of ``(|h| - 1)^2``: zero when every relaxed bit sits at ``+-1``."""
    return (codes.abs() - 1).pow(2).mean()


def balance_term(codes: torch.Tensor) -> torch.Tensor:
    """Mean over bits of the squared batch mean of each bit: zero when every bit is ``+1`` for
    half the batch and ``-1`` for the other half (each bit splits the data)."""
    return codes.mean(dim=0).pow(2).mean()


def build_metric_loss(name: str, num_classes: int, bits: int) -> tuple[nn.Module, nn.Module | None]:
    """``(loss, miner or None)`` from ``pytorch-metric-learning`` for a loss name of
    :data:`METRIC_LOSSES`, with the library's default reducers."""
    from pytorch_metric_learning import losses, miners  # imported here: it brings SciPy, ~1.5 s of start-up

    if name == "proxy_anchor":
        return losses.ProxyAnchorLoss(num_classes, bits, margin=0.1, alpha=32), None
    if name == "multi_similarity":
        return losses.MultiSimilarityLoss(alpha=2, beta=50, base=0.5), miners.MultiSimilarityMiner(epsilon=0.1)
    if name == "supcon":
        return losses.SupConLoss(temperature=0.1), None
    raise ValueError(f"unknown metric loss {name!r}; expected one of {', '.join(METRIC_LOSSES)}")


#: Temperature of the NT-Xent term, as ``supcon``'s (SimCLR's value for batches of a few hundred rows).
CONTRASTIVE_TEMPERATURE = 0.1


def build_contrastive_loss() -> nn.Module:
    """The library's NT-Xent loss: called with instance ids as labels, it makes the views of one
    image the positives."""
    from pytorch_metric_learning import losses

    return losses.NTXentLoss(temperature=CONTRASTIVE_TEMPERATURE)


class MetricHashLoss(BaseHashLoss):
    """``metric`` (the library loss on the relaxed codes) + ``quantization_weight`` x
    :func:`quantization_term` + ``balance_weight`` x :func:`balance_term`, and with
    ``classification_weight`` > 0, that times the cross-entropy of the model's logits (term
    ``classification``), and with ``contrastive_weight`` > 0, that times NT-Xent on F7 across
    the views of each image (term ``contrastive``; :attr:`needs_views`). Needs class indices:
    mixed (soft) labels are refused."""

    def __init__(self, metric_loss: nn.Module, miner: nn.Module | None = None, quantization_weight: float = 0.1,
                 balance_weight: float = 0.1, classification_weight: float = 0.0,
                 contrastive_weight: float = 0.0) -> None:
        super().__init__()
        self.metric_loss, self.miner = metric_loss, miner
        self.quantization_weight, self.balance_weight = quantization_weight, balance_weight
        self.classification_weight = classification_weight
        self.contrastive_weight = contrastive_weight
        self.contrastive_loss = build_contrastive_loss() if contrastive_weight else None
        self.needs_views = bool(contrastive_weight)

    def compute_loss(self, output, labels, instances=None):
        if labels.ndim != 1:
            raise ValueError("metric-learning hashing needs class indices; it cannot train on mixup's class "
                             "probabilities (use mixup=0)")
        codes = output.codes.float()
        pairs = self.miner(codes, labels) if self.miner is not None else None
        terms = {"metric": self.metric_loss(codes, labels, indices_tuple=pairs),
                 "quantization": self.quantization_weight * quantization_term(codes),
                 "balance": self.balance_weight * balance_term(codes)}
        if self.classification_weight:
            if output.logits is None:
                raise ValueError("a classification term needs a model that returns logits (classification_weight > 0)")
            terms["classification"] = self.classification_weight * F.cross_entropy(output.logits.float(), labels)
        if self.contrastive_loss is not None:
            terms["contrastive"] = self.contrastive_weight * self.contrastive_loss(output.features.float(), instances)
        return terms


class MetricHash(HashModel):
    """Backbone F7 -> ``Linear(feature_dim, bits)`` -> ``tanh``. ``forward`` returns F7 and the
    relaxed codes (no logits); the binary code is ``sign``. With ``unit_features`` the layer
    reads F7 scaled to unit length (set by ``TrainConfig.code_fit = "dbq"``,
    :mod:`encoders.code_fit`). The library loss is a child module, so Proxy-Anchor's proxies
    train with the model and are saved with it. ``contrastive_weight``: see
    :class:`MetricHashLoss` (it needs ``TrainConfig.views`` >= 2)."""

    def __init__(self, net: nn.Module, bits: int, num_classes: int, *, loss: str = "proxy_anchor",
                 quantization_weight: float = 0.1, balance_weight: float = 0.1, proxy_lr_scale: float = 1.0,
                 classification_weight: float = 0.0, unit_features: bool = False, contrastive_weight: float = 0.0,
                 **config) -> None:
        if not num_classes or num_classes < 2:
            raise ValueError(f"metric-learning hashing needs num_classes >= 2, got {num_classes}")
        if contrastive_weight < 0:
            raise ValueError(f"contrastive_weight must be >= 0 (0 = off), got {contrastive_weight}")
        metric_loss, miner = build_metric_loss(loss, num_classes, bits)
        super().__init__(net, bits, num_classes, **config)
        self.method = VARIANTS_BY_LOSS[loss]
        self.hash_fc = nn.Linear(net.feature_dim, bits)
        self.metric_loss, self.miner = metric_loss, miner
        self.quantization_weight, self.balance_weight = quantization_weight, balance_weight
        if proxy_lr_scale <= 0:
            raise ValueError(f"proxy_lr_scale must be > 0, got {proxy_lr_scale}")
        self.proxy_lr_scale = proxy_lr_scale
        self.classification_weight = classification_weight
        # A linear classifier on the relaxed codes (as DLBHC's), only when its term is on.
        self.classifier = nn.Linear(bits, num_classes) if classification_weight else None
        self.unit_features = unit_features
        self.config.update(quantization_weight=quantization_weight, balance_weight=balance_weight,
                           classification_weight=classification_weight)
        if unit_features:  # recorded only when on: files saved before the option keep their identity
            self.config["unit_features"] = True
        self.contrastive_weight = contrastive_weight
        if contrastive_weight:  # likewise
            self.config["contrastive_weight"] = contrastive_weight
        if loss == "proxy_anchor":  # the only loss with parameters (and the only builder taking the keyword)
            self.config["proxy_lr_scale"] = proxy_lr_scale

    def module_groups(self) -> dict[str, list[nn.Module]]:
        """``backbone``, ``head`` (the hash layer, the classifier if any) and ``loss`` (the
        metric loss: Proxy-Anchor's proxies)."""
        return {"backbone": [self.backbone], "head": [m for m in (self.hash_fc, self.classifier) if m is not None],
                "loss": [m for m in (self.metric_loss, self.miner) if m is not None]}

    def lr_scales(self) -> dict[str, float]:
        # Proxies start random and each sees only its class's gradients: Proxy-Anchor trains them faster.
        return {"loss": self.proxy_lr_scale}

    def forward_head(self, features: torch.Tensor) -> HashOutput:
        codes = torch.tanh(self.hash_fc(F.normalize(features, dim=1) if self.unit_features else features))
        return HashOutput(features=features, codes=codes,
                          logits=self.classifier(codes) if self.classifier is not None else None)

    def binarize(self, codes: torch.Tensor) -> torch.Tensor:
        return codes > 0

    def code_layer(self) -> nn.Linear:
        return self.hash_fc  # tanh(z) > 0 exactly when z > 0

    def default_loss(self) -> MetricHashLoss:
        return MetricHashLoss(self.metric_loss, self.miner, self.quantization_weight, self.balance_weight,
                              self.classification_weight, self.contrastive_weight)


def _metric_hash(loss: str, backbone: str, bits: int, num_classes: int, backbone_kwargs: dict,
                 **head) -> MetricHash:
    net = create_backbone(backbone, **backbone_kwargs)
    return MetricHash(net, bits, num_classes, loss=loss, backbone=backbone, **head, **backbone_kwargs)


@register_encoder
def proxy_anchor_hash(backbone: str = "small_cnn", bits: int = 64, num_classes: int = 10,
                      quantization_weight: float = 0.1, balance_weight: float = 0.1, proxy_lr_scale: float = 1.0,
                      classification_weight: float = 0.0, unit_features: bool = False,
                      contrastive_weight: float = 0.0, **backbone_kwargs) -> MetricHash:
    """Proxy-Anchor loss on tanh codes, the proxies learning ``proxy_lr_scale`` times faster
    than the network, plus ``classification_weight`` x a classifier's cross-entropy on the
    codes and ``contrastive_weight`` x NT-Xent on F7 across views (:class:`MetricHashLoss`);
    extra keywords go to the backbone builder."""
    return _metric_hash("proxy_anchor", backbone, bits, num_classes, backbone_kwargs,
                        quantization_weight=quantization_weight, balance_weight=balance_weight,
                        proxy_lr_scale=proxy_lr_scale, classification_weight=classification_weight,
                        unit_features=unit_features, contrastive_weight=contrastive_weight)


@register_encoder
def ms_hash(backbone: str = "small_cnn", bits: int = 64, num_classes: int = 10, quantization_weight: float = 0.1,
            balance_weight: float = 0.1, classification_weight: float = 0.0, unit_features: bool = False,
            contrastive_weight: float = 0.0, **backbone_kwargs) -> MetricHash:
    """Multi-Similarity loss and miner on tanh codes (plus optional classification and
    contrastive terms, as :func:`proxy_anchor_hash`); extra keywords go to the backbone builder."""
    return _metric_hash("multi_similarity", backbone, bits, num_classes, backbone_kwargs,
                        quantization_weight=quantization_weight, balance_weight=balance_weight,
                        classification_weight=classification_weight, unit_features=unit_features,
                        contrastive_weight=contrastive_weight)


@register_encoder
def supcon_hash(backbone: str = "small_cnn", bits: int = 64, num_classes: int = 10,
                quantization_weight: float = 0.1, balance_weight: float = 0.1, classification_weight: float = 0.0,
                unit_features: bool = False, contrastive_weight: float = 0.0, **backbone_kwargs) -> MetricHash:
    """Supervised contrastive loss over the batch on tanh codes (with ``TrainConfig.views = 2``:
    SupCon across two views of each image; plus optional classification and contrastive terms,
    as :func:`proxy_anchor_hash`); extra keywords go to the backbone builder."""
    return _metric_hash("supcon", backbone, bits, num_classes, backbone_kwargs,
                        quantization_weight=quantization_weight, balance_weight=balance_weight,
                        classification_weight=classification_weight, unit_features=unit_features,
                        contrastive_weight=contrastive_weight)
