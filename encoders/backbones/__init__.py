"""Backbones: image -> F7 feature extractors. Importing this package registers them all."""

from . import small_cnn  # noqa: F401  (registration by import)
