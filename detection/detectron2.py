"""Detectron2 Faster R-CNN checkpoints (C4, DC5, FPN) -> our detector file (the ``model_final.pth`` format).

Detectron2's ``Res5ROIHeads`` (C4), dilated-C5 ``StandardROIHeads`` (DC5) and FPN ``StandardROIHeads`` (FPN: P2..P6
from res2..res5, P6 a stride-2 subsample of P5) with an fc box head are the same networks as ours, so their
weights run here unchanged once four conventions are carried over:

* names: the ResNet (``backbone.*``; FPN: ``backbone.bottom_up.*``) -> ``trunk.body.*`` with
  ``resK.i.convN.norm.*`` -> ``resK.i.bnN.*``, ``shortcut`` -> ``downsample.0/1``; FPN's
  ``backbone.fpn_lateral{2..5}`` / ``fpn_output{2..5}`` -> ``trunk.lateral_convs.{0..3}`` /
  ``trunk.output_convs.{0..3}``; C4's ``roi_heads.res5`` -> ``roi_heads.box_head.res5``;
  ``proposal_generator.rpn_head.{objectness_logits, anchor_deltas}`` -> ``rpn.head.{objectness,deltas}``;
  ``roi_heads.box_head.{convI,fcI}`` keep their names; ``roi_heads.box_predictor.*`` -> ``roi_heads.*``;
* anchors: exact floats, size-major (``model.anchors.convention: detectron2``); FPN: one size per level;
* pixels: BGR, minus Detectron2's mean, std 1 (its ``MODEL.PIXEL_MEAN`` / ``PIXEL_STD``), stride in the first
  1x1 of each bottleneck (MSRA initialization, ``RESNETS.STRIDE_IN_1X1``);
* test settings: Detectron2's defaults for the architecture (configs/Base-RCNN-{C4,DilatedC5,FPN}.yaml): 800 / 1333
  test size; RPN top-k before NMS 6000 per image (C4 / DC5) or 1000 per level (FPN), 1000 after NMS 0.7, only
  empty proposals dropped; ROIAlignV2 14x14 (C4) or 7x7 (DC5, FPN; FPN's level of a RoI with the 1e-8 inside the
  log2); score 0.05, NMS 0.5, 100 detections, no size floor on detections.

What the keys tell is read from them (architecture, depth, classes, anchors per location, box-head convs / fcs and
their widths, FPN width); the rest is Detectron2's default and can be overridden (:class:`Detectron2Options`).
Mask R-CNN files convert to their Faster R-CNN part (the mask head is left out and counted); RetinaNet files and
FPNs with normalized convolutions (``FPN.NORM``) are refused in one line. Files are read without running code: the
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
from resbackbone.resnet import RESNET_SPECS, depth_from_blocks

from .backbone import FPN_IN_FEATURES, FPN_LEVELS
from .checkpoint import count_blocks, load_converted_state
from .config import (
    AnchorConfig,
    BackboneConfig,
    DataConfig,
    DetectionConfig,
    FPNConfig,
    ModelConfig,
    PixelConfig,
    RoIHeadConfig,
    RPNConfig,
)
from .data.coco import COCO_CLASS_NAMES
from .data.voc import VOC_CLASSES
from .pooler import CANONICAL_BOX_SIZE, CANONICAL_LEVEL, D2_LEVEL_EPSILON

logger = logging.getLogger("detection.detectron2")

# Detectron2's defaults (detectron2/config/defaults.py and configs/Base-RCNN-{C4,DilatedC5,FPN}.yaml).
D2_PIXEL_MEAN_BGR = (103.53, 116.28, 123.675)
D2_PIXEL_STD = (1.0, 1.0, 1.0)
# C4 / DC5: all five sizes on the one map; FPN: one size per level P2..P6.
D2_ANCHOR_SIZES = (32.0, 64.0, 128.0, 256.0, 512.0)
D2_ASPECT_RATIOS = (0.5, 1.0, 2.0)
D2_MIN_SIZE_TRAIN = (640, 672, 704, 736, 768, 800)
# configs/PascalVOC-Detection/faster_rcnn_R_50_{C4,FPN}.yaml train on shorter sides 480..800.
D2_VOC_MIN_SIZE_TRAIN = tuple(range(480, 801, 32))
# RPN top-k (training before NMS, training after, test before); 1000 after NMS at test time for all. Before NMS:
# per image for one map, per level for FPN (Base-RCNN-FPN.yaml; its 1000 after NMS in training is Detectron1's
# 2000 per batch of two images).
D2_RPN_TOPK: dict[str, tuple[int, int, int]] = {
    "C4": (12000, 2000, 6000), "DC5": (12000, 2000, 6000), "FPN": (2000, 1000, 1000),
}
# FPN levels whose 1x1 lateral / 3x3 output convolutions Detectron2 names fpn_lateral{l} / fpn_output{l} (res2..res5).
D2_FPN_STAGES = tuple(int(f[3:]) for f in FPN_IN_FEATURES)
# The C4 head pools 14x14 (res5's stride-2 first block makes it 7x7).
D2_C4_POOLER_RESOLUTION = 14



@dataclass
class Detectron2Options:
    """What the keys cannot tell; None: Detectron2's default for the architecture (see the module docstring)."""

    anchor_sizes: tuple[float, ...] | None = None
    aspect_ratios: tuple[float, ...] | None = None
    min_size_test: int = 800
    max_size_test: int = 1333
    # RPN top-k before NMS at test time (per image for C4 / DC5, per level for FPN); None: 6000 / 1000 per level.
    pre_nms_topk_test: int | None = None
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

    arch: str  # "C4", "DC5" or "FPN"
    depth: int
    num_classes: int
    num_anchors: int  # per location (FPN: per location of each level)
    fc_dim: int  # fc box-head width (DC5, FPN; unused for C4)
    pooler_resolution: int
    class_agnostic_box: bool
    num_fc: int = 2  # fc box head: fc layers, 3x3 convolutions before them and their width (DC5, FPN)
    num_conv: int = 0
    conv_dim: int = 256
    fpn_channels: int = 256  # width of every pyramid level (FPN)
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


def _numbered(keys: Sequence[str], pattern: str) -> list[int]:
    """The numbers ``i`` of the keys matching ``pattern`` (one ``(\\d+)`` group), sorted."""
    rx = re.compile(pattern)
    return sorted(int(m[1]) for k in keys if (m := rx.match(k)))


# Detectron2's ResNet: under ``backbone.`` for one-map models, under the FPN's ``backbone.bottom_up.``.
_BODY = {"C4": "backbone.", "DC5": "backbone.", "FPN": "backbone.bottom_up."}


def inspect_detectron2(state: Mapping[str, Tensor], what: str = "checkpoint") -> Detectron2Model:
    """Read the architecture off the keys and shapes; one line naming the keys when they fit no Faster R-CNN we
    build (C4, DC5, FPN), or name a part we do not convert (RetinaNet, normalized FPN / box-head convolutions)."""
    keys = list(state)
    if any(k.startswith(("head.cls_subnet.", "head.bbox_subnet.")) for k in keys):
        raise WeightsError(f"{what}: a Detectron2 RetinaNet model (keys head.cls_subnet.* / head.bbox_subnet.*); "
                           "RetinaNet is a one-stage detector, not a Faster R-CNN: only Faster R-CNN (C4, DC5, FPN) "
                           "models convert")
    if any(k.startswith(("backbone.bottom_up.", "backbone.fpn_")) for k in keys):
        arch, res5 = "FPN", "backbone.bottom_up.res5."
    elif any(k.startswith("backbone.res5.") for k in keys):
        arch, res5 = "DC5", "backbone.res5."
    elif any(k.startswith("roi_heads.res5.") for k in keys):
        arch, res5 = "C4", "roi_heads.res5."
    else:
        odd = [k for k in keys if not k.startswith(("backbone.stem.", "backbone.res"))][:5] or keys[:5]
        raise WeightsError(f"{what}: keys fit neither a Detectron2 C4 model (roi_heads.res5.*), a DC5 model "
                           f"(backbone.res5.*) nor an FPN model (backbone.bottom_up.*); first keys that do not fit: "
                           f"{odd}")
    # Convolutions with a norm (FPN.NORM / ROI_BOX_HEAD.NORM "GN", "SyncBN", ...) have no bias and a .norm child;
    # ours have neither (model.fpn.norm "bn" is torchvision's layout, and GN has no counterpart here).
    normed = [k for k in keys if re.match(r"^(backbone\.fpn_\w+|roi_heads\.box_head\.conv\d+)\.norm\.", k)]
    if normed:
        part = "FPN" if normed[0].startswith("backbone.") else "box head"
        raise WeightsError(f"{what}: a {part} with normalized convolutions ({normed[0]}, Detectron2's "
                           f"{'FPN.NORM' if part == 'FPN' else 'ROI_BOX_HEAD.NORM'} set); only models whose "
                           "convolutions there have a bias and no norm (NORM '', the model zoo's Faster R-CNNs) "
                           "convert")
    body = _BODY[arch]
    need = [f"{body}stem.conv1.weight", "proposal_generator.rpn_head.objectness_logits.weight",
            "roi_heads.box_predictor.cls_score.weight", "roi_heads.box_predictor.bbox_pred.weight"]
    if arch != "C4":
        need.append("roi_heads.box_head.fc1.weight")
    if arch == "FPN":
        need += [f"backbone.fpn_{kind}{stage}.weight" for stage in D2_FPN_STAGES for kind in ("lateral", "output")]
    missing = [k for k in need if k not in state]
    if missing:
        raise WeightsError(f"{what}: a Detectron2 {arch} model needs {missing}; the file has none of them "
                           f"(first keys: {keys[:5]})")
    counts = tuple(count_blocks(state, f"{body}res{i}.") for i in (2, 3, 4)) + (count_blocks(state, res5),)
    bottleneck = f"{body}res2.0.conv3.weight" in state
    depth = depth_from_blocks(counts, bottleneck)
    if depth is None:
        raise WeightsError(f"{what}: res2..res5 have {counts} {'bottleneck' if bottleneck else 'basic'} blocks, "
                           f"which is no ResNet-{'/'.join(str(d) for d in RESNET_SPECS)}")
    num_classes = int(state["roi_heads.box_predictor.cls_score.weight"].shape[0]) - 1
    box_rows = int(state["roi_heads.box_predictor.bbox_pred.weight"].shape[0])
    if box_rows not in (4, 4 * num_classes):
        raise WeightsError(f"{what}: roi_heads.box_predictor.bbox_pred has {box_rows} outputs for {num_classes} "
                           "classes (expected 4 or 4 per class)")
    anchors = int(state["proposal_generator.rpn_head.objectness_logits.weight"].shape[0])
    info = Detectron2Model(
        arch, depth, num_classes, num_anchors=anchors, fc_dim=RoIHeadConfig.fc_dim,
        pooler_resolution=D2_C4_POOLER_RESOLUTION, class_agnostic_box=box_rows == 4 and num_classes > 1,
    )
    if arch == "FPN":
        info.fpn_channels = int(state["backbone.fpn_output2.weight"].shape[0])
    if arch != "C4":
        _read_box_head(state, info, res5, bottleneck, what)
    return info


def _read_box_head(state: Mapping[str, Tensor], info: Detectron2Model, res5: str, bottleneck: bool,
                   what: str) -> None:
    """The fc box head's shape (DC5, FPN: ``num_conv`` 3x3 convolutions, ``num_fc`` fc layers, their widths and the
    pooled size their input implies) into ``info``."""
    keys = list(state)
    fcs = _numbered(keys, r"^roi_heads\.box_head\.fc(\d+)\.weight$")
    convs = _numbered(keys, r"^roi_heads\.box_head\.conv(\d+)\.weight$")
    for name, found in (("fc", fcs), ("conv", convs)):
        if found != list(range(1, len(found) + 1)):
            raise WeightsError(f"{what}: box-head layers roi_heads.box_head.{name}{{i}} numbered {found}, not 1..n")
    widths = {int(state[f"roi_heads.box_head.fc{i}.weight"].shape[0]) for i in fcs}
    conv_widths = {int(state[f"roi_heads.box_head.conv{i}.weight"].shape[0]) for i in convs}
    if len(widths) != 1 or len(conv_widths) > 1:
        raise WeightsError(f"{what}: box-head fc widths {sorted(widths)} / conv widths {sorted(conv_widths)} differ "
                           "(ROI_BOX_HEAD.FC_DIM / CONV_DIM are one width each)")
    info.num_fc, info.fc_dim, info.num_conv = len(fcs), widths.pop(), len(convs)
    if convs:
        info.conv_dim = conv_widths.pop()
        channels = info.conv_dim
    elif info.arch == "FPN":
        channels = info.fpn_channels
    else:  # DC5: pooled from res5
        channels = int(state[f"{res5}0.conv3.weight" if bottleneck else f"{res5}0.conv2.weight"].shape[0])
    fc_in = int(state["roi_heads.box_head.fc1.weight"].shape[1])
    res = math.isqrt(fc_in // channels)
    if res * res * channels != fc_in:
        raise WeightsError(f"{what}: roi_heads.box_head.fc1 takes {fc_in} inputs, not {channels} x S x S pooled "
                           "features")
    info.pooler_resolution = res


_NORM = re.compile(r"^(res\d\.\d+)\.conv(\d)\.norm\.(\w+)$")
_SHORTCUT_NORM = re.compile(r"^(res\d\.\d+)\.shortcut\.norm\.(\w+)$")
_SHORTCUT = re.compile(r"^(res\d\.\d+)\.shortcut\.weight$")
_FPN_CONV = re.compile(r"^backbone\.fpn_(lateral|output)(\d)\.(weight|bias)$")
_HEADS = {
    "proposal_generator.rpn_head.conv.": "rpn.head.conv.",
    "proposal_generator.rpn_head.objectness_logits.": "rpn.head.objectness.",
    "proposal_generator.rpn_head.anchor_deltas.": "rpn.head.deltas.",
    # convI / fcI: the same names in our FCBoxHead (a layer it does not have is caught by the key check).
    "roi_heads.box_head.": "roi_heads.box_head.",
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


def _fpn_name(key: str) -> str | None:
    """``backbone.fpn_{lateral,output}{l}.*`` -> ``trunk.{lateral,output}_convs.{l - 2}.*`` (None: not one)."""
    m = _FPN_CONV.match(key)
    if m is None or int(m[2]) not in D2_FPN_STAGES:
        return None
    return f"trunk.{m[1]}_convs.{D2_FPN_STAGES.index(int(m[2]))}.{m[3]}"


def rename_detectron2(state: Mapping[str, Tensor], info: Detectron2Model) -> tuple[dict[str, Tensor], list[str]]:
    """Detectron2 names -> ours: ``(our state dict, Detectron2 keys that map to nothing)``; fills ``info.dropped``."""
    out: dict[str, Tensor] = {}
    unknown: list[str] = []
    body = _BODY[info.arch]
    for key, value in state.items():
        if key.endswith("num_batches_tracked"):
            continue
        dropped = next((part for prefix, part in _DROPPED.items() if key.startswith(prefix)), None)
        if dropped is not None:
            info.dropped[dropped] = info.dropped.get(dropped, 0) + 1
            continue
        if key.startswith(body + "stem.") or key.startswith(body + "res"):
            out["trunk.body." + _resnet_name(key[len(body):])] = value
        elif info.arch == "FPN" and (name := _fpn_name(key)) is not None:
            out[name] = value
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
    levels = len(FPN_LEVELS) if info.arch == "FPN" else 1
    if len(sizes) % levels:
        raise WeightsError(f"{what}: {len(sizes)} anchor sizes cannot be shared evenly by the FPN's {levels} levels "
                           "P2..P6 (Detectron2: one size each); give the model's --anchor-sizes")
    per_level = len(sizes) // levels
    if per_level * len(ratios) != info.num_anchors:
        each = " per level" if levels > 1 else ""
        raise WeightsError(
            f"{what}: its RPN predicts {info.num_anchors} anchors per location but {per_level} sizes{each} x "
            f"{len(ratios)} ratios = {per_level * len(ratios)} were assumed; give the model's --anchor-sizes and "
            "--aspect-ratios"
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
        min_size_train=D2_VOC_MIN_SIZE_TRAIN if voc else D2_MIN_SIZE_TRAIN, max_size_train=1333,
        min_size_test=options.min_size_test, max_size_test=options.max_size_test,
    )
    pre_train, post_train, pre_test = D2_RPN_TOPK[info.arch]
    model = ModelConfig(
        arch=info.arch,  # type: ignore[arg-type]
        num_classes=info.num_classes,
        # Detectron2's FrozenBatchNorm2d epsilon is 1e-5, as ours.
        backbone=BackboneConfig(name=f"resnet{info.depth}", weights="none", freeze_at=2, norm="frozen_bn",
                                stride_in_1x1=options.stride_in_1x1, shortcut="B", norm_eps=1e-5),
        fpn=FPNConfig(out_channels=info.fpn_channels, norm="none"),
        pixel=PixelConfig(mean=mean, std=std, channel_order=options.channel_order),  # type: ignore[arg-type]
        anchors=AnchorConfig(sizes=sizes, aspect_ratios=ratios, offset=0.0, convention="detectron2"),
        # MODEL.PROPOSAL_GENERATOR.MIN_SIZE 0: only empty proposals are dropped.
        rpn=RPNConfig(pre_nms_topk_train=pre_train, post_nms_topk_train=post_train,
                      pre_nms_topk_test=pre_test if options.pre_nms_topk_test is None else options.pre_nms_topk_test,
                      post_nms_topk_test=options.post_nms_topk_test,
                      nms_thresh=0.7, min_box_size=0.0),
        # No size floor on detections: Detectron2 drops only empty boxes (after its 100-detection cap, in
        # detector_postprocess; min_box_size 0 drops them before NMS: the same set unless one ranks in the top 100).
        roi_heads=RoIHeadConfig(pooler_type="roi_align", pooler_resolution=info.pooler_resolution, sampling_ratio=0,
                                aligned=True, canonical_box_size=CANONICAL_BOX_SIZE, canonical_level=CANONICAL_LEVEL,
                                level_epsilon=D2_LEVEL_EPSILON, level_epsilon_in_log=True, score_thresh=0.05,
                                nms_thresh=0.5, detections_per_image=100, min_box_size=0.0, fc_dim=info.fc_dim,
                                num_fc=info.num_fc, num_conv=info.num_conv, conv_dim=info.conv_dim, conv_norm="none"),
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
    load_converted_state(model, ours, f"{what}: does not fit a ResNet-{info.depth} {info.arch} model")
    logger.info("converted %s: Detectron2 R%d-%s, %d classes, %d anchors/location, %d tensors%s", what, info.depth,
                info.arch, info.num_classes, info.num_anchors, len(ours),
                "".join(f"; left out {n} {part} tensors" for part, n in info.dropped.items()))
    return model.eval(), cfg, names, info


__all__ = ["D2_ANCHOR_SIZES", "D2_ASPECT_RATIOS", "D2_PIXEL_MEAN_BGR", "Detectron2Model", "Detectron2Options",
           "convert_detectron2", "detectron2_config", "inspect_detectron2", "read_detectron2_state",
           "rename_detectron2"]
