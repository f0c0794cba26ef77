"""detection.backbone: a timm trunk initialized from a local timm weights file."""

from __future__ import annotations

import pytest
import torch


def test_timm_backbone_weights_from_a_local_file(tmp_path) -> None:
    """A timm weights file (as timm saves it: the full classifier's state dict) initializes the stride-16 trunk,
    with the model's own pixel statistics; names of our ResNet weights and unknown models are refused."""
    timm = pytest.importorskip("timm")
    from detection.backbone import TimmTrunk

    torch.manual_seed(0)
    reference = timm.create_model("resnet10t", features_only=True, out_indices=(3,)).eval()
    full = timm.create_model("resnet10t")
    full.load_state_dict({**full.state_dict(), **reference.state_dict()})  # same trunk weights in both
    path = tmp_path / "resnet10t.pth"
    torch.save(full.state_dict(), path)
    trunk = TimmTrunk("resnet10t", weights=str(path)).eval()
    x = torch.randn(1, 3, 64, 96)
    torch.testing.assert_close(trunk(x)["stride16"], reference(x)[-1])
    assert trunk.pixel_spec.std[0] == pytest.approx(255 * 0.229)
    with pytest.raises(ValueError, match="torchvision/msra weights belong"):
        TimmTrunk("resnet10t", weights="torchvision")
    with pytest.raises(ValueError, match="unknown timm model 'not_a_model'"):
        TimmTrunk("not_a_model")
