#!/usr/bin/env python
"""Tiled inference on small objects in large images, with a trained detector: recall with and without tiling.

    python tools/train_det.py --max-iter 300 --output-dir /tmp/tile_run          # a synthetic model, ~3-5 min
    python benchmarks/bench_tiling.py --checkpoint /tmp/tile_run/model_final.pth  # 3 images of 2000 px, ~3 min

Each scene is a ``--size`` px image drawn as the synthetic set draws its 128 px images (gradient + noise
background with clutter lines and blobs, textured circles / rectangles / triangles of 18-68 px, outlines,
occlusion), with ``--objects`` objects: small objects at the size the model was trained on, in an image 16x larger.
Every setting runs the same scenes through the Predictor (the model's own score threshold, 0.05, and its cap of
detections per image) and reports recall at IoU 0.5 (class-aware, one detection per object) at score >= 0.05 and
>= 0.5, precision and duplicates (detections of an already found object) at score >= 0.5, detections kept, tiles
and seconds per image. Each object's 128 px neighbourhood run alone gives the model's recall at its own scale: the
ceiling for tiling.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any
from unittest import mock

import cv2
import numpy as np
import torch
from torchvision.ops import box_iou

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

# The synthetic set's drawing steps (private: the set itself only draws 128 px images of 1-5 objects).
from detection import tiling  # noqa: E402
from detection.data.synthetic import (  # noqa: E402
    MIN_VISIBLE_FRACTION,
    SYNTHETIC_CLASSES,
    _background,
    _colour,
    _shape_mask,
    _texture,
)
from detection.predictor import Predictor  # noqa: E402
from detection.tiling import TiledPredictor, TileOptions  # noqa: E402

PATCH = 128  # the synthetic images' size, which the default model is trained and tested at


def make_scene(rng: np.random.Generator, size: int, num_objects: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A ``size`` px scene drawn the way the synthetic set draws its 128 px images (same background, clutter,
    shapes, textures, outlines, occlusion rule), with ``num_objects`` objects of 18-68 px.

    Returns (H, W, 3) uint8 RGB, (N, 4) XYXY boxes, (N,) labels of the objects at least half visible.
    """
    img = _background(rng, size)
    owner = np.full((size, size), -1, np.int32)
    objects = []
    for k in range(num_objects):
        cls = int(rng.integers(0, len(SYNTHETIC_CLASSES)))
        # _shape_mask sizes objects min(68, 0.55 * size): 18-68 px, as in the 128 px images
        mask = _shape_mask(rng, cls, size).astype(bool)
        ys, xs = np.nonzero(mask)
        y1, y2, x1, x2 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
        texture = _texture(rng, max(y2 - y1, x2 - x1))  # only the object's box needs a texture
        img[y1:y2, x1:x2][mask[y1:y2, x1:x2]] = texture[: y2 - y1, : x2 - x1][mask[y1:y2, x1:x2]]
        if rng.random() < 0.5:
            contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
            cv2.drawContours(img, contours, -1, _colour(rng), 1)
        owner[mask] = k
        objects.append((k, cls, mask, (x1, y1, x2, y2)))
    boxes, labels = [], []
    for k, cls, mask, box in objects:
        if (owner == k).sum() >= MIN_VISIBLE_FRACTION * mask.sum():
            boxes.append(box)
            labels.append(cls)
    return img, np.array(boxes, np.float32), np.array(labels, np.int64)


def neighbourhoods(image: np.ndarray, boxes: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """Each object's 128 px window (centred on it, shifted inside the image) and its box in that window."""
    h, w = image.shape[:2]
    out = []
    for x1, y1, x2, y2 in boxes:
        x = int(min(max((x1 + x2) / 2 - PATCH / 2, 0), w - PATCH))
        y = int(min(max((y1 + y2) / 2 - PATCH / 2, 0), h - PATCH))
        out.append((np.ascontiguousarray(image[y : y + PATCH, x : x + PATCH]),
                    np.array([x1 - x, y1 - y, x2 - x, y2 - y], np.float32)))
    return out


def match(det: dict[str, torch.Tensor], boxes: np.ndarray, labels: np.ndarray, score: float) -> dict[str, int]:
    """Greedy by score: a detection finds the unfound object of its class it overlaps most (IoU >= 0.5); one that
    overlaps only found objects by >= 0.5 is a duplicate."""
    keep = det["scores"] >= score
    d_boxes, d_labels, d_scores = det["boxes"][keep], det["labels"][keep], det["scores"][keep]
    gt = torch.from_numpy(boxes)
    iou = box_iou(d_boxes, gt) if len(d_boxes) else torch.zeros(0, len(gt))
    iou[d_labels[:, None] != torch.from_numpy(labels)[None, :]] = 0.0
    found = torch.zeros(len(gt), dtype=torch.bool)
    tp = dup = 0
    for i in torch.argsort(d_scores, descending=True).tolist():
        free = iou[i].masked_fill(found, 0.0)
        if free.max() >= 0.5:
            found[int(free.argmax())] = True
            tp += 1
        elif len(gt) and iou[i].max() >= 0.5:
            dup += 1
    return {"found": int(found.sum()), "objects": len(gt), "detections": int(keep.sum()), "tp": tp, "dup": dup}


def run(name: str, predict: Any, scenes: list[tuple], tiles_of: Any = None) -> dict[str, Any]:
    stats: dict[str, Any] = {"name": name, "seconds": 0.0, "tiles": 0}
    low = high = None
    for image, boxes, labels in scenes:
        start = time.perf_counter()
        det = predict([image])[0]
        stats["seconds"] += time.perf_counter() - start
        stats["tiles"] += tiles_of(*image.shape[:2]) if tiles_of else 1
        a, b = match(det, boxes, labels, 0.05), match(det, boxes, labels, 0.5)
        low = a if low is None else {k: low[k] + a[k] for k in a}
        high = b if high is None else {k: high[k] + b[k] for k in b}
    n = len(scenes)
    stats.update(recall_005=low["found"] / low["objects"], recall_05=high["found"] / high["objects"],
                 precision_05=high["tp"] / max(high["detections"], 1), dup_05=high["dup"] / n,
                 dets=low["detections"] / n, s_per_image=stats["seconds"] / n, tiles_per_image=stats["tiles"] / n)
    return stats


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="a detector trained on the synthetic set")
    p.add_argument("--images", type=int, default=3)
    p.add_argument("--size", type=int, default=2000)
    p.add_argument("--objects", type=int, default=30)
    p.add_argument("--batch-size", type=int, default=8, help="tiles per forward pass")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    rng = np.random.default_rng(args.seed)
    scenes = [make_scene(rng, args.size, args.objects) for _ in range(args.images)]
    predictor = Predictor.from_checkpoint(args.checkpoint, device="cpu")
    print(f"{args.images} scenes of {args.size} px with {args.objects} objects each; test size "
          f"{predictor.min_size}/{predictor.max_size}; {torch.get_num_threads()} threads")
    native = Predictor.from_checkpoint(args.checkpoint, device="cpu", min_size=args.size, max_size=args.size)
    results = []
    # The ceiling: every object's 128 px neighbourhood alone, at the model's own scale.
    found = total = 0
    for image, boxes, labels in scenes:
        for (window, local), label in zip(neighbourhoods(image, boxes), labels):
            found += match(predictor([window])[0], local[None], np.array([label]), 0.05)["found"]
            total += 1
    print(f"ceiling: each object's {PATCH} px neighbourhood alone, recall@0.5 (score >= 0.05) = {found / total:.3f}")
    results.append(run(f"whole image at test size {predictor.min_size}/{predictor.max_size}", predictor, scenes))
    results.append(run(f"whole image at {args.size}/{args.size} (native pixels)", native, scenes))
    for size, overlap, whole in ((128, 0.25, False), (128, 0.5, False), (256, 0.25, False), (128, 0.25, True)):
        tiled = TiledPredictor(predictor, TileOptions(size, overlap, whole), batch_size=args.batch_size)
        label = f"tiles {size} px, overlap {overlap}{' + whole image' if whole else ''}"
        results.append(run(label, tiled, scenes, tiled.num_tiles))
    tiled = TiledPredictor(predictor, TileOptions(128, 0.5), batch_size=args.batch_size)
    with mock.patch.object(tiling, "keep_uncut", lambda boxes, *a, **k: torch.ones(len(boxes), dtype=torch.bool)):
        results.append(run("tiles 128 px, overlap 0.5, without dropping cut boxes", tiled, scenes, tiled.num_tiles))
    print("| setting | tiles / image | detections / image | recall@0.5, score >= 0.05 | recall@0.5, score >= 0.5 | "
          "precision, >= 0.5 | duplicates / image, >= 0.5 | s / image |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in results:
        print(f"| {r['name']} | {r['tiles_per_image']:.0f} | {r['dets']:.0f} | {r['recall_005']:.3f} | "
              f"{r['recall_05']:.3f} | "
              f"{r['precision_05']:.3f} | {r['dup_05']:.1f} | {r['s_per_image']:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
