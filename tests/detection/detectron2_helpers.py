"""Detectron2-layout checkpoints made in the tests: the weight recipe of ``shared/data/detectron2`` and our model's
state dict written under Detectron2's key names (an inverse of the converter, written independently of it)."""

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

from detection.config import AnchorConfig, BackboneConfig, ModelConfig, PixelConfig, RoIHeadConfig, RPNConfig

D2_MEAN = (103.53, 116.28, 123.675)


def recipe_tensor(key: str, shape: tuple[int, ...], salt: str = "") -> Tensor:
    """The tensor Detectron2 ran with for ``key`` (``shared/data/detectron2/outputs.json["weight_recipe"]``)."""
    g = torch.Generator().manual_seed(zlib.crc32((salt + key).encode()))
    if key.endswith(("norm.running_mean", "norm.bias")):
        return (torch.rand(shape, generator=g) - 0.5) * 0.2
    if key.endswith(("norm.running_var", "norm.weight")):
        return torch.rand(shape, generator=g) * 0.5 + 0.75
    if len(shape) >= 2:
        factor = 1.0
        if key == "backbone.stem.conv1.weight":
            factor = 0.02
        elif ".conv3." in key:
            factor = 0.2
        elif key.endswith(("anchor_deltas.weight", "bbox_pred.weight")):
            factor = 0.05
        elif key == "roi_heads.box_predictor.cls_score.weight":
            factor = 0.4
        w = torch.randn(shape, generator=g) * math.sqrt(2.0 / math.prod(shape[1:])) * factor
        if key == "roi_heads.box_predictor.cls_score.weight":
            w = w - w.mean(1, keepdim=True)
        return w
    return (torch.rand(shape, generator=g) - 0.5) * 0.02


def detectron2_name(key: str) -> str:
    """One of our FasterRCNN state-dict keys -> Detectron2's name for the same tensor."""
    key = re.sub(r"^trunk\.body\.", "backbone.", key)
    key = re.sub(r"^roi_heads\.box_head\.res5\.", "roi_heads.res5.", key)
    key = re.sub(r"\.bn(\d)\.", r".conv\1.norm.", key)  # stem.bn1 -> stem.conv1.norm, resK.i.bnN -> convN.norm
    key = re.sub(r"\.downsample\.0\.", ".shortcut.", key)
    key = re.sub(r"\.downsample\.1\.", ".shortcut.norm.", key)
    key = re.sub(r"^rpn\.head\.(conv|objectness|deltas)\.",
                 lambda m: "proposal_generator.rpn_head."
                 + {"conv": "conv", "objectness": "objectness_logits", "deltas": "anchor_deltas"}[m[1]] + ".", key)
    return re.sub(r"^roi_heads\.(cls_score|bbox_pred)\.", r"roi_heads.box_predictor.\1.", key)


def detectron2_like_config(arch: str, depth: int, num_classes: int, *, fc_dim: int = 1024,
                           post_nms_topk_test: int = 1000) -> ModelConfig:
    """Our model config for what the converter should produce from a Detectron2 ``arch`` model (its defaults)."""
    return ModelConfig(
        arch=arch,  # type: ignore[arg-type]
        num_classes=num_classes,
        backbone=BackboneConfig(name=f"resnet{depth}", norm="frozen_bn", stride_in_1x1=True),
        pixel=PixelConfig(mean=D2_MEAN, std=(1.0, 1.0, 1.0), channel_order="BGR"),
        anchors=AnchorConfig(sizes=(32.0, 64.0, 128.0, 256.0, 512.0), convention="detectron2"),
        rpn=RPNConfig(post_nms_topk_test=post_nms_topk_test),
        roi_heads=RoIHeadConfig(pooler_resolution=14 if arch == "C4" else 7, fc_dim=fc_dim),
    )


def detectron2_state(state: Mapping[str, Tensor], salt: str | None = "x") -> dict[str, Tensor]:
    """``state`` (ours) renamed to Detectron2's keys, with recipe values (so BN statistics are not trivial), or
    with its own values when ``salt`` is None (a model initialized for training, e.g. to fine-tune from)."""
    return {detectron2_name(k): v.clone() if salt is None else recipe_tensor(detectron2_name(k), tuple(v.shape), salt)
            for k, v in state.items() if not k.endswith("num_batches_tracked")}


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
