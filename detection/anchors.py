"""Anchors on a single stride-16 feature map (the paper's C4 / DC5 setting).

Shape shorthand: H, W feature size; A anchors per location (= len(sizes) * len(aspect_ratios)).
Conventions: size = sqrt(area) in input pixels, aspect ratio = h / w, centres at ``(k + offset) * stride``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor, nn

# How the cell anchors are laid out; the RPN head's A outputs per location follow this order, so it is a property
# of trained RPN weights. "torchvision": ratio-major, integer-rounded (torchvision's AnchorGenerator).
# "detectron2": size-major, exact floats (Detectron2's DefaultAnchorGenerator; converted model-zoo weights).
AnchorConvention = Literal["torchvision", "detectron2"]
ANCHOR_CONVENTIONS: tuple[str, ...] = ("torchvision", "detectron2")


def base_anchors(
    sizes: Sequence[float], aspect_ratios: Sequence[float], convention: AnchorConvention = "torchvision"
) -> Tensor:
    """``(A, 4)`` XYXY anchors centred at 0 (A = len(sizes) * len(aspect_ratios)), float32.

    "torchvision": ordered ratio-major then size, coordinates rounded to integers exactly as torchvision's
    AnchorGenerator does, so that RPN weights and proposals transfer between the two implementations unchanged.
    "detectron2": ordered size-major then ratio, exact (``w = sqrt(size^2 / ratio)``, ``h = ratio * w``, computed
    in double and stored as float32, as Detectron2 does).
    """
    if convention == "detectron2":
        cells = []
        for size in sizes:
            for ratio in aspect_ratios:
                w = math.sqrt(float(size) ** 2 / float(ratio))
                h = float(ratio) * w
                cells.append([-w / 2.0, -h / 2.0, w / 2.0, h / 2.0])
        return torch.tensor(cells, dtype=torch.float32)
    if convention != "torchvision":
        raise ValueError(f"anchor convention must be one of {ANCHOR_CONVENTIONS}, got {convention!r}")
    scales = torch.as_tensor(sizes, dtype=torch.float32)
    ratios = torch.as_tensor(aspect_ratios, dtype=torch.float32)
    h_ratios = torch.sqrt(ratios)
    w_ratios = 1.0 / h_ratios
    ws = (w_ratios[:, None] * scales[None, :]).reshape(-1)  # (R, S) -> (R*S,)
    hs = (h_ratios[:, None] * scales[None, :]).reshape(-1)
    return (torch.stack([-ws, -hs, ws, hs], dim=1) / 2).round()


class AnchorGenerator(nn.Module):
    """Anchors for one feature map of a given stride; cached per (H, W, device)."""

    def __init__(
        self,
        sizes: Sequence[float] = (128.0, 256.0, 512.0),
        aspect_ratios: Sequence[float] = (0.5, 1.0, 2.0),
        *,
        stride: int = 16,
        offset: float = 0.0,
        convention: AnchorConvention = "torchvision",
    ) -> None:
        super().__init__()
        self.stride = stride
        self.offset = offset
        self.convention = convention
        self.register_buffer("cell_anchors", base_anchors(sizes, aspect_ratios, convention), persistent=False)
        self._cache: dict[tuple[int, int, str], Tensor] = {}

    @property
    def num_anchors(self) -> int:
        return self.cell_anchors.shape[0]

    def forward(self, height: int, width: int) -> Tensor:
        """Anchors of an ``(H, W)`` feature map: ``(H * W * A, 4)``, location-major (matches the RPN head's
        ``(N, A, H, W) -> (N, H, W, A)`` flattening)."""
        key = (height, width, str(self.cell_anchors.device))
        if key not in self._cache:
            dev = self.cell_anchors.device
            sx = (torch.arange(width, dtype=torch.float32, device=dev) + self.offset) * self.stride
            sy = (torch.arange(height, dtype=torch.float32, device=dev) + self.offset) * self.stride
            yy, xx = torch.meshgrid(sy, sx, indexing="ij")
            shifts = torch.stack((xx, yy, xx, yy), dim=-1).reshape(-1, 1, 4)  # (H*W, 1, 4)
            self._cache = {key: (shifts + self.cell_anchors[None]).reshape(-1, 4)}  # (H*W, A, 4) -> (H*W*A, 4)
        return self._cache[key]
