"""An evaluation report for any detection dataset: per-class AP, precision and recall at a score threshold, a
confusion matrix with background, and PR curves; written as JSON, a text table and two PNGs.

Shape shorthand: K classes, N images, D detections (of one image, or of one class over the dataset), G ground
truth boxes of one image.

Two matchings, each the usual one for what it measures:

* Per-class numbers (AP, TP, FP, FN, precision, recall) use the VOC devkit's same-class matching, through the code
  of :mod:`detection.evaluation.voc` (not a copy): AP is exactly its "voc" metric (area under the precision
  envelope) at the IoU threshold, and precision / recall at the score threshold is a point on the class's PR
  curve. A detection needs IoU > threshold (strictly, as the devkit) with the best-overlapping ground truth of its
  class; a duplicate on an already matched box is a false positive; a detection whose best match is difficult is
  neither (counted as "ignored"), and difficult ground truth never counts as missed.
* The confusion matrix matches across classes, so that class confusions show up off the diagonal (see
  :func:`confusion_matrix` for the rule). Its diagonal can therefore differ slightly from the TP column (a
  detection with the wrong class that covers a box better than the right-class one takes that box here).

Crowd regions (COCO ``iscrowd``) come as difficult boxes from ``DetectionDataset.get_ground_truth`` and are
treated as such: a detection on one is neither right nor wrong. Unlike pycocotools (intersection over the
detection's area for crowd, every area range, 101 recall points) the overlap is plain IoU; pycocotools' COCO
numbers stay the reference for COCO and are reported next to this.

Boxes are in OUR convention (XYXY continuous pixels of the original image), labels in [0, K).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from resbackbone.errors import DataError

from ..visualize import save_figure
from .coco import COCOEvaluator, load_results_json
from .voc import VOCEvaluator, _ap_from_flags, _ClassMatches, _devkit_iou, _flatten

BACKGROUND = "background"
CORNER = "gt \\ pred"  # the confusion table's top-left header
# report.json keeps at most this many points per PR curve (evenly spaced in detection order, the last one always
# kept): a COCO-sized run has ~10^5 detections per class, and AP is stored exactly anyway.
MAX_CURVE_POINTS = 1000
REPORT_FILES = ("report.json", "report.txt", "confusion_matrix.png", "pr_curves.png")


@dataclass
class DetectionReport:
    """What :func:`build_report` measured. Counts are at ``score >= score_thresh``; AP and curves use every
    detection. Arrays are (K,) in class order unless noted."""

    class_names: tuple[str, ...]
    iou_thresh: float  # a match needs IoU > iou_thresh
    score_thresh: float  # detections scoring >= score_thresh are counted
    num_images: int
    ap: np.ndarray  # float64, the "voc" area AP; NaN for a class without non-difficult ground truth
    num_gt: np.ndarray  # int64, non-difficult ground truth
    num_dets: np.ndarray  # int64, detections predicted as the class with score >= score_thresh
    tp: np.ndarray  # int64, same-class matches (devkit rule) among them
    fp: np.ndarray  # int64, unmatched detections and duplicates among them
    ignored: np.ndarray  # int64, detections whose best match is difficult (neither TP nor FP)
    fn: np.ndarray  # int64, num_gt - tp
    confusion: np.ndarray  # (K + 1, K + 1) int64: rows ground truth + background, columns predicted + missed
    # name -> {"recall", "precision", "scores"}: (D,) float64 in descending score order (empty without ground truth)
    curves: dict[str, dict[str, np.ndarray]]

    @property
    def mAP(self) -> float:  # noqa: N802 - the field's name everywhere in the project
        """Mean AP over classes with ground truth (NaN if none has any)."""
        return float(np.nanmean(self.ap)) if np.isfinite(self.ap).any() else float("nan")

    @property
    def precision(self) -> np.ndarray:
        """(K,) TP / (TP + FP) at the score threshold; NaN for a class without counted detections."""
        return _ratio(self.tp, self.tp + self.fp)

    @property
    def recall(self) -> np.ndarray:
        """(K,) TP / non-difficult ground truth at the score threshold; NaN for a class without ground truth."""
        return _ratio(self.tp, self.num_gt)

    def totals(self) -> dict[str, Any]:
        """Counts summed over classes, with micro-averaged precision and recall."""
        tp, fp, gt = int(self.tp.sum()), int(self.fp.sum()), int(self.num_gt.sum())
        return {"num_gt": gt, "num_dets": int(self.num_dets.sum()), "TP": tp, "FP": fp, "FN": int(self.fn.sum()),
                "ignored": int(self.ignored.sum()), "precision": float(_ratio(np.array(tp), np.array(tp + fp))),
                "recall": float(_ratio(np.array(tp), np.array(gt)))}

    def to_dict(self, max_curve_points: int = MAX_CURVE_POINTS) -> dict[str, Any]:
        """JSON-ready: NaN becomes None; curves are thinned to ``max_curve_points`` points per class."""
        per_class = {}
        prec, rec = self.precision, self.recall
        for c, name in enumerate(self.class_names):
            per_class[name] = {"AP": _none_if_nan(self.ap[c]), "num_gt": int(self.num_gt[c]),
                               "num_dets": int(self.num_dets[c]), "TP": int(self.tp[c]), "FP": int(self.fp[c]),
                               "FN": int(self.fn[c]), "ignored": int(self.ignored[c]),
                               "precision": _none_if_nan(prec[c]), "recall": _none_if_nan(rec[c])}
        curves = {}
        for name, cv in self.curves.items():
            n = len(cv["recall"])
            keep = (np.unique(np.linspace(0, n - 1, max_curve_points).round().astype(np.int64))
                    if n > max_curve_points else np.arange(n))
            curves[name] = {k: v[keep].tolist() for k, v in cv.items()}
        return {
            "metric": "voc",
            "iou_thresh": self.iou_thresh,
            "score_thresh": self.score_thresh,
            "num_images": self.num_images,
            "mAP": _none_if_nan(self.mAP),
            "class_names": list(self.class_names),
            "per_class": per_class,
            "total": {k: _none_if_nan(v) for k, v in self.totals().items()},
            "confusion_matrix": {"rows": "ground truth", "columns": "predicted",
                                 "labels": [*self.class_names, BACKGROUND], "matrix": self.confusion.tolist()},
            "curves": curves,
        }

    def format_table(self) -> str:
        """The per-class table (percentages) and the confusion matrix with class-name headers, for printing."""
        names = [*self.class_names, "all"]
        w = max(len(n) for n in [*names, BACKGROUND, CORNER])
        prec, rec, tot = self.precision, self.recall, self.totals()
        lines = [f"at score >= {self.score_thresh:g}, IoU > {self.iou_thresh:g} (same-class matching, as the VOC "
                 f"devkit; AP over all detections)",
                 f"{'class':<{w}} {'gt':>6} {'dets':>6} {'TP':>6} {'FP':>6} {'FN':>6} {'ignored':>7} "
                 f"{'prec %':>7} {'rec %':>7} {'AP %':>7}"]
        rows = [(n, self.num_gt[c], self.num_dets[c], self.tp[c], self.fp[c], self.fn[c], self.ignored[c], prec[c],
                 rec[c], self.ap[c]) for c, n in enumerate(self.class_names)]
        rows.append(("all", tot["num_gt"], tot["num_dets"], tot["TP"], tot["FP"], tot["FN"], tot["ignored"],
                     tot["precision"], tot["recall"], self.mAP))
        for n, g, d, tp, fp, fn, ig, p, r, ap in rows:
            lines.append(f"{n:<{w}} {g:>6d} {d:>6d} {tp:>6d} {fp:>6d} {fn:>6d} {ig:>7d} {_pct(p):>7} {_pct(r):>7} "
                         f"{_pct(ap):>7}")
        lines.append("")
        lines.append(f"confusion matrix (rows: ground truth, columns: predicted; {BACKGROUND} row: detections "
                     f"matching no ground truth, {BACKGROUND} column: ground truth no detection matched)")
        k = len(self.class_names)
        # A class with no counted box or detection is an all-zero row and column: printing it only widens the table
        # (20 or 80 classes on a small subset); report.json and the PNG keep the full matrix.
        used = [c for c in range(k) if self.confusion[c, :].any() or self.confusion[:, c].any()]
        if len(used) < k:
            lines.append(f"({k - len(used)} classes with an all-zero row and column left out)")
        idx = [*used, k]
        labels = [*(self.class_names[c] for c in used), BACKGROUND]
        cw = [max(len(n), 5) for n in labels]
        lines.append(f"{CORNER:<{w}} " + " ".join(f"{n:>{cw[j]}}" for j, n in enumerate(labels)))
        for i, n in zip(idx, labels):
            cells = ["-" if i == k and j == k else str(int(self.confusion[i, j])) for j in idx]
            lines.append(f"{n:<{w}} " + " ".join(f"{v:>{cw[j]}}" for j, v in enumerate(cells)))
        return "\n".join(lines)


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    num, den = np.asarray(num, np.float64), np.asarray(den, np.float64)
    return np.divide(num, den, out=np.full(num.shape, np.nan), where=den > 0)


def _none_if_nan(v: Any) -> Any:
    """JSON has no NaN: an undefined ratio is null. numpy scalars become Python numbers."""
    if isinstance(v, float | np.floating):
        return None if math.isnan(v) else float(v)
    return v


def _pct(v: float) -> str:
    return "n/a" if math.isnan(v) else f"{100 * v:.2f}"


def _check_labels(what: str, labels: np.ndarray, k: int) -> None:
    if labels.size and (labels.min() < 0 or labels.max() >= k):
        bad = int(labels.max() if labels.max() >= k else labels.min())
        raise DataError(f"{what} label {bad} outside [0, {k}) for {k} classes")


def confusion_matrix(
    ground_truth: Sequence[Mapping[str, Any]],
    detections: Sequence[Mapping[str, Any]],
    num_classes: int,
    *,
    iou_thresh: float = 0.5,
    score_thresh: float = 0.5,
) -> np.ndarray:
    """(K + 1, K + 1) counts: row = ground-truth class, column = predicted class; row K ("background") holds
    detections that match no ground truth (false positives on background, duplicates, boxes too poorly placed),
    column K ("missed") holds ground truth that no detection matched; cell (K, K) is always 0.

    Rule, per image: only detections scoring >= ``score_thresh``, taken greedily by descending score (ties in
    input order); each matches the still-unmatched, non-difficult ground truth box of highest IoU among those
    with IoU > ``iou_thresh``, WHATEVER ITS CLASS (so a right box with the wrong class lands off the diagonal).
    Difficult boxes follow VOC (and pycocotools' crowd handling): a detection with no such candidate but IoU >
    ``iou_thresh`` with a difficult box is ignored (counted nowhere), and an unmatched difficult box is not
    missed. IoU uses the devkit's arithmetic on converted boxes, as the per-class numbers do.

    Args:
        ground_truth: per image ``{"boxes" (G, 4) XYXY, "labels" (G,) in [0, K), "difficult" (G,) bool}``.
        detections: per image (same order) ``{"boxes" (D, 4) XYXY, "scores" (D,), "labels" (D,) in [0, K)}``.
        num_classes: K.
    """
    if len(ground_truth) != len(detections):
        raise ValueError(f"{len(ground_truth)} ground-truth images but {len(detections)} detection entries")
    k = num_classes
    gt = _flatten(ground_truth, with_scores=False)
    det = _flatten(detections, with_scores=True)
    _check_labels("ground-truth", gt["labels"], k)
    _check_labels("detection", det["labels"], k)
    cm = np.zeros((k + 1, k + 1), np.int64)
    keep = det["scores"] >= score_thresh
    d_img, d_box, d_lab, d_score = det["img"][keep], det["boxes"][keep], det["labels"][keep], det["scores"][keep]
    d_order = np.lexsort((-d_score, d_img))  # by image, then descending score; lexsort is stable (input order)
    g_order = np.argsort(gt["img"], kind="stable")
    n = len(ground_truth)
    d_bounds = np.searchsorted(d_img[d_order], np.arange(n + 1))
    g_bounds = np.searchsorted(gt["img"][g_order], np.arange(n + 1))
    for i in range(n):
        ds = d_order[d_bounds[i]:d_bounds[i + 1]]
        gs = g_order[g_bounds[i]:g_bounds[i + 1]]
        g_lab, g_diff = gt["labels"][gs], gt["difficult"][gs]
        matched = np.zeros(len(gs), dtype=bool)
        if len(ds) and len(gs):
            iou = _devkit_iou(d_box[ds], gt["boxes"][gs][None])  # (D, 4) vs (1, G, 4) -> (D, G)
        else:
            iou = np.zeros((len(ds), len(gs)))
        above = iou > iou_thresh  # strictly, as the devkit
        # Sequential on purpose: each match removes a box for the lower-scoring detections of the image.
        for r, p in enumerate(d_lab[ds]):
            cand = above[r] & ~g_diff & ~matched
            if cand.any():
                j = int(np.argmax(np.where(cand, iou[r], -np.inf)))
                matched[j] = True
                cm[g_lab[j], p] += 1
            elif not (above[r] & g_diff).any():
                cm[k, p] += 1
        missed = ~matched & ~g_diff
        np.add.at(cm, (g_lab[missed], k), 1)
    return cm


def build_report(
    ground_truth: Sequence[Mapping[str, Any]],
    detections: Sequence[Mapping[str, Any]],
    class_names: Sequence[str],
    *,
    iou_thresh: float = 0.5,
    score_thresh: float = 0.5,
) -> DetectionReport:
    """Per-class AP / counts / precision / recall, the confusion matrix and PR curves (see the module docstring).

    Args:
        ground_truth: per image ``{"boxes" (G, 4) XYXY original pixels, "labels" (G,) int in [0, K), "difficult"
            (G,) bool}`` (``DetectionDataset.get_ground_truth``); tensors or numpy arrays.
        detections: per image, same order, ``{"boxes" (D, 4) XYXY original pixels, "scores" (D,), "labels" (D,)
            in [0, K)}``.
        class_names: the K class names.
        iou_thresh: a detection matches a box with IoU > iou_thresh.
        score_thresh: detections scoring >= score_thresh are counted (AP and curves use all of them).
    """
    if len(ground_truth) != len(detections):
        raise ValueError(f"{len(ground_truth)} ground-truth images but {len(detections)} detection entries")
    if not 0.0 < iou_thresh < 1.0:
        raise ValueError(f"iou_thresh must be in (0, 1), got {iou_thresh}")
    names = tuple(class_names)
    k = len(names)
    if k == 0:
        raise ValueError("build_report needs at least one class name")
    gt = _flatten(ground_truth, with_scores=False)
    det = _flatten(detections, with_scores=True)
    _check_labels("ground-truth", gt["labels"], k)
    _check_labels("detection", det["labels"], k)
    counts = {key: np.zeros(k, np.int64) for key in ("num_gt", "num_dets", "tp", "fp", "ignored")}
    ap = np.full(k, np.nan)
    curves: dict[str, dict[str, np.ndarray]] = {}
    # Group by class exactly as evaluate_detections does (stable: ties in score keep the input order).
    g_order = np.argsort(gt["labels"], kind="stable")
    d_order = np.argsort(det["labels"], kind="stable")
    g_bounds = np.searchsorted(gt["labels"][g_order], np.arange(k + 1))
    d_bounds = np.searchsorted(det["labels"][d_order], np.arange(k + 1))
    for c, name in enumerate(names):
        gs = g_order[g_bounds[c]:g_bounds[c + 1]]
        ds = d_order[d_bounds[c]:d_bounds[c + 1]]
        scores = det["scores"][ds]
        m = _ClassMatches(gt["img"][gs], gt["boxes"][gs], gt["difficult"][gs], det["img"][ds], scores,
                          det["boxes"][ds])
        tp, fp = m.flags(iou_thresh)  # (D,) each, in the descending score order _ClassMatches sorts by
        ap[c], rec, prec = _ap_from_flags(tp, fp, m.npos, use_07_metric=False)
        sorted_scores = scores[np.argsort(-scores, kind="stable")]  # the same order as tp / fp
        n = int(np.count_nonzero(sorted_scores >= score_thresh))  # the first n in that order
        counts["num_gt"][c] = m.npos
        counts["num_dets"][c] = n
        counts["tp"][c] = int(tp[:n].sum())
        counts["fp"][c] = int(fp[:n].sum())
        counts["ignored"][c] = n - counts["tp"][c] - counts["fp"][c]
        curves[name] = {"recall": rec, "precision": prec, "scores": sorted_scores if m.npos else np.zeros(0)}
    cm = confusion_matrix(ground_truth, detections, k, iou_thresh=iou_thresh, score_thresh=score_thresh)
    return DetectionReport(
        class_names=names, iou_thresh=float(iou_thresh), score_thresh=float(score_thresh),
        num_images=len(ground_truth), ap=ap, num_gt=counts["num_gt"], num_dets=counts["num_dets"],
        tp=counts["tp"], fp=counts["fp"], ignored=counts["ignored"], fn=counts["num_gt"] - counts["tp"],
        confusion=cm, curves=curves,
    )


# ----------------------------------------------------------------------------------- inputs from the evaluators


def coco_ground_truth(
    coco_gt: Any, image_ids: Sequence[int], contiguous_to_category_id: Mapping[int, int]
) -> list[dict[str, Any]]:
    """Per image id, ground truth in our convention from a pycocotools COCO, by the rule of the COCO loader and
    ``DetectionDataset.get_ground_truth`` (a test holds the two equal): annotations the loader's check left out
    (``coco_gt.bad_ann_ids``) or of categories that are not classes are skipped, so are boxes under 1 px wide or
    high unless crowd; crowd regions are difficult boxes (a detection on one is neither right nor wrong).

    For when only the evaluator is at hand (``tools/eval_det.py``); with the dataset, pass it to
    :func:`report_from_evaluator` instead.
    """
    label_of = {int(cat): int(label) for label, cat in contiguous_to_category_id.items()}
    bad = getattr(coco_gt, "bad_ann_ids", None) or set()
    out = []
    for img_id in image_ids:
        boxes, labels, difficult = [], [], []
        for ann in coco_gt.imgToAnns.get(int(img_id), []):
            if ann.get("id") in bad or int(ann["category_id"]) not in label_of:
                continue
            x, y, w, h = ann["bbox"]
            crowd = bool(ann.get("iscrowd", 0))
            if (w < 1 or h < 1) and not crowd:
                continue
            boxes.append((x, y, x + w, y + h))
            labels.append(label_of[int(ann["category_id"])])
            difficult.append(crowd)
        out.append({"image_id": int(img_id), "boxes": np.asarray(boxes, np.float32).reshape(-1, 4),
                    "labels": np.asarray(labels, np.int64), "difficult": np.asarray(difficult, bool)})
    return out


def detections_from_coco_results(
    results: Iterable[Mapping[str, Any]], image_ids: Sequence[int], contiguous_to_category_id: Mapping[int, int]
) -> list[dict[str, np.ndarray]]:
    """COCO results entries (XYWH, original category ids) -> per image (in ``image_ids`` order) ``{"boxes" (D, 4)
    XYXY, "scores" (D,), "labels" (D,) in [0, K)}``. Entries of other images are dropped, as pycocotools does when
    its image ids are restricted."""
    label_of = {int(cat): int(label) for label, cat in contiguous_to_category_id.items()}
    index_of = {int(i): n for n, i in enumerate(image_ids)}
    rows: list[list[tuple[float, float, float, float, float, int]]] = [[] for _ in image_ids]
    for r in results:
        n = index_of.get(int(r["image_id"]))
        if n is None:
            continue
        if int(r["category_id"]) not in label_of:
            raise DataError(f"result of image {r['image_id']}: category id {r['category_id']} is not in the ground "
                            f"truth (known ids {sorted(label_of)[:8]})")
        x, y, w, h = (float(v) for v in r["bbox"])
        rows[n].append((x, y, x + w, y + h, float(r["score"]), label_of[int(r["category_id"])]))
    out = []
    for rs in rows:
        arr = np.asarray(rs, np.float64).reshape(-1, 6)
        out.append({"boxes": arr[:, :4], "scores": arr[:, 4], "labels": arr[:, 5].astype(np.int64)})
    return out


def report_from_evaluator(
    evaluator: VOCEvaluator | COCOEvaluator,
    *,
    dataset: Any = None,
    iou_thresh: float = 0.5,
    score_thresh: float = 0.5,
) -> DetectionReport:
    """:func:`build_report` of what an evaluator collected (a model run or a results file).

    A VOC evaluator holds the ground truth and per-image detections. A COCO evaluator holds results entries:
    they are converted back to per-image arrays with its ``contiguous_to_category_id``; the ground truth is
    ``dataset.get_ground_truth`` when ``dataset`` (the evaluated ``DetectionDataset``) is given, else rebuilt from
    the evaluator's pycocotools COCO (:func:`coco_ground_truth`).
    """
    if isinstance(evaluator, VOCEvaluator):
        return build_report(evaluator.ground_truth, evaluator.all_detections(), evaluator.class_names,
                            iou_thresh=iou_thresh, score_thresh=score_thresh)
    if not isinstance(evaluator, COCOEvaluator):
        raise TypeError(f"report_from_evaluator: expected a VOCEvaluator or COCOEvaluator, got "
                        f"{type(evaluator).__name__}")
    c2cat = evaluator.contiguous_to_category_id
    if dataset is not None:
        ids = [int(i) for i in dataset.image_ids]
        gt = [dataset.get_ground_truth(i) for i in range(len(dataset))]
        names = list(dataset.class_names)
    else:
        ids = evaluator.image_ids if evaluator.image_ids is not None else sorted(evaluator.coco_gt.getImgIds())
        gt = coco_ground_truth(evaluator.coco_gt, ids, c2cat)
        cat_names = evaluator.category_names or {c["id"]: c["name"] for c in evaluator.coco_gt.loadCats(
            list(c2cat.values()))}
        names = [cat_names[c2cat[i]] for i in range(len(c2cat))]
    return build_report(gt, detections_from_coco_results(evaluator.to_results(), ids, c2cat), names,
                        iou_thresh=iou_thresh, score_thresh=score_thresh)


def coco_files_evaluator(gt_json: str | Path, results_json: str | Path) -> tuple[Any, COCOEvaluator]:
    """``(dataset, evaluator)`` for a COCO results file scored against an annotation file alone (no image is
    read): the dataset the COCO loader makes of the file, and a COCO evaluator holding the results."""
    from detection.data import build_coco_dataset

    dataset = build_coco_dataset(gt_json, Path(gt_json).parent, train=False)
    evaluator = COCOEvaluator.from_dataset(dataset)
    for r in load_results_json(results_json):
        evaluator.results.setdefault(int(r["image_id"]), []).append(r)
    return dataset, evaluator


# ---------------------------------------------------------------------------------------------------- writers


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # files only: never needs a display
    import matplotlib.pyplot as plt

    return plt


def save_confusion_matrix_png(report: DetectionReport, path: str | Path) -> Path:
    """The confusion matrix as a heat map: colours normalized per row (each ground-truth class, and the
    background row, sums to 1, so rare classes are as readable as frequent ones), cells annotated with counts."""
    plt = _pyplot()
    labels = [*report.class_names, BACKGROUND]
    n = len(labels)
    cm = report.confusion
    row_sums = cm.sum(axis=1, keepdims=True)
    norm = np.divide(cm, row_sums, out=np.zeros(cm.shape), where=row_sums > 0)
    side = min(max(5.0, 0.45 * n + 2.5), 40.0)  # ~0.45 inch per cell, capped for COCO's 81 x 81
    fontsize = max(6.0, min(10.0, 160.0 / n))  # 6 pt still fits 3 digits in a 0.45 inch cell
    fig, ax = plt.subplots(figsize=(side + 1.0, side))
    image = ax.imshow(norm, cmap="Blues", vmin=0.0, vmax=1.0)
    for (r, c), v in np.ndenumerate(cm):
        if v:  # zeros left blank: an 81 x 81 matrix is mostly zeros
            ax.text(c, r, str(int(v)), ha="center", va="center", fontsize=fontsize,
                    color="white" if norm[r, c] > 0.5 else "black")
    ax.set_xticks(range(n), labels, rotation=90, fontsize=fontsize)
    ax.set_yticks(range(n), labels, fontsize=fontsize)
    ax.set_xlabel("predicted")
    ax.set_ylabel("ground truth")
    ax.set_title(f"confusion at score >= {report.score_thresh:g}, IoU > {report.iou_thresh:g} (rows normalized)",
                 fontsize=10)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    return save_figure(fig, path)


def save_pr_curves_png(report: DetectionReport, path: str | Path) -> Path:
    """All classes' precision-recall curves in one axes, AP in the legend, and a dot at each class's operating
    point (the score threshold). Not ``detection.visualize.save_pr_curves``: that one puts the legend inside the
    axes (unreadable for 80 classes) and has no operating point; its class colours are reused."""
    from detection.visualize import class_color

    plt = _pyplot()
    k = len(report.class_names)
    ncol = 1 + k // 25
    fig, ax = plt.subplots(figsize=(7.0 + 2.2 * ncol, 6.0))
    prec, rec = report.precision, report.recall
    for c, name in enumerate(report.class_names):
        color = tuple(v / 255 for v in class_color(c))
        cv = report.curves[name]
        label = f"{name} (no gt)" if math.isnan(report.ap[c]) else f"{name} (AP {100 * report.ap[c]:.1f})"
        ax.plot(cv["recall"], cv["precision"], color=color, linewidth=1.3, label=label)
        if np.isfinite(prec[c]) and np.isfinite(rec[c]):
            ax.plot([rec[c]], [prec[c]], "o", color=color, markersize=5)
    ax.set_xlim(0.0, 1.0)
    ax.set_ylim(0.0, 1.02)
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.grid(alpha=0.3)
    ax.set_title(f"PR curves at IoU > {report.iou_thresh:g}, mAP {_pct(report.mAP)} % "
                 f"(dots: score >= {report.score_thresh:g})", fontsize=10)
    ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=7, ncol=ncol, frameon=False)
    return save_figure(fig, path)


def write_report(report: DetectionReport, directory: str | Path) -> dict[str, Path]:
    """``report.json``, ``report.txt`` (the table of :meth:`DetectionReport.format_table`),
    ``confusion_matrix.png`` and ``pr_curves.png`` in ``directory``; returns {file name: path}."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    paths = {name: directory / name for name in REPORT_FILES}
    paths["report.json"].write_text(json.dumps(report.to_dict(), indent=1) + "\n")
    paths["report.txt"].write_text(report.format_table() + "\n")
    save_confusion_matrix_png(report, paths["confusion_matrix.png"])
    save_pr_curves_png(report, paths["pr_curves.png"])
    return paths
