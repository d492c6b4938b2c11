"""Deep and classical hashing encoders behind one registry.

>>> from encoders import create_encoder, list_encoders
>>> model = create_encoder("dlbhc", backbone="small_cnn", bits=64, num_classes=10)

Every model module is imported here so that registration never depends on what the
caller happened to import.
"""

from . import backbones  # noqa: F401  (registers backbones)
from . import bilinear, dlbhc, hashnet, metric_hash  # noqa: F401  (registers the supervised encoders)
from . import classical, gan_hash  # noqa: F401  (unsupervised encoders, fitted on features)
from .base import Backbone, ConvBackbone, HashModel, HashOutput
from .checkpoint import load_encoder, save_encoder
from .registry import create_backbone, create_encoder, list_backbones, list_encoders, register_backbone, register_encoder

__all__ = [
    "Backbone",
    "ConvBackbone",
    "HashModel",
    "HashOutput",
    "create_backbone",
    "create_encoder",
    "list_backbones",
    "list_encoders",
    "load_encoder",
    "register_backbone",
    "register_encoder",
    "save_encoder",
]
