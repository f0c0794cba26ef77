"""Detectron2 checkpoints -> our detector: hand-made Detectron2-layout files (CI), then what Detectron2 itself computed
on real VOC crops (``shared/data/detectron2``, skipped when absent): every detection and the first proposals equal.
"""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path
from typing import Any

import cv2
import pytest
import torch

from detection.anchors import base_anchors
from detection.checkpoint import load_detector
from detection.detectron2 import Detectron2Options, convert_detectron2, read_detectron2_state
from detection.faster_rcnn import build_faster_rcnn
from detection.predictor import Predictor
from tests.detection.detectron2_helpers import (
    detectron2_like_config,
    detectron2_state,
    recipe_tensor,
    write_model_zoo_pkl,
    write_training_pth,
)
from tests.helpers import BOX_TOL_PX, SCORE_TOL, SHARED_DATA, assert_same_detections, noise_image
from tools import convert_weights, infer

pytestmark = pytest.mark.usefixtures("one_thread")


def test_detectron2_anchor_convention_is_size_major_and_exact() -> None:
    sizes, ratios = (32.0, 64.0), (0.5, 1.0, 2.0)
    cells = base_anchors(sizes, ratios, "detectron2")
    assert cells.shape == (6, 4) and cells.dtype == torch.float32
    w = cells[:, 2] - cells[:, 0]
    h = cells[:, 3] - cells[:, 1]
    # Size-major: rows 0-2 are size 32 at ratios 0.5, 1, 2; area = size^2 and h / w = ratio, unrounded.
    torch.testing.assert_close(w * h, torch.tensor([32.0**2] * 3 + [64.0**2] * 3), rtol=1e-6, atol=0)
    torch.testing.assert_close(h / w, torch.tensor(ratios * 2), rtol=1e-6, atol=0)
    assert abs(float(w[0]) - 45.254833) < 1e-5  # sqrt(32^2 / 0.5): not rounded to 45 or 46
    # Ours (torchvision's) stays the default: ratio-major, integer coordinates.
    tv = base_anchors(sizes, ratios)
    assert torch.equal(tv, tv.round()) and float(tv[1, 2] - tv[1, 0]) == 90.0  # row 1: ratio 0.5, size 64


def _source_model(arch: str, depth: int, num_classes: int, **kwargs: Any) -> tuple[torch.nn.Module, dict]:
    """Our model as Detectron2 would define it, with recipe weights, and the same weights under Detectron2's names."""
    cfg = detectron2_like_config(arch, depth, num_classes, **kwargs)
    model = build_faster_rcnn(cfg, weights=None)
    d2 = detectron2_state(model.state_dict())
    ours = dict(zip([k for k in model.state_dict() if not k.endswith("num_batches_tracked")], d2.values()))
    model.load_state_dict(ours, strict=True)
    return model.eval(), d2


@pytest.mark.parametrize(("arch", "depth", "fc_dim"), [("C4", 50, 1024), ("DC5", 18, 16)])
def test_hand_made_detectron2_checkpoint_converts_exactly(tmp_path: Path, arch: str, depth: int, fc_dim: int,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    source, d2 = _source_model(arch, depth, 1, fc_dim=fc_dim, post_nms_topk_test=20)
    names = tmp_path / "classes.txt"
    names.write_text("widget\n")
    pkl = write_model_zoo_pkl(d2, tmp_path / "model_final_abc.pkl")
    pth = write_training_pth(d2, tmp_path / "model_final.pth")
    outputs = {}
    for layout, src in (("pkl", pkl), ("pth", pth)):
        out = tmp_path / f"converted_{layout}.pth"
        assert convert_weights.main(["--detectron2", str(src), "--output", str(out), "--class-names", str(names),
                                     "--post-nms-topk-test", "20"]) == 0
        assert f"R{depth}-{arch}, 1 classes" in capsys.readouterr().out
        outputs[layout] = out
    model, cfg, class_names = load_detector(outputs["pkl"])
    assert class_names == ["widget"] and cfg.model.arch == arch and cfg.model.backbone.name == f"resnet{depth}"
    assert cfg.model.anchors.convention == "detectron2" and cfg.model.pixel.channel_order == "BGR"
    assert cfg.model.backbone.stride_in_1x1 and cfg.model.backbone.norm == "frozen_bn"
    assert (cfg.data.min_size_test, cfg.data.max_size_test) == (800, 1333)
    want = source.state_dict()
    for layout, out in outputs.items():
        got = torch.load(out, weights_only=True)["state_dict"]
        assert got.keys() == want.keys(), layout
        assert all(torch.equal(got[k], want[k]) for k in want), layout
    # Same weights, same settings: the converted model computes exactly what the source computes.
    image = torch.from_numpy(noise_image(64, 96, 3)).permute(2, 0, 1)
    with torch.no_grad():
        a, b = source([image])[0], model([image])[0]
        proposals = model.rpn(model.trunk(model.preprocess([image])[0]), torch.tensor([[64, 96]]))[0][0]
    assert len(proposals) == 20
    assert all(torch.equal(a[k], b[k]) for k in a)


def _minimal_c4_state() -> dict[str, torch.Tensor]:
    _, d2 = _source_model("C4", 18, 1, post_nms_topk_test=20)
    return d2


def test_files_that_fit_neither_architecture_get_one_line(tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    def convert(state_or_obj: Any, name: str, *extra: str) -> str:
        path = tmp_path / name
        if name.endswith(".pkl"):
            path.write_bytes(pickle.dumps(state_or_obj))
        else:
            torch.save(state_or_obj, path)
        assert convert_weights.main(["--detectron2", str(path), "--output", str(tmp_path / "o.pth"), *extra]) == 2
        err = capsys.readouterr().err.strip()
        assert "\n" not in err and "Traceback" not in err and str(path) in err
        return err

    good = _minimal_c4_state()
    fpn = {"backbone.bottom_up.stem.conv1.weight": torch.zeros(64, 3, 7, 7),
           "backbone.fpn_lateral2.weight": torch.zeros(1)}
    assert "FPN" in convert({"model": fpn}, "fpn.pth")
    assert "fit neither" in convert({"model": {"encoder.layer1.weight": torch.zeros(2, 2)}}, "bert.pth")
    assert "roi_heads.extra.weight" in convert({"model": {**good, "roi_heads.extra.weight": torch.zeros(3)}}, "x.pth",
                                               "--class-names", _names(tmp_path, 1))
    assert "2 class names" in convert({"model": good}, "names.pth", "--class-names", _names(tmp_path, 2))
    assert "1 classes" in convert({"model": good}, "nonames.pth")  # neither 80 nor 20: names are required
    # 15 anchors per location assumed; a file with 3 needs the model's sizes and ratios.
    assert "--anchor-sizes" in convert({"model": good}, "a.pth", "--class-names", _names(tmp_path, 1),
                                       "--anchor-sizes", "32,64,128")
    wrong = {**good, "roi_heads.res5.0.conv1.weight": torch.zeros(7, 256, 1, 1)}
    assert "wrong shapes" in convert({"model": wrong}, "shape.pth", "--class-names", _names(tmp_path, 1))
    truncated = tmp_path / "cut.pkl"
    truncated.write_bytes(pickle.dumps({"model": {k: v.numpy() for k, v in good.items()}})[:1000])
    assert convert_weights.main(["--detectron2", str(truncated), "--output", str(tmp_path / "o.pth")]) == 2
    assert "cut.pkl" in capsys.readouterr().err
    # A pickle that would run code is refused, not executed.
    evil = tmp_path / "evil.pkl"
    marker = tmp_path / "ran"
    evil.write_bytes(pickle.dumps(_Evil(str(marker))))
    assert convert_weights.main(["--detectron2", str(evil), "--output", str(tmp_path / "o.pth")]) == 2
    assert "refusing" in capsys.readouterr().err and not marker.exists()
    assert not (tmp_path / "o.pth").exists()


class _Evil:
    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> tuple:
        return (Path.touch, (Path(self.path),))


def _names(tmp_path: Path, n: int) -> str:
    path = tmp_path / f"names{n}.txt"
    path.write_text("".join(f"c{i}\n" for i in range(n)))
    return str(path)


def test_class_agnostic_boxes_and_mask_heads_convert(tmp_path: Path) -> None:
    source, d2 = _source_model("C4", 18, 3, post_nms_topk_test=20)
    agnostic = dict(d2)
    # One box per RoI for all classes (CLS_AGNOSTIC_BBOX_REG) and a Mask R-CNN mask head to leave out.
    agnostic["roi_heads.box_predictor.bbox_pred.weight"] = d2["roi_heads.box_predictor.bbox_pred.weight"][:4]
    agnostic["roi_heads.box_predictor.bbox_pred.bias"] = d2["roi_heads.box_predictor.bbox_pred.bias"][:4]
    agnostic["roi_heads.mask_head.predictor.weight"] = torch.zeros(3, 256, 1, 1)
    path = write_training_pth(agnostic, tmp_path / "mask_rcnn.pth")
    model, _, _, info = convert_detectron2(path, Detectron2Options(class_names=["a", "b", "c"], post_nms_topk_test=20))
    assert info.class_agnostic_box and info.dropped == {"mask head": 1}
    w = model.roi_heads.bbox_pred.weight
    assert all(torch.equal(w[4 * c: 4 * c + 4], agnostic["roi_heads.box_predictor.bbox_pred.weight"]) for c in range(3))
    assert read_detectron2_state(path).keys() == agnostic.keys()


# ------------------------------------------------------------------------------ against Detectron2's own outputs

D2_DIR = SHARED_DATA / "detectron2"
needs_d2 = pytest.mark.skipif(not (D2_DIR / "outputs.json").is_file(), reason="shared/data/detectron2 not present")
D2_MODELS = {"C4": "COCO-Detection/faster_rcnn_R_50_C4_1x.yaml", "DC5": "COCO-Detection/faster_rcnn_R_50_DC5_1x.yaml"}


@pytest.fixture(scope="module")
def d2_reference() -> dict[str, Any]:
    return json.loads((D2_DIR / "outputs.json").read_text())


@pytest.fixture(scope="module")
def d2_converted(tmp_path_factory: pytest.TempPathFactory, d2_reference: dict[str, Any]) -> dict[str, Path]:
    """Each model's exact Detectron2 weights in both checkpoint layouts, converted by the tool (the pkl one)."""
    keys = json.loads((D2_DIR / "keys.json").read_text())
    root = tmp_path_factory.mktemp("d2")
    out = {}
    for arch, name in D2_MODELS.items():
        state = {k: recipe_tensor(k, tuple(shape), d2_reference["salt"]) for k, shape in keys[name]}
        pkl = write_model_zoo_pkl(state, root / f"{arch}.pkl")
        pth = write_training_pth(state, root / f"{arch}.pth")
        # Both layouts read to the same tensors (the conversion after reading is shared and tested above).
        a, b = read_detectron2_state(pkl), read_detectron2_state(pth)
        assert list(a) == [k for k, _ in keys[name]] and all(torch.equal(a[k], b[k]) for k in a)
        out[arch] = root / f"{arch}.ours.pth"
        assert convert_weights.main(["--detectron2", str(pkl), "--output", str(out[arch])]) == 0
    return out


def _d2(ref: dict[str, Any]) -> dict[str, Any]:
    """Detectron2's recorded detections in our key names (its ``classes`` are our labels)."""
    return {"boxes": ref["boxes"], "scores": ref["scores"], "labels": ref["classes"]}


@pytest.mark.slow
@needs_d2
@pytest.mark.parametrize("arch", ["C4", "DC5"])
def test_converted_model_reproduces_detectron2(arch: str, d2_converted: dict[str, Path],
                                               d2_reference: dict[str, Any], tmp_path: Path) -> None:
    ref = d2_reference["models"][D2_MODELS[arch]]["images"]
    torch.set_num_threads(max(1, len(os.sched_getaffinity(0))))  # compute-bound: all cores (one_thread restores)
    model, cfg, _ = load_detector(d2_converted[arch])
    assert cfg.model.anchors.convention == "detectron2" and cfg.model.arch == arch
    # The first proposals, on every crop (cheap: trunk + RPN).
    for image_id, r in ref.items():
        image = torch.from_numpy(cv2.imread(str(D2_DIR / "images" / f"{image_id}.png"))[..., ::-1].copy())
        image = image.permute(2, 0, 1)  # BGR file -> RGB (3, H, W), as callers pass images
        assert list(image.shape[1:]) == r["input_hw"]
        with torch.no_grad():
            batch, sizes = model.preprocess([image])
            proposals, logits, _ = model.rpn(model.trunk(batch), sizes)
        assert len(proposals[0]) == r["num_proposals"]
        n = len(r["proposal_boxes"])
        torch.testing.assert_close(proposals[0][:n], torch.tensor(r["proposal_boxes"]), atol=BOX_TOL_PX, rtol=0)
        torch.testing.assert_close(logits[0][:n], torch.tensor(r["proposal_logits"]), atol=SCORE_TOL, rtol=0)
    # Detections at each crop's own size (no resampling), every crop once (res5 per RoI makes a C4 crop ~10-20 s
    # on 2 CPU cores): 000007 (320 x 480) through the Predictor, the two 352 x 480 crops through tools/infer.py.
    h, w = ref["000007"]["input_hw"]
    predictor = Predictor(model, min_size=min(h, w), max_size=max(h, w), device="cpu", exact=True)
    assert_same_detections(predictor([D2_DIR / "images" / "000007.png"])[0], _d2(ref["000007"]),
                           f"{arch} 000007 Predictor")
    inputs = tmp_path / "crops"
    inputs.mkdir()
    for image_id in ("000005", "000009"):
        assert ref[image_id]["input_hw"] == [352, 480]
        (inputs / f"{image_id}.png").symlink_to(D2_DIR / "images" / f"{image_id}.png")
    out = tmp_path / "out"
    assert infer.main(["--checkpoint", str(d2_converted[arch]), "--input", str(inputs), "--output", str(out),
                       "--score-thresh", "0", "--min-size", "352", "--max-size", "480", "--cpu", "--no-draw",
                       "--exact"]) == 0
    images = json.loads((out / "detections.json").read_text())["images"]
    for image_id in ("000005", "000009"):
        dets = images[f"{image_id}.png"]["detections"]
        got = {"boxes": [d["box"] for d in dets], "scores": [d["score"] for d in dets],
               "labels": [d["label"] for d in dets]}
        assert_same_detections(got, _d2(ref[image_id]), f"{arch} {image_id} tools/infer.py")
