"""Saving and loading a trained detector: the weights-only ``model_final.pth`` format, and rebuilding from it.

A detector file holds ``{"format", "config" (the resolved config tree), "class_names", "state_dict"}`` as plain
tensors and Python data, so ``torch.load(weights_only=True)`` reads it and nothing in it can run code. Training
checkpoints (``model_{iteration}.pth``) carry the same "config" and "class_names" with the weights under
"model", so either kind loads here. Rebuilding is ``build_faster_rcnn(saved_config.model, weights=None)``: the
saved config records every choice the ImageNet weights made (norm, stride placement, pixel spec; see
:func:`detection.faster_rcnn.resolve_model_config`), so no weights file is needed. Nothing here imports the
trainer.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from resbackbone.engine.checkpoint import CheckpointManager
from resbackbone.engine.config import from_dict, to_dict
from resbackbone.errors import CheckpointError

from .config import DetectionConfig

# Key of the weights-only file format written at the end of training (model + config + class names).
DETECTOR_FORMAT = "resnet-det/faster-rcnn"
FINAL_WEIGHTS_NAME = "model_final.pth"
BEST_WEIGHTS_NAME = "model_best.pth"


def detector_payload(model: nn.Module, cfg: DetectionConfig, class_names: Sequence[str]) -> dict[str, Any]:
    """The weights-only detector file: everything needed to rebuild and run the model, no pickled objects.

    ``cfg`` must be the resolved config the model was built from (what the trainer holds).
    """
    return {
        "format": DETECTOR_FORMAT,
        "config": to_dict(cfg),
        "class_names": list(class_names),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
    }


def _legacy_config(ckpt: Mapping[str, Any]) -> dict[str, Any]:
    """The config of a file written before the resolved config existed, with its separate "backbone" entry
    (norm, stride placement, pixel spec as the trained model used them) folded in, so it rebuilds the same."""
    data = dict(ckpt["config"])
    legacy = ckpt.get("backbone")
    if not legacy:
        return data
    model = dict(data.get("model", {}))
    backbone = dict(model.get("backbone", {}))
    backbone["norm"] = legacy.get("norm", "bn")
    backbone["stride_in_1x1"] = bool(legacy.get("stride_in_1x1", False))
    model["backbone"] = backbone
    if legacy.get("pixel"):
        px = legacy["pixel"]
        model["pixel"] = {"mean": list(px["mean"]), "std": list(px["std"]), "channel_order": px["channel_order"]}
    data["model"] = model
    return data


def read_detector_file(path: str | Path) -> tuple[DetectionConfig, list[str], dict[str, torch.Tensor]]:
    """``(resolved config, class names, state dict)`` of a detector file or a training checkpoint."""
    path = Path(path)
    ckpt = CheckpointManager.load(path)
    if not isinstance(ckpt, Mapping) or "config" not in ckpt:
        raise CheckpointError(f"{path}: not a resnet-det detector checkpoint (no 'config' entry)")
    state = ckpt.get("state_dict", ckpt.get("model"))
    if not isinstance(state, Mapping):
        raise CheckpointError(f"{path}: no 'state_dict' or 'model' entry")
    try:
        cfg = from_dict(DetectionConfig, _legacy_config(ckpt))
    except ValueError as e:
        raise CheckpointError(f"{path}: its config does not load: {e}") from e
    return cfg, list(ckpt.get("class_names") or []), dict(state)


def load_detector(path: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, DetectionConfig, list[str]]:
    """Rebuild a trained detector (eval mode, on ``device``), its resolved config and its class names."""
    from .faster_rcnn import build_faster_rcnn

    cfg, class_names, state = read_detector_file(path)
    model = build_faster_rcnn(cfg.model, class_names=class_names or None, weights=None)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise CheckpointError(f"{path}: weights do not fit the model: missing {missing[:8]}, "
                              f"unexpected {unexpected[:8]}")
    return model.to(device).eval(), cfg, class_names


__all__ = ["BEST_WEIGHTS_NAME", "DETECTOR_FORMAT", "FINAL_WEIGHTS_NAME", "detector_payload", "load_detector",
           "read_detector_file"]
