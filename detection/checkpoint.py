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

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, is_dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from resbackbone.engine.checkpoint import FORMAT_VERSION_KEY, CheckpointManager, upgrade_to_current
from resbackbone.engine.config import from_dict, to_dict
from resbackbone.errors import CheckpointError, WeightsError

from .config import DetectionConfig, ModelConfig

logger = logging.getLogger("detection.checkpoint")

# Key of the weights-only file format written at the end of training (model + config + class names).
DETECTOR_FORMAT = "resnet-det/faster-rcnn"
# Version of the detector file and of the detection training checkpoint (their config trees change together).
# Raise it with every change an old file needs translated for, and add the translation to DETECTOR_UPGRADES.
DETECTOR_FORMAT_VERSION = 1
FINAL_WEIGHTS_NAME = "model_final.pth"
BEST_WEIGHTS_NAME = "model_best.pth"


def detector_payload(model: nn.Module, cfg: DetectionConfig, class_names: Sequence[str]) -> dict[str, Any]:
    """The weights-only detector file: everything needed to rebuild and run the model, no pickled objects.

    ``cfg`` must be the resolved config the model was built from (what the trainer holds). The model's
    ``dataset_meta`` (see :func:`dataset_meta`), when it has one, goes along as ``"dataset"``.
    """
    return {
        "format": DETECTOR_FORMAT,
        FORMAT_VERSION_KEY: DETECTOR_FORMAT_VERSION,
        "config": to_dict(cfg),
        "class_names": list(class_names),
        "dataset": dict(getattr(model, "dataset_meta", {})),  # any nn.Module may be saved
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
    }


# Above this many images the file-name -> image-id map is left out of the detector file (it only serves
# tools/infer.py on a user's folder; a COCO-sized map would add megabytes).
MAX_IMAGE_ID_MAP = 200_000


def dataset_meta(*datasets: Any) -> dict[str, Any]:
    """What tools/infer.py needs to write results in a user's own ids: ``category_ids`` (our label -> the
    dataset's category id, from the first dataset that has them) and ``image_ids`` (image file name -> the
    dataset's image id, over all ``datasets``; names that occur twice with different ids are left out)."""
    meta: dict[str, Any] = {}
    for ds in datasets:
        ids = getattr(ds, "contiguous_to_category_id", None)
        if ids and "category_ids" not in meta:
            meta["category_ids"] = [int(ids[i]) for i in range(len(ids))]
    names: dict[str, Any] = {}
    clash: set[str] = set()
    for ds in datasets:
        for r in getattr(ds, "records", []):
            if names.setdefault(r.file.name, r.image_id) != r.image_id:
                clash.add(r.file.name)
    for name in clash:
        del names[name]
    if 0 < len(names) <= MAX_IMAGE_ID_MAP:
        meta["image_ids"] = names
    return meta


def upgrade_config_dict(config: Mapping[str, Any]) -> dict[str, Any]:
    """An unversioned file's config dict in version 1's keys: ``solver.grad_accum_steps`` became
    ``solver.ims_per_device``, the images of one pass (``ims_per_batch / accumulation``; one process assumed)."""
    data = dict(config)
    solver = dict(data.get("solver") or {})
    if "grad_accum_steps" in solver:
        steps = max(int(solver.pop("grad_accum_steps") or 1), 1)
        solver.setdefault("ims_per_device", max(int(solver.get("ims_per_batch", 2)) // steps, 1))
        data["solver"] = solver
    return data


def _upgrade_unversioned(ckpt: dict[str, Any]) -> dict[str, Any]:
    """Version 0 (files from before format versions) -> 1: the config in today's keys (see
    :func:`upgrade_config_dict`), and the separate "backbone" entry of files written before the resolved config
    existed (norm, stride placement, pixel spec as the trained model used them) folded into it, so it rebuilds
    the same."""
    data = upgrade_config_dict(ckpt["config"]) if isinstance(ckpt.get("config"), Mapping) else ckpt.get("config")
    legacy = ckpt.pop("backbone", None)
    if not legacy or not isinstance(data, dict):
        return {**ckpt, "config": data}
    model = dict(data.get("model", {}))
    backbone = dict(model.get("backbone", {}))
    backbone["norm"] = legacy.get("norm", "bn")
    backbone["stride_in_1x1"] = bool(legacy.get("stride_in_1x1", False))
    model["backbone"] = backbone
    if legacy.get("pixel"):
        px = legacy["pixel"]
        model["pixel"] = {"mean": list(px["mean"]), "std": list(px["std"]), "channel_order": px["channel_order"]}
    data["model"] = model
    return {**ckpt, "config": data}


# Version v -> v + 1 translations of detector files and detection training checkpoints.
DETECTOR_UPGRADES = {0: _upgrade_unversioned}


def upgrade_detector_payload(ckpt: Mapping[str, Any], path: str | Path) -> dict[str, Any]:
    """A loaded detector file or detection training checkpoint in today's format (:data:`DETECTOR_FORMAT_VERSION`);
    a file from a newer version is refused in one line naming it."""
    return upgrade_to_current(ckpt, DETECTOR_FORMAT_VERSION, DETECTOR_UPGRADES, path)


def read_detector_file(path: str | Path) -> tuple[DetectionConfig, list[str], dict[str, torch.Tensor]]:
    """``(resolved config, class names, state dict)`` of a detector file or a training checkpoint."""
    cfg, names, state, _ = read_detector_file_meta(path)
    return cfg, names, state


def read_detector_file_meta(
    path: str | Path,
) -> tuple[DetectionConfig, list[str], dict[str, torch.Tensor], dict[str, Any]]:
    """:func:`read_detector_file` plus the file's ``"dataset"`` entry (see :func:`dataset_meta`; {} if none)."""
    path = Path(path)
    ckpt = CheckpointManager.load(path)
    if not isinstance(ckpt, Mapping) or "config" not in ckpt:
        raise CheckpointError(f"{path}: not a resnet-det detector checkpoint (no 'config' entry)")
    ckpt = upgrade_detector_payload(ckpt, path)
    state = ckpt.get("state_dict", ckpt.get("model"))
    if not isinstance(state, Mapping):
        raise CheckpointError(f"{path}: no 'state_dict' or 'model' entry")
    try:
        cfg = from_dict(DetectionConfig, ckpt["config"])
    except ValueError as e:
        raise CheckpointError(f"{path}: its config does not load: {e}") from e
    meta = ckpt.get("dataset")
    return cfg, list(ckpt.get("class_names") or []), dict(state), dict(meta) if isinstance(meta, Mapping) else {}


def load_detector(path: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, DetectionConfig, list[str]]:
    """Rebuild a trained detector (eval mode, on ``device``), its resolved config and its class names."""
    from .faster_rcnn import build_faster_rcnn

    cfg, class_names, state, meta = read_detector_file_meta(path)
    model = build_faster_rcnn(cfg.model, class_names=class_names or None, weights=None)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise CheckpointError(f"{path}: weights do not fit the model: missing {missing[:8]}, "
                              f"unexpected {unexpected[:8]}")
    model.dataset_meta = meta  # category / image ids of the data it was trained on (tools/infer.py)
    return model.to(device).eval(), cfg, class_names


# Model fields that trained detector weights fix, because they change a tensor's shape (the trunk, the anchors per
# location, the DC5 head's fc input) or what a weight means (the stride placement, the pixel normalization the
# filters expect, the anchors the regressions are relative to): fine-tuning from a detector takes them from its file
# instead of the config. The pooling settings are not among them: C4's res5 head runs on any pooled size (a run may
# pool 4x4 on CPU from a detector trained at 14x14); only DC5's fc layers fix their resolution and width.
WEIGHT_BOUND_FIELDS: tuple[str, ...] = (
    "arch", "backbone.name", "backbone.stride_in_1x1", "backbone.shortcut", "backbone.norm_eps", "pixel", "anchors",
    "rpn.head_convs",
)
# Fields bound only for some architectures (C4 has no fc layers; the FPN's convolutions and the light head's
# layers fix tensor shapes).
_FC_HEAD_FIELDS = ("roi_heads.pooler_resolution", "roi_heads.fc_dim", "roi_heads.num_fc", "roi_heads.num_conv",
                   "roi_heads.conv_dim", "roi_heads.conv_norm")
ARCH_BOUND_FIELDS: dict[str, tuple[str, ...]] = {"DC5": _FC_HEAD_FIELDS, "FPN": ("fpn", *_FC_HEAD_FIELDS)}
# Parameters whose rows are per class (background last in cls_score): kept by class name when fine-tuning.
_CLASS_ROWS = {"roi_heads.cls_score.weight": 1, "roi_heads.cls_score.bias": 1, "roi_heads.bbox_pred.weight": 4,
               "roi_heads.bbox_pred.bias": 4}


def adopt_architecture(cfg: ModelConfig, source: ModelConfig, *, what: str = "the detector") -> ModelConfig:
    """``cfg`` with every :data:`WEIGHT_BOUND_FIELDS` entry taken from ``source`` (a trained detector's resolved
    model config); each field that changes is logged, so a config that asked for something else is not silently
    overruled."""
    out = cfg
    for name in (*WEIGHT_BOUND_FIELDS, *ARCH_BOUND_FIELDS.get(source.arch, ())):
        parts = name.split(".")
        new = source
        old = cfg
        for part in parts:
            new, old = getattr(new, part), getattr(old, part)
        if new == old:
            continue
        if len(parts) == 1:
            out = replace(out, **{parts[0]: new})
        else:
            sub = getattr(out, parts[0])
            out = replace(out, **{parts[0]: replace(sub, **{parts[1]: new})})
        unset = old is None or (is_dataclass(old) and all(v is None for v in to_dict(old).values()))
        if not unset:  # fields left to the weights (None) are filled in silently, as ImageNet weights do
            logger.warning("model.%s: %s -> %s (fixed by the weights of %s)", name, _short(old), _short(new), what)
    return out


def _short(value: Any) -> str:
    return str(to_dict(value) if is_dataclass(value) else value)


@dataclass
class InitReport:
    """What :func:`init_from_detector` loaded."""

    what: str
    loaded: int  # tensors copied whole
    total: int  # tensors of the model
    kept_classes: list[str]  # class names whose classifier / regressor rows came from the file
    fresh_classes: list[str]  # class names initialized fresh
    mismatched: list[str] = field(default_factory=list)  # names present in both with other shapes (left fresh)
    absent: list[str] = field(default_factory=list)  # model tensors the file does not have (left fresh)

    def summary(self) -> str:
        text = (f"initialized from {self.what}: {self.loaded} of {self.total} tensors loaded whole; classifier and "
                f"box rows of {len(self.kept_classes)} class(es) kept by name")
        if self.fresh_classes:
            text += f", {len(self.fresh_classes)} new: {', '.join(self.fresh_classes[:10])}"
        if self.mismatched:
            text += f"; other shapes (fresh): {self.mismatched[:5]}"
        if self.absent:
            text += f"; not in the file (fresh): {self.absent[:5]}"
        return text


def init_from_detector(model: nn.Module, state: Mapping[str, torch.Tensor], source_names: Sequence[str], *,
                       what: str = "the detector") -> InitReport:
    """Load a trained detector's tensors into ``model`` (a FasterRCNN with its own class list) for fine-tuning.

    Every tensor whose name and shape fit is copied. The per-class rows of ``roi_heads.cls_score`` (``K+1``,
    background last) and ``roi_heads.bbox_pred`` (``4K``) are copied for the class names both lists share and the
    background; the rows of new classes keep their fresh initialization.
    """
    target = model.state_dict()
    names = list(model.class_names)
    src_index = {n: j for j, n in enumerate(source_names)}
    pairs = [(i, src_index[n]) for i, n in enumerate(names) if n in src_index]
    k_t, k_s = len(names), len(source_names)
    new: dict[str, torch.Tensor] = {}
    loaded, mismatched, absent = 0, [], []
    for key, value in target.items():
        if key.endswith("num_batches_tracked"):
            continue
        src = state.get(key)
        if src is None:
            absent.append(key)
            continue
        if key in _CLASS_ROWS:
            rows = _CLASS_ROWS[key]
            if src.shape[1:] != value.shape[1:] or src.shape[0] != rows * k_s + (rows == 1):
                mismatched.append(key)
                continue
            out = value.clone()
            for i, j in pairs:
                out[rows * i: rows * (i + 1)] = src[rows * j: rows * (j + 1)]
            if rows == 1:  # background
                out[k_t] = src[k_s]
            new[key] = out
            continue
        if src.shape != value.shape:
            mismatched.append(f"{key} {tuple(src.shape)} vs {tuple(value.shape)}")
            continue
        new[key] = src
        loaded += 1
    model.load_state_dict(new, strict=False)
    kept = [names[i] for i, _ in pairs]
    total = sum(1 for k in target if not k.endswith("num_batches_tracked"))
    return InitReport(what, loaded, total, kept, [n for n in names if n not in src_index], mismatched, absent)


def count_blocks(state: Mapping[str, torch.Tensor], prefix: str) -> int:
    """Number of residual blocks under ``prefix`` in a foreign state dict (e.g. ``backbone.res4.``)."""
    idx = {int(k[len(prefix):].split(".", 1)[0]) for k in state if k.startswith(prefix) and k[len(prefix)].isdigit()}
    return max(idx) + 1 if idx else 0


def load_converted_state(model: nn.Module, ours: dict[str, torch.Tensor], what: str) -> None:
    """Load a converted state dict into ``model`` only if it covers every tensor with the right shape and has nothing
    else (BN step counters excepted: ours start at 0); otherwise one line naming the first keys that do not fit.
    ``what``: the file and the network it was read as, for the message."""
    target = model.state_dict()
    expected = {k: v for k, v in target.items() if not k.endswith("num_batches_tracked")}
    missing = [k for k in expected if k not in ours]
    extra = [k for k in ours if k not in expected and not k.endswith("num_batches_tracked")]
    wrong = [f"{k} {tuple(ours[k].shape)} (expected {tuple(v.shape)})" for k, v in expected.items()
             if k in ours and ours[k].shape != v.shape]
    if missing or extra or wrong:
        parts = [f"missing {missing[:4]}" if missing else "", f"unexpected {extra[:4]}" if extra else "",
                 f"wrong shapes {wrong[:3]}" if wrong else ""]
        raise WeightsError(f"{what}: " + "; ".join(p for p in parts if p))
    full = {**{k: v for k, v in target.items() if k.endswith("num_batches_tracked")}, **ours}
    model.load_state_dict({k: v for k, v in full.items() if k in target}, strict=True)


def save_converted(model: nn.Module, cfg: DetectionConfig, class_names: Sequence[str], output: str | Path, *,
                   source: str | Path, source_format: str) -> None:
    """Write a model converted from another framework (``source_format``: "detectron2", "torchvision") as a normal
    detector file (weights-only, atomic), noting where it came from."""
    from resbackbone.serialization import atomic_torch_save

    payload = detector_payload(model, cfg, class_names)
    payload["meta"] = {"converted_from": str(source), "source_format": source_format}
    atomic_torch_save(payload, output)


__all__ = ["ARCH_BOUND_FIELDS", "BEST_WEIGHTS_NAME", "DETECTOR_FORMAT", "DETECTOR_FORMAT_VERSION", "DETECTOR_UPGRADES",
           "FINAL_WEIGHTS_NAME", "WEIGHT_BOUND_FIELDS", "InitReport", "adopt_architecture", "count_blocks",
           "dataset_meta", "detector_payload", "init_from_detector", "load_converted_state", "load_detector",
           "read_detector_file", "read_detector_file_meta", "save_converted", "upgrade_detector_payload"]
