"""Detectron2 FPN Faster R-CNN checkpoints -> our detector: hand-made Detectron2-layout files (CI), then what Detectron2
itself computed for R50-FPN on real VOC crops (``shared/data/detectron2-fpn``, skipped when absent): every
detection, the first proposals and the level each proposal came from equal Detectron2's.
"""

from __future__ import annotations

import json
import os
import pickle
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import pytest
import torch
from torch import Tensor, nn

from detection.checkpoint import load_detector
from detection.config import RoIHeadConfig
from detection.data.voc import VOC_CLASSES
from detection.detectron2 import (
    D2_VOC_MIN_SIZE_TRAIN,
    Detectron2Model,
    Detectron2Options,
    convert_detectron2,
    detectron2_config,
    read_detectron2_state,
)
from detection.faster_rcnn import build_faster_rcnn
from detection.predictor import Predictor
from detection.rpn import RPN
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

# A CPU-sized hand-made FPN: ResNet-18, 32-wide pyramid, 16-wide fc head, 20 proposals.
TINY_FPN = {"fpn_channels": 32, "fc_dim": 16, "post_nms_topk_test": 20}


def _fpn_source(num_classes: int = 1, **kwargs: Any) -> tuple[nn.Module, dict[str, Tensor]]:
    """Our R18-FPN as Detectron2 would define it, with recipe weights, and the same weights under Detectron2's names."""
    cfg = detectron2_like_config("FPN", 18, num_classes, **{**TINY_FPN, **kwargs})
    model = build_faster_rcnn(cfg, weights=None)
    d2 = detectron2_state(model.state_dict())
    ours = dict(zip([k for k in model.state_dict() if not k.endswith("num_batches_tracked")], d2.values()))
    model.load_state_dict(ours, strict=True)
    return model.eval(), d2


def test_detectron2_defaults_per_architecture() -> None:
    """Base-RCNN-FPN.yaml for FPN; no detection size floor for any architecture; the VOC configs' training sizes."""
    fpn = detectron2_config(Detectron2Model("FPN", 50, 80, 3, 1024, 7, False), Detectron2Options(), {}).model
    assert (fpn.rpn.pre_nms_topk_train, fpn.rpn.post_nms_topk_train) == (2000, 1000)
    assert (fpn.rpn.pre_nms_topk_test, fpn.rpn.post_nms_topk_test, fpn.rpn.nms_thresh) == (1000, 1000, 0.7)
    assert fpn.rpn.min_box_size == 0.0 and fpn.anchors.sizes == (32.0, 64.0, 128.0, 256.0, 512.0)
    assert fpn.anchors.convention == "detectron2" and fpn.anchors.offset == 0.0
    rh = fpn.roi_heads
    assert (rh.pooler_type, rh.pooler_resolution, rh.sampling_ratio, rh.aligned) == ("roi_align", 7, 0, True)
    assert (rh.canonical_box_size, rh.canonical_level, rh.level_epsilon, rh.level_epsilon_in_log) == (224, 4, 1e-8,
                                                                                                     True)
    assert (rh.score_thresh, rh.nms_thresh, rh.detections_per_image, rh.min_box_size) == (0.05, 0.5, 100, 0.0)
    assert fpn.fpn.norm == "none" and fpn.backbone.norm_eps == 1e-5 and fpn.pixel.channel_order == "BGR"
    for arch, res in (("C4", 14), ("DC5", 7)):
        one = detectron2_config(Detectron2Model(arch, 50, 80, 15, 1024, res, False), Detectron2Options(), {}).model
        assert (one.rpn.pre_nms_topk_train, one.rpn.pre_nms_topk_test) == (12000, 6000)
        assert one.roi_heads.min_box_size == 0.0 and one.rpn.min_box_size == 0.0
    voc = detectron2_config(Detectron2Model("FPN", 50, 20, 3, 1024, 7, False), Detectron2Options(), {})
    assert voc.data.train == "voc07+12" and voc.data.test == "voc07-test"
    assert voc.data.min_size_train == D2_VOC_MIN_SIZE_TRAIN == tuple(range(480, 801, 32))


@pytest.mark.parametrize("head", [{}, {"num_conv": 2, "conv_dim": 8, "num_fc": 1}], ids=["2fc", "2conv1fc"])
def test_hand_made_detectron2_fpn_checkpoint_converts_exactly(tmp_path: Path, head: dict[str, int],
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    source, d2 = _fpn_source(**head)
    assert "backbone.bottom_up.res2.0.conv1.norm.running_var" in d2 and "backbone.fpn_output5.bias" in d2
    names = tmp_path / "classes.txt"
    names.write_text("widget\n")
    outputs = {}
    for layout, src in (("pkl", write_model_zoo_pkl(d2, tmp_path / "model_final_fpn.pkl")),
                        ("pth", write_training_pth(d2, tmp_path / "model_final.pth"))):
        out = tmp_path / f"converted_{layout}.pth"
        assert convert_weights.main(["--detectron2", str(src), "--output", str(out), "--class-names", str(names),
                                     "--post-nms-topk-test", "20"]) == 0
        assert "R18-FPN, 1 classes" in capsys.readouterr().out
        outputs[layout] = out
    model, cfg, class_names = load_detector(outputs["pkl"])
    m = cfg.model
    assert class_names == ["widget"] and m.arch == "FPN" and m.backbone.name == "resnet18"
    assert m.fpn.out_channels == 32 and m.roi_heads.fc_dim == 16 and m.roi_heads.pooler_resolution == 7
    want_head = {"num_conv": 0, "conv_dim": RoIHeadConfig.conv_dim, "num_fc": 2, **head}
    assert {k: getattr(m.roi_heads, k) for k in want_head} == want_head
    assert m.anchors.convention == "detectron2" and m.backbone.stride_in_1x1 and m.backbone.norm == "frozen_bn"
    want = source.state_dict()
    for layout, out in outputs.items():
        got = torch.load(out, weights_only=True)["state_dict"]
        assert got.keys() == want.keys(), layout
        assert all(torch.equal(got[k], want[k]) for k in want), layout
    # Same weights, same settings: the converted model computes exactly what the source computes.
    image = torch.from_numpy(noise_image(64, 96, 3)).permute(2, 0, 1)
    with torch.no_grad():
        a, b = source([image])[0], model([image])[0]
        batch, sizes = model.preprocess([image])
        proposals = model.rpn(model.trunk(batch), sizes)[0][0]
    assert len(proposals) == 20
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_mask_rcnn_fpn_converts_its_box_part_and_voc_names_default(tmp_path: Path) -> None:
    _, d2 = _fpn_source(num_classes=20)
    mask = {"roi_heads.mask_head.mask_fcn1.weight": torch.zeros(8, 32, 3, 3),
            "roi_heads.mask_head.mask_fcn1.bias": torch.zeros(8),
            "roi_heads.mask_head.predictor.weight": torch.zeros(20, 8, 1, 1)}
    path = write_training_pth({**d2, **mask}, tmp_path / "mask_rcnn_R_18_FPN.pth")
    model, cfg, names, info = convert_detectron2(path, Detectron2Options(post_nms_topk_test=20))
    assert info.arch == "FPN" and info.dropped == {"mask head": 3} and names == list(VOC_CLASSES)
    assert cfg.model.rpn.pre_nms_topk_test == 1000  # per level (Base-RCNN-FPN.yaml), not C4's 6000 per image
    assert torch.equal(model.trunk.lateral_convs[0].weight, d2["backbone.fpn_lateral2.weight"])
    assert torch.equal(model.trunk.output_convs[3].bias, d2["backbone.fpn_output5.bias"])


def test_fpn_files_that_do_not_fit_get_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    names = tmp_path / "names.txt"
    names.write_text("widget\n")

    def convert(state: dict[str, Tensor], name: str, *extra: str) -> str:
        path = write_training_pth(state, tmp_path / name)
        assert convert_weights.main(["--detectron2", str(path), "--output", str(tmp_path / "o.pth"),
                                     "--class-names", str(names), *extra]) == 2
        err = capsys.readouterr().err.strip()
        assert "\n" not in err and "Traceback" not in err and str(path) in err
        return err

    _, good = _fpn_source()
    without = {k: v for k, v in good.items() if k != "backbone.fpn_output3.bias"}
    assert "missing ['trunk.output_convs.1.bias']" in convert(without, "missing.pth")
    no_p2 = {k: v for k, v in good.items() if not k.startswith("backbone.fpn_lateral2.")}
    assert "backbone.fpn_lateral2.weight" in convert(no_p2, "no_p2.pth")
    extra = {**good, "backbone.fpn_lateral6.weight": torch.zeros(32, 512, 1, 1)}
    assert "fit no part" in (err := convert(extra, "extra.pth")) and "backbone.fpn_lateral6.weight" in err
    wrong = {**good, "backbone.fpn_lateral3.weight": torch.zeros(32, 64, 1, 1)}
    assert "wrong shapes" in (err := convert(wrong, "shape.pth")) and "trunk.lateral_convs.1.weight" in err
    normed = {**{k: v for k, v in good.items() if k != "backbone.fpn_lateral2.bias"},
              "backbone.fpn_lateral2.norm.weight": torch.ones(32), "backbone.fpn_lateral2.norm.bias": torch.zeros(32)}
    assert "FPN.NORM" in convert(normed, "gn.pth")
    # One size per level: three sizes cannot be shared by P2..P6.
    assert "--anchor-sizes" in convert(good, "anchors.pth", "--anchor-sizes", "32,64,128")
    # RetinaNet (keys as Detectron2's retinanet_R_50_FPN_1x names them): refused, not mistaken for an FPN R-CNN.
    retina = {k: v for k, v in good.items() if k.startswith("backbone.")}
    retina.update({"backbone.top_block.p6.weight": torch.zeros(32, 512, 3, 3),
                   "head.cls_subnet.0.weight": torch.zeros(32, 32, 3, 3), "head.cls_subnet.0.bias": torch.zeros(32),
                   "head.bbox_subnet.0.weight": torch.zeros(32, 32, 3, 3),
                   "head.cls_score.weight": torch.zeros(9, 32, 3, 3),
                   "head.bbox_pred.weight": torch.zeros(36, 32, 3, 3)})
    err = convert(retina, "retinanet.pth")
    assert "RetinaNet" in err and "not a Faster R-CNN" in err
    truncated = tmp_path / "cut.pkl"
    truncated.write_bytes(pickle.dumps({"model": {k: v.numpy() for k, v in good.items()}})[:2000])
    assert convert_weights.main(["--detectron2", str(truncated), "--output", str(tmp_path / "o.pth")]) == 2
    assert "cut.pkl" in capsys.readouterr().err and not (tmp_path / "o.pth").exists()


# ------------------------------------------------------------------------------ against Detectron2's own outputs

D2_DIR = SHARED_DATA / "detectron2-fpn"
needs_d2 = pytest.mark.skipif(not (D2_DIR / "outputs.json").is_file(), reason="shared/data/detectron2-fpn not present")
D2_FPN = "COCO-Detection/faster_rcnn_R_50_FPN_1x.yaml"
D2_RETINANET = "COCO-Detection/retinanet_R_50_FPN_1x.yaml"


@pytest.fixture(scope="module")
def d2_reference() -> dict[str, Any]:
    return json.loads((D2_DIR / "outputs.json").read_text())


@pytest.fixture(scope="module")
def d2_converted(tmp_path_factory: pytest.TempPathFactory, d2_reference: dict[str, Any]) -> Path:
    """R50-FPN's exact Detectron2 weights in both checkpoint layouts, converted by the tool (the pkl one)."""
    keys = json.loads((D2_DIR / "keys.json").read_text())[D2_FPN]
    root = tmp_path_factory.mktemp("d2fpn")
    state = {k: recipe_tensor(k, tuple(shape), d2_reference["salt"]) for k, shape in keys}
    pkl = write_model_zoo_pkl(state, root / "model_final_fpn.pkl")
    pth = write_training_pth(state, root / "model_final_fpn.pth")
    a, b = read_detectron2_state(pkl), read_detectron2_state(pth)
    assert list(a) == [k for k, _ in keys] and all(torch.equal(a[k], b[k]) for k in a)
    out = root / "fpn.ours.pth"
    # The tool's defaults: Detectron2's per-level 1000 for FPN.
    assert convert_weights.main(["--detectron2", str(pkl), "--output", str(out)]) == 0
    return out


def _image(image_id: str) -> Tensor:
    """A crop as callers pass images: the BGR file -> RGB ``(3, H, W)`` uint8."""
    return torch.from_numpy(cv2.imread(str(D2_DIR / "images" / f"{image_id}.png"))[..., ::-1].copy()).permute(2, 0, 1)


def _d2(ref: dict[str, Any]) -> dict[str, Any]:
    """Detectron2's recorded detections in our key names (its ``classes`` are our labels)."""
    return {"boxes": ref["boxes"], "scores": ref["scores"], "labels": ref["classes"]}


def proposal_levels(rpn: RPN, features: dict[str, Tensor], image_sizes: Tensor, proposals: Tensor,
                    logits: Tensor) -> list[int]:
    """How many of one image's proposals ``(R, 4)`` (logits ``(R,)``) came from each RPN level.

    Each level run alone (its top-k, NMS within it) yields exactly that level's candidates of the multi-level run,
    NMS being per level there too; each proposal is found among them by its logit (copied, so equal) and box (the
    same decode, to float rounding).
    """
    pred = rpn.predict(features)
    counts, found, start = [], torch.zeros(len(proposals), dtype=torch.long), 0
    for m in pred.level_sizes:
        boxes_l, logits_l = rpn.propose(pred.anchors[start:start + m], pred.logits[:, start:start + m],
                                        pred.deltas[:, start:start + m], image_sizes)
        hit = (logits[:, None] == logits_l[0][None]) & ((proposals[:, None] - boxes_l[0][None]).abs().amax(2) < 1e-3)
        counts.append(int(hit.any(1).sum()))
        found += hit.any(1).long()
        start += m
    assert bool((found == 1).all()), "a proposal matched no level or several"
    return counts


def _check_proposals(rpn: RPN, features: dict[str, Tensor], image_sizes: Tensor, proposals: Tensor, logits: Tensor,
                     ref: dict[str, Any], what: str) -> None:
    assert len(proposals) == ref["num_proposals"], what
    n = len(ref["proposal_boxes"])
    torch.testing.assert_close(proposals[:n], torch.tensor(ref["proposal_boxes"]), atol=BOX_TOL_PX, rtol=0,
                               msg=lambda m: f"{what} boxes: {m}")
    torch.testing.assert_close(logits[:n], torch.tensor(ref["proposal_logits"]), atol=SCORE_TOL, rtol=0,
                               msg=lambda m: f"{what} logits: {m}")
    assert proposal_levels(rpn, features, image_sizes, proposals, logits) == ref["proposal_levels"], what


class _RPNRecorder:
    """Keeps the RPN's inputs and outputs of every forward (a forward hook): the proposals of a Predictor run."""

    def __init__(self, rpn: nn.Module) -> None:
        self.calls: list[tuple[Sequence[Any], Any]] = []
        self.handle = rpn.register_forward_hook(lambda _, args, out: self.calls.append((args, out)))


@pytest.mark.slow
@needs_d2
def test_converted_fpn_matches_detectron2_through_the_predictor(d2_converted: Path,
                                                                d2_reference: dict[str, Any]) -> None:
    """The 32-multiple crops at their own size: detections, first proposals and their levels from one run each."""
    ref = d2_reference["models"][D2_FPN]["images"]
    torch.set_num_threads(max(1, len(os.sched_getaffinity(0))))  # compute-bound: all cores (one_thread restores)
    model, cfg, _ = load_detector(d2_converted)
    assert cfg.model.arch == "FPN" and cfg.model.rpn.pre_nms_topk_test == 1000
    recorder = _RPNRecorder(model.rpn)
    try:
        for image_id in ("000005", "000007"):
            h, w = ref[image_id]["input_hw"]
            assert h % 32 == 0 and w % 32 == 0
            predictor = Predictor(model, min_size=min(h, w), max_size=max(h, w), device="cpu", exact=True)
            assert_same_detections(predictor([D2_DIR / "images" / f"{image_id}.png"])[0], _d2(ref[image_id]),
                                   f"FPN {image_id} Predictor")
            (features, sizes), (proposals, logits, _) = recorder.calls.pop()
            assert sizes.tolist() == [[h, w]]  # not resampled
            with torch.inference_mode():
                _check_proposals(model.rpn, features, sizes, proposals[0], logits[0], ref[image_id],
                                 f"FPN {image_id} proposals")
    finally:
        recorder.handle.remove()


@pytest.mark.slow
@needs_d2
def test_converted_fpn_matches_detectron2_on_a_padded_crop_through_infer(d2_converted: Path,
                                                                         d2_reference: dict[str, Any],
                                                                         tmp_path: Path) -> None:
    """000009 is 345 x 467: padded to 352 x 480 with zeros after normalization, boxes clipped to the real size."""
    r = d2_reference["models"][D2_FPN]["images"]["000009"]
    h, w = r["input_hw"]
    assert (h, w) == (345, 467)
    torch.set_num_threads(max(1, len(os.sched_getaffinity(0))))
    model, _, _ = load_detector(d2_converted)
    image = _image("000009")
    with torch.inference_mode():
        batch, sizes = model.preprocess([image])
        assert tuple(batch.shape[2:]) == (352, 480)
        features = model.trunk(batch)
        proposals, logits, _ = model.rpn(features, sizes)
        _check_proposals(model.rpn, features, sizes, proposals[0], logits[0], r, "FPN 000009 proposals")
    inputs = tmp_path / "crops"
    inputs.mkdir()
    (inputs / "000009.png").symlink_to(D2_DIR / "images" / "000009.png")
    out = tmp_path / "out"
    assert infer.main(["--checkpoint", str(d2_converted), "--input", str(inputs), "--output", str(out),
                       "--score-thresh", "0", "--min-size", str(h), "--max-size", str(w), "--cpu", "--no-draw",
                       "--exact"]) == 0
    result = json.loads((out / "detections.json").read_text())["images"]["000009.png"]
    assert (result["height"], result["width"]) == (h, w)
    dets = result["detections"]
    got = {"boxes": [d["box"] for d in dets], "scores": [d["score"] for d in dets],
           "labels": [d["label"] for d in dets]}
    assert_same_detections(got, _d2(r), "FPN 000009 tools/infer.py")


@needs_d2
def test_detectron2_retinanet_file_is_refused(d2_reference: dict[str, Any], tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    """The real RetinaNet key set (shapes only: the weights are never read into a model)."""
    keys = json.loads((D2_DIR / "keys.json").read_text())[D2_RETINANET]
    path = write_training_pth({k: torch.zeros(1) for k, _ in keys}, tmp_path / "retinanet.pth")
    assert convert_weights.main(["--detectron2", str(path), "--output", str(tmp_path / "o.pth")]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "RetinaNet" in err and "not a Faster R-CNN" in err
