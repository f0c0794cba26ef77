"""Structure of resbackbone.resnet against torchvision's reference models (fast, no weights)."""

import pytest
import torch
import torchvision

from resbackbone import RESNET_SPECS, BasicBlock, Bottleneck, ResNet, ZeroPadShortcut, plain_resnet, resnet18


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


# torchvision's published counts with the 1000-class head (the paper's Table 1 networks).
TORCHVISION_PARAMS = {18: 11_689_512, 34: 21_797_672, 50: 25_557_032, 101: 44_549_160, 152: 60_192_808}


def _params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("depth", sorted(TORCHVISION_PARAMS))
def test_parameter_counts_equal_torchvision_to_the_unit(depth: int) -> None:
    reference = getattr(torchvision.models, f"resnet{depth}")()
    assert _params(ResNet(depth)) == _params(reference) == TORCHVISION_PARAMS[depth]
    # Frozen stages keep their parameters (frozen, not removed); FrozenBN statistics are buffers as in BN.
    assert _params(ResNet(depth, freeze_at=5, norm="frozen_bn")) == TORCHVISION_PARAMS[depth] - _bn_affine(depth)


def _bn_affine(depth: int) -> int:
    """BN weight + bias parameter count (FrozenBatchNorm2d holds them as buffers)."""
    return sum(m.weight.numel() * 2 for m in ResNet(depth).modules() if isinstance(m, torch.nn.BatchNorm2d))


@pytest.mark.parametrize("depth", [18, 50])
def test_shortcut_options_a_b_c(depth: int) -> None:
    """Paper Table 3: A adds no parameters (zero-padding), B projects only where dimensions change, C everywhere."""
    a, b, c = (ResNet(depth, shortcut=s) for s in ("A", "B", "C"))
    blocks = [m for m in b.modules() if isinstance(m, (BasicBlock, Bottleneck))]
    projections_b = [m.downsample for m in blocks if m.downsample is not None]
    # ResNet-18: res3..res5 change dimensions; ResNet-50: res2 (64 -> 256) too.
    assert len(projections_b) == (3 if depth == 18 else 4)
    assert _params(b) - _params(a) == sum(_params(p) for p in projections_b)
    assert all(isinstance(m.downsample, torch.nn.Sequential) for m in c.modules() if isinstance(m, type(blocks[0])))
    assert _params(c) > _params(b)
    assert not any(isinstance(m, ZeroPadShortcut) for m in b.modules())
    assert sum(isinstance(m, ZeroPadShortcut) for m in a.modules()) == len(projections_b)
    x = torch.randn(2, 3, 64, 64)
    for model in (a, b, c):
        assert model.eval()(x).shape == (2, 1000)


@pytest.mark.parametrize("depth", sorted(RESNET_SPECS))
def test_plain_twins_have_the_same_layers_and_no_shortcuts(depth: int) -> None:
    plain, residual = plain_resnet(depth), ResNet(depth)
    blocks = [m for m in plain.modules() if isinstance(m, (BasicBlock, Bottleneck))]
    assert blocks and all(not m.residual and m.downsample is None for m in blocks)
    projections = sum(_params(m.downsample) for m in residual.modules()
                      if isinstance(m, (BasicBlock, Bottleneck)) and m.downsample is not None)
    assert _params(plain) == _params(residual) - projections


def test_plain_block_output_ignores_its_input_path() -> None:
    """A plain block's output is its conv path only: zeroing the last norm makes it output exactly zero (ReLU(0)),
    where the residual twin would pass the input through."""
    plain = plain_resnet(18).res2[0].eval()
    res = ResNet(18).res2[0].eval()
    for block in (plain, res):
        torch.nn.init.zeros_(block.bn2.weight)
        torch.nn.init.zeros_(block.bn2.bias)
    x = torch.rand(1, 64, 8, 8)
    assert torch.count_nonzero(plain(x)) == 0
    assert torch.equal(res(x), torch.relu(x))


def test_zero_init_residual_starts_every_block_as_identity() -> None:
    model = ResNet(50, zero_init_residual=True)
    blocks = [m for m in model.modules() if isinstance(m, Bottleneck)]
    assert len(blocks) == 16 and all(torch.count_nonzero(b.bn3.weight) == 0 for b in blocks)
    assert torch.count_nonzero(ResNet(50).res2[0].bn3.weight) > 0


def test_output_shape_tells_channels_and_strides() -> None:
    model = ResNet(50, num_classes=None, out_features=("res2", "res3", "res4", "res5"))
    shapes = model.output_shape()
    assert {k: (v.channels, v.stride) for k, v in shapes.items()} == {
        "res2": (256, 4), "res3": (512, 8), "res4": (1024, 16), "res5": (2048, 32)}
    out = model(torch.zeros(1, 3, 64, 96))
    for name, spec in shapes.items():
        assert out[name].shape == (1, spec.channels, 64 // spec.stride, 96 // spec.stride)
    dc5 = ResNet(50, num_classes=None, out_features=("res5",), res5_dilation=2)
    assert dc5.output_shape()["res5"].stride == 16 and dc5(torch.zeros(1, 3, 64, 96))["res5"].shape[-2:] == (4, 6)
