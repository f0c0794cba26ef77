"""RoI pooling from one feature map (C4 / DC5) or from the pyramid level that suits each RoI's size (FPN).

Lin et al. 2017 (FPN), eq. 1: a RoI of ``w x h`` input pixels is pooled from level
``k = floor(k0 + log2(sqrt(w h) / 224))``, k0 = 4 (the level of a 224 px box, the ImageNet pre-training size),
clamped to the levels present. Detectron2 and torchvision place a small epsilon differently (inside the log vs
added to the level); it decides boxes whose size is exactly a power of two times 224, so it is a parameter.

Shape shorthand: N images, L levels, C channels, R RoIs of all images, S pooled size.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor, nn
from torchvision.ops import roi_align, roi_pool

from .boxes import box_area, group_counts

# FPN's canonical box: 224 px, the ImageNet pre-training size, is pooled from level 4 (P4, stride 16).
CANONICAL_BOX_SIZE = 224.0
CANONICAL_LEVEL = 4
# Detectron2 adds 1e-8 inside the log2; torchvision adds 1e-6 to the level.
D2_LEVEL_EPSILON = 1e-8
TV_LEVEL_EPSILON = 1e-6

PoolerType = Literal["roi_align", "roi_pool"]


def assign_levels(
    boxes: Tensor,
    min_level: int,
    max_level: int,
    *,
    canonical_box_size: float = CANONICAL_BOX_SIZE,
    canonical_level: int = CANONICAL_LEVEL,
    epsilon: float = D2_LEVEL_EPSILON,
    epsilon_in_log: bool = True,
) -> Tensor:
    """``(R, 4)`` XYXY boxes -> ``(R,)`` int64 index into the levels ``min_level..max_level`` (0 = min_level).

    ``epsilon_in_log``: ``floor(k0 + log2(s / 224 + eps))`` (Detectron2) instead of ``floor(k0 + log2(s / 224) +
    eps)`` (torchvision). The operations run in the boxes' dtype in the references' order, so that a box on a
    level boundary lands where each reference puts it.
    """
    sizes = torch.sqrt(box_area(boxes))
    if epsilon_in_log:
        level = torch.floor(canonical_level + torch.log2(sizes / canonical_box_size + epsilon))
    else:
        # A 0-dim tensor in the sizes' dtype, as torchvision's LevelMapper adds it (torch.full, not torch.tensor:
        # the same constant, without the tracer's warning when exported).
        level = torch.floor(canonical_level + torch.log2(sizes / canonical_box_size)
                            + torch.full((), epsilon, dtype=sizes.dtype, device=sizes.device))
    return level.clamp(min=min_level, max=max_level).to(torch.int64) - min_level


class RoIPooler(nn.Module):
    """Pool per-image boxes from L feature maps of strides ``strides`` (ascending powers of two) to ``S x S``.

    One level: a single RoIAlign / RoIPool call. Several: each RoI from its level (:func:`assign_levels`); the RoIs
    are sorted by level once and split with one read of the per-level counts (a host sync on a GPU), rather than
    one boolean mask and read per level. While tracing for export, per-level masks keep the counts dynamic.
    """

    def __init__(
        self,
        strides: Sequence[int],
        output_size: int,
        *,
        pooler_type: PoolerType = "roi_align",
        sampling_ratio: int = 0,
        aligned: bool = True,
        canonical_box_size: float = CANONICAL_BOX_SIZE,
        canonical_level: int = CANONICAL_LEVEL,
        level_epsilon: float = D2_LEVEL_EPSILON,
        level_epsilon_in_log: bool = True,
    ) -> None:
        super().__init__()
        if pooler_type not in ("roi_align", "roi_pool"):
            raise ValueError(f"pooler_type must be roi_align or roi_pool, got {pooler_type!r}")
        self.strides = tuple(int(s) for s in strides)
        levels = [math.log2(s) for s in self.strides]
        if len(self.strides) > 1 and any(b - a != 1 for a, b in zip(levels, levels[1:])):
            raise ValueError(f"pyramid strides must be consecutive powers of two, got {self.strides}")
        self.min_level, self.max_level = int(levels[0]), int(levels[-1])
        self.output_size = output_size
        self.pooler_type = pooler_type
        self.sampling_ratio = sampling_ratio
        self.aligned = aligned
        self.canonical_box_size = canonical_box_size
        self.canonical_level = canonical_level
        self.level_epsilon = level_epsilon
        self.level_epsilon_in_log = level_epsilon_in_log

    def _pool(self, feature: Tensor, rois: Tensor, stride: int) -> Tensor:
        size = (self.output_size, self.output_size)
        if self.pooler_type == "roi_pool":
            return roi_pool(feature, rois, size, 1.0 / stride)
        return roi_align(feature, rois, size, 1.0 / stride, self.sampling_ratio, self.aligned)

    def levels_of(self, boxes: Tensor) -> Tensor:
        """``(R, 4)`` -> ``(R,)`` level index of each box (0 = the first level)."""
        return assign_levels(
            boxes, self.min_level, self.max_level, canonical_box_size=self.canonical_box_size,
            canonical_level=self.canonical_level, epsilon=self.level_epsilon,
            epsilon_in_log=self.level_epsilon_in_log,
        )

    def forward(self, features: Sequence[Tensor], boxes: Sequence[Tensor]) -> Tensor:
        """
        Args:
            features: L maps ``(N, C, H_l, W_l)`` of the padded batch, in stride order.
            boxes: per image ``(Ri, 4)`` XYXY input pixels.
        Returns:
            ``(R, C, S, S)`` pooled features, images in order, each image's boxes in order.
        """
        if len(features) != len(self.strides):
            raise ValueError(f"the RoI pooler was built for {len(self.strides)} level(s), got {len(features)}")
        dtype = features[0].dtype
        rois = torch.cat(
            [torch.cat([torch.full_like(b[:, :1], i), b], dim=1) for i, b in enumerate(boxes)], dim=0
        ).to(dtype)  # (R, 5): image index, x1, y1, x2, y2
        if len(features) == 1:
            return self._pool(features[0], rois, self.strides[0])
        level = self.levels_of(torch.cat(list(boxes)).float())  # (R,)
        c = features[0].shape[1]
        if torch.jit.is_tracing():
            out = rois.new_zeros((rois.shape[0], c, self.output_size, self.output_size))
            for i, (f, s) in enumerate(zip(features, self.strides)):
                idx = torch.nonzero(level == i).squeeze(1)
                out = out.index_put((idx,), self._pool(f, rois[idx], s))
            return out
        order = level.argsort(stable=True)
        counts = group_counts(level, len(features)).tolist()  # the one host read
        pooled = torch.cat([self._pool(f, r, s) for f, r, s in zip(features, rois[order].split(counts),
                                                                      self.strides)])
        out = torch.empty_like(pooled)
        out[order] = pooled
        return out

    def extra_repr(self) -> str:
        return (f"strides={self.strides}, output_size={self.output_size}, type={self.pooler_type}, "
                f"sampling_ratio={self.sampling_ratio}, aligned={self.aligned}")


__all__ = ["CANONICAL_BOX_SIZE", "CANONICAL_LEVEL", "D2_LEVEL_EPSILON", "RoIPooler", "TV_LEVEL_EPSILON",
           "assign_levels"]
