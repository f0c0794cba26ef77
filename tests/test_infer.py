"""tools/infer.py, the Predictor and the Appendix B test-time improvements on a tiny random ResNet-18 C4 detector."""

from __future__ import annotations

import json
from pathlib import Path
from types import ModuleType

import cv2
import numpy as np
import pytest
import torch
from conftest import load_script

from detection.checkpoint import detector_payload
from detection.config import DetectionConfig, load_detection_config
from detection.faster_rcnn import FasterRCNN, build_faster_rcnn
from detection.predictor import Predictor, list_images
from detection.tta import TTAOptions, box_voting, candidates, parse_tta, predict_tta, resize_for_test

REPO = Path(__file__).resolve().parents[1]
CLASSES = ["circle", "rectangle", "triangle"]  # the synthetic set's classes
TINY = [
    "model.backbone.name=resnet18",
    "model.num_classes=3",
    "model.anchors.sizes=[16,32,64]",
    "model.rpn.pre_nms_topk_test=100",
    "model.rpn.post_nms_topk_test=12",
    # res5 runs once per RoI: a small pooled size keeps the C4 head cheap on CPU.
    "model.roi_heads.pooler_resolution=8",
    "data.min_size_test=64",
    "data.max_size_test=96",
]


def _tool() -> ModuleType:
    return load_script("tools/infer.py")


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


def _image(h: int, w: int, seed: int) -> np.ndarray:
    """Random noise with a few bright rectangles, (H, W, 3) uint8 RGB."""
    rng = np.random.default_rng(seed)
    im = rng.integers(0, 120, (h, w, 3), dtype=np.uint8)
    for _ in range(3):
        x, y = int(rng.integers(0, w - 20)), int(rng.integers(0, h - 20))
        im[y : y + int(rng.integers(10, 20)), x : x + int(rng.integers(10, 20))] = rng.integers(150, 255, 3)
    return im


def _sorted(det: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Detections in a canonical order (score, then label) so that two equal sets compare element-wise."""
    order = np.lexsort((det["labels"].numpy(), -det["scores"].numpy()))
    idx = torch.as_tensor(order)
    return det["boxes"][idx], det["scores"][idx], det["labels"][idx]


def _mirror(boxes: torch.Tensor, width: int) -> torch.Tensor:
    return torch.stack((width - boxes[:, 2], boxes[:, 1], width - boxes[:, 0], boxes[:, 3]), dim=1)


# ----------------------------------------------------------------------------------------------------- the tool


def test_infer_tool_writes_drawn_images_and_json(tmp_path: Path, checkpoint: Path) -> None:
    inputs = tmp_path / "images"
    inputs.mkdir()
    shapes = {"a.png": (80, 120), "b.jpg": (96, 64), "c.png": (64, 64)}
    for i, (name, (h, w)) in enumerate(shapes.items()):
        cv2.imwrite(str(inputs / name), cv2.cvtColor(_image(h, w, i), cv2.COLOR_RGB2BGR))
    (inputs / "notes.txt").write_text("not an image")
    out = tmp_path / "out"
    assert _tool().main(["--checkpoint", str(checkpoint), "--input", str(inputs), "--output", str(out),
                         "--score-thresh", "0.2", "--batch-size", "2", "--cpu"]) == 0

    data = json.loads((out / "detections.json").read_text())
    assert data["class_names"] == CLASSES
    assert sorted(data["images"]) == sorted(shapes)
    predictor = Predictor.from_checkpoint(checkpoint, device="cpu", score_thresh=0.2)
    # Same batches as the tool (padding a batch changes which anchors exist, so batch composition matters).
    reference = {p.name: d for p, _, d in predictor.predict_files(list_images(inputs), batch_size=2)}
    total = 0
    for name, (h, w) in shapes.items():
        entry = data["images"][name]
        assert (entry["height"], entry["width"]) == (h, w)
        dets = entry["detections"]
        assert dets, f"{name}: the random detector should give some detection >= 0.2 (3 classes + background)"
        total += len(dets)
        boxes = np.array([d["box"] for d in dets])
        assert (boxes[:, [0, 2]] >= 0).all() and (boxes[:, [0, 2]] <= w).all()
        assert (boxes[:, [1, 3]] >= 0).all() and (boxes[:, [1, 3]] <= h).all()
        assert all(d["score"] >= 0.2 and d["class_name"] == CLASSES[d["label"]] for d in dets)
        # The JSON is the Predictor's output for that file, rounded.
        ref = reference[name]
        np.testing.assert_allclose(boxes, ref["boxes"].numpy(), atol=0.01)
        assert [d["label"] for d in dets] == ref["labels"].tolist()
        # A drawn copy of the right size that is not the input any more.
        drawn = cv2.imread(str(out / name))
        assert drawn is not None and drawn.shape == (h, w, 3)
        if name.endswith(".png"):
            assert not np.array_equal(drawn, cv2.imread(str(inputs / name)))
    coco = json.loads((out / "coco_results.json").read_text())
    assert len(coco) == total
    first = next(d for d in coco if d["image_id"] == 0)  # a.png, first in sorted order
    x1, y1, x2, y2 = data["images"]["a.png"]["detections"][0]["box"]
    assert first["bbox"] == pytest.approx([x1, y1, x2 - x1, y2 - y1], abs=0.011)
    assert first["category_id"] == data["images"]["a.png"]["detections"][0]["label"] + 1


def test_infer_tool_errors(tmp_path: Path, checkpoint: Path) -> None:
    with pytest.raises(SystemExit, match="no such file"):
        _tool().main(["--checkpoint", str(checkpoint), "--input", str(tmp_path / "missing.jpg")])
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit, match="no image files"):
        _tool().main(["--checkpoint", str(checkpoint), "--input", str(tmp_path / "empty")])
    with pytest.raises(SystemExit, match="unknown --tta"):
        _tool().main(["--checkpoint", str(checkpoint), "--input", str(tmp_path), "--tta", "flip,mirror"])


def test_list_images_single_file(tmp_path: Path) -> None:
    f = tmp_path / "x.jpg"
    f.write_bytes(b"")
    assert list_images(f) == [f]


# ------------------------------------------------------------------------------------------------ predictor / TTA


def test_predictor_without_tta_is_exactly_the_plain_model(model: FasterRCNN) -> None:
    image = _image(80, 120, 3)  # resized to 64 x 96 by the test resize
    got = Predictor(model, min_size=64, max_size=96, device="cpu")([image])[0]
    with torch.inference_mode():
        tensor = resize_for_test(image, 64, 96)
        assert tuple(tensor.shape) == (3, 64, 96)
        ref = model([tensor], orig_sizes=[(80, 120)])[0]
    assert len(ref["boxes"]) > 0
    for key in ("boxes", "scores", "labels"):
        assert torch.equal(got[key], ref[key]), key


def test_single_pass_through_tta_merging_equals_the_model(model: FasterRCNN) -> None:
    """The TTA machinery (candidates -> original pixels -> merge) with one scale, no flip / refine / voting
    reproduces the model's own post-processing (an image already at the test size, so no rescaling)."""
    image = _image(64, 96, 4)
    got = predict_tta(model, [image], TTAOptions(scales=(64,)), min_size=64, max_size=96)[0]
    with torch.inference_mode():
        ref = model([resize_for_test(image, 64, 96)], orig_sizes=[(64, 96)])[0]
    assert len(ref["boxes"]) > 0 and len(got["boxes"]) == len(ref["boxes"])
    torch.testing.assert_close(got["boxes"], ref["boxes"], atol=1e-4, rtol=0)
    torch.testing.assert_close(got["scores"], ref["scores"], atol=1e-6, rtol=0)
    assert torch.equal(got["labels"], ref["labels"])


def test_flip_tta_is_mirror_equivariant(model: FasterRCNN) -> None:
    """Flip TTA on I unites pass(I) and mirror(pass(mirror I)); on mirror(I) it unites the same two passes
    mirrored. So its detections on the mirrored image are exactly the mirrored detections."""
    image = _image(64, 96, 5)
    opts = TTAOptions(flip=True)
    a = predict_tta(model, [image], opts, min_size=64, max_size=96)[0]
    b = predict_tta(model, [np.ascontiguousarray(image[:, ::-1])], opts, min_size=64, max_size=96)[0]
    assert len(a["boxes"]) > 0 and len(a["boxes"]) == len(b["boxes"])
    ba, sa, la = _sorted(a)
    bb, sb, lb = _sorted({**b, "boxes": _mirror(b["boxes"], 96)})
    torch.testing.assert_close(sa, sb, atol=1e-6, rtol=0)
    assert torch.equal(la, lb)
    torch.testing.assert_close(ba, bb, atol=1e-3, rtol=0)
    # And the flipped pass really contributes: flip TTA differs from the single pass.
    single = predict_tta(model, [image], TTAOptions(scales=(64,)), min_size=64, max_size=96)[0]
    assert not (len(single["boxes"]) == len(a["boxes"]) and torch.allclose(single["boxes"], a["boxes"]))


@pytest.mark.parametrize("spec", ["multiscale", "flip,multiscale,refine"])
def test_tta_detections_are_valid_in_original_pixels(model: FasterRCNN, spec: str) -> None:
    h0, w0 = 90, 70
    opts = parse_tta(spec, scales=(48, 80))
    det = predict_tta(model, [_image(h0, w0, 6), _image(64, 64, 7)], opts, min_size=64, max_size=96)
    assert len(det) == 2
    d = det[0]
    assert len(d["boxes"]) > 0 and len(d["boxes"]) <= model.roi_heads.detections_per_image
    b = d["boxes"]
    assert torch.isfinite(b).all()
    assert (b[:, [0, 1]] >= 0).all() and (b[:, 2] <= w0 + 1e-4).all() and (b[:, 3] <= h0 + 1e-4).all()
    assert (b[:, 2] > b[:, 0]).all() and (b[:, 3] > b[:, 1]).all()
    assert (d["scores"][:-1] >= d["scores"][1:]).all() and (d["scores"] > model.roi_heads.score_thresh).all()
    assert d["labels"].min() >= 0 and d["labels"].max() < 3


def test_refine_pools_every_first_pass_box_again(model: FasterRCNN) -> None:
    im = resize_for_test(_image(64, 96, 8), 64, 96)
    with torch.inference_mode():
        plain_boxes, plain_scores, _ = candidates(model, [im], refine=False)
        boxes, scores, _ = candidates(model, [im], refine=True)
    r = plain_boxes[0].shape[0]
    assert r > 0 and boxes[0].shape == (2 * r, 3, 4) and scores[0].shape == (2 * r, 3)
    torch.testing.assert_close(boxes[0][:r], plain_boxes[0])  # first pass unchanged, second pass appended
    assert not torch.allclose(scores[0][r:], plain_scores[0])


def test_box_voting_hand_computed() -> None:
    boxes = torch.tensor([[0.0, 0, 10, 10], [1, 1, 11, 11], [0, 0, 10, 10], [50, 50, 60, 60]])
    scores = torch.tensor([0.75, 0.25, 0.9, 0.5])
    labels = torch.tensor([0, 0, 1, 0])
    voted = box_voting(boxes[:1], labels[:1], boxes, scores, labels)
    # IoU([0,0,10,10],[1,1,11,11]) = 81/119 >= 0.5 -> averaged; class 1 and the distant box do not vote.
    torch.testing.assert_close(voted, torch.tensor([[0.25, 0.25, 10.25, 10.25]]))
    # Below the IoU threshold: the box stays itself.
    far = box_voting(boxes[:1], labels[:1], boxes, scores, labels, iou_thresh=0.7)
    torch.testing.assert_close(far, boxes[:1])


def test_parse_tta() -> None:
    assert not parse_tta("").enabled and not parse_tta(None).enabled
    o = parse_tta("flip, refine")
    assert o.flip and o.refine and o.box_voting and o.scales == ()
    assert parse_tta("multiscale").scales == (200, 400, 600, 800, 1000)
    with pytest.raises(ValueError, match="unknown --tta"):
        parse_tta("flip,zoom")


@pytest.mark.parametrize("norm", ["bn", "frozen_bn"])
def test_fold_batchnorm_keeps_detections(norm: str) -> None:
    from torch import nn
    from torchvision.ops import FrozenBatchNorm2d

    from resbackbone.frozen_bn import fold_batchnorm

    cfg = load_detection_config(None, [*TINY, f"model.backbone.norm={norm}"])
    torch.manual_seed(1)
    model = build_faster_rcnn(cfg.model, class_names=CLASSES)
    with torch.no_grad():  # non-trivial statistics, so that folding has something to get wrong
        for m in model.modules():
            if isinstance(m, (nn.BatchNorm2d, FrozenBatchNorm2d)):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.data.uniform_(0.5, 1.5)
    model.eval()
    image = _image(64, 96, 9)
    plain = Predictor(model, min_size=64, max_size=96, device="cpu")([image])[0]
    fused_predictor = Predictor(model, min_size=64, max_size=96, device="cpu", fuse_bn=True)
    fused = fused_predictor([image])[0]
    n_norm = sum(isinstance(m, (nn.BatchNorm2d, FrozenBatchNorm2d)) for m in model.modules())
    assert n_norm > 0  # the caller's model is untouched
    assert not any(isinstance(m, (nn.BatchNorm2d, FrozenBatchNorm2d)) for m in fused_predictor.model.modules())
    assert len(plain["boxes"]) > 0 and len(fused["boxes"]) == len(plain["boxes"])
    torch.testing.assert_close(fused["boxes"], plain["boxes"], atol=1e-3, rtol=0)
    torch.testing.assert_close(fused["scores"], plain["scores"], atol=1e-4, rtol=0)
    assert torch.equal(fused["labels"], plain["labels"])
    with pytest.raises(ValueError, match="eval"):
        fold_batchnorm(model.train())


def test_infer_tool_scores_a_test_set_with_tta(tmp_path: Path, checkpoint: Path) -> None:
    from detection.data import SYNTHETIC_CLASSES, generate_synthetic

    assert list(SYNTHETIC_CLASSES) == CLASSES
    generate_synthetic(tmp_path / "data", num_train=2, num_test=3, image_size=64)
    out = tmp_path / "eval"
    for tta in ("", "flip"):
        assert _tool().main(["--checkpoint", str(checkpoint), "--eval-dataset", "synthetic-test", "--data-root",
                             str(tmp_path / "data"), "--output", str(out), "--tta", tta, "--cpu"]) == 0
        metrics = json.loads((out / "metrics.json").read_text())
        assert metrics["num_images"] == 3 and metrics["tta"] == (tta or "off")
        assert 0.0 <= metrics["mAP"] <= 1.0 and set(metrics["per_class"]) <= set(CLASSES)
