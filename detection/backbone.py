"""Detection trunks: our ResNet up to res4 (C4), with a dilated res5 (DC5), or under a feature pyramid (FPN); or
any timm ``features_only`` CNN (one stride-16 map).

Every trunk maps normalized images ``(N, 3, H, W)`` (H, W multiples of 32) to named feature maps
``{name: (N, C, H / stride, W / stride)}`` and states them in ``output_shape() -> {name: ShapeSpec(channels,
stride)}``; the RPN and the RoI heads pick theirs by name. C4 / DC5 give one map, FPN five (``p2`` .. ``p6``).
``out_channels`` is the channel count all of a trunk's maps share.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import torch.nn.functional as F
from torch import Tensor, nn

from resbackbone.blocks import NormKind
from resbackbone.errors import ConfigError
from resbackbone.pixels import TORCHVISION_PIXELS, PixelSpec
from resbackbone.resnet import RESNET_SPECS, ResNet, ShapeSpec, ShortcutOption, make_resnet_stage, stage_channels

# The paper's C4 / DC5 feature stride.
FEATURE_STRIDE = 16
# The name of a timm trunk's one map.
TIMM_FEATURE = "stride16"
# FPN: the ResNet stages it reads and the pyramid levels it gives (P6: a stride-2 subsample of P5).
FPN_IN_FEATURES: tuple[str, ...] = ("res2", "res3", "res4", "res5")
FPN_LEVELS: tuple[str, ...] = ("p2", "p3", "p4", "p5", "p6")


RESNET_NAMES: tuple[str, ...] = tuple(f"resnet{depth}" for depth in RESNET_SPECS)


def resnet_depth(name: str) -> int:
    """``"resnet101"`` -> 101, with a clear error for anything else."""
    if name in RESNET_NAMES:
        return int(name[6:])
    raise ConfigError(f"unknown backbone {name!r}: expected resnet18/34/50/101/152 or timm:<model name>")


class ResNetTrunk(nn.Module):
    """Stem..res4 (C4), or stem..res5 with res5 dilated to keep stride 16 (DC5)."""

    def __init__(
        self,
        depth: int,
        *,
        dilated_res5: bool = False,
        freeze_at: int = 2,
        norm: NormKind = "bn",
        stride_in_1x1: bool = False,
        shortcut: ShortcutOption = "B",
    ) -> None:
        super().__init__()
        last = "res5" if dilated_res5 else "res4"
        self.body = ResNet(
            depth,
            num_classes=None,
            out_features=(last,),
            freeze_at=freeze_at,
            norm=norm,
            stride_in_1x1=stride_in_1x1,
            shortcut=shortcut,
            res5_dilation=2 if dilated_res5 else 1,
        )
        self.last = last
        self.out_channels = stage_channels(depth, last)[1]
        self.stride_in_1x1 = stride_in_1x1

    def output_shape(self) -> dict[str, ShapeSpec]:
        return {self.last: ShapeSpec(self.out_channels, FEATURE_STRIDE)}

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        """``(N, 3, H, W)`` -> ``{"res4" or "res5": (N, C, H/16, W/16)}``."""
        return self.body(x)


class FPNTrunk(nn.Module):
    """A ResNet (``body``, its stage names unchanged) under a feature pyramid (Lin et al. 2017): res2..res5 ->
    P2..P5 by 1x1 lateral convolutions, a top-down path (nearest x2 upsampling, summed with the lateral) and 3x3
    output convolutions, all ``out_channels`` wide; P6 is P5 subsampled by a stride-2 max pool of size 1 (the
    extra RPN level of Detectron2 and torchvision).

    ``norm``: "none" (convolutions with bias: Detectron2, torchvision v1) or "bn" (bias-free convolutions with
    BatchNorm: torchvision's v2). Module lists run from res2 to res5.
    """

    def __init__(
        self,
        depth: int,
        *,
        out_channels: int = 256,
        norm: Literal["none", "bn"] = "none",
        freeze_at: int = 2,
        body_norm: NormKind = "bn",
        stride_in_1x1: bool = False,
        shortcut: ShortcutOption = "B",
    ) -> None:
        super().__init__()
        if norm not in ("none", "bn"):
            raise ConfigError(f"model.fpn.norm must be none or bn, got {norm!r}")
        self.body = ResNet(
            depth,
            num_classes=None,
            out_features=FPN_IN_FEATURES,
            freeze_at=freeze_at,
            norm=body_norm,
            stride_in_1x1=stride_in_1x1,
            shortcut=shortcut,
        )
        shapes = self.body.output_shape()
        self.lateral_convs = nn.ModuleList(_fpn_conv(shapes[f].channels, out_channels, 1, norm)
                                           for f in FPN_IN_FEATURES)
        self.output_convs = nn.ModuleList(_fpn_conv(out_channels, out_channels, 3, norm) for _ in FPN_IN_FEATURES)
        self.out_channels = out_channels
        self.stride_in_1x1 = stride_in_1x1
        self._shapes = {f"p{i}": ShapeSpec(out_channels, 2**i) for i in range(2, 7)}

    def output_shape(self) -> dict[str, ShapeSpec]:
        return dict(self._shapes)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        """``(N, 3, H, W)`` -> ``{"p2": (N, C, H/4, W/4), ..., "p6": (N, C, H/64, W/64)}``."""
        bottom_up = self.body(x)
        laterals = [conv(bottom_up[f]) for conv, f in zip(self.lateral_convs, FPN_IN_FEATURES)]
        top_down = laterals[-1]
        outputs = [self.output_convs[-1](top_down)]
        for lateral, out_conv in zip(reversed(laterals[:-1]), reversed(self.output_convs[:-1])):
            # Upsampled to the lateral's size (exactly 2x for inputs padded to multiples of 32).
            # In place into the lateral's own output (saved by no backward).
            top_down = lateral.add_(F.interpolate(top_down, size=lateral.shape[-2:], mode="nearest"))
            outputs.insert(0, out_conv(top_down))
        outputs.append(F.max_pool2d(outputs[-1], kernel_size=1, stride=2))  # P6
        return dict(zip(FPN_LEVELS, outputs))


def _fpn_conv(in_channels: int, out_channels: int, kernel: int, norm: str) -> nn.Module:
    """One FPN convolution (Xavier-like init, zero bias, as both references), or convolution + BatchNorm."""
    conv = nn.Conv2d(in_channels, out_channels, kernel, padding=kernel // 2, bias=norm == "none")
    nn.init.kaiming_uniform_(conv.weight, a=1)
    if conv.bias is not None:
        nn.init.constant_(conv.bias, 0.0)
    return conv if norm == "none" else nn.Sequential(conv, nn.BatchNorm2d(out_channels))


def build_res5_head(
    depth: int, *, norm: NormKind, stride_in_1x1: bool, shortcut: ShortcutOption
) -> tuple[nn.Sequential, int]:
    """The C4 per-RoI head: res5 exactly as the backbone builds it (first block stride 2), and its channels."""
    res5 = make_resnet_stage(depth, "res5", norm=norm, stride_in_1x1=stride_in_1x1, shortcut=shortcut)
    from resbackbone.blocks import init_weights

    init_weights(res5)
    return res5, stage_channels(depth, "res5")[1]


class TimmTrunk(nn.Module):
    """A timm ``features_only`` model cut at its stride-16 feature map (transfer learning from any timm CNN).

    ``weights``: "none" (random init), "timm" (the model's default pretrained tag, from the Hugging Face cache or
    downloaded when the network allows) or the path of a local timm weights file (``.safetensors`` / ``.pth``,
    read by timm with ``weights_only`` semantics). Torchvision / MSRA weight names are rejected: they describe
    our ResNet, not an arbitrary timm network.
    """

    def __init__(self, name: str, *, weights: str = "none") -> None:
        super().__init__()
        import timm

        if not timm.is_model(name):
            raise ConfigError(f"unknown timm model {name!r} (timm.list_models('*{name[:6]}*') lists near names)")
        probe = timm.create_model(name, features_only=True, pretrained=False)
        reductions = probe.feature_info.reduction()
        if FEATURE_STRIDE not in reductions:
            raise ConfigError(f"timm model {name!r} has no stride-16 feature map (reductions {reductions})")
        index = reductions.index(FEATURE_STRIDE)
        del probe
        kwargs: dict[str, Any] = {"features_only": True, "out_indices": (index,)}
        pretrained = weights != "none"
        if weights not in ("none", "timm"):
            path = Path(weights)
            if not path.is_file():
                raise ConfigError(
                    f"model.backbone.weights={weights!r} for timm backbone {name!r}: expected none, timm or the path "
                    "of a timm weights file (torchvision/msra weights belong to our resnet18..152 backbones)"
                )
            kwargs["pretrained_cfg_overlay"] = {"file": str(path)}
        try:
            self.body = timm.create_model(name, pretrained=pretrained, **kwargs)
        except (OSError, RuntimeError, ValueError) as e:
            if not pretrained:
                raise
            from resbackbone.weights import WeightsNotFoundError

            hub_id = getattr(timm.models.get_pretrained_cfg(name), "hf_hub_id", None)
            where = f"`huggingface-cli download {hub_id}` into the Hugging Face cache" if hub_id else "a local file"
            raise WeightsNotFoundError(
                f"timm weights for {name!r} could not be loaded ({type(e).__name__}: {str(e).splitlines()[0][:200]}); "
                f"fetch them with {where} on a machine with network access, or pass the file's path as "
                "model.backbone.weights"
            ) from None
        self.out_channels = int(self.body.feature_info.channels()[-1])
        self.pixel_spec = timm_pixel_spec(name) if pretrained else TORCHVISION_PIXELS

    def output_shape(self) -> dict[str, ShapeSpec]:
        return {TIMM_FEATURE: ShapeSpec(self.out_channels, FEATURE_STRIDE)}

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        """``(N, 3, H, W)`` -> ``{"stride16": (N, C, H/16, W/16)}``."""
        return {TIMM_FEATURE: self.body(x)[-1]}


def timm_pixel_spec(name: str) -> PixelSpec:
    """The pixel spec of timm model ``name``'s pretrained weights (its default tag; ImageNet statistics when timm
    records none): timm weights expect RGB in [0, 1] normalized by their own mean / std, our images come 0-255."""
    import timm

    cfg: Any = timm.models.get_pretrained_cfg(name)
    mean = getattr(cfg, "mean", None) or (0.485, 0.456, 0.406)
    std = getattr(cfg, "std", None) or (0.229, 0.224, 0.225)
    return PixelSpec(mean=tuple(255.0 * m for m in mean), std=tuple(255.0 * s for s in std), channel_order="RGB")


__all__ = [
    "FEATURE_STRIDE",
    "FPNTrunk",
    "FPN_IN_FEATURES",
    "FPN_LEVELS",
    "ResNetTrunk",
    "TimmTrunk",
    "build_res5_head",
    "timm_pixel_spec",
    "RESNET_NAMES",
    "resnet_depth",
]
