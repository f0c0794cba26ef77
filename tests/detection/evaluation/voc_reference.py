"""The literal py-faster-rcnn ``voc_eval`` (one Python iteration per detection), kept as an independent oracle.

It is deliberately *not* what the evaluator runs (see :mod:`detection.evaluation.voc` for the vectorized
version), and not part of the package: tests/detection/evaluation/test_voc.py checks the evaluator against it, and
``benchmarks/bench_voc_eval.py`` times the two side by side.
Inputs use our box convention (XYXY continuous pixels) and are converted to devkit 1-based boxes first.
"""

from __future__ import annotations

import numpy as np

from detection.evaluation.voc import to_devkit_boxes


def reference_voc_eval(
    gt: list[dict], det: list[dict], cls: int, ovthresh: float = 0.5, use_07_metric: bool = False
) -> float:
    """py-faster-rcnn ``voc_eval`` for one class, literally (per-detection loop), on devkit 1-based boxes."""
    class_recs = {}
    npos = 0
    for i, g in enumerate(gt):
        m = np.asarray(g["labels"]) == cls
        bbox = to_devkit_boxes(np.asarray(g["boxes"])[m])
        difficult = np.asarray(g["difficult"])[m].astype(bool)
        npos = npos + sum(~difficult)
        class_recs[i] = {"bbox": bbox, "difficult": difficult, "det": [False] * len(bbox)}
    image_ids, confidence, bb = [], [], []
    for i, d in enumerate(det):
        m = np.asarray(d["labels"]) == cls
        image_ids += [i] * int(m.sum())
        confidence += list(np.asarray(d["scores"])[m])
        bb += list(to_devkit_boxes(np.asarray(d["boxes"])[m]))
    confidence = np.array(confidence)
    bb = np.array(bb).reshape(-1, 4)
    sorted_ind = np.argsort(-confidence, kind="stable")
    bb = bb[sorted_ind, :]
    image_ids = [image_ids[x] for x in sorted_ind]
    nd = len(image_ids)
    tp = np.zeros(nd)
    fp = np.zeros(nd)
    for d in range(nd):
        r = class_recs[image_ids[d]]
        b = bb[d, :].astype(float)
        ovmax = -np.inf
        bbgt = r["bbox"].astype(float)
        if bbgt.size > 0:
            ixmin = np.maximum(bbgt[:, 0], b[0])
            iymin = np.maximum(bbgt[:, 1], b[1])
            ixmax = np.minimum(bbgt[:, 2], b[2])
            iymax = np.minimum(bbgt[:, 3], b[3])
            iw = np.maximum(ixmax - ixmin + 1.0, 0.0)
            ih = np.maximum(iymax - iymin + 1.0, 0.0)
            inters = iw * ih
            uni = ((b[2] - b[0] + 1.0) * (b[3] - b[1] + 1.0)
                   + (bbgt[:, 2] - bbgt[:, 0] + 1.0) * (bbgt[:, 3] - bbgt[:, 1] + 1.0) - inters)
            overlaps = inters / uni
            ovmax = np.max(overlaps)
            jmax = np.argmax(overlaps)
        if ovmax > ovthresh:
            if not r["difficult"][jmax]:
                if not r["det"][jmax]:
                    tp[d] = 1.0
                    r["det"][jmax] = 1
                else:
                    fp[d] = 1.0
        else:
            fp[d] = 1.0
    if npos == 0:
        return float("nan")  # the devkit's recall is 0/0 here; the evaluator reports no AP for such a class
    fp = np.cumsum(fp)
    tp = np.cumsum(tp)
    rec = tp / float(npos)
    prec = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
    if use_07_metric:
        ap = 0.0
        for t in np.arange(0.0, 1.1, 0.1):
            p = 0 if np.sum(rec >= t) == 0 else np.max(prec[rec >= t])
            ap = ap + p / 11.0
        return ap
    mrec = np.concatenate(([0.0], rec, [1.0]))
    mpre = np.concatenate(([0.0], prec, [0.0]))
    for i in range(mpre.size - 1, 0, -1):
        mpre[i - 1] = np.maximum(mpre[i - 1], mpre[i])
    i = np.where(mrec[1:] != mrec[:-1])[0]
    return float(np.sum((mrec[i + 1] - mrec[i]) * mpre[i + 1]))


def reference_voc_eval_all(
    gt: list[dict], det: list[dict], num_classes: int, ovthresh: float = 0.5, use_07_metric: bool = False
) -> np.ndarray:
    """Per-class AP ``(num_classes,)``; NaN for a class without non-difficult ground truth (as the evaluator)."""
    return np.array([reference_voc_eval(gt, det, c, ovthresh, use_07_metric) for c in range(num_classes)])
