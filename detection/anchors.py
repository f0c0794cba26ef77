"""Anchors on one feature map (the paper's C4 / DC5 setting, stride 16) or on every level of a pyramid (FPN).

Shape shorthand: L levels; H_l, W_l size of level l; A anchors per location (= sizes per level x aspect ratios,
the same A on every level so that one RPN head serves them all); M_l = H_l * W_l * A.
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


def split_sizes(sizes: Sequence[float], num_levels: int) -> tuple[tuple[float, ...], ...]:
    """A flat list of anchor sizes -> the sizes of each of ``num_levels`` levels, in order: level l gets the l-th
    run of ``len(sizes) / L`` sizes (FPN: ``(32, 64, 128, 256, 512)`` over P2..P6 is one size per level).

    One flat list keeps the config a list of numbers; every level must get the same count (one RPN head)."""
    if num_levels < 1 or len(sizes) % num_levels:
        raise ValueError(f"{len(sizes)} anchor sizes cannot be shared evenly by {num_levels} feature levels")
    per = len(sizes) // num_levels
    return tuple(tuple(float(s) for s in sizes[i * per:(i + 1) * per]) for i in range(num_levels))


class AnchorGenerator(nn.Module):
    """Anchors for each of L feature maps (one stride and one run of sizes per level); cached per shapes.

    ``sizes``: flat, shared evenly by the levels in order (:func:`split_sizes`); ``stride``: one int (one level)
    or one per level.
    """

    def __init__(
        self,
        sizes: Sequence[float] = (128.0, 256.0, 512.0),
        aspect_ratios: Sequence[float] = (0.5, 1.0, 2.0),
        *,
        stride: int | Sequence[int] = 16,
        offset: float = 0.0,
        convention: AnchorConvention = "torchvision",
        stride_from_padded_size: bool = False,
    ) -> None:
        super().__init__()
        self.strides = (int(stride),) if isinstance(stride, int) else tuple(int(s) for s in stride)
        self.offset = offset
        # torchvision spaces each level's anchors by (padded image side // cells) per axis, not by the level's
        # stride: they differ on P6 (a stride-2 subsample of P5) when a padded side is an odd multiple of 32
        # (800 px: 61 px, not 64). Weights trained that way expect it.
        self.stride_from_padded_size = stride_from_padded_size
        self.convention = convention
        per_level = split_sizes(sizes, len(self.strides))
        cells = [base_anchors(s, aspect_ratios, convention) for s in per_level]
        # One (L, A, 4) buffer rather than L buffers: one device move, one name.
        self.register_buffer("cell_anchors", torch.stack(cells), persistent=False)
        self._cache: dict[tuple[tuple[tuple[int, int], ...], str], list[Tensor]] = {}

    @property
    def stride(self) -> int:
        """The stride of a one-level generator (C4 / DC5)."""
        if len(self.strides) != 1:
            raise AttributeError(f"{len(self.strides)} levels have strides {self.strides}, not one stride")
        return self.strides[0]

    @property
    def num_anchors(self) -> int:
        """A, anchors per location (the same on every level)."""
        return self.cell_anchors.shape[1]

    def forward(self, height: int, width: int) -> Tensor:
        """Anchors of a one-level generator's ``(H, W)`` feature map: ``(H * W * A, 4)``."""
        return self.grid_anchors([(height, width)])[0]

    def grid_anchors(self, shapes: Sequence[tuple[int, int]]) -> list[Tensor]:
        """Anchors of each level's ``(H_l, W_l)`` map: per level ``(M_l, 4)`` XYXY input pixels, location-major
        (matches the RPN head's ``(N, A, H, W) -> (N, H, W, A)`` flattening)."""
        if len(shapes) != len(self.strides):
            raise ValueError(f"{len(shapes)} feature maps for anchors of {len(self.strides)} levels")
        if torch.jit.is_tracing():
            # Traced sizes are tensors (ONNX export with dynamic height / width): no cache, whose int key would
            # freeze the tracing input's size into the graph.
            return self._grid(shapes)
        key = (tuple((int(h), int(w)) for h, w in shapes), str(self.cell_anchors.device))
        if key not in self._cache:
            self._cache = {key: self._grid(key[0])}
        return self._cache[key]

    def _grid(self, shapes: Sequence[tuple[int, int]]) -> list[Tensor]:
        """:meth:`grid_anchors` without the cache; the sizes may be Python ints or (when tracing) 0-dim tensors."""
        dev = self.cell_anchors.device
        # The padded image size, from the first (finest) level, whose stride divides it exactly.
        padded_h, padded_w = shapes[0][0] * self.strides[0], shapes[0][1] * self.strides[0]
        out = []
        for level, ((h, w), stride) in enumerate(zip(shapes, self.strides)):
            cells = self.cell_anchors[level]  # (A, 4); indexed, not iterated: the tracer warns on iterating
            stride_y, stride_x = (padded_h // h, padded_w // w) if self.stride_from_padded_size else (stride,) * 2
            sx = (torch.arange(w, dtype=torch.float32, device=dev) + self.offset) * stride_x
            sy = (torch.arange(h, dtype=torch.float32, device=dev) + self.offset) * stride_y
            yy, xx = torch.meshgrid(sy, sx, indexing="ij")
            shifts = torch.stack((xx, yy, xx, yy), dim=-1).reshape(-1, 1, 4)  # (H*W, 1, 4)
            out.append((shifts + cells[None]).reshape(-1, 4))  # (H*W, A, 4) -> (H*W*A, 4)
        return out
