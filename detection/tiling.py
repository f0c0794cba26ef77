"""Tiled inference for small objects: the image cut into overlapping tiles, each run through the Predictor as an
image of its own, the detections mapped back and merged.

A detector sees an image at its test size (shorter side e.g. 800): a 4000 px photo is shrunk 5x and a 20 px object
becomes 4 px, below what the smallest anchor on stride-16 features resolves. Each tile is given to the
:class:`~detection.predictor.Predictor` *as if it were an image*, so the model's usual test resize applies to the
tile (a 512 px tile at test size 800 is enlarged 1.56x; a 128 px tile at test size 128 keeps its pixels): small
objects reach the model at the size it was trained on. Pick the tile size from the magnification you want
(``test min_size / tile size``), or change the test size (``--min-size``) for the same tiles.

:class:`TiledPredictor` does:

1. the grid (:func:`tile_grid`): ``size x size`` tiles whose neighbours share ``round(overlap * size)`` pixels, the
   last row / column aligned to the image's far edge (it overlaps its neighbour more); a side not longer than
   ``size`` is one tile of that side, so an image within one tile is predicted exactly as without tiling;
2. the tiles through the Predictor (its test resize, TTA, score threshold), ``batch_size`` tiles per forward pass,
   boxes shifted to image pixels;
3. boxes cut by an inner tile border dropped where another tile holds them whole (:func:`keep_uncut`): a box is
   *whole* in a tile when it lies inside the tile shrunk by a margin on its inner sides (a side on the image's
   edge cuts nothing); an object inside an overlap is then kept from the tile that sees all of it, and the pieces
   of it that its other tiles saw go;
4. duplicates across tiles suppressed (:func:`suppress_cross_tile`): an object seen whole by two tiles comes back
   as two boxes that differ by the model's regression error, often with an IoU below the NMS threshold; of two
   same-class boxes from *different* tiles (or a tile and the whole-image pass) whose intersection covers
   ``CROSS_TILE_IOS`` of the smaller one, the lower-scoring goes (SAHI's intersection-over-smaller rule, limited
   to pairs across tiles, so what the model decided within one view is left as it was);
5. one class-wise NMS (``torchvision.ops.batched_nms`` at the model's RoI-head IoU) over all tiles (and, with
   ``whole``, the whole image's detections at the test size), then the model's detections-per-image cap.

Limit: an object larger than the overlap is whole in no tile; its pieces are all kept, and pieces that overlap
little survive NMS. Choose ``overlap * size`` at least the largest object size you tile for, or add the whole-image
pass (``whole``), which sees large objects at the plain test size.

Shape shorthand: T tiles of one image, D detections, K foreground classes.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor
from torchvision.ops import batched_nms

from resbackbone.errors import ConfigError, DataError

if TYPE_CHECKING:
    from .predictor import Predictor

# Smallest tile side: below it a stride-16 backbone has a 2 x 2 feature map, nothing a detector can use.
MIN_TILE_SIZE = 32
DEFAULT_TILE_OVERLAP = 0.25
# A box ending within this fraction of the tile size of an inner tile edge counts as cut by it: the box of an
# object cut by the tile ends at the edge after clipping, give or take the regression error (a few pixels). A box
# dropped for being near an edge without being cut is whole in its neighbour tile, which keeps it.
BORDER_MARGIN_FRACTION = 0.02
# Two same-class boxes from different views whose intersection covers this fraction of the smaller one are one
# object (SAHI's default postprocess threshold).
CROSS_TILE_IOS = 0.5


@dataclass(frozen=True)
class TileOptions:
    """How to tile. Raises :class:`ConfigError` for a size below :data:`MIN_TILE_SIZE` or an overlap outside
    [0, 1)."""

    # Tile side in original-image pixels; each tile is then resized by the model's test resize like an image.
    size: int
    # Fraction of ``size`` that neighbouring tiles share (0: adjoining tiles, no object seen whole across a border).
    overlap: float = DEFAULT_TILE_OVERLAP
    # Also run the whole image at the test size and merge its detections (for objects larger than the overlap).
    whole: bool = False

    def __post_init__(self) -> None:
        if int(self.size) != self.size or self.size < MIN_TILE_SIZE:
            raise ConfigError(f"--tile {self.size}: a tile side must be an integer >= {MIN_TILE_SIZE} pixels")
        if not 0.0 <= self.overlap < 1.0:
            raise ConfigError(f"--tile-overlap {self.overlap}: the overlap is a fraction of the tile in [0, 1)")

    @property
    def stride(self) -> int:
        """Pixels between the starts of neighbouring tiles (at least 1)."""
        return max(1, self.size - round(self.overlap * self.size))

    @property
    def margin(self) -> float:
        """Distance in pixels from an inner tile edge within which a box counts as cut."""
        return BORDER_MARGIN_FRACTION * self.size


def tile_options(size: int | None, overlap: float | None = None, whole: bool = False) -> TileOptions | None:
    """The command-line flags -> options; None when ``size`` is None (no tiling). An overlap or ``whole`` without
    a size is a :class:`ConfigError` (they would silently do nothing)."""
    if size is None:
        if overlap is not None or whole:
            raise ConfigError("--tile-overlap / --tile-whole need --tile SIZE")
        return None
    return TileOptions(size=size, overlap=DEFAULT_TILE_OVERLAP if overlap is None else overlap, whole=whole)


def tile_starts(length: int, size: int, stride: int) -> list[int]:
    """Start offsets of the tiles along one side of ``length`` pixels: every ``stride`` pixels, the last one at
    ``length - size`` so that it ends on the edge; ``[0]`` when the side fits in one tile."""
    if length <= size:
        return [0]
    return [*range(0, length - size, stride), length - size]


def tile_grid(height: int, width: int, size: int, overlap: float) -> Tensor:
    """The tiles of an ``height x width`` image: ``(T, 4)`` int64 XYXY image pixels, row by row.

    Each tile is ``min(size, height) x min(size, width)``; neighbours share at least ``round(overlap * size)``
    pixels (the last row / column, aligned to the edge, shares more); together they cover the image.
    """
    stride = TileOptions(size, overlap).stride
    xs = tile_starts(width, size, stride)
    ys = tile_starts(height, size, stride)
    tw, th = min(size, width), min(size, height)
    return torch.tensor([[x, y, x + tw, y + th] for y in ys for x in xs], dtype=torch.int64)


def whole_regions(tiles: Tensor, height: int, width: int, margin: float) -> Tensor:
    """Each tile shrunk by ``margin`` on its inner sides (a side on the image's edge cuts nothing and stays):
    ``(T, 4)`` int XYXY -> ``(T, 4)`` float32. A box inside its tile's region is whole in that tile."""
    regions = tiles.to(torch.float32).clone()
    regions[:, :2] += margin * (tiles[:, :2] > 0)  # left / top edges inside the image
    regions[:, 2] -= margin * (tiles[:, 2] < width)
    regions[:, 3] -= margin * (tiles[:, 3] < height)
    return regions


def keep_uncut(boxes: Tensor, tile_index: Tensor, tiles: Tensor, height: int, width: int, margin: float) -> Tensor:
    """Which boxes to keep: those whole in the tile they came from, and the cut ones no other tile holds whole.

    Args:
        boxes: ``(D, 4)`` XYXY image pixels, detected in tile ``tile_index`` ``(D,)`` int64 of ``tiles``.
        tiles: ``(T, 4)`` int64 XYXY image pixels (:func:`tile_grid`).
        height, width: the image size.
        margin: a box within ``margin`` pixels of an inner tile edge counts as cut by it.
    Returns:
        ``(D,)`` bool. Dropping a cut box needs another tile in which it is whole, and the copy of the object
        found there is whole in it and kept, so an object whole in some tile is never lost.
    """
    regions = whole_regions(tiles, height, width, margin).to(boxes.device)  # (T, 4)
    b = boxes.float()[:, None, :]  # (D, 1, 4)
    inside = ((b[..., :2] >= regions[None, :, :2]) & (b[..., 2:] <= regions[None, :, 2:])).all(-1)  # (D, T)
    own = torch.arange(len(tiles), device=boxes.device)[None, :] == tile_index[:, None]  # (D, T)
    return (inside & own).any(1) | ~(inside & ~own).any(1)


def _ios(a: Tensor, b: Tensor) -> Tensor:
    """Intersection over the smaller area: ``(A, 4)``, ``(B, 4)`` XYXY -> ``(A, B)``."""
    lt = torch.maximum(a[:, None, :2], b[None, :, :2])
    rb = torch.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)
    area_a, area_b = (a[:, 2:] - a[:, :2]).clamp(min=0).prod(-1), (b[:, 2:] - b[:, :2]).clamp(min=0).prod(-1)
    return inter / torch.minimum(area_a[:, None], area_b[None, :]).clamp(min=1e-6)


def suppress_cross_tile(boxes: Tensor, scores: Tensor, labels: Tensor, view: Tensor, tiles: Tensor,
                        ios_thresh: float) -> Tensor:
    """Greedy by descending score: a box is dropped when a kept box of the same class from another view covers
    at least ``ios_thresh`` of the smaller of the two (intersection over the smaller area).

    Args:
        boxes: ``(D, 4)`` XYXY image pixels; scores ``(D,)``; labels ``(D,)``.
        view: ``(D,)`` int64, the tile each box came from (-1: the whole-image pass); pairs from one view are never
            compared (the model's own NMS decided those).
        tiles: ``(T, 4)`` XYXY, the tiles ``view`` indexes: only boxes of overlapping tiles can meet, so only those
            pairs are compared (an image of hundreds of tiles holds tens of thousands of boxes).
        ios_thresh: the intersection-over-smaller threshold.
    Returns:
        ``(D,)`` bool, the boxes kept.
    """
    b, lab, v = boxes.float().cpu(), labels.cpu(), view.cpu()
    members = {int(t): (v == t).nonzero().flatten() for t in v.unique().tolist()}
    t = tiles.cpu()
    pairs = []
    for i in members:
        for j in members:
            if j <= i:
                continue
            if i >= 0 and j >= 0 and not bool((torch.minimum(t[i, 2:], t[j, 2:]) > torch.maximum(t[i, :2], t[j, :2]))
                                              .all()):
                continue  # tiles that do not overlap hold no boxes that meet
            a_idx, b_idx = members[i], members[j]
            hit = (_ios(b[a_idx], b[b_idx]) >= ios_thresh) & (lab[a_idx][:, None] == lab[b_idx][None, :])
            ia, ib = hit.nonzero(as_tuple=True)
            pairs.append(torch.stack((a_idx[ia], b_idx[ib]), 1))
    n = len(b)
    keep = torch.ones(n, dtype=torch.bool)
    if not pairs or not sum(len(p) for p in pairs):
        return keep
    order = torch.argsort(scores.cpu(), descending=True, stable=True)
    rank = torch.empty(n, dtype=torch.int64)
    rank[order] = torch.arange(n)
    edges = torch.cat(pairs)  # (E, 2) duplicate pairs
    # Each pair as (higher-ranked, lower-ranked); the greedy pass drops the lower one when the higher is kept.
    hi = torch.where(rank[edges[:, 0]] < rank[edges[:, 1]], edges[:, 0], edges[:, 1])
    lo = torch.where(rank[edges[:, 0]] < rank[edges[:, 1]], edges[:, 1], edges[:, 0])
    by_rank = torch.argsort(rank[hi], stable=True)
    for h, low in zip(hi[by_rank].tolist(), lo[by_rank].tolist()):
        if keep[h]:
            keep[low] = False
    return keep


def merge_tiles(
    tile_detections: Sequence[dict[str, Tensor]],
    tiles: Tensor,
    height: int,
    width: int,
    *,
    margin: float,
    nms_thresh: float,
    detections_per_image: int,
    whole: dict[str, Tensor] | None = None,
) -> dict[str, Tensor]:
    """The detections of an image from those of its tiles.

    Args:
        tile_detections: per tile ``{"boxes" (Dt, 4) XYXY image pixels, "scores" (Dt,), "labels" (Dt,)}``, in the
            order of ``tiles`` ``(T, 4)``.
        height, width: the image size.
        margin: see :func:`keep_uncut`.
        nms_thresh: IoU of the class-wise NMS over all tiles (the model's RoI-head NMS IoU).
        detections_per_image: the cap on the merged detections (the model's).
        whole: detections of the whole image (never dropped as cut), or None.
    Returns:
        ``{"boxes" (D, 4) float32 XYXY image pixels, "scores" (D,) float32, "labels" (D,) int64}``, by descending
        score.
    """
    counts = torch.tensor([len(d["boxes"]) for d in tile_detections], dtype=torch.int64)
    boxes = torch.cat([d["boxes"].float().reshape(-1, 4) for d in tile_detections])  # (sum Dt, 4)
    scores = torch.cat([d["scores"].float() for d in tile_detections])
    labels = torch.cat([d["labels"].long() for d in tile_detections])
    view = torch.repeat_interleave(torch.arange(len(counts)), counts)  # (sum Dt,) the tile of each box
    keep = keep_uncut(boxes, view, tiles, height, width, margin)
    boxes, scores, labels, view = boxes[keep], scores[keep], labels[keep], view[keep]
    if whole is not None:
        boxes = torch.cat([boxes, whole["boxes"].float().reshape(-1, 4)])
        scores = torch.cat([scores, whole["scores"].float()])
        labels = torch.cat([labels, whole["labels"].long()])
        view = torch.cat([view, torch.full((len(whole["scores"]),), -1, dtype=torch.int64)])
    keep = suppress_cross_tile(boxes, scores, labels, view, tiles, CROSS_TILE_IOS)
    boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
    # Sorted by descending score, so the cap keeps the best.
    kept = batched_nms(boxes, scores, labels, nms_thresh)[:detections_per_image]
    return {"boxes": boxes[kept], "scores": scores[kept], "labels": labels[kept]}


class TiledPredictor:
    """A :class:`~detection.predictor.Predictor` run on overlapping tiles: ``tiled([image, ...])`` -> per-image
    detections in original pixels, as the Predictor returns them.

    Args:
        predictor: runs the tiles (its test size, TTA, score threshold, device apply to each tile as to an image).
        options: tile size, overlap, whole-image pass.
        batch_size: tiles per forward pass.
    """

    def __init__(self, predictor: Predictor, options: TileOptions, batch_size: int = 1) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.predictor = predictor
        self.options = options
        self.batch_size = int(batch_size)
        heads = predictor.model.roi_heads
        # The merge uses the model's own NMS IoU and cap: tiling changes what the model sees, not what it keeps.
        self.nms_thresh = float(heads.nms_thresh)
        self.detections_per_image = int(heads.detections_per_image)

    @property
    def class_names(self) -> list[str]:
        return self.predictor.class_names

    def grid(self, height: int, width: int) -> Tensor:
        """The tiles of an image of this size, ``(T, 4)`` int64 XYXY (:func:`tile_grid`)."""
        return tile_grid(height, width, self.options.size, self.options.overlap)

    def num_tiles(self, height: int, width: int) -> int:
        """How many tiles an image of this size takes (the whole-image pass not counted)."""
        o = self.options
        return len(tile_starts(height, o.size, o.stride)) * len(tile_starts(width, o.size, o.stride))

    @torch.inference_mode()
    def __call__(self, images: Sequence[str | Path | np.ndarray], batch_size: int | None = None
                 ) -> list[dict[str, Tensor]]:
        """Detect on ``images`` (paths or ``(H0, W0, 3)`` uint8 RGB), ``batch_size`` tiles per forward pass (None:
        the constructor's). Returns per image ``{"boxes" (D, 4) float32 XYXY original pixels, "scores" (D,),
        "labels" (D,) int64 in [0, K)}`` on the CPU, by descending score."""
        bs = self.batch_size if batch_size is None else int(batch_size)
        if bs < 1:
            raise ValueError(f"batch_size must be >= 1, got {bs}")
        arrays = [self.predictor.load_image(im) for im in images]
        grids = [self.grid(*im.shape[:2]) for im in arrays]
        jobs = [(i, t) for i, g in enumerate(grids) for t in g.tolist()]  # (image, [x1, y1, x2, y2])
        found: list[list[dict[str, Tensor]]] = [[] for _ in arrays]
        for start in range(0, len(jobs), bs):
            chunk = jobs[start : start + bs]
            # Crops are copied one batch at a time, so a large image is never held twice over.
            crops = [np.ascontiguousarray(arrays[i][y1:y2, x1:x2]) for i, (x1, y1, x2, y2) in chunk]
            for (i, (x1, y1, _, _)), det in zip(chunk, self.predictor(crops)):
                shift = torch.tensor([x1, y1, x1, y1], dtype=det["boxes"].dtype)
                found[i].append({**det, "boxes": det["boxes"] + shift})
        # The whole-image pass only where there is more than one tile (else it is the one tile again).
        multi = [i for i, g in enumerate(grids) if len(g) > 1] if self.options.whole else []
        whole: dict[int, dict[str, Tensor]] = {}
        for start in range(0, len(multi), bs):
            idx = multi[start : start + bs]
            whole.update(zip(idx, self.predictor([arrays[i] for i in idx])))
        return [
            merge_tiles(found[i], grids[i], int(im.shape[0]), int(im.shape[1]), margin=self.options.margin,
                        nms_thresh=self.nms_thresh, detections_per_image=self.detections_per_image,
                        whole=whole.get(i))
            for i, im in enumerate(arrays)
        ]

    def predict_files(
        self, paths: Iterable[str | Path], batch_size: int | None = None, *,
        skipped: list[tuple[Path, str]] | None = None,
    ) -> Iterator[tuple[Path, np.ndarray, dict[str, Tensor]]]:
        """Yield ``(path, RGB image, detections)`` for each file, as ``Predictor.predict_files`` does; images one at
        a time (each is many tiles), ``batch_size`` tiles per forward pass (None: the constructor's).

        ``skipped``: None stops at the first file that cannot be decoded (a :class:`DataError` naming it); a list
        collects ``(path, reason)`` of such files instead and the others are still predicted.
        """
        for p in paths:
            try:
                image = self.predictor.load_image(p)  # decoded as the Predictor decodes files
            except DataError as e:
                if skipped is None:
                    raise
                skipped.append((Path(p), str(e)))
                continue
            yield Path(p), image, self([image], batch_size)[0]

    def describe(self) -> dict[str, Any]:
        """The tiling settings, JSON-ready (for detections.json and metrics.json)."""
        o = self.options
        return {"size": o.size, "overlap": o.overlap, "whole": o.whole, "stride": o.stride}


__all__ = [
    "BORDER_MARGIN_FRACTION",
    "CROSS_TILE_IOS",
    "DEFAULT_TILE_OVERLAP",
    "MIN_TILE_SIZE",
    "TileOptions",
    "TiledPredictor",
    "keep_uncut",
    "merge_tiles",
    "suppress_cross_tile",
    "tile_grid",
    "tile_options",
    "tile_starts",
    "whole_regions",
]
