"""Pixel conventions that belong to a set of weights.

Callers always pass raw images: float (or uint8) tensors ``(N, 3, H, W)``, RGB channel order, values in
[0, 255]. Each weight set knows how its network was trained (torchvision: RGB scaled to [0, 1] then
ImageNet-normalized; MSRA caffe: BGR, 0-255 minus the mean, std 1), so the model applies that itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

ChannelOrder = Literal["RGB", "BGR"]


@dataclass(frozen=True)
class PixelSpec:
    """How raw RGB 0-255 pixels must be transformed before the first convolution.

    ``mean`` and ``std`` are in 0-255 units and listed in ``channel_order`` (the order the network expects).
    """

    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    channel_order: ChannelOrder = "RGB"


# torchvision / timm ImageNet statistics (0-1 scale in their code) expressed in 0-255 units.
TORCHVISION_PIXELS = PixelSpec(mean=(123.675, 116.28, 103.53), std=(58.395, 57.12, 57.375), channel_order="RGB")
# MSRA / Detectron caffe2 models: BGR, mean subtraction only (std 1), listed in BGR order.
MSRA_PIXELS = PixelSpec(mean=(103.53, 116.28, 123.675), std=(1.0, 1.0, 1.0), channel_order="BGR")


class PixelNormalizer(nn.Module):
    """Applies a :class:`PixelSpec` to raw images.

    Input ``(N, 3, H, W)`` RGB in [0, 255] (any float dtype or uint8); output float ``(N, 3, H, W)`` in the
    network's channel order, normalized. The buffers are not persistent, so state dicts stay those of the
    network alone.
    """

    def __init__(self, spec: PixelSpec) -> None:
        super().__init__()
        self.spec = spec
        self.register_buffer("mean", torch.tensor(spec.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(spec.std).view(1, 3, 1, 1), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        if not x.is_floating_point():
            x = x.float()
        if self.spec.channel_order == "BGR":
            x = x.flip(1)
        return (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)

    def extra_repr(self) -> str:
        return f"mean={self.spec.mean}, std={self.spec.std}, order={self.spec.channel_order}"
