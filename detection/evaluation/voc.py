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

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from resbackbone.errors import DataError, DataNotFoundError

# Detectron2 PascalVOCDetectionEvaluator's "AP": the mean over these IoU thresholds.
IOU_THRESHOLDS_COCO_STYLE = tuple(np.round(np.arange(0.5, 0.951, 0.05), 2).tolist())
# py-faster-rcnn writes "comp4" (external data allowed) results.
DEVKIT_PREFIX = "comp4_det_test_"


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


def _ap_from_flags(
    tp: np.ndarray, fp: np.ndarray, npos: int, use_07_metric: bool
) -> tuple[float, np.ndarray, np.ndarray]:
    """(AP, recall, precision); AP is NaN when the class has no non-difficult ground truth (npos = 0)."""
    if npos == 0:
        return float("nan"), np.zeros(0), np.zeros(0)
    ctp, cfp = np.cumsum(tp), np.cumsum(fp)
    rec = ctp / float(npos)
    # The devkit's guard against 0/0 when the first detections are all difficult matches.
    prec = ctp / np.maximum(ctp + cfp, np.finfo(np.float64).eps)
    return voc_ap(rec, prec, use_07_metric), rec, prec


def to_devkit_boxes(boxes: Any) -> np.ndarray:
    """Our (N, 4) XYXY continuous pixels -> the devkit's 1-based inclusive pixel boxes (x1 + 1, y1 + 1, x2, y2).

    Equivalence: a continuous box [x1, x2) covers the 1-based pixels x1 + 1 .. x2, whose devkit width is
    x2 - (x1 + 1) + 1 = x2 - x1; so devkit IoU of converted boxes is the plain continuous IoU.
    """
    out = _to_numpy(boxes, np.float64, (-1, 4)).copy()
    out[:, :2] += 1.0
    return out


def _flatten(per_image: Sequence[dict[str, Any]], *, with_scores: bool) -> dict[str, np.ndarray]:
    """Per-image dicts -> flat arrays with an image index column (boxes converted to the devkit's)."""
    img, box, lab, extra = [], [], [], []
    for i, d in enumerate(per_image):
        b = to_devkit_boxes(d["boxes"])
        labels = _to_numpy(d["labels"], np.int64, (-1,))
        if len(labels) != len(b):
            raise ValueError(f"image {i}: {len(b)} boxes but {len(labels)} labels")
        if with_scores:
            e = _to_numpy(d["scores"], np.float64, (-1,))
        else:
            e = _to_numpy(d["difficult"], bool, (-1,)) if d.get("difficult") is not None else np.zeros(len(b), bool)
        if len(e) != len(b):
            raise ValueError(f"image {i}: {len(b)} boxes but {len(e)} {'scores' if with_scores else 'difficult'}")
        img.append(np.full(len(b), i, dtype=np.int64))
        box.append(b)
        lab.append(labels)
        extra.append(e)
    key = "scores" if with_scores else "difficult"
    if not img:
        return {"img": np.zeros(0, np.int64), "boxes": np.zeros((0, 4)), "labels": np.zeros(0, np.int64),
                key: np.zeros(0, np.float64 if with_scores else bool)}
    return {"img": np.concatenate(img), "boxes": np.concatenate(box), "labels": np.concatenate(lab),
            key: np.concatenate(extra)}


def _nanmean_or_nan(values: np.ndarray) -> float:
    return float(np.nanmean(values)) if np.isfinite(values).any() else float("nan")


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
    """VOC AP per class and their mean, exactly as the devkit computes them.

    Args:
        ground_truth: per image ``{"boxes" (N, 4) XYXY ours, "labels" (N,) in [0, K), "difficult" (N,) bool}``.
        detections: per image (same order) ``{"boxes" (D, 4) XYXY ours, "scores" (D,), "labels" (D,)}``;
            tensors or numpy arrays.
        class_names: the K class names.
        use_07_metric: 11-point AP (VOC2007 test) instead of the area under the precision envelope.
        iou_thresh: IoU threshold for "mAP" / "per_class" (a detection needs IoU > iou_thresh).
        all_thresholds: also report "AP" (mean over IoU 0.50:0.95 step 0.05), "AP50" and "AP75" as Detectron2's
            PascalVOCDetectionEvaluator does (in percent there; fractions here).
        return_curves: add "curves": {name: {"recall": [...], "precision": [...]}} at ``iou_thresh``.
    Returns:
        ``{"mAP", "per_class": {name: AP or None}, "metric", "iou_thresh", "num_gt": {name: npos}}`` with AP as
        fractions in [0, 1]. A class without non-difficult ground truth has no defined AP (the devkit's 0/0
        recall): it is ``None`` in "per_class" and left out of every mean. A class with ground truth but no
        detections has AP 0.
    """
    if len(ground_truth) != len(detections):
        raise ValueError(f"{len(ground_truth)} ground-truth images but {len(detections)} detection entries")
    k = len(class_names)
    gt = _flatten(ground_truth, with_scores=False)
    det = _flatten(detections, with_scores=True)
    for what, labels in (("ground-truth", gt["labels"]), ("detection", det["labels"])):
        if labels.size and (labels.min() < 0 or labels.max() >= k):
            raise DataError(f"{what} label {int(labels.max() if labels.max() >= k else labels.min())} outside "
                             f"[0, {k}) for {k} classes")
    thresholds = sorted({float(iou_thresh), *(IOU_THRESHOLDS_COCO_STYLE if all_thresholds else ())})
    ap = {t: np.full(k, np.nan) for t in thresholds}
    curves: dict[str, dict[str, list[float]]] = {}
    num_gt: dict[str, int] = {}
    # Group once by class (a stable sort keeps the input order inside each class, for tie-breaking).
    g_order = np.argsort(gt["labels"], kind="stable")
    d_order = np.argsort(det["labels"], kind="stable")
    g_bounds = np.searchsorted(gt["labels"][g_order], np.arange(k + 1))
    d_bounds = np.searchsorted(det["labels"][d_order], np.arange(k + 1))
    for c in range(k):
        gs = g_order[g_bounds[c]:g_bounds[c + 1]]
        ds = d_order[d_bounds[c]:d_bounds[c + 1]]
        m = _ClassMatches(gt["img"][gs], gt["boxes"][gs], gt["difficult"][gs], det["img"][ds], det["scores"][ds],
                          det["boxes"][ds])
        num_gt[class_names[c]] = m.npos
        for t in thresholds:
            tp, fp = m.flags(t)
            ap[t][c], rec, prec = _ap_from_flags(tp, fp, m.npos, use_07_metric)
            if return_curves and t == float(iou_thresh):
                curves[class_names[c]] = {"recall": rec.tolist(), "precision": prec.tolist()}
    main = ap[float(iou_thresh)]
    out: dict[str, Any] = {
        "mAP": _nanmean_or_nan(main),
        "per_class": {n: (None if np.isnan(v) else float(v)) for n, v in zip(class_names, main)},
        "metric": "voc07" if use_07_metric else "voc",
        "iou_thresh": float(iou_thresh),
        "num_gt": num_gt,
    }
    if all_thresholds:
        means = [_nanmean_or_nan(ap[t]) for t in IOU_THRESHOLDS_COCO_STYLE]
        out["AP"] = float(np.mean(means))
        out["AP50"] = means[IOU_THRESHOLDS_COCO_STYLE.index(0.5)]
        out["AP75"] = means[IOU_THRESHOLDS_COCO_STYLE.index(0.75)]
    if return_curves:
        out["curves"] = curves
    return out


def _empty_detections() -> dict[str, np.ndarray]:
    return {"boxes": np.zeros((0, 4)), "scores": np.zeros(0), "labels": np.zeros(0, np.int64)}


def write_devkit_results(
    directory: str | Path,
    detections: Sequence[dict[str, Any]],
    image_ids: Sequence[str | int],
    class_names: Sequence[str],
    prefix: str = DEVKIT_PREFIX,
) -> list[Path]:
    """Write ``<prefix><class>.txt`` per class as py-faster-rcnn does: ``<image_id> <score:.3f> <x1> <y1> <x2>
    <y2>`` with 1-based inclusive pixel coordinates to 1 decimal. Returns the written paths (one per class)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    lines: list[list[str]] = [[] for _ in class_names]
    for iid, d in zip(image_ids, detections):
        boxes = to_devkit_boxes(d["boxes"])
        scores = _to_numpy(d["scores"], np.float64, (-1,))
        labels = _to_numpy(d["labels"], np.int64, (-1,))
        for b, s, c in zip(boxes, scores, labels):
            lines[int(c)].append(f"{iid} {s:.3f} {b[0]:.1f} {b[1]:.1f} {b[2]:.1f} {b[3]:.1f}\n")
    paths = []
    for c, name in enumerate(class_names):
        p = directory / f"{prefix}{name}.txt"
        p.write_text("".join(lines[c]))
        paths.append(p)
    return paths


def read_devkit_results(
    directory: str | Path,
    class_names: Sequence[str],
    image_ids: Sequence[str | int],
    prefix: str = DEVKIT_PREFIX,
) -> list[dict[str, np.ndarray]]:
    """Read devkit per-class results files -> per-image detections (in ``image_ids`` order, our box convention).

    A missing class file means "no detections of that class"; a directory with none of them is an error, as is
    a malformed line or an image id that is not in ``image_ids`` (both name the file and line).
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise DataNotFoundError(f"devkit results directory not found: {directory}")
    index_of = {str(iid): i for i, iid in enumerate(image_ids)}
    rows: dict[int, list[tuple[float, float, float, float, float, int]]] = {}
    found = 0
    for c, name in enumerate(class_names):
        p = directory / f"{prefix}{name}.txt"
        if not p.is_file():
            continue
        found += 1
        for ln, line in enumerate(p.read_text().splitlines(), 1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) != 6:
                raise DataError(f"{p}:{ln}: expected '<image_id> <score> <x1> <y1> <x2> <y2>', got {line!r}")
            if parts[0] not in index_of:
                raise DataError(f"{p}:{ln}: image id {parts[0]!r} is not in the evaluated image set")
            try:
                s, x1, y1, x2, y2 = (float(v) for v in parts[1:])
            except ValueError as e:
                raise DataError(f"{p}:{ln}: non-numeric value in {line!r}") from e
            if not all(math.isfinite(v) for v in (s, x1, y1, x2, y2)):
                raise DataError(f"{p}:{ln}: a score or coordinate is not finite (nan / inf change AP): {line!r}")
            rows.setdefault(index_of[parts[0]], []).append((x1 - 1.0, y1 - 1.0, x2, y2, s, c))  # 1-based -> ours
    if found == 0:
        raise DataNotFoundError(f"no {prefix}<class>.txt files in {directory}")
    out = [_empty_detections() for _ in image_ids]
    for i, r in rows.items():
        arr = np.asarray(r, dtype=np.float64)
        out[i] = {"boxes": arr[:, :4], "scores": arr[:, 4], "labels": arr[:, 5].astype(np.int64)}
    return out


class VOCEvaluator:
    """Collects detections per dataset image and scores them with :func:`evaluate_detections`.

    Args:
        dataset_or_gt: a dataset with ``get_ground_truth(i)`` / ``__len__``, or a sequence of ground-truth dicts
            (``{"image_id", "boxes" (N, 4) original pixels ours, "labels", "difficult"}``), one per image index.
        class_names: the K class names.
        use_07_metric: 11-point AP (VOC2007 test).
    """

    def __init__(self, dataset_or_gt: Any, class_names: Sequence[str], *, use_07_metric: bool = False) -> None:
        if hasattr(dataset_or_gt, "get_ground_truth"):
            gt = [dataset_or_gt.get_ground_truth(i) for i in range(len(dataset_or_gt))]
        else:
            gt = list(dataset_or_gt)
        self.ground_truth = gt
        self.class_names = tuple(class_names)
        self.use_07_metric = use_07_metric
        self.image_ids: list[str | int] = [g.get("image_id", i) for i, g in enumerate(gt)]
        self.reset()

    @classmethod
    def from_dataset(cls, dataset: Any, *, use_07_metric: bool) -> VOCEvaluator:
        return cls(dataset, dataset.class_names, use_07_metric=use_07_metric)

    def reset(self) -> None:
        self.detections: dict[int, dict[str, np.ndarray]] = {}

    def add(self, target: dict[str, Any], detections: dict[str, Any]) -> None:
        """Detections ``{"boxes" (D, 4) original pixels, "scores", "labels"}`` of dataset item ``target["index"]``."""
        i = int(target["index"])
        if not 0 <= i < len(self.ground_truth):
            raise IndexError(f"image index {i} outside the {len(self.ground_truth)} evaluated images")
        self.detections[i] = {
            "boxes": _to_numpy(detections["boxes"], np.float64, (-1, 4)),
            "scores": _to_numpy(detections["scores"], np.float64, (-1,)),
            "labels": _to_numpy(detections["labels"], np.int64, (-1,)),
        }

    def state(self) -> dict[int, dict[str, np.ndarray]]:
        """What a process collected (picklable), for gathering in a distributed run."""
        return self.detections

    def merge(self, states: Sequence[dict[int, dict[str, np.ndarray]]]) -> None:
        """Union of gathered states; an image seen twice (padded shards) keeps one copy."""
        for s in states:
            self.detections.update(s)

    def all_detections(self) -> list[dict[str, np.ndarray]]:
        """Per image index (images never added count as 'no detections')."""
        return [self.detections.get(i, _empty_detections()) for i in range(len(self.ground_truth))]

    def evaluate(self, *, return_curves: bool = False) -> dict[str, Any]:
        out = evaluate_detections(self.ground_truth, self.all_detections(), self.class_names,
                                  use_07_metric=self.use_07_metric, all_thresholds=True, return_curves=return_curves)
        out["num_images_with_detections"] = len(self.detections)
        return out

    def pr_curves(self) -> dict[str, dict[str, list[float]]]:
        """{class name: {"recall": [...], "precision": [...]}} at IoU 0.5 (for :func:`detection.visualize`)."""
        return evaluate_detections(self.ground_truth, self.all_detections(), self.class_names,
                                   use_07_metric=self.use_07_metric, return_curves=True)["curves"]

    def write_devkit_results(self, directory: str | Path, prefix: str = DEVKIT_PREFIX) -> list[Path]:
        return write_devkit_results(directory, self.all_detections(), self.image_ids, self.class_names, prefix)

    def read_devkit_results(self, directory: str | Path, prefix: str = DEVKIT_PREFIX) -> None:
        """Replace the collected detections by those in devkit results files."""
        dets = read_devkit_results(directory, self.class_names, self.image_ids, prefix)
        self.reset()
        self.detections = {i: d for i, d in enumerate(dets) if len(d["scores"])}
