"""CIFAR ResNets (paper section 4.2) and FLOPs / frozen-BN properties of the ImageNet ResNets (paper Table 1)."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode
from torchvision.ops import FrozenBatchNorm2d

from resbackbone import resnet18, resnet34, resnet50, resnet101, resnet152
from resbackbone.blocks import ZeroPadShortcut, count_parameters
from resbackbone.cifar import CIFAR_DEPTHS, CifarResNet, cifar_plain

# Paper Table 6 (millions of parameters).
PAPER_CIFAR_PARAMS = {20: 0.27, 32: 0.46, 44: 0.66, 56: 0.85, 110: 1.7, 1202: 19.4}
# Paper Table 1 (multiply-adds, billions, at 224x224).
PAPER_GMACS = {18: 1.8, 34: 3.6, 50: 3.8, 101: 7.6, 152: 11.3}


@pytest.mark.parametrize("depth", CIFAR_DEPTHS)
def test_cifar_parameter_counts_match_the_paper(depth: int) -> None:
    with torch.device("meta"):
        n = count_parameters(CifarResNet(depth)) / 1e6
    # The paper rounds to 2 significant digits: within 3%.
    assert abs(n - PAPER_CIFAR_PARAMS[depth]) / PAPER_CIFAR_PARAMS[depth] < 0.03, n


def test_cifar_forward_and_plain_twin() -> None:
    x = torch.randn(2, 3, 32, 32)
    assert CifarResNet(20)(x).shape == (2, 10)
    res = CifarResNet(20)
    assert any(isinstance(m, ZeroPadShortcut) for m in res.modules())  # option A
    plain = cifar_plain(20)
    assert not plain.residual and all(getattr(m, "downsample", None) is None for m in plain.modules())
    assert count_parameters(plain) == count_parameters(res)  # option A adds no parameters
    with pytest.raises(ValueError, match="6n\\+2"):
        CifarResNet(21)


@pytest.mark.parametrize("depth,build", [(18, resnet18), (34, resnet34), (50, resnet50), (101, resnet101),
                                         (152, resnet152)])
def test_multiply_adds_match_table_1(depth: int, build) -> None:  # noqa: ANN001
    # The paper's networks put the bottleneck stride in the first 1x1 (stride_in_1x1=True); torchvision's
    # "v1.5" moves it to the 3x3, which costs more: ResNet-50 4.09 G instead of 3.86 G.
    model = build(stride_in_1x1=True).eval()
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(torch.randn(1, 3, 224, 224))
    gmacs = counter.get_total_flops() / 2 / 1e9
    # Table 1 counts multiply-adds of convolutions and the fc; within 5%.
    assert abs(gmacs - PAPER_GMACS[depth]) / PAPER_GMACS[depth] < 0.05, gmacs


def test_frozen_bn_equals_batchnorm_in_eval() -> None:
    bn = nn.BatchNorm2d(8).eval()
    with torch.no_grad():
        bn.weight.uniform_(0.5, 2)
        bn.bias.uniform_(-1, 1)
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
    frozen = FrozenBatchNorm2d(8)
    frozen.load_state_dict(bn.state_dict())
    x = torch.randn(2, 8, 5, 5)
    assert torch.allclose(frozen(x), bn(x), atol=1e-6)


def test_freeze_at_2_freezes_exactly_stem_and_res2() -> None:
    model = resnet18(num_classes=10, freeze_at=2)
    model(torch.randn(2, 3, 64, 64)).sum().backward()
    for name, p in model.named_parameters():
        frozen = name.startswith(("stem.", "res2."))
        assert p.requires_grad != frozen, name
        assert (p.grad is None) == frozen, name
    assert all(isinstance(m, FrozenBatchNorm2d) for m in model.res2.modules() if "BatchNorm" in type(m).__name__)
