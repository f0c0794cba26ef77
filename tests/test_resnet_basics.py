"""Structure of resbackbone.resnet against torchvision's reference models (fast, no weights)."""

import pytest
import torch
import torchvision

from resbackbone import RESNET_SPECS, ResNet, resnet18


@pytest.mark.parametrize("depth", sorted(RESNET_SPECS))
def test_state_dict_shapes_match_torchvision(depth: int) -> None:
    ours = ResNet(depth).state_dict()
    ref = getattr(torchvision.models, f"resnet{depth}")().state_dict()
    rename = {"conv1.": "stem.conv1.", "bn1.": "stem.bn1.", "layer1.": "res2.", "layer2.": "res3."}
    rename |= {"layer3.": "res4.", "layer4.": "res5."}

    def ours_key(k: str) -> str:
        for a, b in rename.items():
            if k.startswith(a):
                return b + k[len(a) :]
        return k

    mapped = {ours_key(k): v.shape for k, v in ref.items()}
    assert mapped == {k: v.shape for k, v in ours.items()}


def test_out_features_trims_later_stages() -> None:
    model = resnet18(out_features=("res3",), num_classes=None)
    assert not hasattr(model, "res4") and model.fc is None
    out = model(torch.zeros(1, 3, 64, 64))
    assert list(out) == ["res3"] and out["res3"].shape == (1, 128, 8, 8)
