"""Starting a hash head from the backbone's features of the training images (``TrainConfig.head_init``).

DLBHC's latent layer and HashNet's hash layer are affine maps of F7 whose sign is the code
(:meth:`encoders.base.HashModel.code_layer`). The pretrained recipe trains them for about 20
steps at 1e-4, too little for a random start to move far: the trained codes stay close to a
random-projection hash. Started from PCA + ITQ rotation of the training images' features
(unsupervised, the project's :class:`encoders.classical.ITQ`), the codes before the first step
are ITQ's codes and training refines them. No method starts so by default (``--head-init itq``
asks for it): the trained codes kept ITQ's collisions, HashNet's always and DLBHC's once the
backbone's batch-norm statistics were kept (README "Real photos").

``"random_centred"`` keeps the random weights and moves each bit's hyperplane through the mean of
the same features (:func:`centre_code_layer`): a random layer's hyperplanes pass near the origin,
not through the features' mean, so many of its bits start on for far fewer or far more than half
of the images.
"""

from __future__ import annotations

import numpy as np
import torch

#: ``"random"``: the layer's own initialisation; ``"itq"``: :func:`init_code_layer_from_itq`;
#: ``"random_centred"``: :func:`centre_code_layer`.
HEAD_INITS = ("random", "itq", "random_centred")


def image_features(model, images, *, batch_size: int = 64, device: str = "auto") -> np.ndarray:
    """The model's F7 features of ``images`` (an :class:`encoders.data.ImageList`; test transform,
    eval mode: unaugmented), which a start or a code fit is fitted on."""
    from .encode import encode_files

    _, features, _, _ = encode_files(model, [path for path, _ in images.samples], batch_size=batch_size,
                                     device=device)
    return features


def code_layer_and_features(model, images, head_init: str, *, batch_size: int = 64, device: str = "auto"
                            ) -> tuple[torch.nn.Linear, torch.Tensor]:
    """``model.code_layer()`` and :func:`image_features` of ``images`` (float64), which a start fits on."""
    layer = model.code_layer()
    if layer is None:
        raise ValueError(f"head_init {head_init!r} needs a linear code layer on the backbone features, which "
                         f"{model.method or type(model).__name__} has not; use head_init 'random'")
    features = image_features(model, images, batch_size=batch_size, device=device)
    return layer, torch.as_tensor(features, dtype=torch.float64)


def init_code_layer_from_itq(model, images, *, seed: int = 0, batch_size: int = 64, device: str = "auto") -> None:
    """Set ``model.code_layer()`` to ``s * ((x - mean) @ projection)`` of an ITQ fitted (seeded by
    ``seed``) on the model's F7 features ``x`` of ``images`` (an :class:`encoders.data.ImageList`,
    test transform, eval mode): the signs (the codes) are ITQ's. ``s`` keeps the sd of the layer's
    outputs on ``x`` what its own initialisation gave, so that only the directions change (at sd 1,
    4x that scale, training left more of ITQ's code collisions: README "Real photos")."""
    from .classical import ITQ

    layer, x = code_layer_and_features(model, images, "itq", batch_size=batch_size, device=device)
    itq = ITQ(bits=model.bits, seed=seed).fit(x.float().numpy())
    mean, projection = itq.mean.double(), itq.projection.double()
    with torch.no_grad():
        own_sd = float(torch.nn.functional.linear(x, layer.weight.double().cpu(), layer.bias.double().cpu()).std())
        scale = own_sd / float(((x - mean) @ projection).std())
        layer.weight.copy_((scale * projection.T).to(layer.weight))
        layer.bias.copy_((-scale * mean @ projection).to(layer.bias))


def centre_code_layer(model, images, *, batch_size: int = 64, device: str = "auto") -> None:
    """Set the bias of ``model.code_layer()`` to ``-W mean`` (``W`` its weights, left as they are;
    ``mean`` that of the model's F7 features of ``images``, as for the ITQ start), so that the codes
    are ``sign(W (x - mean))``: every bit's hyperplane passes through the features' mean."""
    layer, x = code_layer_and_features(model, images, "random_centred", batch_size=batch_size, device=device)
    with torch.no_grad():
        layer.bias.copy_((-layer.weight.double().cpu() @ x.mean(dim=0)).to(layer.bias))


def init_code_layer(model, images, head_init: str, *, seed: int = 0, batch_size: int = 64,
                    device: str = "auto") -> None:
    """Start ``model.code_layer()`` as ``head_init`` (one of :data:`HEAD_INITS`) says; ``"random"``
    leaves the layer as it is."""
    if head_init == "itq":
        init_code_layer_from_itq(model, images, seed=seed, batch_size=batch_size, device=device)
    elif head_init == "random_centred":
        centre_code_layer(model, images, batch_size=batch_size, device=device)
