"""detection.export: the wrapper that gets traced to ONNX runs the model's own forward (identical detections).

The ONNX files themselves are checked with onnxruntime in tests/tools/test_export_onnx.py."""

from __future__ import annotations

import torch

from detection.export import ExportableDetector
from detection.faster_rcnn import FasterRCNN
from tests.helpers import probe_images

H, W = 64, 96


def test_export_wrapper_is_the_model_forward(tiny_detector: FasterRCNN) -> None:
    """The wrapper that gets traced runs the model's own RPN / RoI-head steps: identical detections in eager
    mode."""
    for image in probe_images(H, W):
        with torch.inference_mode():
            ref = tiny_detector([image])[0]
            boxes, scores, labels = ExportableDetector(tiny_detector).eval()(image[None])
        assert len(boxes) > 0
        assert torch.equal(boxes, ref["boxes"]) and torch.equal(scores, ref["scores"])
        assert torch.equal(labels, ref["labels"])
