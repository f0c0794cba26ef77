"""CIFAR-10 ResNets of the paper's section 4.2: depth 6n+2, three stages of 2n 3x3 BasicBlocks with 16 / 32 / 64
filters on 32x32 / 16x16 / 8x8 maps, option A (zero-padding) shortcuts, global average pooling, a 10-way fc.

n = 3, 5, 7, 9, 18, 200 gives ResNet-20/32/44/56/110/1202 (0.27 / 0.46 / 0.66 / 0.85 / 1.7 / 19.4 M parameters in
the paper's Table 6); ``residual=False`` gives the plain twins of Figure 6.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from .blocks import BasicBlock, NormKind, ShortcutOption, init_weights, make_norm, make_stage

CIFAR_DEPTHS = (20, 32, 44, 56, 110, 1202)
CIFAR_WIDTHS = (16, 32, 64)


class CifarResNet(nn.Module):
    """``(N, 3, 32, 32)`` (normalized) -> logits ``(N, num_classes)`` or pooled features ``(N, 64)``."""

    def __init__(
        self,
        depth: int = 20,
        *,
        num_classes: int | None = 10,
        residual: bool = True,
        shortcut: ShortcutOption = "A",
        norm: NormKind = "bn",
        zero_init_residual: bool = False,
    ) -> None:
        super().__init__()
        if depth < 8 or (depth - 2) % 6:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2 (20, 32, 44, 56, 110, 1202, ...), got {depth}")
        n = (depth - 2) // 6
        self.depth = depth
        self.residual = residual
        self.conv1 = nn.Conv2d(3, CIFAR_WIDTHS[0], 3, padding=1, bias=False)
        self.bn1 = make_norm(norm, CIFAR_WIDTHS[0])
        self.relu = nn.ReLU(inplace=True)
        in_ch = CIFAR_WIDTHS[0]
        for i, width in enumerate(CIFAR_WIDTHS):
            stage = make_stage(BasicBlock, n, in_ch, width, stride=1 if i == 0 else 2, norm=norm,
                               shortcut=shortcut, residual=residual)
            self.add_module(f"stage{i + 1}", stage)
            in_ch = width
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.num_features = in_ch
        self.fc = nn.Linear(in_ch, num_classes) if num_classes is not None else None
        init_weights(self, zero_init_residual)

    def forward(self, x: Tensor) -> Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.stage3(self.stage2(self.stage1(x)))
        x = torch.flatten(self.avgpool(x), 1)  # (N, 64, 8, 8) -> (N, 64)
        return self.fc(x) if self.fc is not None else x


def cifar_resnet(depth: int, **kwargs: Any) -> CifarResNet:
    """The residual CIFAR network of depth 6n+2 (keyword arguments as :class:`CifarResNet`)."""
    return CifarResNet(depth, **kwargs)


def cifar_plain(depth: int, **kwargs: Any) -> CifarResNet:
    """The plain (no-shortcut) twin of the paper's Figure 6."""
    return CifarResNet(depth, residual=False, **kwargs)


def cifar_resnet20(**kw: Any) -> CifarResNet:
    """ResNet-20 for CIFAR-10 (n=3)."""
    return CifarResNet(20, **kw)


def cifar_resnet32(**kw: Any) -> CifarResNet:
    """ResNet-32 for CIFAR-10 (n=5)."""
    return CifarResNet(32, **kw)


def cifar_resnet44(**kw: Any) -> CifarResNet:
    """ResNet-44 for CIFAR-10 (n=7)."""
    return CifarResNet(44, **kw)


def cifar_resnet56(**kw: Any) -> CifarResNet:
    """ResNet-56 for CIFAR-10 (n=9)."""
    return CifarResNet(56, **kw)


def cifar_resnet110(**kw: Any) -> CifarResNet:
    """ResNet-110 for CIFAR-10 (n=18)."""
    return CifarResNet(110, **kw)


def cifar_resnet1202(**kw: Any) -> CifarResNet:
    """ResNet-1202 for CIFAR-10 (n=200)."""
    return CifarResNet(1202, **kw)


def cifar_plain20(**kw: Any) -> CifarResNet:
    """Plain-20 for CIFAR-10 (n=3, no shortcuts)."""
    return cifar_plain(20, **kw)


def cifar_plain32(**kw: Any) -> CifarResNet:
    """Plain-32 for CIFAR-10 (n=5, no shortcuts)."""
    return cifar_plain(32, **kw)


def cifar_plain44(**kw: Any) -> CifarResNet:
    """Plain-44 for CIFAR-10 (n=7, no shortcuts)."""
    return cifar_plain(44, **kw)


def cifar_plain56(**kw: Any) -> CifarResNet:
    """Plain-56 for CIFAR-10 (n=9, no shortcuts)."""
    return cifar_plain(56, **kw)


def cifar_plain110(**kw: Any) -> CifarResNet:
    """Plain-110 for CIFAR-10 (n=18, no shortcuts)."""
    return cifar_plain(110, **kw)


def cifar_plain1202(**kw: Any) -> CifarResNet:
    """Plain-1202 for CIFAR-10 (n=200, no shortcuts)."""
    return cifar_plain(1202, **kw)
