"""Hashers fitted on feature vectors, and the :class:`HashModel` that puts one behind a backbone.

Unsupervised methods (the classical baselines and GAN hashing) learn from a matrix of
real-valued features, not from labelled batches. Each is a :class:`FeatureHasher`:

>>> from encoders import create_encoder
>>> itq = create_encoder("itq", bits=32, seed=0).fit(features)   # (n, d) array
>>> codes = itq.encode(features)                                 # (n, 4) packed uint8

Given ``backbone=``, the same builder returns a :class:`FeatureHashModel` (a ``HashModel``:
images -> backbone F7 -> hasher), which the image-folder pipeline fits on the backbone's
features and then encodes, indexes and saves like any deep encoder.
"""

from __future__ import annotations

import inspect
import numpy as np
import torch
from torch import nn

from hashindex.codes import check_bits, pack_bits

from .base import HashModel, HashOutput
from .registry import ENCODERS, create_backbone, register_encoder

#: Attribute set on the registered builders of feature-fitted methods.
_FEATURE_METHOD_FLAG = "fits_on_features"


def as_feature_matrix(features, name: str = "features") -> np.ndarray:
    """``features`` as a float64 ``(n, d)`` array with ``n >= 2`` finite rows (ValueError otherwise)."""
    if isinstance(features, torch.Tensor):
        features = features.detach().cpu().numpy()
    x = np.asarray(features, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] < 2 or x.shape[1] < 1:
        raise ValueError(f"{name}: expected an (n, d) array with n >= 2 and d >= 1, got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError(f"{name}: contains NaN or infinite values")
    return x


class FeatureHasher(nn.Module):
    """Base class: ``fit(X)`` learns from ``(n, d)`` features, ``encode(X)`` returns packed codes.

    Subclasses set ``method`` and ``state_names`` (the tensors ``fit`` creates: they are
    the whole fitted state, saved as buffers), and implement ``_fit(x, rng) -> {name: array}``
    and ``_project(x) -> (n, bits)`` real values whose sign is the code (``> 0`` is bit 1).
    """

    method: str = ""
    state_names: tuple[str, ...] = ()
    #: Iterative methods take ``fit(features, targets, device=, epochs=, progress=)``.
    iterative: bool = False
    #: Side of the downsampled images the method learns to reconstruct from the image
    #: pipeline (``None``: it needs the features only).
    reconstruction_size: int | None = None

    def __init__(self, bits: int = 64, seed: int = 0, **config) -> None:
        super().__init__()
        self.bits = check_bits(bits)
        self.seed = int(seed)
        #: Keyword arguments that rebuild this hasher with ``create_encoder(method, **config)``.
        self.config = {"bits": self.bits, "seed": self.seed, **config}
        for name in self.state_names:
            self.register_buffer(name, None)

    @property
    def fitted(self) -> bool:
        return all(getattr(self, name) is not None for name in self.state_names)

    @property
    def input_dim(self) -> int | None:
        """Feature width the hasher was fitted on (``None`` before ``fit``)."""
        raise NotImplementedError

    def fit(self, features) -> "FeatureHasher":
        """Learn the hash functions from ``features`` ``(n, d)``; returns ``self``."""
        x = as_feature_matrix(features)
        state = self._fit(x, np.random.default_rng(self.seed))
        for name in self.state_names:
            self.register_buffer(name, torch.as_tensor(np.asarray(state[name])).to(_state_dtype(state[name])))
        return self

    def project(self, features) -> torch.Tensor:
        """Real-valued ``(n, bits)`` relaxed codes; a positive value is a 1 bit."""
        if not self.fitted:
            raise RuntimeError(f"{self.method}: call fit() before encoding")
        x = self._as_input(features)
        return self._project(x)

    @torch.no_grad()
    def encode(self, features) -> np.ndarray:
        """Packed uint8 codes ``(n, bits // 8)``, bit ``j`` LSB-first as ``hashindex.codes.pack_bits``."""
        return pack_bits((self.project(features) > 0).cpu().numpy())

    def fit_encode(self, features) -> np.ndarray:
        return self.fit(features).encode(features)

    def _as_input(self, features) -> torch.Tensor:
        ref = next(iter(self.buffers()), None)
        device = ref.device if ref is not None else torch.device("cpu")
        x = torch.as_tensor(features, dtype=torch.float32, device=device)
        if x.ndim != 2 or x.shape[1] != self.input_dim:
            raise ValueError(f"{self.method}: expected features of shape (n, {self.input_dim}), got {tuple(x.shape)}")
        return x

    def _fit(self, x: np.ndarray, rng: np.random.Generator) -> dict:
        raise NotImplementedError

    def _project(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # The fitted tensors exist only after fit(); make room for them so that
        # load_state_dict works on a freshly built hasher, alone or inside a model.
        for name in self.state_names:
            value = state_dict.get(prefix + name)
            if isinstance(value, torch.Tensor):
                self.register_buffer(name, torch.empty_like(value))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def extra_repr(self) -> str:
        return f"bits={self.bits}, seed={self.seed}, fitted={self.fitted}"


def _state_dtype(value) -> torch.dtype:
    return torch.long if np.issubdtype(np.asarray(value).dtype, np.integer) else torch.float32


class LinearHasher(FeatureHasher):
    """Hashers whose bits are signs of affine projections: ``(x - mean) @ projection - offset``."""

    state_names = ("mean", "projection", "offset")

    @property
    def input_dim(self) -> int | None:
        return None if self.mean is None else int(self.mean.shape[0])

    def _project(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) @ self.projection - self.offset


def pca(x: np.ndarray, n_components: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean ``(d,)``, principal directions ``(d, n_components)`` (largest variance first, sign
    fixed so each direction's largest-magnitude entry is positive) and their variances."""
    mean = x.mean(axis=0)
    centred = x - mean
    cov = centred.T @ centred / max(1, len(x) - 1)
    variances, vectors = np.linalg.eigh(cov)
    order = np.argsort(variances)[::-1][:n_components]
    vectors = vectors[:, order]
    signs = np.sign(vectors[np.abs(vectors).argmax(axis=0), np.arange(vectors.shape[1])])
    signs[signs == 0] = 1
    return mean, vectors * signs, np.clip(variances[order], 0, None)


def require_bits_at_most_dim(method: str, bits: int, dim: int) -> None:
    if bits > dim:
        raise ValueError(f"{method} takes one bit per principal direction: {bits} bits need features of "
                         f"dimension >= {bits}, got {dim}")


class FeatureHashModel(HashModel):
    """A backbone's F7 features hashed by a fitted :class:`FeatureHasher`.

    ``forward`` returns F7 as ``features`` and the hasher's real-valued projection as
    ``codes`` (bit = ``codes > 0``). Fit with :meth:`fit` on features of the training images
    (see :func:`encoders.unsupervised.fit_feature_encoder`).
    """

    def __init__(self, net: nn.Module, hasher: FeatureHasher, **config) -> None:
        super().__init__(net, hasher.bits, None, **config)
        self.hasher = hasher
        self.method = hasher.method

    @property
    def config(self) -> dict:
        # The hasher's config can grow during fit (e.g. the GAN records its input width).
        return {**self._model_config, **self.hasher.config}

    @config.setter
    def config(self, value: dict) -> None:
        self._model_config = dict(value)

    def fit(self, features, *args, **kwargs) -> "FeatureHashModel":
        self.hasher.fit(features, *args, **kwargs)
        return self

    def forward_head(self, features: torch.Tensor) -> HashOutput:
        return HashOutput(features=features, codes=self.hasher.project(features))

    def binarize(self, codes: torch.Tensor) -> torch.Tensor:
        return codes > 0


def register_feature_encoder(hasher_cls: type[FeatureHasher]) -> type[FeatureHasher]:
    """Register ``hasher_cls`` under its ``method`` name.

    The builder ``name(bits=64, seed=0, backbone=None, **kwargs)`` returns the bare hasher
    when ``backbone`` is ``None``, else a :class:`FeatureHashModel` on that backbone; keywords
    the hasher's constructor does not take go to the backbone builder. ``num_classes`` is
    accepted and ignored: these methods never see labels.
    """
    hasher_params = set(inspect.signature(hasher_cls.__init__).parameters) - {"self", "config"}

    def builder(bits: int = 64, seed: int = 0, backbone: str | None = None, num_classes: int | None = None,
                **kwargs):
        hasher_kwargs = {k: v for k, v in kwargs.items() if k in hasher_params}
        backbone_kwargs = {k: v for k, v in kwargs.items() if k not in hasher_params}
        if backbone is None:
            if backbone_kwargs:
                raise TypeError(f"{hasher_cls.method}: unknown keyword(s) {sorted(backbone_kwargs)}")
            return hasher_cls(bits=bits, seed=seed, **hasher_kwargs)
        net = create_backbone(backbone, **backbone_kwargs)
        if "input_dim" in hasher_params:
            hasher_kwargs.setdefault("input_dim", net.feature_dim)
        hasher = hasher_cls(bits=bits, seed=seed, **hasher_kwargs)
        return FeatureHashModel(net, hasher, backbone=backbone, **backbone_kwargs)

    builder.__name__ = hasher_cls.method
    builder.__doc__ = (hasher_cls.__doc__ or "").strip().splitlines()[0] if hasher_cls.__doc__ else None
    setattr(builder, _FEATURE_METHOD_FLAG, True)
    register_encoder(hasher_cls.method)(builder)
    return hasher_cls


def is_feature_method(method: str) -> bool:
    """Whether ``method`` is fitted on features (unsupervised) rather than trained on labelled batches."""
    return method in ENCODERS and bool(getattr(ENCODERS.get(method), _FEATURE_METHOD_FLAG, False))


def feature_methods() -> list[str]:
    """The registered feature-fitted (unsupervised) methods."""
    return [name for name in ENCODERS.list() if is_feature_method(name)]


__all__ = [
    "FeatureHashModel",
    "FeatureHasher",
    "LinearHasher",
    "as_feature_matrix",
    "feature_methods",
    "is_feature_method",
    "pca",
    "register_feature_encoder",
]
