"""resbackbone.engine.trainer: a run owns its output folder (lock naming the holder; earlier runs continued or
replaced, never mixed)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from resbackbone.engine.checkpoint import CheckpointManager
from resbackbone.engine.trainer import RunFolder
from resbackbone.errors import ConfigError


def test_a_second_run_on_the_folder_is_refused_naming_the_first(tmp_path: Path) -> None:
    first = RunFolder(tmp_path / "run")
    first.acquire()
    with pytest.raises(ConfigError, match=rf"run is in use by another run \(pid {os.getpid()} on .*--output-dir"):
        RunFolder(tmp_path / "run").acquire()
    first.release()
    second = RunFolder(tmp_path / "run")
    second.acquire()  # free again once the first run ended
    second.release()


def test_an_earlier_run_is_continued_or_replaced_never_mixed(tmp_path: Path) -> None:
    mgr = CheckpointManager(tmp_path, keep_last=3)
    mgr.save({"iteration": 4}, 4)
    (tmp_path / "metrics.jsonl").write_text('{"step": 4}\n')
    (tmp_path / "notes.txt").write_text("the user's own file")
    folder = RunFolder(tmp_path)
    with pytest.raises(ConfigError, match=r"holds an earlier run \(model_0000004\.pth\).*--resume.*--overwrite"):
        folder.check_reuse(resume=False, overwrite=False)
    folder.check_reuse(resume=True, overwrite=False)  # continuing it is fine, nothing removed
    assert mgr.path_for(4).exists()
    folder.check_reuse(resume=False, overwrite=True)
    assert not mgr.checkpoints() and not (tmp_path / "metrics.jsonl").exists()
    assert not (tmp_path / "last_checkpoint").exists() and (tmp_path / "notes.txt").exists()


def test_pruning_and_the_pointer_concern_only_this_runs_checkpoints(tmp_path: Path) -> None:
    """An older run's higher-numbered checkpoint in the folder is neither pruned nor pointed at."""
    foreign = tmp_path / "model_0000100.pth"
    torch.save({"iteration": 100}, foreign)
    mgr = CheckpointManager(tmp_path, keep_last=2)
    for it in (5, 10, 15):
        mgr.save({"iteration": it}, it)
    assert foreign.exists() and [p.name for p in mgr.owned] == ["model_0000010.pth", "model_0000015.pth"]
    pointer = (tmp_path / "last_checkpoint").read_text().strip()
    assert mgr.latest() == mgr.path_for(15) and pointer == mgr.path_for(15).name
    assert not mgr.path_for(5).exists()
