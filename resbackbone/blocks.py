"""Residual building blocks of He et al. 2016 (Fig. 2, Fig. 5), shortcut options A/B/C (Table 3) and the stem.

Module and attribute names follow torchvision (``conv1, bn1, ..., downsample``) so that converted weights map
one to one. ``residual=False`` gives the paper's "plain" twin: the same layers without any shortcut.

Shape shorthand: N images, C channels, H x W spatial size.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import FrozenBatchNorm2d

NormKind = Literal["bn", "frozen_bn"]
ShortcutOption = Literal["A", "B", "C"]

NORM_KINDS: tuple[str, ...] = ("bn", "frozen_bn")
SHORTCUT_OPTIONS: tuple[str, ...] = ("A", "B", "C")


def make_norm(norm: NormKind, channels: int) -> nn.Module:
    """A normalization layer by name: ``"bn"`` = trainable BatchNorm2d, ``"frozen_bn"`` = fixed affine."""
    if norm == "bn":
        return nn.BatchNorm2d(channels)
    if norm == "frozen_bn":
        return FrozenBatchNorm2d(channels)
    raise ValueError(f"norm must be one of {NORM_KINDS}, got {norm!r}")


def _taps(size: int, kernel: int, stride: int, padding: int, dilation: int) -> tuple[slice, slice] | None:
    """For a convolution with a single output position along one axis: the kernel taps that land inside the
    input, and the input positions they read (None when the output is longer than one or no tap lands)."""
    if (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1 != 1:
        return None
    taps = [a for a in range(kernel) if 0 <= a * dilation - padding < size]
    if not taps:
        return None
    first, last = taps[0], taps[-1]
    start = first * dilation - padding
    return slice(first, last + 1), slice(start, start + (last - first) * dilation + 1, dilation)


class Conv2d(nn.Conv2d):
    """``nn.Conv2d`` (same parameters, same state dict) that computes a single-position output as one matrix
    product over the input window it reads.

    The C4 head runs res5 on pooled RoIs: at a 2x2 pooler resolution its maps are 1 x 1, where oneDNN's CPU
    convolution is far slower than the equivalent GEMM (an order of magnitude for ResNet-18's res5 on 256 RoIs;
    benchmarks/RESULTS.md has the figures). ``(N, C, H, W) -> (N, O, 1, 1)`` on that path; every
    other shape is the ordinary convolution.
    """

    def _conv_forward(self, input: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        # Not while tracing for export: the test on the input's size would freeze into the graph (a traced graph
        # serves every size; the ordinary convolution computes the same).
        if (input.dim() == 4 and self.groups == 1 and self.padding_mode == "zeros" and isinstance(self.padding, tuple)
                and not torch.jit.is_tracing()):
            rows = _taps(input.shape[2], self.kernel_size[0], self.stride[0], self.padding[0], self.dilation[0])
            cols = _taps(input.shape[3], self.kernel_size[1], self.stride[1], self.padding[1], self.dilation[1])
            if rows is not None and cols is not None:
                (tap_r, in_r), (tap_c, in_c) = rows, cols
                window = input[:, :, in_r, in_c].flatten(1)  # (N, C * h * w), the taps' input positions
                out = F.linear(window, weight[:, :, tap_r, tap_c].flatten(1), bias)  # (N, O)
                return out[:, :, None, None]
        return super()._conv_forward(input, weight, bias)


def conv3x3(in_channels: int, out_channels: int, stride: int = 1, dilation: int = 1) -> nn.Conv2d:
    """3x3 convolution without bias (a norm layer follows); padding keeps size at stride 1."""
    return Conv2d(in_channels, out_channels, 3, stride=stride, padding=dilation, dilation=dilation, bias=False)


def conv1x1(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    return Conv2d(in_channels, out_channels, 1, stride=stride, bias=False)


class ZeroPadShortcut(nn.Module):
    """Option A (paper section 3.3): identity with spatial subsampling and zero-padded extra channels.

    ``(N, Cin, H, W) -> (N, Cout, ceil(H/stride), ceil(W/stride))``; parameter-free.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        if out_channels < in_channels:
            raise ValueError(f"option A cannot reduce channels ({in_channels} -> {out_channels})")
        self.in_channels, self.out_channels, self.stride = in_channels, out_channels, stride

    def forward(self, x: Tensor) -> Tensor:
        if self.stride > 1:
            x = x[:, :, :: self.stride, :: self.stride]
        extra = self.out_channels - self.in_channels
        # F.pad pads the last dims first: (W_left, W_right, H_top, H_bottom, C_front, C_back).
        return F.pad(x, (0, 0, 0, 0, 0, extra)) if extra else x

    def extra_repr(self) -> str:
        return f"{self.in_channels}->{self.out_channels}, stride={self.stride}"


def make_shortcut(
    in_channels: int, out_channels: int, stride: int, option: ShortcutOption, norm: NormKind
) -> nn.Module | None:
    """The shortcut branch of a block; ``None`` means identity.

    A: zero-padding identity when dimensions change. B: 1x1 projection (+norm) only when they change
    (the paper's and torchvision's default). C: projection on every block.
    """
    if option not in SHORTCUT_OPTIONS:
        raise ValueError(f"shortcut must be one of {SHORTCUT_OPTIONS}, got {option!r}")
    changes = in_channels != out_channels or stride != 1
    if option == "C" or (option == "B" and changes):
        return nn.Sequential(conv1x1(in_channels, out_channels, stride), make_norm(norm, out_channels))
    if option == "A" and changes:
        return ZeroPadShortcut(in_channels, out_channels, stride)
    return None


class BasicBlock(nn.Module):
    """Two 3x3 convolutions (ResNet-18/34, CIFAR ResNets). ``(N, Cin, H, W) -> (N, Cout, H/s, W/s)``."""

    expansion = 1

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        bottleneck_channels: int | None = None,
        stride: int = 1,
        dilation: int = 1,
        norm: NormKind = "bn",
        stride_in_1x1: bool = False,
        shortcut: ShortcutOption = "B",
        residual: bool = True,
    ) -> None:
        super().__init__()
        # bottleneck_channels / stride_in_1x1 only concern Bottleneck; accepted so one stage builder fits both.
        del bottleneck_channels, stride_in_1x1
        self.residual = residual
        self.conv1 = conv3x3(in_channels, out_channels, stride, dilation)
        self.bn1 = make_norm(norm, out_channels)
        self.conv2 = conv3x3(out_channels, out_channels, 1, dilation)
        self.bn2 = make_norm(norm, out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = make_shortcut(in_channels, out_channels, stride, shortcut, norm) if residual else None

    @property
    def last_norm(self) -> nn.Module:
        return self.bn2

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.residual:
            # In place, as torchvision: the norm's output is saved by no backward, and one allocation less per
            # block is ~2% of a CPU inference.
            out += x if self.downsample is None else self.downsample(x)
        return self.relu(out)


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3, 1x1 expand (ResNet-50/101/152, paper Fig. 5 right).

    ``stride_in_1x1=False`` puts the stride in the 3x3 (torchvision "v1.5"); ``True`` puts it in the first
    1x1 as in the paper's original and MSRA's released caffe models.
    """

    expansion = 4

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        bottleneck_channels: int | None = None,
        stride: int = 1,
        dilation: int = 1,
        norm: NormKind = "bn",
        stride_in_1x1: bool = False,
        shortcut: ShortcutOption = "B",
        residual: bool = True,
    ) -> None:
        super().__init__()
        mid = bottleneck_channels if bottleneck_channels is not None else out_channels // self.expansion
        stride_1x1, stride_3x3 = (stride, 1) if stride_in_1x1 else (1, stride)
        self.residual = residual
        self.conv1 = conv1x1(in_channels, mid, stride_1x1)
        self.bn1 = make_norm(norm, mid)
        self.conv2 = conv3x3(mid, mid, stride_3x3, dilation)
        self.bn2 = make_norm(norm, mid)
        self.conv3 = conv1x1(mid, out_channels)
        self.bn3 = make_norm(norm, out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = make_shortcut(in_channels, out_channels, stride, shortcut, norm) if residual else None

    @property
    def last_norm(self) -> nn.Module:
        return self.bn3

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        if self.residual:
            # In place, as torchvision: the norm's output is saved by no backward, and one allocation less per
            # block is ~2% of a CPU inference.
            out += x if self.downsample is None else self.downsample(x)
        return self.relu(out)


Block = type[BasicBlock] | type[Bottleneck]


class Stem(nn.Module):
    """conv1 of Table 1: 7x7/2 conv, norm, ReLU, 3x3/2 max pool. ``(N, 3, H, W) -> (N, C, H/4, W/4)``."""

    def __init__(self, in_channels: int = 3, out_channels: int = 64, *, norm: NormKind = "bn") -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 7, stride=2, padding=3, bias=False)
        self.bn1 = make_norm(norm, out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.out_channels = out_channels

    def forward(self, x: Tensor) -> Tensor:
        return self.maxpool(self.relu(self.bn1(self.conv1(x))))


def make_stage(
    block: Block,
    num_blocks: int,
    in_channels: int,
    out_channels: int,
    *,
    bottleneck_channels: int | None = None,
    stride: int = 1,
    dilation: int = 1,
    norm: NormKind = "bn",
    stride_in_1x1: bool = False,
    shortcut: ShortcutOption = "B",
    residual: bool = True,
) -> nn.Sequential:
    """A stage (the paper's conv2_x .. conv5_x): ``num_blocks`` blocks, the first one strided.

    Children are named ``"0", "1", ...`` as in torchvision's ``layerK`` so weights map one to one.
    """
    blocks = []
    for i in range(num_blocks):
        blocks.append(
            block(
                in_channels if i == 0 else out_channels,
                out_channels,
                bottleneck_channels=bottleneck_channels,
                stride=stride if i == 0 else 1,
                dilation=dilation,
                norm=norm,
                stride_in_1x1=stride_in_1x1,
                shortcut=shortcut,
                residual=residual,
            )
        )
    return nn.Sequential(*blocks)


def init_weights(module: nn.Module, zero_init_residual: bool = False) -> None:
    """He (MSRA) initialization of convolutions (paper section 3.4, fan_out as torchvision), BN to identity.

    ``zero_init_residual`` zeroes the last BN scale of every residual block so each block starts as identity
    (Goyal et al. 2017), a common improvement not in the original paper.
    """
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    if zero_init_residual:
        for m in module.modules():
            if isinstance(m, (BasicBlock, Bottleneck)) and m.residual and isinstance(m.last_norm, nn.BatchNorm2d):
                nn.init.zeros_(m.last_norm.weight)


def count_parameters(module: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (FrozenBN buffers are not parameters, so they are not counted)."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)
