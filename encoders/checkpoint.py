"""Encoder files: a trained model with what is needed to rebuild it (method, config, class names)."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch

from hashindex.durable import TMP_SUFFIX, replace_durably

from .registry import create_encoder

ENCODER_FORMAT = "hashindex-encoder"
ENCODER_FORMAT_VERSION = 1
# Keys of a model's config that refer to files used only when it was first built.
_BUILD_ONLY_KEYS = ("weights",)


def portable_config(config: dict) -> dict:
    """A model's config without the keys that name files used only when it was first built."""
    return {k: v for k, v in config.items() if k not in _BUILD_ONLY_KEYS}


def save_torch_atomic(payload: dict, path: "str | os.PathLike") -> Path:
    """``torch.save`` through a temporary file and an atomic rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + TMP_SUFFIX)
    torch.save(payload, tmp)
    replace_durably(tmp, path)
    return path


def encoder_identity(model) -> str:
    """SHA-256 of an encoder's method, config and weights: two encoders with equal identity give
    equal codes. Stores and indexes record it, so codes of different models are never mixed."""
    digest = hashlib.sha256()
    described = json.dumps([model.method, portable_config(model.config)], sort_keys=True, default=str)
    digest.update(described.encode("utf-8"))
    for name, tensor in sorted(model.state_dict().items()):
        tensor = tensor.detach().cpu().contiguous().reshape(-1)
        digest.update(f"\0{name}\0{tensor.dtype}\0{tensor.numel()}\0".encode("utf-8"))
        digest.update(tensor.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def check_made_by(model, metadata: dict, what: str) -> None:
    """Raise ``ValueError`` unless ``model`` is the encoder whose identity ``metadata`` (a store's
    or an index's) records; ``what`` names the store or index. Records without one pass."""
    recorded, identity = metadata.get("encoder_id"), encoder_identity(model)
    if recorded is not None and recorded != identity:
        raise ValueError(f"{what} holds codes of another model (identity {str(recorded)[:12]}, this encoder is "
                         f"{identity[:12]}); use the encoder file it was made with")


def save_encoder(model, path: "str | os.PathLike", class_names: "list[str] | None" = None,
                 extra: "dict | None" = None) -> Path:
    """Write ``model`` (a registered encoder) to ``path``; :func:`load_encoder` rebuilds it."""
    config = portable_config(model.config)
    payload = {
        "format": ENCODER_FORMAT,
        "version": ENCODER_FORMAT_VERSION,
        "method": model.method,
        "config": config,
        "class_names": list(class_names or []),
        "state_dict": model.state_dict(),
        "extra": dict(extra or {}),
    }
    return save_torch_atomic(payload, path)


def read_encoder_file(path: "str | os.PathLike") -> dict:
    """The raw payload of an encoder file, validated."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"encoder file {path} not found")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch raises many types for a bad file
        raise ValueError(f"{path}: not a readable encoder file ({type(exc).__name__}: {exc})") from exc
    if not isinstance(payload, dict) or payload.get("format") != ENCODER_FORMAT:
        raise ValueError(f"{path}: not a hashindex encoder file")
    if payload.get("version") != ENCODER_FORMAT_VERSION:
        raise ValueError(f"{path}: encoder file version {payload.get('version')} is not supported")
    kinds = {"method": str, "config": dict, "state_dict": dict, "class_names": list}
    wrong = [key for key, kind in kinds.items() if not isinstance(payload.get(key), kind)]
    if wrong:
        raise ValueError(f"{path}: encoder file has no valid {', '.join(wrong)}")
    return payload


def load_encoder(path: "str | os.PathLike", method: "str | None" = None, bits: "int | None" = None):
    """Rebuild a saved encoder in eval mode; ``class_names`` are set on it as an attribute.

    ``method`` / ``bits``, when given, must match the file (a clear error otherwise).
    """
    payload = read_encoder_file(path)
    if method is not None and payload["method"] != method:
        raise ValueError(f"{path}: encoder file holds method {payload['method']!r}, expected {method!r}")
    if bits is not None and payload["config"].get("bits") != bits:
        raise ValueError(f"{path}: encoder file holds {payload['config'].get('bits')}-bit codes, expected {bits}-bit")
    try:
        model = create_encoder(payload["method"], **portable_config(payload["config"]))
        model.load_state_dict(payload["state_dict"])
    except (TypeError, ValueError, KeyError, IndexError, RuntimeError) as exc:
        # A config the method does not take, or weights of another shape: a damaged or foreign file.
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ValueError(f"{path}: encoder file does not rebuild its {payload['method']!r} model ({message})") from exc
    model.class_names = payload["class_names"]
    return model.eval()


def load_trunk(model, path: "str | os.PathLike") -> None:
    """Start ``model``'s backbone from the trained backbone of the encoder file ``path``:
    HashNet fine-tunes a classification-trained trunk, as the paper fine-tunes an
    ImageNet-trained AlexNet. Both must use the same backbone, built the same way."""
    source = load_encoder(path)
    wanted, found = model.config.get("backbone"), source.config.get("backbone")
    if wanted != found:
        raise ValueError(f"{path}: holds a {found!r} backbone, this encoder uses {wanted!r}")
    try:
        model.backbone.load_state_dict(source.backbone.state_dict())
    except RuntimeError as exc:
        raise ValueError(f"{path}: its {found!r} backbone was built differently from this one: {exc}") from exc
