"""PASCAL VOC average precision, reproducing the official devkit (py-faster-rcnn ``voc_eval``) exactly.

Semantics, per class: detections sorted by descending score; each is compared with the ground truth of its image
using the devkit's 1-based inclusive "+1" area arithmetic; the best-overlapping ground truth (over all of them,
matched or not) decides: IoU > threshold (strictly) and not difficult -> true positive if that ground truth is
still unmatched, false positive (duplicate) otherwise; a difficult best match is neither; below threshold is a
false positive. ``npos`` counts non-difficult ground truth. AP is the 11-point interpolated metric (VOC2007) or
the area under the monotone precision envelope (VOC2010+).

Vectorized: because the devkit never re-assigns a detection to its second-best ground truth, "first detection
in score order whose best match is ground truth g" is exactly the set of true positives, computed with one
``np.unique`` instead of a loop over detections.

Conventions: ground truth and detections come in OUR convention (XYXY continuous pixels); the devkit's 1-based
inclusive box is ``(x1 + 1, y1 + 1, x2, y2)`` and is what results files contain.

Differences from the devkit, both deliberate: ties in score are broken by input order (stable sort; the devkit's
quicksort order is unspecified), and a class with no ground truth gets AP NaN (the devkit divides by zero) and is
left out of the mean and reported as ``None`` in JSON.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

IOU_THRESHOLDS_COCO_STYLE = tuple(np.round(np.arange(0.5, 0.951, 0.05), 2).tolist())


def voc_ap(rec: np.ndarray, prec: np.ndarray, use_07_metric: bool = False) -> float:
    """AP from recall / precision arrays (in detection order), as ``voc_ap`` of the devkit."""
    if use_07_metric:
        ap = 0.0
        for t in np.arange(0.0, 1.1, 0.1):
            p = np.max(prec[rec >= t]) if np.any(rec >= t) else 0.0
            ap += p / 11.0
        return float(ap)
    mrec = np.concatenate(([0.0], rec, [1.0]))
    mpre = np.concatenate(([0.0], prec, [0.0]))
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]  # precision envelope
    i = np.where(mrec[1:] != mrec[:-1])[0]
    return float(np.sum((mrec[i + 1] - mrec[i]) * mpre[i + 1]))


def _to_numpy(x: Any, dtype: Any, shape: tuple[int, ...] | None = None) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    arr = np.asarray(x, dtype=dtype)
    return arr.reshape(shape) if shape is not None else arr


def _devkit_iou(det: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """IoU with the devkit's +1 arithmetic.

    Args:
        det: (D, 4) 1-based inclusive boxes.
        gt: (D, G, 4) 1-based inclusive boxes (the ground truth of each detection's image, NaN-padded).
    Returns:
        (D, G) IoU; NaN where ``gt`` is padding.
    """
    ixmin = np.maximum(gt[..., 0], det[:, None, 0])
    iymin = np.maximum(gt[..., 1], det[:, None, 1])
    ixmax = np.minimum(gt[..., 2], det[:, None, 2])
    iymax = np.minimum(gt[..., 3], det[:, None, 3])
    iw = np.maximum(ixmax - ixmin + 1.0, 0.0)
    ih = np.maximum(iymax - iymin + 1.0, 0.0)
    inters = iw * ih
    uni = (
        (det[:, None, 2] - det[:, None, 0] + 1.0) * (det[:, None, 3] - det[:, None, 1] + 1.0)
        + (gt[..., 2] - gt[..., 0] + 1.0) * (gt[..., 3] - gt[..., 1] + 1.0)
        - inters
    )
    return inters / uni


class _ClassMatches:
    """Threshold-independent part of one class's evaluation: each detection's best ground truth.

    The devkit compares a detection with ALL ground truth of its image (matched or not) and only then looks at
    the threshold, so the arg-max and its IoU are computed once and reused for every IoU threshold.
    """

    def __init__(
        self, gt_img: np.ndarray, gt_box: np.ndarray, gt_diff: np.ndarray, det_img: np.ndarray,
        det_score: np.ndarray, det_box: np.ndarray,
    ) -> None:
        # gt_img (G,) image index, gt_box (G, 4) 1-based inclusive, gt_diff (G,); det_* likewise (D,), (D, 4).
        self.npos = int((~gt_diff).sum())
        order = np.argsort(-det_score, kind="stable")  # descending score, ties in input order
        self.det_img = det_img[order]
        d = len(order)
        if d == 0:
            self.gmax, self.jmax, self.ovmax = 1, np.zeros(0, np.int64), np.zeros(0)
            self.difficult = np.zeros(0, bool)
            return
        # Slot of each ground truth within its image: ground truth sorted by image, rank within the run.
        g_order = np.argsort(gt_img, kind="stable")
        gi = gt_img[g_order]
        starts = np.searchsorted(gi, gi, side="left")
        slot = np.arange(len(gi)) - starts
        self.gmax = int(slot.max()) + 1 if len(gi) else 1
        num_images = int(max(det_img.max(initial=-1), gt_img.max(initial=-1))) + 1
        padded = np.full((num_images, self.gmax, 4), np.nan)
        diff = np.zeros((num_images, self.gmax), dtype=bool)
        padded[gi, slot] = gt_box[g_order]
        diff[gi, slot] = gt_diff[g_order]
        iou = _devkit_iou(det_box[order], padded[self.det_img])  # (D, Gmax)
        iou = np.where(np.isnan(iou), -np.inf, iou)  # padding never wins; no ground truth -> ovmax = -inf
        self.jmax = iou.argmax(axis=1)  # first max on ties, as np.argmax in the devkit
        self.ovmax = iou[np.arange(d), self.jmax]
        self.difficult = diff[self.det_img, self.jmax]

    def flags(self, iou_thresh: float) -> tuple[np.ndarray, np.ndarray]:
        """(D,) TP and FP indicators in descending score order at one IoU threshold."""
        d = len(self.det_img)
        tp, fp = np.zeros(d), np.zeros(d)
        hit = self.ovmax > iou_thresh  # strictly greater, as the devkit
        fp[~hit] = 1.0
        candidate = np.nonzero(hit & ~self.difficult)[0]  # a difficult best match is neither TP nor FP
        if len(candidate):
            # The devkit never re-assigns a detection to its second-best ground truth, so the true positives
            # are exactly "the first detection (in score order) whose best match is ground truth g".
            keys = self.det_img[candidate].astype(np.int64) * self.gmax + self.jmax[candidate]
            _, first = np.unique(keys, return_index=True)
            tp[candidate[first]] = 1.0
            dup = np.ones(len(candidate), dtype=bool)
            dup[first] = False
            fp[candidate[dup]] = 1.0
        return tp, fp


def _ap_from_flags(tp: np.ndarray, fp: np.ndarray, npos: int, use_07_metric: bool) -> tuple[float, np.ndarray,
                                                                                          np.ndarray]:
    if npos == 0:
        return float("nan"), np.zeros(0), np.zeros(0)
    ctp, cfp = np.cumsum(tp), np.cumsum(fp)
    rec = ctp / float(npos)
    prec = ctp / np.maximum(ctp + cfp, np.finfo(np.float64).eps)
    return voc_ap(rec, prec, use_07_metric), rec, prec


def to_devkit_boxes(boxes: np.ndarray) -> np.ndarray:
    """Our XYXY continuous pixels -> the devkit's 1-based inclusive pixel box."""
    out = np.asarray(boxes, dtype=np.float64).reshape(-1, 4).copy()
    out[:, :2] += 1.0
    return out


def evaluate_detections(
    ground_truth: Sequence[dict[str, Any]],
    detections: Sequence[dict[str, Any]],
    class_names: Sequence[str],
    *,
    use_07_metric: bool = False,
    iou_thresh: float = 0.5,
    all_thresholds: bool = False,
    return_curves: bool = False,
) -> dict[str, Any]:
    """VOC AP per class and their mean.

    Args:
        ground_truth: per image ``{"boxes" (N, 4) XYXY ours, "labels" (N,) in [0, K), "difficult" (N,) bool}``.
        detections: per image (same order) ``{"boxes" (D, 4), "scores" (D,), "labels" (D,)}``; tensors or numpy.
        class_names: the K class names.
        use_07_metric: 11-point AP (VOC2007 test) instead of the area under the curve.
        iou_thresh: IoU threshold for "mAP" / "per_class".
        all_thresholds: also report "AP" (mean over IoU 0.50:0.95), "AP50" and "AP75" as Detectron2 does.
    Returns:
        ``{"mAP": float, "per_class": {name: AP or None}}`` (+ "AP", "AP50", "AP75"; + "curves" when asked).
    """
    if len(ground_truth) != len(detections):
        raise ValueError(f"{len(ground_truth)} ground-truth images but {len(detections)} detection entries")
    k = len(class_names)
    gts = [
        (
            to_devkit_boxes(_to_numpy(g["boxes"], np.float64, (-1, 4))),
            _to_numpy(g["labels"], np.int64, (-1,)),
            _to_numpy(g.get("difficult", np.zeros(len(g["labels"]))), bool, (-1,)),
        )
        for g in ground_truth
    ]
    det_img, det_box, det_score, det_lab = [], [], [], []
    for i, d in enumerate(detections):
        b = _to_numpy(d["boxes"], np.float64, (-1, 4))
        det_box.append(to_devkit_boxes(b))
        det_score.append(_to_numpy(d["scores"], np.float64, (-1,)))
        det_lab.append(_to_numpy(d["labels"], np.int64, (-1,)))
        det_img.append(np.full(len(b), i, dtype=np.int64))
    all_img = np.concatenate(det_img) if det_img else np.zeros(0, np.int64)
    all_box = np.concatenate(det_box) if det_box else np.zeros((0, 4))
    all_score = np.concatenate(det_score) if det_score else np.zeros(0)
    all_lab = np.concatenate(det_lab) if det_lab else np.zeros(0, np.int64)

    thresholds = sorted({iou_thresh, *(IOU_THRESHOLDS_COCO_STYLE if all_thresholds else ())})
    ap = {t: np.full(k, np.nan) for t in thresholds}
    curves: dict[str, dict[str, list[float]]] = {}
    for c in range(k):
        gt_b = [g[0][g[1] == c] for g in gts]
        gt_d = [g[2][g[1] == c] for g in gts]
        sel = all_lab == c
        for t in thresholds:
            tp, fp, npos = _class_tp_fp(gt_b, gt_d, all_img[sel], all_score[sel], all_box[sel], t)
            ap[t][c], rec, prec = _ap_from_flags(tp, fp, npos, use_07_metric)
            if return_curves and t == iou_thresh:
                curves[class_names[c]] = {"recall": rec.tolist(), "precision": prec.tolist()}
    main = ap[iou_thresh]
    out: dict[str, Any] = {
        "mAP": float(np.nanmean(main)) if np.isfinite(main).any() else float("nan"),
        "per_class": {n: (None if np.isnan(v) else float(v)) for n, v in zip(class_names, main)},
        "metric": "voc07" if use_07_metric else "voc",
        "iou_thresh": iou_thresh,
    }
    if all_thresholds:
        means = [float(np.nanmean(ap[t])) if np.isfinite(ap[t]).any() else float("nan")
                 for t in IOU_THRESHOLDS_COCO_STYLE]
        out["AP"] = float(np.mean(means))
        out["AP50"] = means[0]
        out["AP75"] = means[IOU_THRESHOLDS_COCO_STYLE.index(0.75)]
    if return_curves:
        out["curves"] = curves
    return out


class VOCEvaluator:
    """Collects detections per dataset image and scores them with :func:`evaluate_detections`.

    ``ground_truth[i]`` is the ground truth of dataset index i (original pixels, our convention).
    """

    def __init__(
        self,
        ground_truth: Sequence[dict[str, Any]],
        class_names: Sequence[str],
        *,
        use_07_metric: bool = False,
        image_ids: Sequence[str | int] | None = None,
    ) -> None:
        self.ground_truth = list(ground_truth)
        self.class_names = tuple(class_names)
        self.use_07_metric = use_07_metric
        self.image_ids = list(image_ids) if image_ids is not None else [g.get("image_id", i) for i, g in
                                                                            enumerate(self.ground_truth)]
        self.reset()

    @classmethod
    def from_dataset(cls, dataset: Any, *, use_07_metric: bool) -> VOCEvaluator:
        gt = [dataset.get_ground_truth(i) for i in range(len(dataset))]
        return cls(gt, dataset.class_names, use_07_metric=use_07_metric, image_ids=[g["image_id"] for g in gt])

    def reset(self) -> None:
        self.detections: dict[int, dict[str, np.ndarray]] = {}

    def add(self, target: dict[str, Any], detections: dict[str, Any]) -> None:
        """Detections of dataset item ``target["index"]`` in original-image pixels."""
        self.detections[int(target["index"])] = {
            "boxes": _to_numpy(detections["boxes"], np.float64, (-1, 4)),
            "scores": _to_numpy(detections["scores"], np.float64, (-1,)),
            "labels": _to_numpy(detections["labels"], np.int64, (-1,)),
        }

    def state(self) -> dict[int, dict[str, np.ndarray]]:
        return self.detections

    def merge(self, states: Sequence[dict[int, dict[str, np.ndarray]]]) -> None:
        for s in states:
            self.detections.update(s)

    def _all_detections(self) -> list[dict[str, np.ndarray]]:
        empty = {"boxes": np.zeros((0, 4)), "scores": np.zeros(0), "labels": np.zeros(0, np.int64)}
        return [self.detections.get(i, empty) for i in range(len(self.ground_truth))]

    def evaluate(self, *, return_curves: bool = False) -> dict[str, Any]:
        return evaluate_detections(
            self.ground_truth, self._all_detections(), self.class_names, use_07_metric=self.use_07_metric,
            all_thresholds=True, return_curves=return_curves,
        )

    def write_devkit_results(self, directory: str | Path, prefix: str = "comp4_det_test_") -> list[Path]:
        """``<prefix><class>.txt`` files, lines ``<image_id> <score> <x1> <y1> <x2> <y2>`` (1-based pixels)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        lines: dict[int, list[str]] = {c: [] for c in range(len(self.class_names))}
        for i, d in sorted(self.detections.items()):
            boxes = to_devkit_boxes(d["boxes"])
            for b, s, c in zip(boxes, d["scores"], d["labels"]):
                lines[int(c)].append(f"{self.image_ids[i]} {s:.6f} {b[0]:.2f} {b[1]:.2f} {b[2]:.2f} {b[3]:.2f}\n")
        paths = []
        for c, name in enumerate(self.class_names):
            p = directory / f"{prefix}{name}.txt"
            p.write_text("".join(lines[c]))
            paths.append(p)
        return paths

    def read_devkit_results(self, directory: str | Path, prefix: str = "comp4_det_test_") -> None:
        """Load detections from devkit per-class files (replacing what was added)."""
        directory = Path(directory)
        index_of = {str(iid): i for i, iid in enumerate(self.image_ids)}
        per_image: dict[int, list[tuple[float, float, float, float, float, int]]] = {}
        found = 0
        for c, name in enumerate(self.class_names):
            p = directory / f"{prefix}{name}.txt"
            if not p.is_file():
                continue
            found += 1
            for ln, line in enumerate(p.read_text().splitlines(), 1):
                parts = line.split()
                if not parts:
                    continue
                if len(parts) != 6:
                    raise ValueError(f"{p}:{ln}: expected '<image_id> <score> <x1> <y1> <x2> <y2>', got {line!r}")
                if parts[0] not in index_of:
                    raise ValueError(f"{p}:{ln}: image id {parts[0]!r} is not in the dataset")
                s, x1, y1, x2, y2 = (float(v) for v in parts[1:])
                # 1-based inclusive -> ours
                per_image.setdefault(index_of[parts[0]], []).append((x1 - 1.0, y1 - 1.0, x2, y2, s, c))
        if found == 0:
            raise FileNotFoundError(f"no {prefix}<class>.txt files in {directory}")
        self.reset()
        for i, rows in per_image.items():
            arr = np.asarray(rows, dtype=np.float64)
            self.detections[i] = {"boxes": arr[:, :4], "scores": arr[:, 4], "labels": arr[:, 5].astype(np.int64)}

    def all_detections(self) -> list[dict[str, np.ndarray]]:
        return self._all_detections()
