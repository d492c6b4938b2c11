"""Fitting the code layer after training (``TrainConfig.code_fit``), on the trained network's F7.

A metric loss on seen classes pulls the codes to a few class proxies; F7 keeps more of the
structure of classes never trained on (for classes unseen in training, unsupervised
quantisation of learnt features beats supervised hashing: Sablayrolles et al., ICASSP 2017).
The code layer (:meth:`encoders.base.HashModel.code_layer`, an affine map of F7 whose sign is
the code) is replaced by a quantiser of F7 fitted on the training images:

- ``"itq"``: PCA + ITQ of F7, one bit per projection
  (:func:`encoders.head_init.init_code_layer_from_itq`);
- ``"dbq"``: ITQ on unit-length F7 with ``bits / 2`` projections, two bits per projection
  that cut it into three levels at ``-t`` and ``+t`` standard deviations (double-bit
  quantisation, Kong & Li, AAAI 2012, here with fixed symmetric thresholds): two codes' Hamming
  distance is the sum of their level differences, so a projection's middle values are no longer
  split by a sign. Needs a model whose code layer can read unit-length F7 (``unit_features``).
"""

from __future__ import annotations

import numpy as np
import torch

#: ``"trained"`` keeps the trained layer; see the module docstring for the others.
CODE_FITS = ("trained", "itq", "dbq")
#: ``"dbq"``'s thresholds in standard deviations of each projection; chosen on the tune
#: partitions of ``benchmarks/seen_unseen.py`` (README "Results", seen / unseen).
DBQ_THRESHOLD_SD = 0.55


def check_code_fit(model, code_fit: str) -> None:
    """Refuse a ``code_fit`` that ``model`` cannot take (before training, not after it)."""
    if code_fit not in CODE_FITS:
        raise ValueError(f"unknown code_fit {code_fit!r}; expected one of {', '.join(CODE_FITS)}")
    if code_fit == "trained":
        return
    name = model.method or type(model).__name__
    if model.code_layer() is None:
        raise ValueError(f"code_fit {code_fit!r} needs a linear code layer on the backbone features, which "
                         f"{name} has not; use code_fit 'trained'")
    if code_fit == "dbq" and not hasattr(model, "unit_features"):
        raise ValueError(f"code_fit 'dbq' needs a code layer on unit-length F7, which {name} has not (the "
                         f"metric-learning methods have); use code_fit 'itq'")
    if code_fit == "dbq" and model.bits % 16:
        raise ValueError(f"code_fit 'dbq' needs bits that are a multiple of 16 (two per ITQ projection, "
                         f"whose count is a multiple of 8), got {model.bits}")


def fit_codes(model, images, code_fit: str, *, seed: int = 0, batch_size: int = 64, device: str = "auto") -> None:
    """Set a trained ``model``'s code layer as ``code_fit`` says, fitted (seeded by ``seed``) on
    the F7 features of ``images`` (an :class:`encoders.data.ImageList`); ``"trained"`` leaves it."""
    check_code_fit(model, code_fit)
    if code_fit == "itq":
        from .head_init import init_code_layer_from_itq

        init_code_layer_from_itq(model, images, seed=seed, batch_size=batch_size, device=device)
    elif code_fit == "dbq":
        from .head_init import image_features

        set_dbq_layer(model, image_features(model, images, batch_size=batch_size, device=device), seed=seed)


def dbq_thresholds(projections: np.ndarray, threshold_sd: float = DBQ_THRESHOLD_SD) -> np.ndarray:
    """Thresholds ``(2, n)`` of :func:`set_dbq_layer`: ``-t`` and ``+t`` sds of each column."""
    sd = projections.std(axis=0)
    return np.stack([-threshold_sd * sd, threshold_sd * sd])


def set_dbq_layer(model, features: np.ndarray, *, seed: int = 0, threshold_sd: float = DBQ_THRESHOLD_SD) -> None:
    """Make ``model``'s code layer the ``"dbq"`` quantiser of ``features`` (F7, ``(n, d)``): with
    ``x`` the unit-length features, ``v = (x - mean) @ projection`` of an ITQ of ``bits / 2`` bits
    fitted on ``x``, and ``-t_j < t_j`` the thresholds of :func:`dbq_thresholds`, bits ``2j`` and
    ``2j + 1`` are ``v_j > -t_j`` and ``v_j > t_j`` (levels 00, 10, 11)."""
    from .classical import ITQ

    x = features.astype(np.float64)
    x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    itq = ITQ(bits=model.bits // 2, seed=seed).fit(x.astype(np.float32))
    mean, projection = itq.mean.double().numpy(), itq.projection.double().numpy()
    v = (x - mean) @ projection
    thresholds, sd = dbq_thresholds(v), np.maximum(v.std(axis=0), 1e-12)
    # Row 2j + i of the layer: (x @ p_j - mean @ p_j - thresholds[i, j]) / sd_j, sd-scaled outputs.
    weight = np.repeat((projection / sd).T, 2, axis=0)
    bias = ((-mean @ projection - thresholds) / sd).T.reshape(-1)
    layer = model.code_layer()
    with torch.no_grad():
        layer.weight.copy_(torch.as_tensor(weight).to(layer.weight))
        layer.bias.copy_(torch.as_tensor(bias).to(layer.bias))
    model.unit_features = True
    model.config["unit_features"] = True
