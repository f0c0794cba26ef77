"""Evaluation: devkit-exact VOC AP, pycocotools COCO AP, and the shared inference loop."""

from __future__ import annotations

from typing import Any

from .coco import COCO_STAT_NAMES, COCOEvaluator, evaluate_coco, evaluate_coco_results
from .inference import run_inference
from .voc import VOCEvaluator, evaluate_detections, voc_ap

METRICS = ("voc07", "voc", "coco")


def build_evaluator(dataset: Any, metric: str | None = None) -> VOCEvaluator | COCOEvaluator:
    """``metric`` None -> the dataset's default (VOC2007 test: voc07, other VOC / synthetic: voc, COCO: coco)."""
    metric = metric or dataset.default_metric
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; expected one of {METRICS}")
    if metric == "coco":
        if getattr(dataset, "coco", None) is None:
            raise ValueError(f"dataset {dataset.name!r} has no COCO-format ground truth for the coco metric")
        return COCOEvaluator.from_dataset(dataset)
    return VOCEvaluator.from_dataset(dataset, use_07_metric=metric == "voc07")


__all__ = [
    "COCOEvaluator",
    "COCO_STAT_NAMES",
    "METRICS",
    "VOCEvaluator",
    "build_evaluator",
    "evaluate_coco",
    "evaluate_coco_results",
    "evaluate_detections",
    "run_inference",
    "voc_ap",
]
