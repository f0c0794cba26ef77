"""Detection trunks: our ResNet up to res4 (C4) or a dilated res5 (DC5), or any timm ``features_only`` CNN.

A trunk maps normalized images ``(N, 3, H, W)`` to one stride-16 feature map ``(N, C, H/16, W/16)`` and tells its
``out_channels``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import Tensor, nn

from resbackbone.blocks import NormKind
from resbackbone.errors import ConfigError
from resbackbone.pixels import TORCHVISION_PIXELS, PixelSpec
from resbackbone.resnet import RESNET_SPECS, ResNet, ShortcutOption, make_resnet_stage, stage_channels

# The paper's C4 / DC5 feature stride.
FEATURE_STRIDE = 16


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

    def forward(self, x: Tensor) -> Tensor:
        return self.body(x)[self.last]


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

    def forward(self, x: Tensor) -> Tensor:
        return self.body(x)[-1]


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
    "ResNetTrunk",
    "TimmTrunk",
    "build_res5_head",
    "timm_pixel_spec",
    "RESNET_NAMES",
    "resnet_depth",
]
