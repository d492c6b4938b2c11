"""Backbones: image -> F7 feature extractors. Importing this package registers them all."""

from . import small_cnn  # noqa: F401  (registration by import)
from . import alexnet, efficientnet_lite, vgg  # noqa: F401
from . import pixels  # noqa: F401
