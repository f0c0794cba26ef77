"""torchvision FPN Faster R-CNN checkpoints -> our detector file (the ``model_final.pth`` format).

torchvision's ``fasterrcnn_resnet50_fpn`` (v1, the COCO_V1 weights) and ``fasterrcnn_resnet50_fpn_v2`` are the same
networks as our ``model.arch: FPN`` once every switch on which torchvision differs from Detectron2 is set its way
(see :func:`torchvision_config`). Which one a file holds is read from its keys:

* v1: FPN convolutions with bias, one 3x3 convolution in the RPN head, the ``TwoMLPHead`` box head (fc6, fc7);
* v2 (Li et al. 2021, "Benchmarking Detection Transfer Learning with Vision Transformers"): bias-free FPN
  convolutions with BatchNorm, two 3x3 convolutions in the RPN head, ``FastRCNNConvFCHead`` (four 3x3 convolutions
  with BatchNorm, one fc).

Names: ``backbone.body.*`` (a torchvision ResNet: conv1, bn1, layer1..4) -> ``trunk.body.*`` (stem, res2..res5,
through :func:`resbackbone.weights.convert_state_dict`); ``backbone.fpn.inner_blocks.i`` / ``layer_blocks.i`` ->
``trunk.lateral_convs.i`` / ``trunk.output_convs.i`` (both res2..res5 order); ``rpn.head.conv.0.0`` / ``conv.1.0``
-> ``rpn.head.conv`` / ``extra_convs.0``, ``cls_logits`` / ``bbox_pred`` -> ``objectness`` / ``deltas``; ``fc6`` /
``fc7`` (v1) or ``box_head.{0..3}`` / ``box_head.5`` (v2) -> ``conv{1..4}`` / ``fc1``. Checkpoints written before
torchvision 0.12 (the published COCO_V1 file among them) name the single RPN convolution ``rpn.head.conv`` and the
FPN convolutions ``inner_blocks.i`` without the ``.0`` of ``Conv2dNormActivation``; both spellings are read.

Classes: torchvision's row 0 is the background, ours is the last row. The COCO models have 91 rows, one per COCO
category id (1..90) with "N/A" at the ten ids COCO never used; their rows are dropped, the 80 named classes keep
their order (category-id order, :data:`detection.data.coco.COCO_CLASS_NAMES`) and the detector file records their
category ids for tools/infer.py's COCO results. Dropping the N/A rows removes their share of the softmax
denominator: a trained model never saw them as targets, so their probabilities are negligible, but this is the one
place where the converted model is not bit-for-bit torchvision's function. The box regressor's background rows are
unused by torchvision's inference and are dropped too.

BatchNorm epsilon: torchvision builds ``fasterrcnn_resnet50_fpn`` with ``FrozenBatchNorm2d`` and, for the COCO_V1
weights, sets its epsilon to 0 (``overwrite_eps(model, 0.0)``: the weights were trained with Detectron's
epsilon-free frozen BN), so v1 converts with ``model.backbone.norm_eps: 0``. v2 uses ``nn.BatchNorm2d`` with the
default epsilon 1e-5 in the ResNet, the FPN and the box head. Either can be overridden (``norm_eps``: the trunk's
BN, i.e. the ResNet and the FPN).

Files are read with ``torch.load(weights_only=True)``: a bare state dict (``torch.save(model.state_dict())``, the
published files) or torchvision's reference-script checkpoint ``{"model": state, ...}``.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor, nn

from resbackbone.errors import WeightsError, WeightsNotFoundError
from resbackbone.pixels import TORCHVISION_PIXELS
from resbackbone.resnet import depth_from_blocks

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
from .pooler import TV_LEVEL_EPSILON

logger = logging.getLogger("detection.torchvision_detector")

# torchvision's defaults (models/detection/faster_rcnn.py FasterRCNN.__init__, anchor_utils, backbone_utils).
TV_ANCHOR_SIZES = (32.0, 64.0, 128.0, 256.0, 512.0)  # one per level, P2..P6
TV_ASPECT_RATIOS = (0.5, 1.0, 2.0)
TV_MIN_SIZE, TV_MAX_SIZE = 800, 1333
# The smooth-L1 beta of both of torchvision's box losses (rpn.py and roi_heads.py: beta=1/9, from Detectron).
TV_SMOOTH_L1_BETA = 1.0 / 9.0
# fasterrcnn_resnet50_fpn's default trainable_backbone_layers=3 freezes conv1 and layer1: our freeze_at 2.
TV_FREEZE_AT = 2
# The COCO_V1 weights' frozen-BN epsilon (torchvision sets it with overwrite_eps(model, 0.0)); v2's is BN's default.
TV_V1_NORM_EPS = 0.0
TV_V2_NORM_EPS = 1e-5

# The name torchvision's COCO category list gives the ten category ids COCO never used (rows to drop).
UNUSED_SLOT = "N/A"
# COCO category ids without a category; the 80 others, in order, are COCO_CLASS_NAMES.
_COCO_UNUSED_IDS = (12, 26, 29, 30, 45, 66, 68, 69, 71, 83)
# torchvision's 90 foreground slots (rows 1..90 of its 91-way classifier), slot i = COCO category id i.
TV_COCO_SLOTS: tuple[str, ...] = tuple(
    UNUSED_SLOT if i in _COCO_UNUSED_IDS else COCO_CLASS_NAMES[i - 1 - sum(u < i for u in _COCO_UNUSED_IDS)]
    for i in range(1, 91)
)



@dataclass
class TorchvisionOptions:
    """What the keys cannot tell; None: torchvision's default (see the module docstring)."""

    # Names of the model's foreground classes in row order (rows 1..K; "N/A" marks a row to drop). None: the 91-row
    # COCO layout's 80 names; any other class count needs them.
    class_names: Sequence[str] | None = None
    # Epsilon of the trunk's BN (ResNet and FPN). None: 0 for v1 (the COCO_V1 weights), 1e-5 for v2.
    norm_eps: float | None = None
    min_size_test: int = TV_MIN_SIZE
    max_size_test: int = TV_MAX_SIZE


@dataclass
class TorchvisionModel:
    """What a torchvision Faster R-CNN state dict says about its network."""

    version: Literal["v1", "v2"]
    depth: int
    num_rows: int  # classifier rows, background (row 0) included
    out_channels: int  # FPN width
    num_anchors: int  # anchors per location
    fc_dim: int
    dropped: dict[str, int] = field(default_factory=dict)  # parts left out on purpose (a Mask R-CNN's mask head)


def read_torchvision_state(path: str | Path) -> dict[str, Tensor]:
    """The ``{key: tensor}`` state dict of a torchvision detector file, in torchvision's names (floats as float32).

    Accepts a bare state dict or ``{"model": state, ...}`` (torchvision's reference training scripts).
    """
    from resbackbone.serialization import load_torch_file

    path = Path(path)
    if not path.is_file():
        raise WeightsNotFoundError(
            f"torchvision checkpoint not found: {path} (the published files: FasterRCNN_ResNet50_FPN_Weights / "
            "FasterRCNN_ResNet50_FPN_V2_Weights .url in torchvision.models.detection; download one on a machine "
            "with network access and pass its path)"
        )
    obj: Any = load_torch_file(path)
    state = obj.get("model", obj) if isinstance(obj, Mapping) else None
    if not isinstance(state, Mapping) or not state:
        keys = f" with keys {sorted(map(str, obj))[:6]}" if isinstance(obj, Mapping) else ""
        raise WeightsError(f"{path}: expected a torchvision detector state dict (or {{'model': state}}), got "
                           f"{type(obj).__name__}{keys}")
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        if not isinstance(value, Tensor):
            raise WeightsError(f"{path}: entry {key!r} is a {type(value).__name__}, not a tensor: not a state dict")
        out[str(key)] = value.float() if value.is_floating_point() else value
    return out


def _first(state: Mapping[str, Tensor], *keys: str) -> Tensor | None:
    """The tensor of the first of ``keys`` present (a name in today's and in the pre-0.12 spelling)."""
    return next((state[k] for k in keys if k in state), None)


def inspect_torchvision(state: Mapping[str, Tensor], what: str = "checkpoint") -> TorchvisionModel:
    """Read the version (v1 / v2), depth, class rows and widths off the keys; one line when they fit neither."""
    keys = list(state)
    if not any(k.startswith("backbone.body.") for k in keys) or not any(k.startswith("backbone.fpn.") for k in keys):
        if any(k.startswith(("layer1.", "conv1.")) for k in keys):
            hint = "a torchvision classification ResNet (convert it with --weights)"
        elif any(k.startswith(("backbone.bottom_up.", "proposal_generator.")) for k in keys):
            hint = "a Detectron2 model"
        else:
            hint = f"first keys: {keys[:5]}"
        raise WeightsError(f"{what}: not a torchvision FPN Faster R-CNN (no backbone.body.* / backbone.fpn.* keys; "
                           f"{hint})")
    need = {"backbone.body.conv1.weight": None, "rpn.head.cls_logits.weight": None,
            "roi_heads.box_predictor.cls_score.weight": None, "roi_heads.box_predictor.bbox_pred.weight": None}
    missing = [k for k in need if k not in state]
    if missing:
        raise WeightsError(f"{what}: a torchvision Faster R-CNN needs {missing}; the file lacks them")
    v2 = "roi_heads.box_head.5.weight" in state
    if not v2 and "roi_heads.box_head.fc6.weight" not in state:
        odd = [k for k in keys if k.startswith("roi_heads.box_head.")][:4]
        raise WeightsError(f"{what}: its box head fits neither v1 (box_head.fc6 / fc7) nor v2 (box_head.0..3 convs + "
                           f"box_head.5); box-head keys: {odd}")
    counts = tuple(count_blocks(state, f"backbone.body.layer{i}.") for i in range(1, 5))
    bottleneck = "backbone.body.layer1.0.conv3.weight" in state
    depth = depth_from_blocks(counts, bottleneck)
    if depth is None:
        raise WeightsError(f"{what}: layer1..layer4 have {counts} {'bottleneck' if bottleneck else 'basic'} blocks, "
                           "which is no ResNet-18/34/50/101/152")
    lateral = _first(state, "backbone.fpn.inner_blocks.0.0.weight", "backbone.fpn.inner_blocks.0.weight")
    if lateral is None:
        raise WeightsError(f"{what}: no FPN lateral convolution backbone.fpn.inner_blocks.0[.0].weight")
    rows = int(state["roi_heads.box_predictor.cls_score.weight"].shape[0])
    box_rows = int(state["roi_heads.box_predictor.bbox_pred.weight"].shape[0])
    if rows < 2 or box_rows != 4 * rows:
        raise WeightsError(f"{what}: roi_heads.box_predictor has {rows} class rows and {box_rows} box rows "
                           "(expected background + K classes and 4 per row)")
    fc = state["roi_heads.box_head.5.weight" if v2 else "roi_heads.box_head.fc6.weight"]
    return TorchvisionModel("v2" if v2 else "v1", depth, rows, int(lateral.shape[0]),
                            int(state["rpn.head.cls_logits.weight"].shape[0]), int(fc.shape[0]))


# Left out on purpose: a Mask / Keypoint R-CNN's extra heads (their box part is a Faster R-CNN).
_DROPPED = {"roi_heads.mask_head.": "mask head", "roi_heads.mask_predictor.": "mask head",
            "roi_heads.keypoint_head.": "keypoint head", "roi_heads.keypoint_predictor.": "keypoint head"}
# torchvision name (after the prefix) -> ours; the pre-0.12 spellings (no Conv2dNormActivation ``.0``) too.
_BODY = re.compile(r"^backbone\.body\.(conv1|bn1|layer[1-4])\.")
_FPN = re.compile(r"^backbone\.fpn\.(inner|layer)_blocks\.(\d)\.(?:(0|1)\.)?(\w+)$")
_RPN_CONV = re.compile(r"^rpn\.head\.conv\.(?:(\d+)\.0\.)?(weight|bias)$")
_V2_BOX = re.compile(r"^roi_heads\.box_head\.([0-3])\.([01])\.(\w+)$")
_HEADS = {
    "rpn.head.cls_logits.": "rpn.head.objectness.",
    "rpn.head.bbox_pred.": "rpn.head.deltas.",
    "roi_heads.box_head.fc6.": "roi_heads.box_head.fc1.",
    "roi_heads.box_head.fc7.": "roi_heads.box_head.fc2.",
    "roi_heads.box_head.5.": "roi_heads.box_head.fc1.",
}


def rename_torchvision(state: Mapping[str, Tensor], info: TorchvisionModel) -> tuple[dict[str, Tensor], list[str]]:
    """torchvision names -> ours, classifier rows aside: ``(our state dict without roi_heads.cls_score /
    bbox_pred, torchvision keys that map to nothing)``; fills ``info.dropped``."""
    from resbackbone.weights import convert_state_dict

    out: dict[str, Tensor] = {}
    unknown: list[str] = []
    body: dict[str, Tensor] = {}
    for key, value in state.items():
        if key.startswith("roi_heads.box_predictor."):
            continue  # the classifier rows: see class_rows
        dropped = next((part for prefix, part in _DROPPED.items() if key.startswith(prefix)), None)
        if dropped is not None:
            info.dropped[dropped] = info.dropped.get(dropped, 0) + 1
        elif _BODY.match(key):
            body[key[len("backbone.body."):]] = value
        elif (m := _FPN.match(key)) and not (info.version == "v1" and m[3] == "1"):
            kind, i, sub, name = m.groups()
            ours = f"trunk.{'lateral' if kind == 'inner' else 'output'}_convs.{i}."
            # v1: the conv itself (.0, or nothing before 0.12); v2: Sequential(conv .0, BatchNorm .1).
            out[ours + (f"{sub or 0}.{name}" if info.version == "v2" else name)] = value
        elif m := _RPN_CONV.match(key):
            i = int(m[1] or 0)
            out[f"rpn.head.{'conv' if i == 0 else f'extra_convs.{i - 1}'}.{m[2]}"] = value
        elif m := _V2_BOX.match(key):
            out[f"roi_heads.box_head.conv{int(m[1]) + 1}.{m[2]}.{m[3]}"] = value
        elif prefix := next((p for p in _HEADS if key.startswith(p)), None):
            out[_HEADS[prefix] + key[len(prefix):]] = value
        else:
            unknown.append(key)
    out.update({f"trunk.body.{k}": v for k, v in convert_state_dict(body, "torchvision").items()})
    return out, unknown


def class_layout(info: TorchvisionModel, options: TorchvisionOptions, what: str) -> tuple[list[str], list[int]]:
    """``(our class names, torchvision row of each)``: rows 1..K named by ``options.class_names`` (default: the
    91-row COCO layout), rows named "N/A" left out."""
    if options.class_names is not None:
        slots = [str(n) for n in options.class_names]
        if len(slots) != info.num_rows - 1:
            raise WeightsError(f"{what} has {info.num_rows - 1} foreground rows (plus background) but "
                               f"{len(slots)} class names were given")
    elif info.num_rows == len(TV_COCO_SLOTS) + 1:
        slots = list(TV_COCO_SLOTS)
    else:
        raise WeightsError(f"{what} has {info.num_rows - 1} foreground classes (91-row COCO models need no names): "
                           "give their names in row order, background excluded (a file with one per line), "
                           "with --class-names")
    rows = [row for row, name in enumerate(slots, start=1) if name != UNUSED_SLOT]
    names = [slots[r - 1] for r in rows]
    if not names:
        raise WeightsError(f"{what}: every class row is named {UNUSED_SLOT!r}")
    if len(set(names)) != len(names):
        twice = sorted({n for n in names if names.count(n) > 1})
        raise WeightsError(f"{what}: class names given twice: {twice[:5]}")
    return names, rows


def class_rows(state: Mapping[str, Tensor], rows: Sequence[int]) -> dict[str, Tensor]:
    """torchvision's predictor -> ours: classifier rows ``rows`` then the background (row 0) last; box rows of
    ``rows`` (class-specific, 4 each; the background's 4 are unused by torchvision's inference and dropped)."""
    idx = torch.tensor(list(rows), dtype=torch.int64)
    box_idx = (4 * idx[:, None] + torch.arange(4)).reshape(-1)  # (K,) -> (4K,)
    cls_w = state["roi_heads.box_predictor.cls_score.weight"]
    cls_b = state["roi_heads.box_predictor.cls_score.bias"]
    return {
        "roi_heads.cls_score.weight": torch.cat([cls_w[idx], cls_w[:1]]),
        "roi_heads.cls_score.bias": torch.cat([cls_b[idx], cls_b[:1]]),
        "roi_heads.bbox_pred.weight": state["roi_heads.box_predictor.bbox_pred.weight"][box_idx],
        "roi_heads.bbox_pred.bias": state["roi_heads.box_predictor.bbox_pred.bias"][box_idx],
    }


def torchvision_config(info: TorchvisionModel, num_classes: int, options: TorchvisionOptions,
                       what: str = "checkpoint") -> DetectionConfig:
    """Our resolved config for the network ``info`` describes, with torchvision's settings for it."""
    if info.num_anchors != len(TV_ASPECT_RATIOS):
        raise WeightsError(f"{what}: its RPN predicts {info.num_anchors} anchors per location; torchvision's FPN "
                           f"models have one size per level x {len(TV_ASPECT_RATIOS)} ratios")
    v2 = info.version == "v2"
    eps = options.norm_eps if options.norm_eps is not None else (TV_V2_NORM_EPS if v2 else TV_V1_NORM_EPS)
    coco = num_classes == len(COCO_CLASS_NAMES)
    data = DataConfig(
        train="coco2017-train" if coco else DataConfig.train,
        test="coco2017-val" if coco else DataConfig.test,
        min_size_train=(TV_MIN_SIZE,), max_size_train=TV_MAX_SIZE,
        min_size_test=options.min_size_test, max_size_test=options.max_size_test,
    )
    px = TORCHVISION_PIXELS
    model = ModelConfig(
        arch="FPN",
        num_classes=num_classes,
        backbone=BackboneConfig(name=f"resnet{info.depth}", weights="none", freeze_at=TV_FREEZE_AT, norm="frozen_bn",
                                stride_in_1x1=False, shortcut="B", norm_eps=eps),
        fpn=FPNConfig(out_channels=info.out_channels, norm="bn" if v2 else "none"),
        pixel=PixelConfig(mean=px.mean, std=px.std, channel_order=px.channel_order),
        anchors=AnchorConfig(sizes=TV_ANCHOR_SIZES, aspect_ratios=TV_ASPECT_RATIOS, offset=0.0,
                             convention="torchvision", stride_from_padded_size=True),
        # rpn_pre_nms_top_n_{train,test} 2000 / 1000 per level, rpn_post_nms_top_n_* 2000 / 1000 per image.
        rpn=RPNConfig(pre_nms_topk_train=2000, post_nms_topk_train=2000, pre_nms_topk_test=1000,
                      post_nms_topk_test=1000, nms_thresh=0.7, min_box_size=1e-3, head_convs=2 if v2 else 1,
                      smooth_l1_beta=TV_SMOOTH_L1_BETA),
        # MultiScaleRoIAlign(7, sampling_ratio=2) is RoIAlign without the half-pixel shift; LevelMapper adds its
        # 1e-6 after the log.
        roi_heads=RoIHeadConfig(pooler_type="roi_align", pooler_resolution=7, sampling_ratio=2, aligned=False,
                                level_epsilon=TV_LEVEL_EPSILON, level_epsilon_in_log=False,
                                smooth_l1_beta=TV_SMOOTH_L1_BETA, score_thresh=0.05, nms_thresh=0.5,
                                detections_per_image=100, min_box_size=1e-2, fc_dim=info.fc_dim,
                                num_fc=1 if v2 else 2, num_conv=4 if v2 else 0, conv_dim=info.out_channels,
                                conv_norm="bn" if v2 else "none"),
    )
    return DetectionConfig(model=model, data=data)


def convert_torchvision(
    path: str | Path, options: TorchvisionOptions | None = None
) -> tuple[nn.Module, DetectionConfig, list[str], TorchvisionModel]:
    """Read, check and load a torchvision FPN Faster R-CNN: ``(our model in eval mode, its config, class names,
    info)``; the model's ``dataset_meta`` holds the COCO category ids when the file has the 91-row COCO layout.

    Every tensor of our model must come from the file with the same shape, and every file key must land somewhere
    (or be a known left-out part: a Mask / Keypoint R-CNN head); otherwise one line names the first that do not.
    """
    from .faster_rcnn import build_faster_rcnn

    options = options or TorchvisionOptions()
    what = str(path)
    state = read_torchvision_state(path)
    state = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    info = inspect_torchvision(state, what)
    names, rows = class_layout(info, options, what)
    cfg = torchvision_config(info, len(names), options, what)
    ours, unknown = rename_torchvision(state, info)
    if unknown:
        raise WeightsError(f"{what}: keys that fit no part of a torchvision {info.version} Faster R-CNN: {unknown[:6]}")
    ours.update(class_rows(state, rows))
    model = build_faster_rcnn(cfg.model, class_names=names, weights=None)
    load_converted_state(model, ours,
                         f"{what}: does not fit a torchvision {info.version} ResNet-{info.depth} FPN model")
    if names == [n for n in TV_COCO_SLOTS if n != UNUSED_SLOT] and rows == [
            i for i, n in enumerate(TV_COCO_SLOTS, start=1) if n != UNUSED_SLOT]:
        # torchvision's row i is COCO category id i: results written by tools/infer.py then use COCO's ids.
        model.dataset_meta = {"category_ids": list(rows)}
    logger.info("converted %s: torchvision %s R%d-FPN, %d classes (%d rows dropped), BN eps %g, %d tensors%s", what,
                info.version, info.depth, len(names), info.num_rows - 1 - len(names), cfg.model.backbone.norm_eps,
                len(ours), "".join(f"; left out {n} {part} tensors" for part, n in info.dropped.items()))
    return model.eval(), cfg, names, info


__all__ = ["TV_ANCHOR_SIZES", "TV_ASPECT_RATIOS", "TV_COCO_SLOTS", "TorchvisionModel", "TorchvisionOptions",
           "class_layout", "class_rows", "convert_torchvision", "inspect_torchvision", "read_torchvision_state",
           "rename_torchvision", "torchvision_config"]
