"""Detectron2 C4 / DC5 Faster R-CNN checkpoints -> our detector file (the ``model_final.pth`` format).

Detectron2's ``Res5ROIHeads`` (C4) and dilated-C5 ``StandardROIHeads`` with a 2-fc box head (DC5) are the same
networks as ours, so their weights run here unchanged once four conventions are carried over:

* names: ``backbone.resK.i.convN.norm.*`` -> ``trunk.body.resK.i.bnN.*``, ``shortcut`` -> ``downsample.0/1``,
  C4's ``roi_heads.res5`` -> ``roi_heads.box_head.res5``, ``proposal_generator.rpn_head.{objectness_logits,
  anchor_deltas}`` -> ``rpn.head.{objectness,deltas}``, ``roi_heads.box_predictor.*`` -> ``roi_heads.*``;
* anchors: exact floats, size-major (``model.anchors.convention: detectron2``);
* pixels: BGR, minus Detectron2's mean, std 1 (its ``MODEL.PIXEL_MEAN`` / ``PIXEL_STD``), stride in the first
  1x1 of each bottleneck (MSRA initialization, ``RESNETS.STRIDE_IN_1X1``);
* test settings: Detectron2's defaults for the architecture (800 / 1333 test size, RPN 6000 / 1000 top-k at NMS
  0.7, ROIAlignV2 14x14 (C4) or 7x7 (DC5), score 0.05, NMS 0.5, 100 detections).

What the keys tell is read from them (C4 vs DC5, depth, classes, anchors per location, fc width); the rest is
Detectron2's default and can be overridden (:class:`Detectron2Options`). Files are read without running code: the
model zoo's ``model_final_*.pkl`` (a pickle of numpy arrays) through the restricted unpickler, Detectron2's own
training output (``.pth``) with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from resbackbone.errors import WeightsError, WeightsNotFoundError

from .config import (
    AnchorConfig,
    BackboneConfig,
    DataConfig,
    DetectionConfig,
    ModelConfig,
    PixelConfig,
    RoIHeadConfig,
    RPNConfig,
)
from .data.coco import COCO_CLASS_NAMES
from .data.voc import VOC_CLASSES

logger = logging.getLogger("detection.detectron2")

# Detectron2's defaults (detectron2/config/defaults.py and configs/Base-RCNN-{C4,DilatedC5}.yaml).
D2_PIXEL_MEAN_BGR = (103.53, 116.28, 123.675)
D2_PIXEL_STD = (1.0, 1.0, 1.0)
D2_ANCHOR_SIZES = (32.0, 64.0, 128.0, 256.0, 512.0)
D2_ASPECT_RATIOS = (0.5, 1.0, 2.0)
D2_MIN_SIZE_TRAIN = (640, 672, 704, 736, 768, 800)

# (res2, res3, res4, res5) block counts, bottleneck? -> depth.
_DEPTHS = {((2, 2, 2, 2), False): 18, ((3, 4, 6, 3), False): 34, ((3, 4, 6, 3), True): 50,
           ((3, 4, 23, 3), True): 101, ((3, 8, 36, 3), True): 152}


@dataclass
class Detectron2Options:
    """What the keys cannot tell; None: Detectron2's default for the architecture (see the module docstring)."""

    anchor_sizes: tuple[float, ...] | None = None
    aspect_ratios: tuple[float, ...] | None = None
    min_size_test: int = 800
    max_size_test: int = 1333
    pre_nms_topk_test: int = 6000
    post_nms_topk_test: int = 1000
    stride_in_1x1: bool = True
    # Class names in the model's order; None: the 80 COCO names for 80 classes, the 20 VOC names for 20.
    class_names: Sequence[str] | None = None
    # Pixel statistics in BGR order (0-255); None: the file's pixel_mean / pixel_std buffers, else Detectron2's.
    pixel_mean: tuple[float, float, float] | None = None
    pixel_std: tuple[float, float, float] | None = None
    # Channel order the weights expect (Detectron2's INPUT.FORMAT): "BGR" for the model zoo.
    channel_order: str = "BGR"


@dataclass
class Detectron2Model:
    """What a Detectron2 state dict says about its network."""

    arch: str  # "C4" or "DC5"
    depth: int
    num_classes: int
    num_anchors: int
    fc_dim: int  # DC5 box-head width (unused for C4)
    pooler_resolution: int
    class_agnostic_box: bool
    dropped: dict[str, int] = field(default_factory=dict)  # what was left out, by part: mask head, buffers


def read_detectron2_state(path: str | Path) -> dict[str, Tensor]:
    """The ``{key: float32 tensor}`` state dict of a Detectron2 checkpoint, in Detectron2's names.

    ``.pkl``: the model zoo's pickle ``{"model": {key: numpy array}, "__author__": ...}`` (restricted unpickler);
    anything else: ``torch.load(weights_only=True)`` of Detectron2's training output ``{"model": state, ...}``.
    """
    from resbackbone.serialization import load_torch_file
    from resbackbone.weights import safe_load_pickle

    path = Path(path)
    if not path.is_file():
        raise WeightsNotFoundError(
            f"Detectron2 checkpoint not found: {path} (model zoo files: https://github.com/facebookresearch/"
            "detectron2/blob/main/MODEL_ZOO.md; download one on a machine with network access and pass its path)"
        )
    obj: Any = safe_load_pickle(path) if path.suffix == ".pkl" else load_torch_file(path)
    if isinstance(obj, Mapping) and "blobs" in obj:
        raise WeightsError(f"{path}: a Detectron (v1, caffe2) 'blobs' file, not a Detectron2 checkpoint")
    state = obj.get("model", obj) if isinstance(obj, Mapping) else None
    if not isinstance(state, Mapping) or not state:
        keys = f" with keys {sorted(obj)[:6]}" if isinstance(obj, Mapping) else ""
        raise WeightsError(f"{path}: expected a Detectron2 checkpoint (a dict with a 'model' state dict), got "
                           f"{type(obj).__name__}{keys}")
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        if isinstance(value, np.ndarray):
            value = torch.from_numpy(np.ascontiguousarray(value))
        if not isinstance(value, Tensor):
            raise WeightsError(f"{path}: entry {key!r} of its 'model' dict is a {type(value).__name__}, not an array")
        out[str(key)] = value.float() if value.is_floating_point() else value
    return out


def _blocks(state: Mapping[str, Tensor], prefix: str) -> int:
    """Number of residual blocks under ``prefix`` (e.g. ``backbone.res4.``)."""
    idx = {int(k[len(prefix):].split(".", 1)[0]) for k in state if k.startswith(prefix) and k[len(prefix)].isdigit()}
    return max(idx) + 1 if idx else 0


def inspect_detectron2(state: Mapping[str, Tensor], what: str = "checkpoint") -> Detectron2Model:
    """Read the architecture off the keys and shapes; one line naming the keys when they fit neither C4 nor DC5."""
    keys = list(state)
    if any(k.startswith("backbone.bottom_up.") or k.startswith("backbone.fpn_") for k in keys):
        raise WeightsError(f"{what}: a Detectron2 FPN model (keys backbone.bottom_up.* / backbone.fpn_*); only C4 "
                           "and DC5 (single stride-16 feature map) models convert")
    if any(k.startswith("backbone.res5.") for k in keys):
        arch, res5 = "DC5", "backbone.res5."
    elif any(k.startswith("roi_heads.res5.") for k in keys):
        arch, res5 = "C4", "roi_heads.res5."
    else:
        odd = [k for k in keys if not k.startswith(("backbone.stem.", "backbone.res"))][:5] or keys[:5]
        raise WeightsError(f"{what}: keys fit neither a Detectron2 C4 model (roi_heads.res5.*) nor a DC5 model "
                           f"(backbone.res5.*); first keys that do not fit: {odd}")
    need = ["backbone.stem.conv1.weight", "proposal_generator.rpn_head.objectness_logits.weight",
            "roi_heads.box_predictor.cls_score.weight", "roi_heads.box_predictor.bbox_pred.weight"]
    if arch == "DC5":
        need += ["roi_heads.box_head.fc1.weight", "roi_heads.box_head.fc2.weight"]
    missing = [k for k in need if k not in state]
    if missing:
        raise WeightsError(f"{what}: a Detectron2 {arch} model needs {missing}; the file has none of them "
                           f"(first keys: {keys[:5]})")
    counts = tuple(_blocks(state, f"backbone.res{i}.") for i in (2, 3, 4)) + (_blocks(state, res5),)
    bottleneck = "backbone.res2.0.conv3.weight" in state
    depth = _DEPTHS.get((counts, bottleneck))  # type: ignore[call-overload]
    if depth is None:
        raise WeightsError(f"{what}: res2..res5 have {counts} {'bottleneck' if bottleneck else 'basic'} blocks, "
                           "which is no ResNet-18/34/50/101/152")
    num_classes = int(state["roi_heads.box_predictor.cls_score.weight"].shape[0]) - 1
    box_rows = int(state["roi_heads.box_predictor.bbox_pred.weight"].shape[0])
    if box_rows not in (4, 4 * num_classes):
        raise WeightsError(f"{what}: roi_heads.box_predictor.bbox_pred has {box_rows} outputs for {num_classes} "
                           "classes (expected 4 or 4 per class)")
    if arch == "DC5":
        fc1 = state["roi_heads.box_head.fc1.weight"]
        channels = int(state[f"{res5}0.conv3.weight" if bottleneck else f"{res5}0.conv2.weight"].shape[0])
        res = math.isqrt(int(fc1.shape[1]) // channels)
        if res * res * channels != int(fc1.shape[1]):
            raise WeightsError(f"{what}: roi_heads.box_head.fc1 takes {int(fc1.shape[1])} inputs, not "
                               f"{channels} x S x S pooled features")
        fc_dim, pooler = int(fc1.shape[0]), res
    else:
        fc_dim, pooler = RoIHeadConfig.fc_dim, 14
    return Detectron2Model(arch, depth, num_classes, int(state["proposal_generator.rpn_head.objectness_logits.weight"]
                                                         .shape[0]), fc_dim, pooler, box_rows == 4 and num_classes > 1)


_NORM = re.compile(r"^(res\d\.\d+)\.conv(\d)\.norm\.(\w+)$")
_SHORTCUT_NORM = re.compile(r"^(res\d\.\d+)\.shortcut\.norm\.(\w+)$")
_SHORTCUT = re.compile(r"^(res\d\.\d+)\.shortcut\.weight$")
_HEADS = {
    "proposal_generator.rpn_head.conv.": "rpn.head.conv.",
    "proposal_generator.rpn_head.objectness_logits.": "rpn.head.objectness.",
    "proposal_generator.rpn_head.anchor_deltas.": "rpn.head.deltas.",
    "roi_heads.box_head.fc1.": "roi_heads.box_head.fc1.",
    "roi_heads.box_head.fc2.": "roi_heads.box_head.fc2.",
    "roi_heads.box_predictor.cls_score.": "roi_heads.cls_score.",
    "roi_heads.box_predictor.bbox_pred.": "roi_heads.bbox_pred.",
}
# Left out on purpose: Mask R-CNN's mask head (its box part is a Faster R-CNN), buffers that are not weights.
_DROPPED = {"roi_heads.mask_head.": "mask head", "pixel_mean": "pixel statistics", "pixel_std": "pixel statistics",
            "proposal_generator.anchor_generator.": "anchor buffers"}


def _resnet_name(key: str) -> str:
    """A Detectron2 ResNet key relative to the trunk (``stem.*``, ``resK.i.*``) -> ours."""
    if key.startswith("stem.conv1.norm."):
        return "stem.bn1." + key[len("stem.conv1.norm."):]
    if m := _NORM.match(key):
        return f"{m[1]}.bn{m[2]}.{m[3]}"
    if m := _SHORTCUT_NORM.match(key):
        return f"{m[1]}.downsample.1.{m[2]}"
    if m := _SHORTCUT.match(key):
        return f"{m[1]}.downsample.0.weight"
    return key


def rename_detectron2(state: Mapping[str, Tensor], info: Detectron2Model) -> tuple[dict[str, Tensor], list[str]]:
    """Detectron2 names -> ours: ``(our state dict, Detectron2 keys that map to nothing)``; fills ``info.dropped``."""
    out: dict[str, Tensor] = {}
    unknown: list[str] = []
    for key, value in state.items():
        if key.endswith("num_batches_tracked"):
            continue
        dropped = next((part for prefix, part in _DROPPED.items() if key.startswith(prefix)), None)
        if dropped is not None:
            info.dropped[dropped] = info.dropped.get(dropped, 0) + 1
            continue
        if key.startswith("backbone."):
            out["trunk.body." + _resnet_name(key[len("backbone."):])] = value
        elif key.startswith("roi_heads.res5.") and info.arch == "C4":
            out["roi_heads.box_head." + _resnet_name(key[len("roi_heads."):])] = value
        elif prefix := next((p for p in _HEADS if key.startswith(p)), None):
            out[_HEADS[prefix] + key[len(prefix):]] = value
        else:
            unknown.append(key)
    if info.class_agnostic_box:
        # One box per RoI for every class: the same deltas for each class decode to the same boxes.
        for suffix in ("weight", "bias"):
            name = f"roi_heads.bbox_pred.{suffix}"
            out[name] = out[name].repeat(info.num_classes, *([1] * (out[name].dim() - 1)))
    return out, unknown


def _class_names(info: Detectron2Model, options: Detectron2Options, what: str) -> list[str]:
    if options.class_names is not None:
        names = [str(n) for n in options.class_names]
        if len(names) != info.num_classes:
            raise WeightsError(f"{what} has {info.num_classes} classes but {len(names)} class names were given")
        return names
    if info.num_classes == len(COCO_CLASS_NAMES):
        return list(COCO_CLASS_NAMES)
    if info.num_classes == len(VOC_CLASSES):
        return list(VOC_CLASSES)
    raise WeightsError(f"{what} has {info.num_classes} classes: give their names (a file with one per line) with "
                       "--class-names (80 and 20 classes default to COCO's and VOC's names)")


def detectron2_config(info: Detectron2Model, options: Detectron2Options, state: Mapping[str, Tensor],
                      what: str = "checkpoint") -> DetectionConfig:
    """Our resolved config for the network ``info`` describes, with Detectron2's defaults and ``options``."""
    sizes = tuple(float(s) for s in (options.anchor_sizes or D2_ANCHOR_SIZES))
    ratios = tuple(float(r) for r in (options.aspect_ratios or D2_ASPECT_RATIOS))
    if len(sizes) * len(ratios) != info.num_anchors:
        raise WeightsError(
            f"{what}: its RPN predicts {info.num_anchors} anchors per location but {len(sizes)} sizes x {len(ratios)} "
            f"ratios = {len(sizes) * len(ratios)} were assumed; give the model's --anchor-sizes and --aspect-ratios"
        )
    mean = options.pixel_mean
    std = options.pixel_std
    if mean is None:
        mean = tuple(float(v) for v in state["pixel_mean"].reshape(-1)) if "pixel_mean" in state else D2_PIXEL_MEAN_BGR
    if std is None:
        std = tuple(float(v) for v in state["pixel_std"].reshape(-1)) if "pixel_std" in state else D2_PIXEL_STD
    if len(mean) != 3 or len(std) != 3 or options.channel_order not in ("RGB", "BGR"):
        raise WeightsError(f"pixel mean / std need 3 values and the channel order RGB or BGR, got {mean}, {std}, "
                           f"{options.channel_order!r}")
    voc, coco = info.num_classes == len(VOC_CLASSES), info.num_classes == len(COCO_CLASS_NAMES)
    data = DataConfig(
        train="voc07+12" if voc else "coco2017-train" if coco else DataConfig.train,
        test="voc07-test" if voc else "coco2017-val" if coco else DataConfig.test,
        min_size_train=D2_MIN_SIZE_TRAIN, max_size_train=1333,
        min_size_test=options.min_size_test, max_size_test=options.max_size_test,
    )
    model = ModelConfig(
        arch=info.arch,  # type: ignore[arg-type]
        num_classes=info.num_classes,
        backbone=BackboneConfig(name=f"resnet{info.depth}", weights="none", freeze_at=2, norm="frozen_bn",
                                stride_in_1x1=options.stride_in_1x1, shortcut="B"),
        pixel=PixelConfig(mean=mean, std=std, channel_order=options.channel_order),  # type: ignore[arg-type]
        anchors=AnchorConfig(sizes=sizes, aspect_ratios=ratios, offset=0.0, convention="detectron2"),
        rpn=RPNConfig(pre_nms_topk_test=options.pre_nms_topk_test, post_nms_topk_test=options.post_nms_topk_test,
                      nms_thresh=0.7, min_box_size=0.0),
        roi_heads=RoIHeadConfig(pooler_type="roi_align", pooler_resolution=info.pooler_resolution, sampling_ratio=0,
                                aligned=True, score_thresh=0.05, nms_thresh=0.5, detections_per_image=100,
                                fc_dim=info.fc_dim),
    )
    return DetectionConfig(model=model, data=data)


def convert_detectron2(
    path: str | Path, options: Detectron2Options | None = None
) -> tuple[nn.Module, DetectionConfig, list[str], Detectron2Model]:
    """Read, check and load a Detectron2 checkpoint: ``(our model in eval mode, its config, class names, info)``.

    Every tensor of the model must come from the file with the same shape, and every file key must land
    somewhere (or be a known left-out part: a Mask R-CNN mask head, pixel / anchor buffers); otherwise one line
    names the first keys that do not fit.
    """
    from .faster_rcnn import build_faster_rcnn

    options = options or Detectron2Options()
    what = str(path)
    state = read_detectron2_state(path)
    info = inspect_detectron2(state, what)
    cfg = detectron2_config(info, options, state, what)
    names = _class_names(info, options, what)
    ours, unknown = rename_detectron2(state, info)
    if unknown:
        raise WeightsError(f"{what}: keys that fit no part of a Detectron2 {info.arch} model: {unknown[:6]}")
    model = build_faster_rcnn(cfg.model, class_names=names, weights=None)
    expected = {k: v for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    missing = [k for k in expected if k not in ours]
    extra = [k for k in ours if k not in expected]
    wrong = [f"{k} {tuple(ours[k].shape)} (expected {tuple(v.shape)})" for k, v in expected.items()
             if k in ours and ours[k].shape != v.shape]
    if missing or extra or wrong:
        parts = [f"missing {missing[:4]}" if missing else "", f"unexpected {extra[:4]}" if extra else "",
                 f"wrong shapes {wrong[:3]}" if wrong else ""]
        raise WeightsError(f"{what}: does not fit a ResNet-{info.depth} {info.arch} model: "
                           + "; ".join(p for p in parts if p))
    model.load_state_dict(ours, strict=True)
    logger.info("converted %s: Detectron2 R%d-%s, %d classes, %d anchors/location, %d tensors%s", what, info.depth,
                info.arch, info.num_classes, info.num_anchors, len(ours),
                "".join(f"; left out {n} {part} tensors" for part, n in info.dropped.items()))
    return model.eval(), cfg, names, info


def save_converted(model: nn.Module, cfg: DetectionConfig, class_names: Sequence[str], output: str | Path,
                   *, source: str | Path) -> None:
    """Write a converted model as a normal detector file (weights-only, atomic), noting where it came from."""
    from resbackbone.serialization import atomic_torch_save

    from .checkpoint import detector_payload

    payload = detector_payload(model, cfg, class_names)
    payload["meta"] = {"converted_from": str(source), "source_format": "detectron2"}
    atomic_torch_save(payload, output)


__all__ = ["D2_ANCHOR_SIZES", "D2_ASPECT_RATIOS", "D2_PIXEL_MEAN_BGR", "Detectron2Model", "Detectron2Options",
           "convert_detectron2", "detectron2_config", "inspect_detectron2", "read_detectron2_state",
           "rename_detectron2", "save_converted"]
