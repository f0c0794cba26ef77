"""Detectron2-layout checkpoints made in the tests: the weight recipe of ``shared/data/detectron2`` (C4 / DC5) and
``shared/data/detectron2-fpn`` (its extension to FPN and RetinaNet keys), and our model's state dict written under
Detectron2's key names (an inverse of the converter, written independently of it)."""

from __future__ import annotations

import math
import pickle
import re
import zlib
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from detection.config import (
    AnchorConfig,
    BackboneConfig,
    FPNConfig,
    ModelConfig,
    PixelConfig,
    RoIHeadConfig,
    RPNConfig,
)

D2_MEAN = (103.53, 116.28, 123.675)
# The recipe's fc1 of an FPN box head: 256 channels x 7 x 7 pooled inputs.
FPN_FC1_FAN_IN = 256 * 7 * 7
# RetinaNet's focal-loss prior probability of a foreground class (its classification bias starts at it).
RETINANET_PRIOR = 0.01


def _recipe_factor(key: str, fan_in: int) -> float:
    """The recipe's scale of a weight (the first rule that applies); the FPN / RetinaNet rules match no C4 / DC5
    key, so those tensors are what ``shared/data/detectron2`` ran with."""
    if key in ("backbone.stem.conv1.weight", "backbone.bottom_up.stem.conv1.weight"):
        return 0.02
    if ".conv3." in key:
        return 0.2
    if key.endswith(("anchor_deltas.weight", "bbox_pred.weight")):
        return 0.05
    if key == "roi_heads.box_predictor.cls_score.weight":
        return 0.4
    if m := re.fullmatch(r"backbone\.fpn_(lateral|output)(\d)\.weight", key):
        return 0.5 if m[1] == "lateral" else 0.5 * 1.5 ** (int(m[2]) - 3)
    if key == "backbone.top_block.p6.weight":
        return 0.8
    if key == "backbone.top_block.p7.weight":
        return 2.0
    if key == "roi_heads.box_head.fc1.weight" and fan_in == FPN_FC1_FAN_IN:
        return 2.0
    if key == "head.cls_score.weight":
        return 0.3
    return 1.0


def recipe_tensor(key: str, shape: tuple[int, ...], salt: str = "") -> Tensor:
    """The tensor Detectron2 ran with for ``key`` (``outputs.json["weight_recipe"]`` of ``shared/data/detectron2``
    and, extending it, of ``shared/data/detectron2-fpn``)."""
    g = torch.Generator().manual_seed(zlib.crc32((salt + key).encode()))
    if key.endswith(("norm.running_mean", "norm.bias")):
        return (torch.rand(shape, generator=g) - 0.5) * 0.2
    if key.endswith(("norm.running_var", "norm.weight")):
        return torch.rand(shape, generator=g) * 0.5 + 0.75
    if len(shape) >= 2:
        fan_in = math.prod(shape[1:])
        w = torch.randn(shape, generator=g) * math.sqrt(2.0 / fan_in) * _recipe_factor(key, fan_in)
        if key == "roi_heads.box_predictor.cls_score.weight":
            w = w - w.mean(1, keepdim=True)
        if key.startswith(("backbone.fpn_", "backbone.top_block.")):
            # The recipe's zero-mean pyramid filters: ReLU'd ResNet outputs would otherwise add a per-level offset.
            w = w - w.mean(dim=tuple(range(1, w.dim())), keepdim=True)
        return w
    if key == "head.cls_score.bias":
        return -math.log((1 - RETINANET_PRIOR) / RETINANET_PRIOR) + (torch.rand(shape, generator=g) - 0.5) * 1.0
    return (torch.rand(shape, generator=g) - 0.5) * 0.02


def detectron2_name(key: str, *, fpn: bool = False) -> str:
    """One of our FasterRCNN state-dict keys -> Detectron2's name for the same tensor (``fpn``: of an FPN model,
    whose ResNet Detectron2 keeps under ``backbone.bottom_up``)."""
    key = re.sub(r"^trunk\.body\.", "backbone.bottom_up." if fpn else "backbone.", key)
    # Our pyramid's module lists run res2..res5; Detectron2 names the convolutions by stage.
    key = re.sub(r"^trunk\.(lateral|output)_convs\.(\d)\.", lambda m: f"backbone.fpn_{m[1]}{int(m[2]) + 2}.", key)
    key = re.sub(r"^roi_heads\.box_head\.res5\.", "roi_heads.res5.", key)
    key = re.sub(r"\.bn(\d)\.", r".conv\1.norm.", key)  # stem.bn1 -> stem.conv1.norm, resK.i.bnN -> convN.norm
    key = re.sub(r"\.downsample\.0\.", ".shortcut.", key)
    key = re.sub(r"\.downsample\.1\.", ".shortcut.norm.", key)
    key = re.sub(r"^rpn\.head\.(conv|objectness|deltas)\.",
                 lambda m: "proposal_generator.rpn_head."
                 + {"conv": "conv", "objectness": "objectness_logits", "deltas": "anchor_deltas"}[m[1]] + ".", key)
    return re.sub(r"^roi_heads\.(cls_score|bbox_pred)\.", r"roi_heads.box_predictor.\1.", key)


def detectron2_like_config(arch: str, depth: int, num_classes: int, *, fc_dim: int = 1024,
                           post_nms_topk_test: int = 1000, fpn_channels: int = 256, num_fc: int = 2,
                           num_conv: int = 0, conv_dim: int = 256) -> ModelConfig:
    """Our model config for what the converter should produce from a Detectron2 ``arch`` model (its defaults:
    configs/Base-RCNN-{C4,DilatedC5,FPN}.yaml; no size floor on proposals or detections)."""
    fpn = arch == "FPN"
    return ModelConfig(
        arch=arch,  # type: ignore[arg-type]
        num_classes=num_classes,
        backbone=BackboneConfig(name=f"resnet{depth}", norm="frozen_bn", stride_in_1x1=True),
        fpn=FPNConfig(out_channels=fpn_channels),
        pixel=PixelConfig(mean=D2_MEAN, std=(1.0, 1.0, 1.0), channel_order="BGR"),
        anchors=AnchorConfig(sizes=(32.0, 64.0, 128.0, 256.0, 512.0), convention="detectron2"),
        # FPN: top-k before NMS per level.
        rpn=RPNConfig(pre_nms_topk_train=2000 if fpn else 12000, post_nms_topk_train=1000 if fpn else 2000,
                      pre_nms_topk_test=1000 if fpn else 6000, post_nms_topk_test=post_nms_topk_test,
                      min_box_size=0.0),
        roi_heads=RoIHeadConfig(pooler_resolution=14 if arch == "C4" else 7, fc_dim=fc_dim, num_fc=num_fc,
                                num_conv=num_conv, conv_dim=conv_dim, min_box_size=0.0),
    )


def detectron2_state(state: Mapping[str, Tensor], salt: str | None = "x") -> dict[str, Tensor]:
    """``state`` (ours) renamed to Detectron2's keys, with recipe values (so BN statistics are not trivial), or
    with its own values when ``salt`` is None (a model initialized for training, e.g. to fine-tune from). An FPN
    model (``trunk.lateral_convs.*`` present) gets Detectron2's FPN names."""
    fpn = any(k.startswith("trunk.lateral_convs.") for k in state)
    out = {}
    for k, v in state.items():
        if k.endswith("num_batches_tracked"):
            continue
        name = detectron2_name(k, fpn=fpn)
        out[name] = v.clone() if salt is None else recipe_tensor(name, tuple(v.shape), salt)
    return out


def write_model_zoo_pkl(state: Mapping[str, Tensor], path: Path) -> Path:
    """As the model zoo's ``model_final_*.pkl``: a pickle of numpy arrays."""
    with open(path, "wb") as f:
        pickle.dump({"model": {k: v.numpy() for k, v in state.items()}, "__author__": "Detectron2 Model Zoo",
                     "matching_heuristics": True}, f)
    return path


def write_training_pth(state: Mapping[str, Tensor], path: Path) -> Path:
    """As Detectron2's own training output (``model_final.pth``): ``torch.save({"model": tensors, ...})``."""
    torch.save({"model": dict(state), "iteration": 89999, "optimizer": {"state": {}, "param_groups": []}}, path)
    return path


def as_numpy(state: Mapping[str, Tensor]) -> dict[str, np.ndarray]:
    return {k: v.numpy() for k, v in state.items()}
