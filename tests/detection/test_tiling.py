"""detection.tiling: the tile grid, dropping boxes cut by inner tile borders, the merge, and recall on small
objects in a large image.

The recall / duplicate test uses :class:`BlobDetector`, a deterministic stand-in with the interface the Predictor
uses: it finds the bright squares drawn on a dark image exactly, but only those at least ``MIN_SIDE`` pixels on
each side *in the model's input* - the one property of a real detector that tiling is for (the smallest anchor /
the stride-16 features cannot resolve an object shrunk to a few pixels). Every box it returns is then either an
object's exact box or a piece of one cut by a tile, so recall, duplicates and pieces are counted exactly: the
tiling logic is what is tested, not a trained model's noise. A real trained detector is measured in
benchmarks/bench_tiling.py (RESULTS.md "Tiled inference").
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import cv2
import numpy as np
import pytest
import torch
from torch import Tensor, nn
from torchvision.ops import box_iou

from detection.predictor import Predictor
from detection.tiling import (
    MIN_TILE_SIZE,
    TiledPredictor,
    TileOptions,
    keep_uncut,
    merge_tiles,
    tile_grid,
    tile_options,
)
from resbackbone.errors import ConfigError
from tests.helpers import TINY_CLASSES, assert_same_detections, noise_image, tiny_config

# ----------------------------------------------------------------------------------------------------- the grid


@pytest.mark.parametrize(("height", "width", "size", "overlap"), [
    (2000, 2000, 512, 0.25),
    (300, 1000, 256, 0.5),
    (100, 50, 256, 0.25),  # smaller than one tile: one tile of the whole image
    (1024, 1024, 512, 0.0),  # exact fit, adjoining tiles
    (1001, 517, 128, 0.1),
    (700, 129, 128, 0.9),  # one pixel past the tile: the second tile is aligned to the edge
])
def test_tile_grid_covers_the_image_with_the_overlap_and_edge_aligned_last_tiles(
        height: int, width: int, size: int, overlap: float) -> None:
    tiles = tile_grid(height, width, size, overlap)
    assert tiles.dtype == torch.int64 and tiles.shape[1] == 4
    x1, y1, x2, y2 = tiles.unbind(1)
    # Every tile inside the image and of the tile size (a side shorter than the tile: that side whole).
    assert (x1 >= 0).all() and (y1 >= 0).all() and (x2 <= width).all() and (y2 <= height).all()
    assert ((x2 - x1) == min(size, width)).all() and ((y2 - y1) == min(size, height)).all()
    # Together they cover every pixel.
    covered = np.zeros((height, width), bool)
    for a, b, c, d in tiles.tolist():
        covered[b:d, a:c] = True
    assert covered.all()
    # Along each axis: starts from 0, strictly increasing, the last tile ends on the edge, neighbours share at least
    # the overlap (the edge-aligned last one may share more).
    need = round(overlap * size)
    for starts, length in ((sorted(set(x1.tolist())), width), (sorted(set(y1.tolist())), height)):
        assert starts[0] == 0 and starts[-1] + min(size, length) == length
        steps = np.diff(starts)
        assert (steps > 0).all() and (min(size, length) - steps >= need).all()
        # Not more tiles than needed: every step but the last is the full stride.
        assert (steps[:-1] == TileOptions(size, overlap).stride).all()
    assert len(tiles) == len(set(x1.tolist())) * len(set(y1.tolist()))


def test_tile_options_refuse_bad_values() -> None:
    for kwargs, what in (({"size": MIN_TILE_SIZE - 1}, "--tile 31"), ({"size": 64, "overlap": 1.0}, "[0, 1)"),
                         ({"size": 64, "overlap": -0.1}, "[0, 1)")):
        with pytest.raises(ConfigError, match=re.escape(what)):
            TileOptions(**kwargs)
    assert tile_options(None) is None
    assert tile_options(64) == TileOptions(64, 0.25, False)
    with pytest.raises(ConfigError, match="need --tile"):
        tile_options(None, 0.5)


# ---------------------------------------------------------------------------------------- cut boxes and the merge


def test_boxes_cut_by_an_inner_tile_edge_are_dropped_only_where_another_tile_holds_them_whole() -> None:
    # Two 512 px tiles over a 896 x 512 image: A = [0, 512), B = [384, 896), overlap [384, 512); margin 10.24 px.
    tiles = tile_grid(512, 896, 512, 0.25)
    assert tiles.tolist() == [[0, 0, 512, 512], [384, 0, 896, 512]]
    margin = TileOptions(512, 0.25).margin
    cases = [  # (box, tile it came from, kept?)
        ([450, 100, 512, 150], 0, False),  # cut by A's right edge; B holds it whole -> dropped
        ([450, 100, 540, 150], 1, True),  # the same object, whole in B
        ([384, 300, 420, 330], 1, False),  # cut by B's left edge; whole in A
        ([300, 200, 512, 260], 0, True),  # cut by A, but starts left of B: no tile holds it whole
        ([0, 10, 30, 40], 0, True),  # on the image's left edge: the image edge cuts nothing
        ([860, 480, 896, 512], 1, True),  # the image's right / bottom corner
        ([100, 0, 140, 30], 0, True),  # the image's top edge
        # An object filling the overlap is "cut" in both tiles (within the margin of each inner edge) and whole in
        # neither: both copies stay (NMS merges them), so it is never lost.
        ([386, 50, 510, 80], 0, True),
        ([386, 50, 510, 80], 1, True),
    ]
    boxes = torch.tensor([c[0] for c in cases], dtype=torch.float32)
    index = torch.tensor([c[1] for c in cases])
    keep = keep_uncut(boxes, index, tiles, 512, 896, margin)
    assert keep.tolist() == [c[2] for c in cases]
    # A box near an inner edge within the margin counts as cut even if the detector left a gap of a few pixels.
    near = keep_uncut(torch.tensor([[450.0, 100.0, 505.0, 150.0]]), torch.tensor([0]), tiles, 512, 896, margin)
    assert not near.item()

    def dets(rows: list[tuple[list[float], float, int]]) -> dict[str, Tensor]:
        return {"boxes": torch.tensor([r[0] for r in rows], dtype=torch.float32).reshape(-1, 4),
                "scores": torch.tensor([r[1] for r in rows]), "labels": torch.tensor([r[2] for r in rows]).long()}

    # The merge: A's cut piece goes, the object whole in both tiles comes out once (class-wise NMS), another class
    # at the same place stays, and the cap keeps the best.
    per_tile = [dets([([450, 100, 512, 150], 0.9, 0), ([400, 300, 440, 340], 0.8, 1), ([10, 10, 40, 40], 0.3, 2)]),
                dets([([450, 100, 540, 150], 0.7, 0), ([401, 300, 441, 340], 0.6, 1), ([400, 300, 440, 340], 0.5, 2)])]
    out = merge_tiles(per_tile, tiles, 512, 896, margin=margin, nms_thresh=0.5, detections_per_image=100)
    assert out["scores"].tolist() == pytest.approx([0.8, 0.7, 0.5, 0.3])
    assert out["labels"].tolist() == [1, 0, 2, 2]
    assert out["boxes"][1].tolist() == [450, 100, 540, 150]
    capped = merge_tiles(per_tile, tiles, 512, 896, margin=margin, nms_thresh=0.5, detections_per_image=2)
    assert capped["scores"].tolist() == pytest.approx([0.8, 0.7])
    # The whole-image pass is merged in and never dropped as cut.
    whole = dets([([440, 95, 545, 155], 0.95, 0)])
    out = merge_tiles(per_tile, tiles, 512, 896, margin=margin, nms_thresh=0.5, detections_per_image=100, whole=whole)
    assert out["boxes"][0].tolist() == [440, 95, 545, 155] and (out["labels"] == 0).sum() == 1


# -------------------------------------------------------------------------------------- a deterministic detector


class BlobDetector(nn.Module):
    """Test stand-in for a FasterRCNN: bright connected components of each model input (pixels >= ``THRESH`` in
    any channel) whose box is at least ``MIN_SIDE`` pixels on each side, class 0, score 0.9, mapped to original
    pixels. The interface is what :class:`Predictor` and :class:`TiledPredictor` use."""

    MIN_SIDE = 8  # the smallest object it finds, in model-input pixels (a real detector's anchor / stride limit)
    THRESH = 160

    def __init__(self) -> None:
        super().__init__()
        self.class_names = ["blob"]
        self.roi_heads = nn.Module()  # what the merge reads: the model's NMS IoU and detections-per-image cap
        self.roi_heads.nms_thresh = 0.5
        self.roi_heads.detections_per_image = 100
        self.register_buffer("anchor", torch.zeros(0))  # gives the module a device

    @property
    def device(self) -> torch.device:
        return self.anchor.device

    def forward(self, images: Sequence[Tensor], orig_sizes: Sequence[tuple[int, int]]) -> list[dict[str, Tensor]]:
        out = []
        for im, (h0, w0) in zip(images, orig_sizes):
            mask = (im.amax(0) >= self.THRESH).to(torch.uint8).cpu().numpy()  # (H, W)
            _, _, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
            stats = stats[1:]  # row 0 is the background
            big = stats[(stats[:, 2] >= self.MIN_SIDE) & (stats[:, 3] >= self.MIN_SIDE)]
            boxes = torch.tensor(big[:, :4], dtype=torch.float32).reshape(-1, 4)
            boxes[:, 2:] += boxes[:, :2]  # (x, y, w, h) -> XYXY
            h, w = im.shape[-2:]
            boxes *= torch.tensor([w0 / w, h0 / h, w0 / w, h0 / h])
            out.append({"boxes": boxes, "scores": torch.full((len(boxes),), 0.9),
                        "labels": torch.zeros(len(boxes), dtype=torch.int64)})
        return out


def small_objects_image(size: int, tiles: Tensor, seed: int = 0) -> tuple[np.ndarray, Tensor]:
    """A dark noisy ``size`` x ``size`` image with 30 bright squares: 20 small (12-20 px) and 10 larger (40-48 px);
    10 of them (small and large) sit across inner tile edges, two at tile corners. Returns the image and the
    squares' ``(30, 4)`` XYXY boxes."""
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 80, (size, size, 3), dtype=np.uint8)
    inner_x = sorted({int(v) for v in tiles[:, 0].tolist() + tiles[:, 2].tolist()} - {0, size})
    boxes: list[list[int]] = []

    def free(b: list[int]) -> bool:  # 10 px of background between any two squares
        return all(b[0] >= o[2] + 10 or o[0] >= b[2] + 10 or b[1] >= o[3] + 10 or o[1] >= b[3] + 10 for o in boxes)

    sides = [int(s) for s in rng.integers(12, 21, 20)] + [int(s) for s in rng.integers(40, 49, 10)]
    for k, side in enumerate(sides):
        while True:
            x, y = (int(v) for v in rng.integers(0, size - side, 2))
            if k % 3 == 0:  # across an inner vertical edge (a third of them; those also on a horizontal one: corners)
                x = int(rng.choice(inner_x)) - int(rng.integers(side // 4, 3 * side // 4))
                if k % 9 == 0:
                    y = int(rng.choice(inner_x)) - int(rng.integers(side // 4, 3 * side // 4))
            b = [x, y, x + side, y + side]
            if free(b):
                boxes.append(b)
                break
    for x1, y1, x2, y2 in boxes:
        image[y1:y2, x1:x2] = 255
    return image, torch.tensor(boxes, dtype=torch.float32)


def recall(found: Tensor, truth: Tensor, iou: float = 0.5) -> float:
    """Fraction of ``truth`` boxes matched one-to-one by ``found`` boxes with IoU >= ``iou`` (greedy)."""
    if len(found) == 0:
        return 0.0
    m = box_iou(truth, found)
    hits = 0
    for _ in range(len(truth)):
        best = m.max()
        if best < iou:
            break
        i, j = divmod(int(m.argmax()), m.shape[1])
        hits += 1
        m[i, :] = -1
        m[:, j] = -1
    return hits / len(truth)


def test_tiling_finds_small_objects_the_whole_image_misses_without_duplicates_across_tile_borders() -> None:
    # The model's test size 512: the 2000 px image is shrunk 3.9x (a 20 px square -> 5 px, below MIN_SIDE), each
    # 512 px tile is seen at its own pixels.
    predictor = Predictor(BlobDetector(), min_size=512, max_size=512, device="cpu")
    options = TileOptions(size=512, overlap=0.25)
    tiles = tile_grid(2000, 2000, options.size, options.overlap)
    assert len(tiles) == 25
    image, truth = small_objects_image(2000, tiles)

    plain = predictor([image])[0]
    tiled = TiledPredictor(predictor, options, batch_size=4)
    got = tiled([image])[0]
    assert tiled.num_tiles(2000, 2000) == 25
    r_plain, r_tiled = recall(plain["boxes"], truth), recall(got["boxes"], truth)
    assert r_plain <= 0.5, r_plain  # only the larger squares survive the shrinking
    assert r_tiled == 1.0, r_tiled
    # No duplicates and no pieces: exactly one box per square, each the square's own box.
    assert len(got["boxes"]) == len(truth)
    iou = box_iou(got["boxes"], truth)
    assert (iou.max(1).values == 1.0).all() and (iou.max(0).values == 1.0).all()

    # The border rule was exercised: the tiles' own detections held pieces of the squares across tile edges, which
    # NMS alone keeps (a piece overlaps its whole square by IoU < 0.5).
    raw = [d["boxes"] + torch.tensor(t[:2] * 2, dtype=torch.float32)
           for t, d in zip(tiles.tolist(), predictor([np.ascontiguousarray(image[y1:y2, x1:x2])
                                                       for x1, y1, x2, y2 in tiles.tolist()]))]
    pieces = int((box_iou(torch.cat(raw), truth).max(1).values < 0.5).sum())
    assert pieces >= 5, pieces

    # With the whole-image pass as well: the large squares found twice (whole image, tile) still come out once.
    both = TiledPredictor(predictor, TileOptions(512, 0.25, whole=True), batch_size=4)([image])[0]
    assert recall(both["boxes"], truth) == 1.0 and len(both["boxes"]) == len(truth)


def test_an_image_within_one_tile_is_predicted_as_without_tiling(tiny_detector: nn.Module) -> None:
    predictor = Predictor(tiny_detector, min_size=64, max_size=96, score_thresh=0.05, device="cpu")
    image = noise_image(64, 96, 3)
    tiled = TiledPredictor(predictor, TileOptions(size=128, overlap=0.25, whole=True))
    assert tiled.num_tiles(64, 96) == 1
    assert_same_detections(tiled([image])[0], predictor([image])[0], "one tile")


@pytest.mark.parametrize("arch", ["C4", "DC5", "FPN"])
def test_tiles_of_every_architecture_merge_into_boxes_the_tiles_found(arch: str, one_thread: None) -> None:
    """Any detector the Predictor runs can be tiled: the merged boxes lie in the image and each is one of the tiles'
    own boxes moved to image pixels (tiling selects, it never invents a box)."""
    from detection.faster_rcnn import build_faster_rcnn

    torch.manual_seed(0)
    model = build_faster_rcnn(tiny_config(arch), class_names=TINY_CLASSES, weights=None).eval()
    predictor = Predictor(model, min_size=64, max_size=96, score_thresh=0.05, device="cpu")
    image = noise_image(100, 150, 5)
    options = TileOptions(size=64, overlap=0.25)
    tiles = tile_grid(100, 150, options.size, options.overlap)
    got = TiledPredictor(predictor, options, batch_size=6)([image])[0]
    assert len(got["boxes"]) > 0
    b = got["boxes"]
    assert (b[:, :2] >= 0).all() and (b[:, 2] <= 150).all() and (b[:, 3] <= 100).all()
    crops = [np.ascontiguousarray(image[y1:y2, x1:x2]) for x1, y1, x2, y2 in tiles.tolist()]
    raw = torch.cat([d["boxes"] + torch.tensor(t[:2] * 2, dtype=torch.float32)
                     for t, d in zip(tiles.tolist(), predictor(crops))])
    assert ((b[:, None, :] - raw[None, :, :]).abs().amax(-1).min(1).values < 1e-4).all()


def test_an_object_seen_whole_by_two_tiles_comes_back_once_even_with_loose_boxes() -> None:
    """The model's boxes of one object in two tiles differ by its regression error: here IoU 0.45, below the
    0.5 NMS, but the smaller lies within the larger. Across tiles they are one object; within one tile the model's
    own NMS decided, and both stay."""
    tiles = tile_grid(512, 896, 512, 0.25)
    a, b = [410.0, 300.0, 470.0, 360.0], [400.0, 288.0, 488.0, 378.0]  # both whole in both tiles
    assert box_iou(torch.tensor([a]), torch.tensor([b])).item() < 0.5

    def dets(rows: list[tuple[list[float], float]]) -> dict[str, Tensor]:
        return {"boxes": torch.tensor([r[0] for r in rows]), "scores": torch.tensor([r[1] for r in rows]),
                "labels": torch.zeros(len(rows), dtype=torch.int64)}

    margin = TileOptions(512, 0.25).margin
    across = merge_tiles([dets([(a, 0.9)]), dets([(b, 0.8)])], tiles, 512, 896, margin=margin, nms_thresh=0.5,
                         detections_per_image=100)
    assert across["boxes"].tolist() == [a]
    within = merge_tiles([dets([(a, 0.9), (b, 0.8)]), dets([])], tiles, 512, 896, margin=margin, nms_thresh=0.5,
                         detections_per_image=100)
    assert within["boxes"].tolist() == [a, b]
    # Another class at the same place is another object.
    other = dets([(b, 0.8)])
    other["labels"] = torch.ones(1, dtype=torch.int64)
    mixed = merge_tiles([dets([(a, 0.9)]), other], tiles, 512, 896, margin=margin, nms_thresh=0.5,
                        detections_per_image=100)
    assert mixed["labels"].tolist() == [0, 1]
