"""Detections as plain Python for the JSON files the tools write (detections.json, coco_results.json, video
lines), without torch: the PyTorch :class:`~detection.predictor.Predictor` and the onnxruntime
:class:`~detection.onnx_predictor.OnnxPredictor` give their detections to the same writers.

Conventions: boxes ``(D, 4)`` XYXY original-image pixels, scores ``(D,)``, labels ``(D,)`` in ``[0, K)``; given as
torch tensors or numpy arrays (anything with ``.tolist()``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any


def detections_to_json(det: Mapping[str, Any], class_names: Sequence[str]) -> list[dict[str, Any]]:
    """Detections -> ``[{"box": [x1, y1, x2, y2], "score", "label", "class_name"}]`` (plain Python, JSON-ready)."""
    return [
        # 4 decimals: well below a pixel, and enough to compare runs of two implementations exactly.
        {"box": [round(float(v), 4) for v in b], "score": round(float(s), 6), "label": int(c),
         "class_name": class_names[int(c)]}
        for b, s, c in zip(det["boxes"].tolist(), det["scores"].tolist(), det["labels"].tolist())
    ]


__all__ = ["detections_to_json"]
