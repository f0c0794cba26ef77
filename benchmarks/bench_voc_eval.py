#!/usr/bin/env python
"""Benchmark (c): our vectorized VOC AP vs a literal per-detection loop (py-faster-rcnn ``voc_eval``).

    python benchmarks/bench_voc_eval.py                     # VOC07-test sized: 4952 images, 100 detections each
    python benchmarks/bench_voc_eval.py --images 500 --dets-per-image 50

Both score the same random results set (ground truth 1-5 boxes per image, 10% difficult; detections are jittered
ground-truth boxes with half the labels randomized) at IoU 0.5 with the VOC07 11-point metric. The loop version
is written the way py-faster-rcnn's ``voc_eval`` is (per class: sort by confidence, then for each detection
compute its overlaps with that image's ground truth and mark TP / FP), on devkit 1-based boxes. Prints both times,
the ratio, and the largest per-class AP difference (it must be ~0: the script fails otherwise).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from detection.evaluation.voc import evaluate_detections  # noqa: E402
from tests.detection.evaluation.voc_reference import reference_voc_eval_all  # noqa: E402


def make_problem(num_images: int, num_classes: int, dets_per_image: int, seed: int) -> tuple[list[dict], list[dict]]:
    """Random ground truth and detections in our box convention (XYXY continuous pixels)."""
    rng = np.random.default_rng(seed)
    gt, det = [], []
    for _ in range(num_images):
        n = int(rng.integers(1, 6))
        xy = rng.uniform(0, 400, (n, 2))
        boxes = np.concatenate([xy, xy + rng.uniform(10, 200, (n, 2))], axis=1)
        labels = rng.integers(0, num_classes, n)
        gt.append({"boxes": boxes, "labels": labels, "difficult": rng.random(n) < 0.1})
        j = rng.integers(0, n, dets_per_image)
        det_labels = np.where(rng.random(dets_per_image) < 0.5, labels[j],
                              rng.integers(0, num_classes, dets_per_image))
        det.append({"boxes": boxes[j] + rng.normal(0, 10, (dets_per_image, 4)),
                    "scores": rng.random(dets_per_image), "labels": det_labels})
    return gt, det


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=4952, help="VOC2007 test has 4952 images")
    p.add_argument("--classes", type=int, default=20)
    p.add_argument("--dets-per-image", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    gt, det = make_problem(args.images, args.classes, args.dets_per_image, args.seed)
    names = [f"c{i}" for i in range(args.classes)]
    print(f"VOC eval benchmark: {args.images} images, {args.images * args.dets_per_image} detections, "
          f"{sum(len(g['labels']) for g in gt)} ground-truth boxes, {args.classes} classes, IoU 0.5, VOC07 metric")
    t0 = time.perf_counter()
    ours = evaluate_detections(gt, det, names, use_07_metric=True)
    t_ours = time.perf_counter() - t0
    t0 = time.perf_counter()
    loop = reference_voc_eval_all(gt, det, args.classes, 0.5, use_07_metric=True)
    t_loop = time.perf_counter() - t0
    ours_ap = np.array([np.nan if v is None else v for v in ours["per_class"].values()])
    diff = float(np.nanmax(np.abs(ours_ap - loop)))
    print(f"ours (vectorized)        : {t_ours:8.3f} s   mAP {ours['mAP']:.6f}")
    print(f"per-detection loop       : {t_loop:8.3f} s   mAP {np.nanmean(loop):.6f}")
    print(f"speed-up                 : {t_loop / t_ours:8.1f}x")
    print(f"max per-class |AP diff|  : {diff:.2e}")
    if not diff < 1e-9:
        print("FAIL: the two implementations disagree")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
