"""Saved detector files and training checkpoints carry a format version; older ones are upgraded step by step,
newer ones refused in one line."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch

from detection.checkpoint import DETECTOR_FORMAT_VERSION, read_detector_file, upgrade_detector_payload
from resbackbone.engine.checkpoint import FORMAT_VERSION_KEY, upgrade_to_current
from resbackbone.errors import CheckpointError


def test_detector_file_is_versioned_and_unversioned_files_upgrade(tiny_checkpoint: Path, tmp_path: Path) -> None:
    saved = torch.load(tiny_checkpoint, weights_only=True)
    assert saved[FORMAT_VERSION_KEY] == DETECTOR_FORMAT_VERSION
    cfg, names, state = read_detector_file(tiny_checkpoint)
    # The same file as written before versions existed: the old accumulation key and the separate backbone entry.
    old = {k: v for k, v in saved.items() if k != FORMAT_VERSION_KEY}
    old["config"] = {**saved["config"], "solver": {**saved["config"]["solver"], "grad_accum_steps": 2}}
    del old["config"]["solver"]["ims_per_device"]
    old["backbone"] = {"norm": "frozen_bn", "stride_in_1x1": True}
    path = tmp_path / "old.pth"
    torch.save(old, path)
    old_cfg, old_names, old_state = read_detector_file(path)
    assert old_names == names and old_state.keys() == state.keys()
    assert old_cfg.solver.ims_per_device == cfg.solver.ims_per_batch // 2
    assert old_cfg.model.backbone.norm == "frozen_bn" and old_cfg.model.backbone.stride_in_1x1 is True
    assert replace(old_cfg.model, backbone=cfg.model.backbone) == cfg.model


def test_newer_file_is_refused_in_one_line(tiny_checkpoint: Path, tmp_path: Path) -> None:
    newer = {**torch.load(tiny_checkpoint, weights_only=True), FORMAT_VERSION_KEY: DETECTOR_FORMAT_VERSION + 1}
    path = tmp_path / "newer.pth"
    torch.save(newer, path)
    with pytest.raises(CheckpointError, match=r"newer\.pth: written by a newer version .* upgrade the package"):
        read_detector_file(path)
    with pytest.raises(CheckpointError):
        upgrade_detector_payload(newer, path)


def test_upgrades_apply_in_order_once() -> None:
    steps = {0: lambda d: {**d, "log": d["log"] + [1]}, 1: lambda d: {**d, "log": d["log"] + [2]}}
    assert upgrade_to_current({"log": []}, 2, steps, "f")["log"] == [1, 2]
    assert upgrade_to_current({"log": [], FORMAT_VERSION_KEY: 1}, 2, steps, "f")["log"] == [2]
    assert upgrade_to_current({"log": [], FORMAT_VERSION_KEY: 2}, 2, steps, "f") == {"log": [], FORMAT_VERSION_KEY: 2}
