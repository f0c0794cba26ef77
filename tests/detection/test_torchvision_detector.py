"""torchvision FPN Faster R-CNN files -> our detector: torchvision's own ``fasterrcnn_resnet50_fpn`` (v1, with the
COCO_V1 weights' frozen BN of epsilon 0) and ``fasterrcnn_resnet50_fpn_v2`` with seeded random weights, converted by
``tools/convert_weights.py --torchvision-detector``, give the same proposals and detections on real VOC images (a
generated image when ``shared/data`` is absent); foreign files are one line; fine-tuning keeps shared class rows.

How the random weights are made to behave like trained ones (else a 50-layer random network explodes, and nothing or
everything is detected): BN statistics are measured on the image (train-mode pass, cumulative average) and then
perturbed, so every BN computes a non-trivial affine map with moderate activations; the head weights are scaled to
the measured input size (RPN logits of std ~1.5, class logits of std ~2) and the background bias is set so that
some tens of detections of several classes pass 0.05. The ten "N/A" rows of the 91-row COCO layout get a very low
bias, as in a trained model (never a target): the converter drops them, and with them their (then negligible)
share of torchvision's softmax denominator.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import torch
import torchvision
from torch import nn
from torchvision.models.detection._utils import overwrite_eps
from torchvision.ops import FrozenBatchNorm2d

from detection.checkpoint import init_from_detector, load_detector, read_detector_file_meta
from detection.data.coco import COCO_CLASS_NAMES
from detection.data.transforms import decode_image
from detection.faster_rcnn import build_faster_rcnn
from detection.predictor import Predictor
from detection.torchvision_detector import TV_COCO_SLOTS, UNUSED_SLOT
from resbackbone.pixels import PixelSpec
from tests.helpers import BOX_TOL_PX, SCORE_TOL, SHARED_DATA, assert_same_detections, noise_image
from tools import convert_weights

pytestmark = pytest.mark.usefixtures("one_thread")

VOC_IMAGES = SHARED_DATA / "voc" / "VOCdevkit" / "VOC2007" / "JPEGImages"
# A long-side cap no image reaches: torchvision's transform then resizes by exactly min_size / shorter side = 1.
NO_CAP = 100_000
# The calibration's targets (see the module docstring): logit / delta standard deviations, and how many (RoI,
# class) pairs of the calibration proposals may score above torchvision's 0.05 before NMS.
RPN_LOGIT_STD, RPN_DELTA_STD, CLS_LOGIT_STD, BOX_DELTA_STD = 1.5, 0.15, 2.0, 0.8
CALIBRATION_ROIS, CANDIDATES_PER_CALIBRATION = 300, 40
UNUSED_BIAS = -30.0
# torchvision's ImageNet pixel statistics (its detection transform's defaults), RGB in [0, 1].
TV_MEAN, TV_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
COCO_ROWS = [i for i, n in enumerate(TV_COCO_SLOTS, start=1) if n != UNUSED_SLOT]


# The sizes of the VOC images used, for the generated stand-ins (000004 pads to an odd multiple of 32 rows).
VOC_SIZES = {"000001": (353, 500), "000004": (406, 500), "000005": (375, 500)}


def _images(ids: tuple[str, ...]) -> list[np.ndarray]:
    """Real VOC2007 images (H, W, 3) uint8 RGB, or generated ones of the same sizes when shared/data is absent:
    blurred noise with bright rectangles (pixel noise alone makes a random network's features, and their rounding
    differences, explode)."""
    if VOC_IMAGES.is_dir():
        return [decode_image(VOC_IMAGES / f"{i}.jpg") for i in ids]
    return [cv2.GaussianBlur(noise_image(*VOC_SIZES[i], seed=k), (0, 0), 4) for k, i in enumerate(ids)]


def _tv_input(image: np.ndarray) -> torch.Tensor:
    """torchvision's input convention: (3, H, W) float RGB in [0, 1]."""
    return torch.from_numpy(image).permute(2, 0, 1).float() / 255.0


def _freeze_bn(module: nn.Module) -> None:
    """Every nn.BatchNorm2d under ``module`` -> torchvision's FrozenBatchNorm2d with the same tensors (what
    fasterrcnn_resnet50_fpn builds when it loads weights)."""
    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d):
            frozen = FrozenBatchNorm2d(child.num_features, eps=child.eps)
            for key in ("weight", "bias", "running_mean", "running_var"):
                getattr(frozen, key).copy_(getattr(child, key).detach())
            setattr(module, name, frozen)
        else:
            _freeze_bn(child)


@torch.no_grad()
def _calibrate_heads(model: nn.Module, images: list[torch.Tensor], gen: torch.Generator) -> None:
    """Scale the RPN and box-predictor weights to their measured inputs on ``images``; set the background bias
    (see the module docstring). ``model`` in eval mode with its final trunk and its transform set to no resize."""
    batches = []
    for x in images:
        model.transform.min_size = (min(x.shape[1:]),)
        batch, _ = model.transform([x])
        batches.append((batch, model.backbone(batch.tensors)))
    head = model.rpn.head
    t = batches[0][1]["0"]
    for conv in head.conv:
        t = conv(t)
    scale = float(t.pow(2).mean().sqrt()) * head.cls_logits.in_channels ** 0.5
    head.cls_logits.weight.normal_(0.0, RPN_LOGIT_STD / scale, generator=gen)
    head.bbox_pred.weight.normal_(0.0, RPN_DELTA_STD / scale, generator=gen)
    xs = []
    for batch, feats in batches:
        proposals, _ = model.rpn(batch, feats)
        rois = [p[:CALIBRATION_ROIS] for p in proposals]
        xs.append(model.roi_heads.box_head(model.roi_heads.box_roi_pool(feats, rois, batch.image_sizes)))
    x = torch.cat(xs)
    pred = model.roi_heads.box_predictor
    scale = float(x.pow(2).mean().sqrt()) * pred.cls_score.in_features ** 0.5
    pred.bbox_pred.weight.normal_(0.0, BOX_DELTA_STD / scale, generator=gen)
    # Class logits from the features' variation across RoIs: post-ReLU features share a large positive mean, which
    # would otherwise give one class the top logit on every RoI.
    mean = x.mean(0)
    scale = float((x - mean).pow(2).mean().sqrt()) * pred.cls_score.in_features ** 0.5
    pred.cls_score.weight.normal_(0.0, CLS_LOGIT_STD / scale, generator=gen)
    pred.cls_score.weight[0] = 0.0  # the background logit is its bias alone
    pred.cls_score.bias.copy_(-pred.cls_score.weight @ mean)
    if pred.cls_score.out_features == len(TV_COCO_SLOTS) + 1:
        unused = [i for i, n in enumerate(TV_COCO_SLOTS, start=1) if n == UNUSED_SLOT]
        pred.cls_score.bias[unused] = UNUSED_BIAS
    logits = pred.cls_score(x)
    target = CANDIDATES_PER_CALIBRATION * len(images)
    lo, hi = 0.0, 50.0
    for _ in range(30):  # bisection: the background bias that lets `target` (RoI, class) pairs pass 0.05
        mid = (lo + hi) / 2
        trial = logits.clone()
        trial[:, 0] = mid
        passing = int((trial.softmax(1)[:, 1:] > 0.05).sum())
        lo, hi = (mid, hi) if passing > target else (lo, mid)
    pred.cls_score.bias[0] = hi


def _torchvision_model(version: str, images: list[np.ndarray], seed: int) -> nn.Module:
    """torchvision's own detector, seeded random weights with BN statistics measured on ``images`` then perturbed,
    the ResNet's BN then frozen (v1: epsilon 0, as the COCO_V1 weights run), heads calibrated on them; eval mode."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    build = {"v1": torchvision.models.detection.fasterrcnn_resnet50_fpn,
             "v2": torchvision.models.detection.fasterrcnn_resnet50_fpn_v2}[version]
    model = build(weights=None, weights_backbone=None)
    xs = [_tv_input(im) for im in images]
    model.transform.min_size, model.transform.max_size = (min(min(x.shape[1:]) for x in xs),), NO_CAP
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    with torch.no_grad():
        for bn in bns:
            bn.weight.uniform_(0.5, 2.0, generator=gen)
            bn.bias.uniform_(-1.0, 1.0, generator=gen)
            bn.reset_running_stats()
            bn.momentum = None  # cumulative average: the running statistics become this pass's batch statistics
    model.train()
    target = {"boxes": torch.tensor([[20.0, 30.0, 120.0, 150.0], [100.0, 50.0, 250.0, 180.0]]),
              "labels": torch.tensor([1, 18])}
    model(xs, [target] * len(xs))
    model.eval()
    with torch.no_grad():
        for bn in bns:
            std = bn.running_var.sqrt()
            bn.running_mean.add_(0.2 * std * torch.randn(std.shape, generator=gen))
            bn.running_var.mul_(torch.empty(std.shape).uniform_(0.7, 1.4, generator=gen))
    # The ResNet's BN as FrozenBN on both sides (v1: as its COCO_V1 weights run, epsilon 0). v2 runs BatchNorm2d in
    # eval mode: the same affine map, but its kernel rounds otherwise than FrozenBN's, and this random 50-layer
    # network amplifies the last-bit differences to ~1e-2 px on large proposals: rounding, not conversion.
    _freeze_bn(model.backbone.body)
    if version == "v1":
        overwrite_eps(model, 0.0)
    _calibrate_heads(model, xs, gen)
    return model


def _legacy_names(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The key spelling of checkpoints written before torchvision 0.12 (the published COCO_V1 file): no
    ``Conv2dNormActivation`` level in the RPN and FPN convolutions, no BN step counters (frozen BN)."""
    out = {}
    for k, v in state.items():
        if k.endswith("num_batches_tracked"):
            continue
        k = k.replace("rpn.head.conv.0.0.", "rpn.head.conv.")
        for block in ("inner_blocks", "layer_blocks"):
            for i in range(4):
                k = k.replace(f"backbone.fpn.{block}.{i}.0.", f"backbone.fpn.{block}.{i}.")
        out[k] = v
    return out


@torch.no_grad()
def _run_torchvision(model: nn.Module, image: np.ndarray, *, normalized: bool = False
                     ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """torchvision's proposals (its model.rpn output) and detections for one image at its own size, checking that
    its transform neither resized nor resampled the image. ``normalized``: feed the image already normalized (see
    :func:`_normalized`), the transform's mean / std set to 0 / 1."""
    x = _tv_input(image)
    mean = torch.tensor(model.transform.image_mean)[:, None, None]
    std = torch.tensor(model.transform.image_std)[:, None, None]
    if normalized:
        x = _normalized(model, image)
        model.transform.image_mean, model.transform.image_std = [0.0] * 3, [1.0] * 3
        mean, std = torch.zeros(3, 1, 1), torch.ones(3, 1, 1)
    h, w = x.shape[1:]
    model.transform.min_size, model.transform.max_size = (min(h, w),), NO_CAP
    seen: dict[str, Any] = {}
    hooks = [model.transform.register_forward_hook(lambda m, i, o: seen.update(images=o[0])),
             model.rpn.register_forward_hook(lambda m, i, o: seen.update(proposals=o[0][0]))]
    try:
        det = model([x])[0]
    finally:
        for hook in hooks:
            hook.remove()
        if normalized:
            model.transform.image_mean, model.transform.image_std = TV_MEAN, TV_STD
    batch = seen["images"]
    assert batch.image_sizes == [(h, w)] and batch.tensors.shape[-2] % 32 == 0 and batch.tensors.shape[-1] % 32 == 0
    assert torch.equal(batch.tensors[0, :, :h, :w], (x - mean) / std)  # not resampled: the normalized image itself
    return seen["proposals"], det


def _normalized(model: nn.Module, image: np.ndarray) -> torch.Tensor:
    """``image`` as torchvision's transform normalizes it: (3, H, W) float, (x / 255 - mean) / std."""
    mean = torch.tensor(TV_MEAN)[:, None, None]
    std = torch.tensor(TV_STD)[:, None, None]
    return (_tv_input(image) - mean) / std


def _run_ours(predictor: Predictor, image: np.ndarray, *, normalized: bool = False
              ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Our proposals (model.rpn output) and the Predictor's detections for one image at its own size; with
    ``normalized``, the model's own forward on torchvision's normalized image (our normalizer set to identity)."""
    seen: dict[str, Any] = {}
    model = predictor.model
    hook = model.rpn.register_forward_hook(lambda m, i, o: seen.update(proposals=o[0][0]))
    spec = model.pixel_spec
    try:
        if normalized:
            model.set_pixel_spec(PixelSpec((0.0,) * 3, (1.0,) * 3, "RGB"))
            with torch.no_grad():
                det = model([_normalized(model, image)])[0]
        else:
            predictor.min_size, predictor.max_size = min(image.shape[:2]), NO_CAP
            det = predictor([image])[0]
    finally:
        hook.remove()
        model.set_pixel_spec(spec)
    return seen["proposals"], det


def _matched_max_diff(boxes: torch.Tensor, ref: torch.Tensor, what: str) -> float:
    """Matched sets of proposals: each reference box has its own box within BOX_TOL_PX; the largest difference.

    Not compared in order: two proposals whose objectness ties within float rounding (logits equal to ~1e-6) may
    come out of NMS in either order (a handful of adjacent swaps per image here)."""
    diff = (boxes[:, None] - ref[None]).abs().amax(2)  # (P, P_ref)
    free = torch.ones(len(boxes), dtype=torch.bool)
    worst = 0.0
    for j in range(len(ref)):
        d = diff[:, j].masked_fill(~free, float("inf"))
        i = int(d.argmin())
        assert float(d[i]) <= BOX_TOL_PX, f"{what}: no proposal within {BOX_TOL_PX} px of {ref[j].tolist()}"
        free[i] = False
        worst = max(worst, float(d[i]))
    return worst


def _compare(tv: nn.Module, predictor: Predictor, image: np.ndarray, rows: list[int], what: str, *,
             normalized: bool = True) -> dict[str, float]:
    """Same proposals and same detections (matched sets); returns the largest differences.

    ``normalized`` (the conversion check): both networks get torchvision's normalized image, so what differs is
    only what the conversion could get wrong. Otherwise (the end-to-end check) we normalize the raw image
    ourselves, ``(x - 255 mean) / (255 std)`` against torchvision's ``(x / 255 - mean) / std``: last-bit
    differences that this random network amplifies (to ~1e-2 px on large proposals of v2), where a trained one
    does not."""
    ref_props, ref = _run_torchvision(tv, image, normalized=normalized)
    props, det = _run_ours(predictor, image, normalized=normalized)
    assert props.shape == ref_props.shape and len(props) > 100, (what, props.shape, ref_props.shape)
    prop_diff = _matched_max_diff(props, ref_props, what)
    to_ours = {row: i for i, row in enumerate(rows)}
    assert all(int(c) in to_ours for c in ref["labels"]), f"{what}: torchvision detected an unnamed row"
    ref = {**ref, "labels": torch.tensor([to_ours[int(c)] for c in ref["labels"]], dtype=torch.int64)}
    n = len(ref["boxes"])
    # Non-degenerate: some tens of detections of several classes, scores spread over the range.
    assert 10 <= n < 100 and len(set(ref["labels"].tolist())) >= 4, (what, n, ref["labels"].tolist())
    assert float(ref["scores"].max()) > 0.2, (what, ref["scores"].max())
    # A detection scoring within SCORE_TOL of the 0.05 threshold is kept or dropped by float rounding alone (NMS only
    # lets it suppress lower scores, i.e. other such detections): those are left out on both sides.
    floor = tv.roi_heads.score_thresh + SCORE_TOL
    det, ref = ({k: v[d["scores"] > floor] for k, v in d.items()} for d in (det, ref))
    assert n - len(ref["boxes"]) <= 2, f"{what}: {n - len(ref['boxes'])} detections at the threshold"
    assert_same_detections(det, ref, what)
    box_diff = score_diff = 0.0
    for b, s, c in zip(ref["boxes"], ref["scores"], ref["labels"]):  # report the matched pairs' differences
        same = det["labels"] == c
        d = ((det["boxes"][same] - b).abs().amax(1) + (det["scores"][same] - s).abs()).argmin()
        box_diff = max(box_diff, float((det["boxes"][same][d] - b).abs().max()))
        score_diff = max(score_diff, float((det["scores"][same][d] - s).abs()))
    return {"proposal_px": prop_diff, "box_px": box_diff, "score": score_diff, "detections": n}


def _convert(state: dict[str, torch.Tensor], tmp: Path, *extra: str) -> Path:
    src, out = tmp / "tv.pth", tmp / "converted.pth"
    torch.save(state, src)
    assert convert_weights.main(["--torchvision-detector", str(src), "--output", str(out), *extra]) == 0
    return out


@pytest.fixture(scope="module")
def v1_converted(tmp_path_factory: pytest.TempPathFactory) -> tuple[nn.Module, Path, list[np.ndarray]]:
    """torchvision's v1 in its COCO_V1 form (frozen BN, epsilon 0), saved with the published file's key spelling,
    converted with the tool's defaults."""
    images = _images(("000005", "000001"))
    tv = _torchvision_model("v1", images, seed=0)
    out = _convert(_legacy_names(tv.state_dict()), tmp_path_factory.mktemp("tv_v1"))
    return tv, out, images


@pytest.mark.slow
def test_v1_coco_model_gives_torchvision_proposals_and_detections(
        v1_converted: tuple[nn.Module, Path, list[np.ndarray]]) -> None:
    tv, out, images = v1_converted
    cfg, names, _, meta = read_detector_file_meta(out)
    m = cfg.model
    assert names == list(COCO_CLASS_NAMES) and meta["category_ids"] == COCO_ROWS
    assert m.arch == "FPN" and m.backbone.norm_eps == 0.0 and m.fpn.norm == "none" and m.rpn.head_convs == 1
    assert (m.roi_heads.num_fc, m.roi_heads.num_conv, m.anchors.convention) == (2, 0, "torchvision")
    assert torch.load(out, weights_only=True)["meta"]["source_format"] == "torchvision"
    predictor = Predictor.from_checkpoint(out, device="cpu", exact=True)
    assert all(b.eps == 0.0 for b in predictor.model.trunk.body.modules() if isinstance(b, FrozenBatchNorm2d))
    for image, name in zip(images, ("000005", "000001")):
        print(f"v1 {name}: {_compare(tv, predictor, image, COCO_ROWS, f'v1 {name}')}")
    if VOC_IMAGES.is_dir():  # end to end from the raw photo through the Predictor (see _compare)
        print(f"v1 000005 Predictor: {_compare(tv, predictor, images[0], COCO_ROWS, 'v1', normalized=False)}")


@pytest.mark.slow
def test_v2_model_gives_torchvision_proposals_and_detections(tmp_path: Path) -> None:
    # 406 x 500, padded 416 x 512: 416 is an odd multiple of 32, so torchvision's P6 rows are 59 px apart
    # (anchors.stride_from_padded_size, see the anchor test below).
    (image,) = _images(("000004",))
    tv = _torchvision_model("v2", [image], seed=1)
    out = _convert(tv.state_dict(), tmp_path)
    cfg, names, _, _ = read_detector_file_meta(out)
    m = cfg.model
    assert m.backbone.norm_eps == 1e-5 and m.fpn.norm == "bn" and m.rpn.head_convs == 2
    assert (m.roi_heads.num_fc, m.roi_heads.num_conv, m.roi_heads.conv_norm) == (1, 4, "bn")
    predictor = Predictor.from_checkpoint(out, device="cpu", exact=True)
    print(f"v2 000004: {_compare(tv, predictor, image, COCO_ROWS, 'v2 000004')}")


def test_p6_anchors_match_torchvision_for_padded_sides_of_odd_multiples_of_32() -> None:
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.models.detection.image_list import ImageList

    from detection.anchors import AnchorGenerator as OurAnchors
    from detection.torchvision_detector import TV_ANCHOR_SIZES, TV_ASPECT_RATIOS

    h, w = 416, 512  # VOC 000004 (406 x 500) padded to multiples of 32: 13 x 16 cells of 32 px
    shapes = [(h // 4, w // 4), (h // 8, w // 8), (h // 16, w // 16), (h // 32, w // 32), ((h // 32 + 1) // 2, w // 64)]
    tv = AnchorGenerator(tuple((s,) for s in TV_ANCHOR_SIZES), (TV_ASPECT_RATIOS,) * 5)
    ref = tv(ImageList(torch.zeros(1, 3, h, w), [(406, 500)]), [torch.zeros(1, 1, *s) for s in shapes])[0]
    ours = OurAnchors(TV_ANCHOR_SIZES, TV_ASPECT_RATIOS, stride=(4, 8, 16, 32, 64),
                      stride_from_padded_size=True).grid_anchors(shapes)
    p6 = ours[-1].shape[0]
    torch.testing.assert_close(torch.cat(ours[:-1]), ref[:-p6], rtol=0, atol=0)  # P2..P5 agree
    torch.testing.assert_close(ours[-1], ref[-p6:], rtol=0, atol=0)  # P6: rows 59 px apart, as torchvision's
    # The level's own stride (Detectron2's rule) puts them 64 px apart: the switch is what makes the difference.
    plain = OurAnchors(TV_ANCHOR_SIZES, TV_ASPECT_RATIOS, stride=(4, 8, 16, 32, 64)).grid_anchors(shapes)
    assert not torch.equal(plain[-1], ref[-p6:])


def test_coco_layout_is_torchvision_category_list() -> None:
    from torchvision.models._meta import _COCO_CATEGORIES

    assert list(TV_COCO_SLOTS) == _COCO_CATEGORIES[1:]
    assert [n for n in TV_COCO_SLOTS if n != UNUSED_SLOT] == list(COCO_CLASS_NAMES)


def _small_v1_state(num_rows: int) -> dict[str, torch.Tensor]:
    """A torchvision v1 state dict (R50-FPN, ``num_rows`` classifier rows) with known predictor rows."""
    torch.manual_seed(2)
    state = torchvision.models.detection.fasterrcnn_resnet50_fpn(
        weights=None, weights_backbone=None, num_classes=num_rows).state_dict()
    state["roi_heads.box_predictor.cls_score.bias"] = torch.arange(num_rows, dtype=torch.float32)
    state["roi_heads.box_predictor.bbox_pred.bias"] = torch.arange(4 * num_rows, dtype=torch.float32)
    return state


def test_fine_tuned_model_with_class_names_moves_background_last(tmp_path: Path) -> None:
    state = _small_v1_state(4)
    names = tmp_path / "names.txt"
    names.write_text("cat\nN/A\ndog\n")  # row 2 unused: dropped
    out = _convert({"model": state, "epoch": 3}, tmp_path, "--class-names", str(names), "--norm-eps", "1e-5")
    model, cfg, class_names = load_detector(out)
    assert class_names == ["cat", "dog"] and cfg.model.backbone.norm_eps == 1e-5
    sd = model.state_dict()
    assert sd["roi_heads.cls_score.bias"].tolist() == [1.0, 3.0, 0.0]  # rows 1 and 3, background (row 0) last
    assert sd["roi_heads.bbox_pred.bias"].tolist() == [4.0, 5.0, 6.0, 7.0, 12.0, 13.0, 14.0, 15.0]


def test_foreign_files_are_refused_in_one_line(tmp_path: Path, tiny_checkpoint: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    def convert(obj: Any, name: str, *extra: str) -> str:
        path = tmp_path / name
        if obj is not None:
            torch.save(obj, path)
        assert convert_weights.main(["--torchvision-detector", str(path), "--output", str(tmp_path / "o.pth"),
                                     *extra]) == 2
        err = capsys.readouterr().err.strip()
        assert "\n" not in err and "Traceback" not in err and err.startswith("convert_weights: error: "), err
        return err

    resnet = torchvision.models.resnet18().state_dict()
    assert "classification ResNet" in convert(resnet, "r18.pth")
    assert "Detectron2" in convert({"model": {"backbone.bottom_up.stem.conv1.weight": torch.zeros(1)}}, "d2.pth")
    assert "not a torchvision FPN Faster R-CNN" in convert({"encoder.weight": torch.zeros(1)}, "bert.pth")
    assert "already one of our detector files" in convert(None, str(tiny_checkpoint))
    assert "not found" in convert(None, "absent.pth")
    state = _small_v1_state(4)
    assert "3 foreground classes" in convert(state, "nonames.pth")  # neither 91 rows nor names
    extra = {**state, "roi_heads.extra.weight": torch.zeros(3)}
    assert "roi_heads.extra.weight" in convert({"model": extra}, "extra.pth", "--class-names", _names(tmp_path, 3))
    missing = {k: v for k, v in state.items() if not k.startswith("backbone.body.layer4.2.")}
    assert "missing" in convert(missing, "missing.pth", "--class-names", _names(tmp_path, 3))
    assert "2 class names" in convert(state, "count.pth", "--class-names", _names(tmp_path, 2))
    assert not (tmp_path / "o.pth").exists()


def _names(tmp_path: Path, n: int) -> str:
    path = tmp_path / f"names{n}.txt"
    path.write_text("".join(f"c{i}\n" for i in range(n)))
    return str(path)


@pytest.mark.slow
def test_fine_tuning_from_converted_model_keeps_shared_class_rows(
        v1_converted: tuple[nn.Module, Path, list[np.ndarray]]) -> None:
    _, out, _ = v1_converted
    source, source_names, state, _ = read_detector_file_meta(out)
    target = ["dog", "unicorn", "person"]
    model = build_faster_rcnn(replace(source.model, num_classes=len(target)), class_names=target, weights=None)
    report = init_from_detector(model, state, source_names, what=str(out))
    assert report.kept_classes == ["dog", "person"] and report.fresh_classes == ["unicorn"]
    sd = model.state_dict()
    for i, name in ((0, "dog"), (2, "person")):
        j = source_names.index(name)
        assert torch.equal(sd["roi_heads.cls_score.weight"][i], state["roi_heads.cls_score.weight"][j])
        assert torch.equal(sd["roi_heads.bbox_pred.weight"][4 * i:4 * i + 4],
                           state["roi_heads.bbox_pred.weight"][4 * j:4 * j + 4])
    assert torch.equal(sd["roi_heads.cls_score.weight"][3], state["roi_heads.cls_score.weight"][80])  # background
    assert torch.equal(sd["trunk.lateral_convs.0.weight"], state["trunk.lateral_convs.0.weight"])
