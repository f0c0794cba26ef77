"""tools/export_onnx.py and detection.export on tiny ResNet-18 detectors: one exported file with dynamic height and
width gives onnxruntime detections equal to PyTorch's at several sizes (C4, DC5, FPN); the tool checks itself on an
image with detections (and refuses a check without any); the metadata; the fixed-size and backbone exports;
tools/eval_det.py scores an .onnx file as it scores the checkpoint."""

from __future__ import annotations

import json
import warnings
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from detection.checkpoint import detector_payload
from detection.config import load_detection_config
from detection.faster_rcnn import FasterRCNN, build_faster_rcnn
from tests.helpers import (
    SCORE_TOL,
    TINY_CLASSES,
    TINY_DETECTOR,
    TINY_FPN_DETECTOR,
    assert_same_detections,
    noise_image,
    probe_images,
    randomize_bn_statistics,
)
from tools import export_onnx

ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")

H, W = 64, 96
# One exported file, three input sizes: a multiple of 32, neither side one (padded inside the graph), portrait.
PARITY_SIZES = ((64, 96), (83, 131), (120, 72))
# ONNX parity: onnxruntime's float32 kernels against PyTorch's on the same graph, tiny models.
PARITY_BOX_TOL_PX = 1e-3
ARCH_OVERRIDES = {
    "C4": TINY_DETECTOR,
    "DC5": [*TINY_DETECTOR, "model.arch=DC5", "model.roi_heads.pooler_resolution=7", "model.roi_heads.fc_dim=64"],
    "FPN": TINY_FPN_DETECTOR,
}


def _tiny(arch: str, *extra: str) -> tuple[FasterRCNN, object]:
    """A seeded random tiny detector with non-trivial BN statistics (so that it gives detections) and its config."""
    cfg = load_detection_config(None, [*ARCH_OVERRIDES[arch], *extra])
    torch.manual_seed(0)
    model = build_faster_rcnn(cfg.model, class_names=TINY_CLASSES).eval()
    randomize_bn_statistics(model)
    return model, cfg


def _image_file(tmp_path: Path, name: str = "noise.png", h: int = 80, w: int = 120, seed: int = 3) -> Path:
    path = tmp_path / name
    cv2.imwrite(str(path), cv2.cvtColor(noise_image(h, w, seed), cv2.COLOR_RGB2BGR))
    return path


@pytest.mark.parametrize("arch", ["C4", "DC5", "FPN"])
def test_one_onnx_file_equals_pytorch_at_three_sizes(arch: str, tmp_path: Path, one_thread: None) -> None:
    """Exported once with dynamic height / width, the graph gives PyTorch's detections (boxes within 1e-3 px,
    scores within 1e-4) at 64 x 96, 83 x 131 (no side a multiple of 32) and 120 x 72 (portrait); nothing of the
    tracing input's size is frozen into it (no TracerWarning from our code, the anchor cache left alone)."""
    from detection.export import export_detector, onnx_metadata

    model, cfg = _tiny(arch)
    path = tmp_path / f"{arch}.onnx"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        export_detector(model, path, onnx_metadata(model, cfg))
    traced = [f"{w.filename}:{w.lineno} {w.message}" for w in caught if issubclass(w.category, torch.jit.TracerWarning)]
    assert not traced, traced
    # Traced anchors bypass the eager cache (whose int key would freeze the size).
    assert model.rpn.anchor_generator._cache == {}
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert sess.get_inputs()[0].shape == [1, 3, "height", "width"]
    assert [o.name for o in sess.get_outputs()] == ["boxes", "scores", "labels"]
    for h, w in PARITY_SIZES:
        for image in probe_images(h, w):
            with torch.inference_mode():
                ref = model([image])[0]  # the model's own forward, not the export wrapper
            assert len(ref["boxes"]) > 0, f"{arch} {h}x{w}: nothing to compare"
            boxes, scores, labels = sess.run(None, {"image": image[None].numpy()})
            assert_same_detections({"boxes": boxes, "scores": scores, "labels": labels}, ref, f"{arch} {h}x{w}",
                                   box_tol=PARITY_BOX_TOL_PX, score_tol=SCORE_TOL)


def test_anchor_spacing_from_the_padded_size_stays_dynamic(tmp_path: Path, one_thread: None) -> None:
    """torchvision's conventions (anchor stride = padded side // cells, which differs from 64 on P6 for odd
    multiples of 32; the level epsilon added outside the log) export as the sizes they are computed from."""
    from detection.export import export_detector, onnx_metadata

    model, cfg = _tiny("FPN", "model.anchors.stride_from_padded_size=true", "model.roi_heads.level_epsilon=1e-6",
                       "model.roi_heads.level_epsilon_in_log=false")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        path = export_detector(model, tmp_path / "tv.onnx", onnx_metadata(model, cfg))
    assert not [w for w in caught if issubclass(w.category, torch.jit.TracerWarning)]
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for h, w in ((96, 160), (150, 90)):  # 96 and 160 / 32 are odd: P6 spacing 48 and 53, not 64
        image = probe_images(h, w)[0]
        with torch.inference_mode():
            ref = model([image])[0]
        boxes, scores, labels = sess.run(None, {"image": image[None].numpy()})
        assert len(ref["boxes"]) > 0
        assert_same_detections({"boxes": boxes, "scores": scores, "labels": labels}, ref, f"{h}x{w}",
                               box_tol=PARITY_BOX_TOL_PX, score_tol=SCORE_TOL)


def test_export_tool_checks_itself_and_writes_the_metadata(tmp_path: Path, tiny_checkpoint: Path,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    from detection.onnx_predictor import read_metadata

    out = tmp_path / "model.onnx"
    image = _image_file(tmp_path)  # 80 x 120: 64 x 96 at the test size, 72 x 48 transposed at 3/4 of it
    with caplog.at_level("INFO"):
        assert export_onnx.main(["--checkpoint", str(tiny_checkpoint), "--output", str(out), "--check-image",
                                 str(image)]) == 0
    assert "onnxruntime = PyTorch on noise.png at 64 x 96 and 72 x 48 px" in caplog.text
    assert "any input size" in caplog.text
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx", "noise.png"]  # no staging file left
    props = {p.key: p.value for p in onnx.load(str(out), load_external_data=False).metadata_props}
    for value in props.values():
        json.loads(value)  # every value is JSON
    assert json.loads(props["format"]) == {"name": "resnet-det/faster-rcnn-onnx", "version": 1}
    meta = read_metadata(out)
    assert meta.class_names == TINY_CLASSES and (meta.min_size, meta.max_size) == (64, 96)
    assert meta.size_divisibility == 32 and meta.score_thresh == 0.05 and meta.detections_per_image == 100
    assert meta.pixel == {"mean": [123.675, 116.28, 103.53], "std": [58.395, 57.12, 57.375], "channel_order": "RGB"}
    assert meta.arch == "C4" and meta.fixed_size is None and meta.source == tiny_checkpoint.name


def test_export_tool_refuses_to_pass_a_check_without_detections(tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    """Two empty outputs agree whatever the graph computes: a model that detects nothing in the check images fails
    the export (one line, exit 2, no file); so does a checkpoint whose test set is absent, without --check-image."""
    model, cfg = _tiny("C4", "model.roi_heads.score_thresh=0.999", "data.test=voc07-test")
    ckpt = tmp_path / "m.pth"
    torch.save(detector_payload(model, cfg, TINY_CLASSES), ckpt)
    out = tmp_path / "out" / "m.onnx"
    images = [str(_image_file(tmp_path, "a.png")), str(_image_file(tmp_path, "b.png", seed=4))]
    assert export_onnx.main(["--checkpoint", str(ckpt), "--output", str(out), "--check-image", *images]) == 2
    err = capsys.readouterr().err
    assert err.startswith("export_onnx: error: cannot check the export: the model detects nothing (score > 0.999)")
    assert "a.png, b.png" in err and err.count("\n") == 1
    assert not out.parent.exists() or not list(out.parent.iterdir())  # nothing written, no staging file
    (tmp_path / "empty").mkdir()
    assert export_onnx.main(["--checkpoint", str(ckpt), "--output", str(out), "--data-root",
                             str(tmp_path / "empty")]) == 2
    assert "no image to check the export on: the checkpoint's test set is not available" in capsys.readouterr().err
    assert not out.exists()


def test_fixed_size_export_takes_that_size_only(tmp_path: Path, tiny_checkpoint: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    from detection.onnx_predictor import OnnxPredictor, read_metadata
    from resbackbone.errors import CheckpointError

    out = tmp_path / "fixed.onnx"
    assert export_onnx.main(["--checkpoint", str(tiny_checkpoint), "--output", str(out), "--size", str(H), str(W),
                             "--check-image", str(_image_file(tmp_path))]) == 0
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert sess.get_inputs()[0].shape == [1, 3, H, W]
    assert read_metadata(out).fixed_size == (H, W)
    with pytest.raises(CheckpointError, match="exported for 64 x 96 inputs only"):
        OnnxPredictor(out)
    assert export_onnx.main(["--checkpoint", str(tiny_checkpoint), "--output", str(tmp_path / "x.onnx"), "--size",
                             "16", "64", "--no-check"]) == 2
    assert capsys.readouterr().err.startswith("export_onnx: error: --size 16 64: both sides must be >= 32")


def test_backbone_onnx_matches_pytorch_at_other_sizes(tmp_path: Path, tiny_checkpoint: Path,
                                                      tiny_detector: FasterRCNN) -> None:
    out = tmp_path / "backbone.onnx"
    assert export_onnx.main(["--checkpoint", str(tiny_checkpoint), "--output", str(out), "--backbone-only",
                             "--size", str(H), str(W)]) == 0
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    for h, w in ((H, W), (96, 64)):  # height and width are dynamic axes
        image = probe_images(h, w)[0][None]
        with torch.inference_mode():
            (ref,) = tiny_detector.trunk(tiny_detector.normalizer(image)).values()
        (got,) = sess.run(None, {"image": image.numpy()})
        assert got.shape == tuple(ref.shape) == (1, 256, h // 16, w // 16)
        np.testing.assert_allclose(got, ref.numpy(), atol=1e-3, rtol=1e-4)


def test_eval_det_scores_an_onnx_file_as_its_checkpoint(tmp_path: Path, one_thread: None) -> None:
    """tools/eval_det.py --checkpoint model.onnx: predictions from onnxruntime, the test set and classes from the
    file's metadata; the same metrics as the checkpoint it came from run exactly (--exact)."""
    from detection.data import generate_synthetic
    from tools import eval_det

    generate_synthetic(tmp_path / "data", num_train=2, num_test=4, image_size=64)
    model, cfg = _tiny("C4")
    cfg = replace(cfg, data=replace(cfg.data, test="synthetic-test"))
    ckpt = tmp_path / "m.pth"
    torch.save(detector_payload(model, cfg, TINY_CLASSES), ckpt)
    onnx_path = tmp_path / "m.onnx"
    assert export_onnx.main(["--checkpoint", str(ckpt), "--output", str(onnx_path), "--data-root",
                             str(tmp_path / "data")]) == 0
    metrics = {}
    for name, path, extra in (("onnx", onnx_path, []), ("torch", ckpt, ["--exact", "--cpu", "--num-workers", "0"])):
        out = tmp_path / f"{name}.json"
        assert eval_det.main(["--checkpoint", str(path), "--data-root", str(tmp_path / "data"), "--no-progress",
                              "--output", str(out), *extra]) == 0
        metrics[name] = json.loads(out.read_text())
    assert metrics["onnx"]["num_images"] == metrics["torch"]["num_images"] == 4
    assert metrics["onnx"]["mAP"] == pytest.approx(metrics["torch"]["mAP"], abs=1e-9)
    assert metrics["onnx"]["per_class"] == pytest.approx(metrics["torch"]["per_class"], abs=1e-9)
