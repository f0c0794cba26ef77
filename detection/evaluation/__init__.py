"""Evaluation: devkit-exact VOC AP, pycocotools COCO AP, the shared inference loop, the per-dataset report
(per-class precision / recall / AP at a score threshold, confusion matrix, PR curves), and the validation loss."""

from __future__ import annotations

import math
from typing import Any

from resbackbone.errors import ConfigError, DataError

from .coco import COCO_STAT_NAMES, COCOEvaluator, evaluate_coco, evaluate_coco_results, load_results_json
from .inference import check_classes, evaluate_detector, run_inference, score_predictions
from .report import (
    DetectionReport,
    build_report,
    coco_files_evaluator,
    confusion_matrix,
    report_from_evaluator,
    write_report,
)
from .validation_loss import validation_loss
from .voc import (
    VOCEvaluator,
    evaluate_detections,
    read_devkit_results,
    voc_ap,
    write_devkit_results,
)

METRICS = ("voc07", "voc", "coco")


def build_evaluator(dataset: Any, metric: str | None = None) -> VOCEvaluator | COCOEvaluator:
    """The evaluator for ``dataset`` (a ``detection.data.DetectionDataset``).

    ``metric`` None -> ``dataset.default_metric`` (VOC2007 test: "voc07" 11-point, other VOC / synthetic: "voc"
    area, COCO: "coco"). Both evaluators take ``add(target, detections)`` with the loader's target dict.
    """
    metric = metric or dataset.default_metric
    if metric not in METRICS:
        raise ConfigError(f"unknown metric {metric!r}; expected one of {', '.join(METRICS)}")
    if metric == "coco":
        if dataset.coco is None:
            raise DataError(f"dataset {dataset.name!r} has no COCO-format ground truth for the coco metric")
        return COCOEvaluator.from_dataset(dataset)
    return VOCEvaluator.from_dataset(dataset, use_07_metric=metric == "voc07")


def format_metrics(metrics: dict[str, Any]) -> str:
    """A per-class AP table (percent) followed by the summary numbers, for printing."""
    lines = []
    per_class = metrics.get("per_class") or {}
    if per_class:
        width = max(len(n) for n in per_class)
        lines.append(f"{'class':<{width}}  AP (%)")
        for name, ap in per_class.items():
            lines.append(f"{name:<{width}}  {'  n/a (no ground truth)' if ap is None else f'{100 * ap:6.2f}'}")
    summary = [k for k in ("mAP", "AP", "AP50", "AP75", *COCO_STAT_NAMES[3:]) if k in metrics]
    for k in dict.fromkeys(summary):
        v = metrics[k]
        # pycocotools reports -1 for "no objects of this size in the ground truth" (APs on a set of large objects).
        text = "n/a (no such objects)" if v is not None and v < 0 else "nan" if v is None or math.isnan(v) else \
            f"{100 * v:.2f}"
        lines.append(f"{k:>6}: {text}")
    if "num_images" in metrics:
        lines.append(f"images: {metrics['num_images']}  ({metrics.get('ms_per_image', float('nan')):.1f} ms/image)")
    return "\n".join(lines)


__all__ = [
    "COCOEvaluator",
    "COCO_STAT_NAMES",
    "DetectionReport",
    "METRICS",
    "VOCEvaluator",
    "build_evaluator",
    "build_report",
    "check_classes",
    "coco_files_evaluator",
    "confusion_matrix",
    "evaluate_detector",
    "evaluate_coco",
    "evaluate_coco_results",
    "evaluate_detections",
    "format_metrics",
    "load_results_json",
    "read_devkit_results",
    "report_from_evaluator",
    "run_inference",
    "score_predictions",
    "validation_loss",
    "voc_ap",
    "write_devkit_results",
    "write_report",
]
