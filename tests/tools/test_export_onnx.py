"""tools/export_onnx.py through its main(argv) and its export / check functions, on the shared tiny ResNet-18 C4
detector: onnxruntime gives the same detections / features as PyTorch on images other than the one the graph was
traced with."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from detection.faster_rcnn import FasterRCNN
from tests.helpers import BOX_TOL_PX, SCORE_TOL, probe_images
from tools import export_onnx

ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

H, W = 64, 96


def _canonical(boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, ...]:
    order = np.lexsort((labels, -scores))
    return boxes[order], scores[order], labels[order]


@pytest.mark.parametrize("arch", ["C4", "FPN"])
def test_detector_onnx_matches_pytorch(tmp_path: Path, arch: str, request: pytest.FixtureRequest) -> None:
    from detection.checkpoint import load_detector

    checkpoint: Path = request.getfixturevalue("tiny_checkpoint" if arch == "C4" else "tiny_fpn_checkpoint")
    tiny_detector, _, _ = load_detector(checkpoint, "cpu")
    out = tmp_path / "det.onnx"
    assert export_onnx.main(["--checkpoint", str(checkpoint), "--output", str(out), "--size", str(H), str(W),
                             "--no-check"]) == 0
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert [i.name for i in sess.get_inputs()] == ["image"]
    assert [o.name for o in sess.get_outputs()] == ["boxes", "scores", "labels"]
    counts = []
    for image in probe_images(H, W):
        with torch.inference_mode():
            ref = tiny_detector([image])[0]  # the real model forward, not the export wrapper
        boxes, scores, labels = sess.run(None, {"image": image[None].numpy()})
        assert boxes.shape == (len(ref["boxes"]), 4) and len(ref["boxes"]) > 0
        got = _canonical(boxes, scores, labels)
        exp = _canonical(ref["boxes"].numpy(), ref["scores"].numpy(), ref["labels"].numpy())
        np.testing.assert_allclose(got[0], exp[0], atol=BOX_TOL_PX, rtol=0)
        np.testing.assert_allclose(got[1], exp[1], atol=SCORE_TOL, rtol=0)
        np.testing.assert_array_equal(got[2], exp[2])
        counts.append(len(boxes))
    assert tiny_detector.roi_heads.detections_per_image >= max(counts)


def test_backbone_onnx_matches_pytorch_at_other_sizes(tmp_path: Path, tiny_checkpoint: Path,
                                                      tiny_detector: FasterRCNN) -> None:
    out = tmp_path / "backbone.onnx"
    assert export_onnx.main(["--checkpoint", str(tiny_checkpoint), "--output", str(out), "--backbone-only",
                             "--size", str(H), str(W), "--no-check"]) == 0
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    for h, w in ((H, W), (96, 64)):  # height and width are dynamic axes
        image = probe_images(h, w)[0][None]
        with torch.inference_mode():
            (ref,) = tiny_detector.trunk(tiny_detector.normalizer(image)).values()
        (got,) = sess.run(None, {"image": image.numpy()})
        assert got.shape == tuple(ref.shape) == (1, 256, h // 16, w // 16)
        np.testing.assert_allclose(got, ref.numpy(), atol=1e-3, rtol=1e-4)


def test_export_tool_checks_itself_and_rejects_tiny_sizes(tmp_path: Path, tiny_checkpoint: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    tool = export_onnx
    path, size = tool.export(tiny_checkpoint, tmp_path / "d.onnx")
    assert size == (64, 96)  # config test size, already multiples of 32
    assert tool.check(tiny_checkpoint, path, size, backbone_only=False) < 1e-3
    assert tool.main(["--checkpoint", str(tiny_checkpoint), "--output", str(tmp_path / "x.onnx"), "--size", "16",
                      "64"]) == 2
    assert capsys.readouterr().err.startswith("export_onnx: error: --size 16 64: both sides must be >= 32")
