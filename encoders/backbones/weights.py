"""Loading backbone weights from a local file only: no hub download, ever."""

from __future__ import annotations

import os

import torch
from torch import nn


def load_local_weights(model: nn.Module, weights: "str | os.PathLike | None", strict: bool = True,
                       ignore_prefixes: tuple[str, ...] = ()) -> nn.Module:
    """Load a state dict saved with ``torch.save`` from a local path into ``model``.

    Keys starting with one of ``ignore_prefixes`` are dropped first (e.g. an ImageNet
    classifier the backbone does not have); the rest must match when ``strict``."""
    if weights is None:
        return model
    if not os.path.isfile(weights):
        raise FileNotFoundError(f"weights file {weights} not found (weights load from local files only)")
    state = torch.load(weights, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    if ignore_prefixes:
        state = {k: v for k, v in state.items() if not k.startswith(tuple(ignore_prefixes))}
    model.load_state_dict(state, strict=strict)
    return model
