import pytest
import torch

from encoders import create_encoder, save_encoder
from encoders.checkpoint import load_trunk

TINY = dict(backbone="small_cnn", width=4, feature_dim=12, input_size=16)


def _saved(tmp_path):
    """A DLBHC encoder and the file it is saved in."""
    torch.manual_seed(0)
    model = create_encoder("dlbhc", bits=16, num_classes=3, **TINY)
    return model, save_encoder(model, tmp_path / "dlbhc.pt", class_names=["a", "b", "c"])


def test_load_trunk_copies_the_backbone_and_nothing_else(tmp_path):
    source, path = _saved(tmp_path)
    torch.manual_seed(1)
    target = create_encoder("hashnet", bits=16, **TINY)
    hash_layer = {k: v.clone() for k, v in target.hash_layer.state_dict().items()}
    assert not torch.equal(target.backbone.state_dict()["conv.0.0.weight"],
                           source.backbone.state_dict()["conv.0.0.weight"])
    load_trunk(target, path)
    for key, value in source.backbone.state_dict().items():
        assert torch.equal(target.backbone.state_dict()[key], value), key
    for key, value in hash_layer.items():
        assert torch.equal(target.hash_layer.state_dict()[key], value), key


def test_load_trunk_rejects_another_backbone(tmp_path):
    _, path = _saved(tmp_path)
    other = create_encoder("hashnet", bits=16, backbone="pixels", input_size=8)
    with pytest.raises(ValueError, match="holds a 'small_cnn' backbone, this encoder uses 'pixels'"):
        load_trunk(other, path)
    wider = create_encoder("hashnet", bits=16, **{**TINY, "width": 8})
    with pytest.raises(ValueError, match="backbone was built differently from this one"):
        load_trunk(wider, path)
