"""Starting a hash head from ITQ of the backbone's features (``TrainConfig.head_init = "itq"``).

DLBHC's latent layer and HashNet's hash layer are affine maps of F7 whose sign is the code
(:meth:`encoders.base.HashModel.code_layer`). The pretrained recipe trains them for about 20
steps at 1e-4, too little for a random start to move far: the trained codes stay close to a
random-projection hash. Started from PCA + ITQ rotation of the training images' features
(unsupervised, the project's :class:`encoders.classical.ITQ`), the codes before the first step
are ITQ's codes and training refines them. No method starts so by default (``--head-init itq``
asks for it): the trained codes kept ITQ's collisions, HashNet's always and DLBHC's once the
backbone's batch-norm statistics were kept (README "Real photos").
"""

from __future__ import annotations

import torch

#: ``"random"``: the layer's own initialisation; ``"itq"``: :func:`init_code_layer_from_itq`.
HEAD_INITS = ("random", "itq")


def init_code_layer_from_itq(model, images, *, seed: int = 0, batch_size: int = 64, device: str = "auto") -> None:
    """Set ``model.code_layer()`` to ``s * ((x - mean) @ projection)`` of an ITQ fitted (seeded by
    ``seed``) on the model's F7 features ``x`` of ``images`` (an :class:`encoders.data.ImageList`,
    test transform, eval mode): the signs (the codes) are ITQ's. ``s`` keeps the sd of the layer's
    outputs on ``x`` what its own initialisation gave, so that only the directions change (at sd 1,
    4x that scale, training left more of ITQ's code collisions: README "Real photos")."""
    from .classical import ITQ
    from .encode import encode_files

    layer = model.code_layer()
    if layer is None:
        raise ValueError(f"head_init 'itq' needs a linear code layer on the backbone features, which "
                         f"{model.method or type(model).__name__} has not; use head_init 'random'")
    _, features, _, _ = encode_files(model, [path for path, _ in images.samples], batch_size=batch_size,
                                     device=device)
    itq = ITQ(bits=model.bits, seed=seed).fit(features)
    mean, projection = itq.mean.double(), itq.projection.double()
    x = torch.as_tensor(features, dtype=torch.float64)
    with torch.no_grad():
        own_sd = float(torch.nn.functional.linear(x, layer.weight.double().cpu(), layer.bias.double().cpu()).std())
        scale = own_sd / float(((x - mean) @ projection).std())
        layer.weight.copy_((scale * projection.T).to(layer.weight))
        layer.bias.copy_((-scale * mean @ projection).to(layer.bias))
