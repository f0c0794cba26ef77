"""ONNX export (tools/export_onnx.py) of a tiny ResNet-18 C4 detector and of its backbone: onnxruntime gives the
same detections / features as PyTorch on images other than the one the graph was traced with."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import torch
from conftest import load_script

from detection.checkpoint import detector_payload
from detection.config import DetectionConfig, load_detection_config
from detection.export import ExportableDetector
from detection.faster_rcnn import FasterRCNN, build_faster_rcnn

ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

REPO = Path(__file__).resolve().parents[1]
CLASSES = ["circle", "square", "triangle"]
TINY = [
    "model.backbone.name=resnet18",
    "model.num_classes=3",
    "model.anchors.sizes=[16,32,64]",
    "model.rpn.pre_nms_topk_test=100",
    "model.rpn.post_nms_topk_test=12",
    "model.roi_heads.pooler_resolution=8",
    "data.min_size_test=64",
    "data.max_size_test=96",
]
H, W = 64, 96


def _tool() -> ModuleType:
    return load_script("tools/export_onnx.py")


@pytest.fixture(scope="module")
def cfg() -> DetectionConfig:
    return load_detection_config(None, TINY)


@pytest.fixture(scope="module")
def model(cfg: DetectionConfig) -> FasterRCNN:
    torch.manual_seed(0)
    return build_faster_rcnn(cfg.model, class_names=CLASSES).eval()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory, model: FasterRCNN, cfg: DetectionConfig) -> Path:
    path = tmp_path_factory.mktemp("ckpt") / "model_final.pth"
    torch.save(detector_payload(model, cfg, CLASSES), path)
    return path


def _images(h: int, w: int) -> list[torch.Tensor]:
    """Two test images unlike the tracing input: noise with bright rectangles, and a smooth gradient."""
    rng = np.random.default_rng(1)
    a = rng.integers(0, 120, (3, h, w)).astype(np.float32)
    a[:, 10:40, 20:60] = 230.0
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    b = np.stack([xx / w * 255, yy / h * 255, np.full_like(xx, 128.0)])
    return [torch.from_numpy(a), torch.from_numpy(b)]


def _canonical(boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, ...]:
    order = np.lexsort((labels, -scores))
    return boxes[order], scores[order], labels[order]


def test_detector_onnx_matches_pytorch(tmp_path: Path, checkpoint: Path, model: FasterRCNN) -> None:
    out = tmp_path / "det.onnx"
    assert _tool().main(["--checkpoint", str(checkpoint), "--output", str(out), "--size", str(H), str(W),
                         "--no-check"]) == 0
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert [i.name for i in sess.get_inputs()] == ["image"]
    assert [o.name for o in sess.get_outputs()] == ["boxes", "scores", "labels"]
    counts = []
    for image in _images(H, W):
        with torch.inference_mode():
            ref = model([image])[0]  # the real model forward, not the export wrapper
        boxes, scores, labels = sess.run(None, {"image": image[None].numpy()})
        assert boxes.shape == (len(ref["boxes"]), 4) and len(ref["boxes"]) > 0
        got = _canonical(boxes, scores, labels)
        exp = _canonical(ref["boxes"].numpy(), ref["scores"].numpy(), ref["labels"].numpy())
        np.testing.assert_allclose(got[0], exp[0], atol=1e-3, rtol=0)
        np.testing.assert_allclose(got[1], exp[1], atol=1e-3, rtol=0)
        np.testing.assert_array_equal(got[2], exp[2])
        counts.append(len(boxes))
    assert model.roi_heads.detections_per_image >= max(counts)


def test_export_wrapper_is_the_model_forward(model: FasterRCNN) -> None:
    """The wrapper that gets traced runs the model's own RPN / RoI-head steps: identical detections in eager mode."""
    for image in _images(H, W):
        with torch.inference_mode():
            ref = model([image])[0]
            boxes, scores, labels = ExportableDetector(model).eval()(image[None])
        assert len(boxes) > 0
        assert torch.equal(boxes, ref["boxes"]) and torch.equal(scores, ref["scores"])
        assert torch.equal(labels, ref["labels"])


def test_backbone_onnx_matches_pytorch_at_other_sizes(tmp_path: Path, checkpoint: Path, model: FasterRCNN) -> None:
    out = tmp_path / "backbone.onnx"
    assert _tool().main(["--checkpoint", str(checkpoint), "--output", str(out), "--backbone-only",
                         "--size", str(H), str(W), "--no-check"]) == 0
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    for h, w in ((H, W), (96, 64)):  # height and width are dynamic axes
        image = _images(h, w)[0][None]
        with torch.inference_mode():
            ref = model.trunk(model.normalizer(image))
        (got,) = sess.run(None, {"image": image.numpy()})
        assert got.shape == tuple(ref.shape) == (1, 256, h // 16, w // 16)
        np.testing.assert_allclose(got, ref.numpy(), atol=1e-3, rtol=1e-4)


def test_export_tool_checks_itself_and_rejects_tiny_sizes(tmp_path: Path, checkpoint: Path) -> None:
    tool = _tool()
    path, size = tool.export(checkpoint, tmp_path / "d.onnx")
    assert size == (64, 96)  # config test size, already multiples of 32
    assert tool.check(checkpoint, path, size, backbone_only=False) < 1e-3
    with pytest.raises(SystemExit, match="must be >= 32"):
        tool.main(["--checkpoint", str(checkpoint), "--output", str(tmp_path / "x.onnx"), "--size", "16", "64"])
