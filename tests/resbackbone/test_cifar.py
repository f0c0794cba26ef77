"""CIFAR ResNets of the paper's section 4.2: parameter counts (Table 6), forward shapes, the plain twins.

Measured parameters (option A shortcuts): 20: 269,722 (paper 0.27 M), 32: 464,154 (0.46 M), 44: 658,586 (0.66 M),
56: 853,018 (0.85 M), 110: 1,727,962 (1.7 M), 1202: 19,421,274 (19.4 M); all within 1.7% of the rounded figures.
"""

from __future__ import annotations

import pytest
import torch

from resbackbone import cifar
from resbackbone.blocks import BasicBlock, ZeroPadShortcut, count_parameters
from resbackbone.cifar import CIFAR_DEPTHS, CifarResNet, cifar_plain

# Paper Table 6 (millions of parameters).
PAPER_CIFAR_PARAMS = {20: 0.27, 32: 0.46, 44: 0.66, 56: 0.85, 110: 1.7, 1202: 19.4}


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("depth", CIFAR_DEPTHS)
def test_cifar_parameter_counts_match_the_paper(depth: int) -> None:
    with torch.device("meta"):  # shapes only: ResNet-1202 without allocating or initializing 19 M weights
        model = getattr(cifar, f"cifar_resnet{depth}")()
        plain = count_parameters(getattr(cifar, f"cifar_plain{depth}")()) / 1e6
    n = count_parameters(model) / 1e6
    # The paper rounds to 2-3 significant digits: we require within 3%.
    assert abs(n - PAPER_CIFAR_PARAMS[depth]) / PAPER_CIFAR_PARAMS[depth] < 0.03, n
    assert plain == n  # option A adds no parameters, so the plain twin has exactly as many
    assert model.depth == depth
    # 6n+2 weighted layers: the first conv, 6n 3x3 convs in the blocks, the fc.
    blocks = [m for m in model.modules() if isinstance(m, BasicBlock)]
    assert 2 * len(blocks) + 2 == depth


def test_cifar_forward_shapes_and_stages() -> None:
    x = torch.randn(2, 3, 32, 32)
    model = CifarResNet(20).eval()
    with torch.no_grad():
        assert model(x).shape == (2, 10)
        assert CifarResNet(20, num_classes=None)(x).shape == (2, 64)
        h = model.relu(model.bn1(model.conv1(x)))
        for stage, (c, s) in zip((model.stage1, model.stage2, model.stage3), ((16, 32), (32, 16), (64, 8))):
            h = stage(h)
            assert h.shape == (2, c, s, s)
    assert sum(isinstance(m, ZeroPadShortcut) for m in model.modules()) == 2  # option A at 16->32, 32->64
    assert sum(isinstance(m, torch.nn.Conv2d) for m in CifarResNet(20, shortcut="B").modules()) == 19 + 2
    with pytest.raises(ValueError, match=r"6n\+2"):
        CifarResNet(21)


def test_plain_twin_has_no_shortcut() -> None:
    plain, res = cifar_plain(20), CifarResNet(20)
    assert not plain.residual and all(getattr(m, "downsample", None) is None for m in plain.modules())
    assert cifar.cifar_plain56().residual is False
    # Functionally: with the block's last BN zeroed the residual block passes relu(x) through its shortcut,
    # the plain block outputs relu(0) = 0.
    x = torch.rand(1, 16, 8, 8)
    for model, want in ((res, torch.relu(x)), (plain, torch.zeros_like(x))):
        block = model.stage1[0].eval()
        with torch.no_grad():
            block.bn2.weight.zero_()
            block.bn2.bias.zero_()
            assert torch.equal(block(x), want)
