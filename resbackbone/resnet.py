"""ImageNet ResNets exactly as He et al. 2016, Table 1, and their plain (no-shortcut) twins.

One depth table drives everything. Stage names are the paper's: ``stem`` (conv1 + max pool), ``res2`` ..
``res5`` (conv2_x .. conv5_x), with output strides 4, 4, 8, 16, 32.

Shape shorthand: N images, H x W input size. Input ``(N, 3, H, W)``; ``res_k`` gives
``(N, C_k, H / stride_k, W / stride_k)`` (ceil division for odd sizes).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from .blocks import (
    BasicBlock,
    Block,
    Bottleneck,
    NormKind,
    ShortcutOption,
    Stem,
    init_weights,
    make_stage,
)
from .frozen_bn import freeze_module
from .pixels import PixelNormalizer, PixelSpec

# depth -> (block, blocks per stage res2..res5): paper Table 1.
RESNET_SPECS: dict[int, tuple[Block, tuple[int, int, int, int]]] = {
    18: (BasicBlock, (2, 2, 2, 2)),
    34: (BasicBlock, (3, 4, 6, 3)),
    50: (Bottleneck, (3, 4, 6, 3)),
    101: (Bottleneck, (3, 4, 23, 3)),
    152: (Bottleneck, (3, 8, 36, 3)),
}
STAGE_NAMES: tuple[str, ...] = ("stem", "res2", "res3", "res4", "res5")
STEM_CHANNELS = 64
# Output channels of the 3x3 (BasicBlock) or of the bottleneck's 1x1 expand, per stage res2..res5.
BASE_WIDTHS: tuple[int, ...] = (64, 128, 256, 512)
STAGE_STRIDES: dict[str, int] = {"stem": 4, "res2": 4, "res3": 8, "res4": 16, "res5": 32}


class ShapeSpec(NamedTuple):
    """Channels and stride (input pixels per feature cell) of one output feature map."""

    channels: int
    stride: int


def depth_from_blocks(counts: Sequence[int], bottleneck: bool) -> int | None:
    """The depth whose res2..res5 block counts and block type these are (None: no ResNet of Table 1); used to
    read a foreign checkpoint's depth off its keys."""
    return next((d for d, (block, c) in RESNET_SPECS.items()
                 if tuple(c) == tuple(counts) and (block is Bottleneck) == bottleneck), None)


def stage_channels(depth: int, stage: str) -> tuple[int, int, int]:
    """``(in_channels, out_channels, bottleneck_channels)`` of stage ``res2..res5`` for a given depth."""
    block, _ = _spec(depth)
    idx = STAGE_NAMES.index(stage) - 1
    if idx < 0:
        raise ValueError(f"{stage!r} is not a residual stage; use one of {STAGE_NAMES[1:]}")
    width = BASE_WIDTHS[idx]
    out_ch = width * block.expansion
    in_ch = STEM_CHANNELS if idx == 0 else BASE_WIDTHS[idx - 1] * block.expansion
    return in_ch, out_ch, width


def make_resnet_stage(
    depth: int,
    stage: str,
    *,
    stride: int | None = None,
    dilation: int = 1,
    norm: NormKind = "bn",
    stride_in_1x1: bool = False,
    shortcut: ShortcutOption = "B",
    residual: bool = True,
) -> nn.Sequential:
    """Build one stage (``res2``..``res5``) of the given depth exactly as :class:`ResNet` builds it.

    The detector uses this for its per-RoI ``res5`` head, so pretrained ``res5.*`` weights load unchanged.
    ``stride`` defaults to the paper's (1 for res2, 2 after).
    """
    block, counts = _spec(depth)
    idx = STAGE_NAMES.index(stage) - 1
    in_ch, out_ch, width = stage_channels(depth, stage)
    if stride is None:
        stride = 1 if idx == 0 else 2
    return make_stage(
        block,
        counts[idx],
        in_ch,
        out_ch,
        bottleneck_channels=width,
        stride=stride,
        dilation=dilation,
        norm=norm,
        stride_in_1x1=stride_in_1x1,
        shortcut=shortcut,
        residual=residual,
    )


def _spec(depth: int) -> tuple[Block, tuple[int, int, int, int]]:
    if depth not in RESNET_SPECS:
        raise ValueError(f"ResNet depth must be one of {sorted(RESNET_SPECS)}, got {depth}")
    return RESNET_SPECS[depth]


class ResNet(nn.Module):
    """ResNet-18/34/50/101/152 (paper Table 1) with the options a detection backbone needs.

    Args:
        depth: 18, 34, 50, 101 or 152.
        num_classes: size of the final fc layer (1000 for ImageNet); ``None`` = no classifier (forward then
            returns the pooled ``(N, C)`` features when ``out_features`` is None).
        out_features: stage names to return, e.g. ``("res4",)`` or ``("res2", "res3", "res4", "res5")``;
            forward then returns ``dict[name, (N, C, H/s, W/s)]``, stages after the last requested one are
            not built, and neither is the classifier. ``None`` = classification forward.
        freeze_at: 0 nothing frozen, 1 stem, 2 stem+res2, ... 5 everything. Frozen stages get no gradients and
            their BatchNorms become FrozenBatchNorm2d.
        norm: ``"bn"`` (train BN statistics) or ``"frozen_bn"`` (fixed affine everywhere: use with pretrained
            weights and small per-GPU batches).
        stride_in_1x1: bottleneck stride in the first 1x1 (paper / MSRA caffe) instead of the 3x3 (torchvision).
        shortcut: ``"A"`` zero-pad, ``"B"`` projection on dimension change (default), ``"C"`` projection always.
        zero_init_residual: zero the last norm scale of every block (starts every block as identity).
        residual: False builds the paper's plain network (same layers, no shortcuts).
        res5_dilation: 2 keeps res5 at stride 16 with dilated 3x3s (the "DC5" detection variant).
        in_channels: input image channels.
        pixel_spec: if given, forward expects raw RGB 0-255 images and normalizes them as the weights need.
    """

    def __init__(
        self,
        depth: int = 50,
        *,
        num_classes: int | None = 1000,
        out_features: Sequence[str] | None = None,
        freeze_at: int = 0,
        norm: NormKind = "bn",
        stride_in_1x1: bool = False,
        shortcut: ShortcutOption = "B",
        zero_init_residual: bool = False,
        residual: bool = True,
        res5_dilation: int = 1,
        in_channels: int = 3,
        pixel_spec: PixelSpec | None = None,
    ) -> None:
        super().__init__()
        block, _ = _spec(depth)
        if out_features is not None:
            out_features = tuple(out_features)
            unknown = [f for f in out_features if f not in STAGE_NAMES]
            if unknown or not out_features:
                raise ValueError(f"out_features must be a non-empty subset of {STAGE_NAMES}, got {out_features}")
        if not 0 <= freeze_at <= len(STAGE_NAMES):
            raise ValueError(f"freeze_at must be in [0, {len(STAGE_NAMES)}], got {freeze_at}")
        if res5_dilation not in (1, 2):
            raise ValueError(f"res5_dilation must be 1 or 2, got {res5_dilation}")
        self.depth = depth
        self.out_features = out_features
        self.freeze_at = freeze_at
        self.stride_in_1x1 = stride_in_1x1
        self.residual = residual
        self.pixel_norm = PixelNormalizer(pixel_spec) if pixel_spec is not None else None

        last = max(STAGE_NAMES.index(f) for f in out_features) if out_features else len(STAGE_NAMES) - 1
        self.stage_names: tuple[str, ...] = STAGE_NAMES[: last + 1]
        self._shapes: dict[str, ShapeSpec] = {"stem": ShapeSpec(STEM_CHANNELS, STAGE_STRIDES["stem"])}
        self.stem = Stem(in_channels, STEM_CHANNELS, norm=norm)
        for name in self.stage_names[1:]:
            dilated = name == "res5" and res5_dilation > 1
            stage = make_resnet_stage(
                depth,
                name,
                stride=1 if dilated else None,
                dilation=res5_dilation if name == "res5" else 1,
                norm=norm,
                stride_in_1x1=stride_in_1x1,
                shortcut=shortcut,
                residual=residual,
            )
            self.add_module(name, stage)
            stride = STAGE_STRIDES["res4"] if dilated else STAGE_STRIDES[name]
            self._shapes[name] = ShapeSpec(stage_channels(depth, name)[1], stride)

        self.num_classes = num_classes if out_features is None else None
        self.num_features = self._shapes[self.stage_names[-1]].channels
        self.avgpool: nn.Module | None = None
        self.fc: nn.Linear | None = None
        if out_features is None:
            self.avgpool = nn.AdaptiveAvgPool2d(1)
            if num_classes is not None:
                self.fc = nn.Linear(self.num_features, num_classes)
        init_weights(self, zero_init_residual)
        self.freeze(freeze_at)

    def freeze(self, freeze_at: int) -> None:
        """Freeze the first ``freeze_at`` stages (stem = 1) by structure; see the class docstring."""
        for name in STAGE_NAMES[:freeze_at]:
            if hasattr(self, name):
                freeze_module(getattr(self, name))
        self.freeze_at = freeze_at

    def set_pixel_spec(self, spec: PixelSpec | None) -> None:
        """Make forward normalize raw RGB 0-255 inputs for the weights in use (``None``: no normalization)."""
        self.pixel_norm = PixelNormalizer(spec) if spec is not None else None

    def output_shape(self) -> dict[str, ShapeSpec]:
        """Channels and stride of every output this model returns (all built stages if out_features is None)."""
        names = self.out_features or self.stage_names
        return {n: self._shapes[n] for n in names}

    def forward_features(self, x: Tensor) -> dict[str, Tensor]:
        """All requested stage outputs. ``x``: ``(N, 3, H, W)``."""
        if self.pixel_norm is not None:
            x = self.pixel_norm(x)
        wanted = set(self.out_features or ())
        outputs: dict[str, Tensor] = {}
        for name in self.stage_names:
            x = getattr(self, name)(x)
            if name in wanted:
                outputs[name] = x
        outputs["_last"] = x
        return outputs

    def forward(self, x: Tensor) -> Tensor | dict[str, Tensor]:
        """``(N, 3, H, W)`` -> logits ``(N, num_classes)`` / pooled ``(N, C)`` / ``dict[stage, feature map]``."""
        feats = self.forward_features(x)
        last = feats.pop("_last")
        if self.out_features is not None:
            return feats
        assert self.avgpool is not None
        pooled = torch.flatten(self.avgpool(last), 1)  # (N, C, h, w) -> (N, C)
        return self.fc(pooled) if self.fc is not None else pooled


def resnet18(**kwargs: Any) -> ResNet:
    """ResNet-18 (paper Table 1). Keyword arguments: see :class:`ResNet`."""
    return ResNet(18, **kwargs)


def resnet34(**kwargs: Any) -> ResNet:
    """ResNet-34 (paper Table 1). Keyword arguments: see :class:`ResNet`."""
    return ResNet(34, **kwargs)


def resnet50(**kwargs: Any) -> ResNet:
    """ResNet-50 (paper Table 1). Keyword arguments: see :class:`ResNet`."""
    return ResNet(50, **kwargs)


def resnet101(**kwargs: Any) -> ResNet:
    """ResNet-101 (paper Table 1). Keyword arguments: see :class:`ResNet`."""
    return ResNet(101, **kwargs)


def resnet152(**kwargs: Any) -> ResNet:
    """ResNet-152 (paper Table 1). Keyword arguments: see :class:`ResNet`."""
    return ResNet(152, **kwargs)


def plain_resnet(depth: int, **kwargs: Any) -> ResNet:
    """The paper's plain twin of ResNet-``depth`` (section 4.1): same layers, no shortcuts."""
    return ResNet(depth, residual=False, **kwargs)


def plain18(**kwargs: Any) -> ResNet:
    """Plain-18: ResNet-18's layers without shortcuts (paper Fig. 4 left)."""
    return plain_resnet(18, **kwargs)


def plain34(**kwargs: Any) -> ResNet:
    """Plain-34: ResNet-34's layers without shortcuts (paper Fig. 3 middle, Fig. 4 left)."""
    return plain_resnet(34, **kwargs)


def plain50(**kwargs: Any) -> ResNet:
    return plain_resnet(50, **kwargs)


def plain101(**kwargs: Any) -> ResNet:
    return plain_resnet(101, **kwargs)


def plain152(**kwargs: Any) -> ResNet:
    return plain_resnet(152, **kwargs)
