"""Name -> builder registries with wildcard listing (like timm's ``create_model``)."""

from __future__ import annotations

import fnmatch
from typing import Any, Callable


class Registry:
    """A named collection of builder functions.

    ``@registry.register`` (or ``register("name")``) adds a builder under its function
    name; ``create(name, **kwargs)`` calls it with the ``None``-valued keywords dropped,
    so unset CLI options never override a builder's defaults.
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._builders: dict[str, Callable[..., Any]] = {}

    def register(self, fn_or_name: "Callable | str | None" = None):
        def add(fn: Callable, name: str) -> Callable:
            if name in self._builders:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._builders[name] = fn
            return fn

        if callable(fn_or_name):
            return add(fn_or_name, fn_or_name.__name__)
        return lambda fn: add(fn, fn_or_name or fn.__name__)

    def list(self, pattern: str = "*") -> list[str]:
        """Registered names matching a shell-style ``pattern``, sorted."""
        return sorted(fnmatch.filter(self._builders, pattern))

    def __contains__(self, name: str) -> bool:
        return name in self._builders

    def get(self, name: str) -> Callable[..., Any]:
        try:
            return self._builders[name]
        except KeyError:
            raise ValueError(f"unknown {self.kind} {name!r}; available: {', '.join(self.list())}") from None

    def create(self, name: str, **kwargs: Any) -> Any:
        return self.get(name)(**{k: v for k, v in kwargs.items() if v is not None})


ENCODERS = Registry("encoder")
BACKBONES = Registry("backbone")

register_encoder = ENCODERS.register
register_backbone = BACKBONES.register


def list_encoders(pattern: str = "*") -> list[str]:
    """Names of the registered encoders (hashing methods) matching ``pattern``."""
    return ENCODERS.list(pattern)


def list_backbones(pattern: str = "*") -> list[str]:
    """Names of the registered backbones matching ``pattern``."""
    return BACKBONES.list(pattern)


def create_encoder(name: str, **kwargs: Any):
    """Build a hashing model: ``create_encoder("dlbhc", backbone="small_cnn", bits=64, num_classes=10)``."""
    return ENCODERS.create(name, **kwargs)


def create_backbone(name: str, **kwargs: Any):
    """Build a feature extractor that maps images to F7 vectors (``.feature_dim`` wide)."""
    return BACKBONES.create(name, **kwargs)
