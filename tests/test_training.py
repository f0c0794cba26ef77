"""Shared training infrastructure: atomic checkpoints, exact RNG restore, optimizer groups, schedules, guards."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from resbackbone import resnet18
from resbackbone.engine.checkpoint import CheckpointManager, capture_rng_state, restore_rng_state
from resbackbone.engine.progress import MetricsWriter, NonFiniteLossError, check_finite, format_eta
from resbackbone.engine.schedule import build_lr_scheduler, build_sgd, lr_factor


def test_rng_state_round_trip_through_weights_only_checkpoint(tmp_path: Path) -> None:
    random.seed(1)
    np.random.seed(2)  # noqa: NPY002 - the global legacy RNG is what data libraries use
    torch.manual_seed(3)
    np.random.randn()  # leaves a cached gaussian in numpy's state  # noqa: NPY002 - the global legacy RNG is what data libraries use
    mgr = CheckpointManager(tmp_path, keep_last=2)
    path = mgr.save({"rng": capture_rng_state()}, 10)
    expected = (random.random(), np.random.randn(3).tolist(), torch.rand(3).tolist())  # noqa: NPY002 - the global legacy RNG is what data libraries use
    random.seed(99)
    np.random.seed(99)  # noqa: NPY002 - the global legacy RNG is what data libraries use
    torch.manual_seed(99)
    restore_rng_state(CheckpointManager.load(path)["rng"])
    got = (random.random(), np.random.randn(3).tolist(), torch.rand(3).tolist())  # noqa: NPY002 - the global legacy RNG is what data libraries use
    assert got == expected


def test_checkpoint_manager_keeps_last_k_and_points_to_newest(tmp_path: Path) -> None:
    mgr = CheckpointManager(tmp_path, keep_last=2)
    assert mgr.latest() is None
    for it in (5, 10, 15):
        mgr.save({"iteration": it, "w": torch.full((2,), float(it))}, it)
    assert [p.name for p in mgr.checkpoints()] == ["model_0000010.pth", "model_0000015.pth"]
    latest = mgr.latest()
    assert latest is not None and CheckpointManager.load(latest)["iteration"] == 15
    assert not list(tmp_path.glob("*.tmp")), "no temp files may be left behind"


def test_checkpoint_load_refuses_arbitrary_pickles(tmp_path: Path) -> None:
    class Evil:
        def __reduce__(self):  # noqa: ANN204
            return (print, ("executed",))

    path = tmp_path / "evil.pth"
    torch.save({"x": Evil()}, path)
    with pytest.raises(RuntimeError, match="evil.pth"):
        CheckpointManager.load(path)
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        CheckpointManager.load(tmp_path / "missing.pth")


def test_sgd_has_no_decay_on_norm_and_bias() -> None:
    model = resnet18(num_classes=10, freeze_at=2)
    opt = build_sgd(model, lr=0.1, weight_decay=1e-4)
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == 1e-4 and no_decay["weight_decay"] == 0.0
    decay_ids = {id(p) for p in decay["params"]}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            assert id(p) not in decay_ids and all(id(p) not in map(id, g["params"]) for g in opt.param_groups)
        elif "bn" in name or name.endswith("bias") or "downsample.1" in name:
            assert id(p) not in decay_ids, name
        else:
            assert id(p) in decay_ids, name
    n_trainable = sum(1 for p in model.parameters() if p.requires_grad)
    assert len(decay["params"]) + len(no_decay["params"]) == n_trainable


def test_schedule_warmup_and_steps() -> None:
    kw = dict(kind="multistep", max_iter=100, steps=(60, 80), gamma=0.1, warmup_iters=10, warmup_factor=0.001)
    assert lr_factor(0, **kw) == pytest.approx(0.001)
    assert lr_factor(5, **kw) == pytest.approx(0.001 * 0.5 + 0.5)
    assert lr_factor(10, **kw) == 1.0
    assert lr_factor(60, **kw) == pytest.approx(0.1)
    assert lr_factor(99, **kw) == pytest.approx(0.01)
    assert lr_factor(50, kind="cosine", max_iter=100) == pytest.approx(0.5)
    opt = torch.optim.SGD(nn.Linear(2, 2).parameters(), lr=1.0)
    sched = build_lr_scheduler(opt, max_iter=100, steps=(60,), warmup_iters=0)
    for _ in range(60):
        opt.step()
        sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(0.1)
    with pytest.raises(ValueError, match="outside"):
        build_lr_scheduler(opt, max_iter=10, steps=(20,))


def test_check_finite_names_iteration_and_terms() -> None:
    check_finite({"loss_a": torch.tensor(1.0)}, 3)
    with pytest.raises(NonFiniteLossError, match=r"iteration 7 in loss_b"):
        check_finite({"loss_a": torch.tensor(1.0), "loss_b": torch.tensor(float("nan"))}, 7)


def test_metrics_writer_jsonl(tmp_path: Path) -> None:
    w = MetricsWriter(tmp_path, tensorboard=False)
    w.write(1, {"loss": 0.5})
    w.write(2, {"loss": 0.25, "lr": 0.1})
    w.close()
    lines = [json.loads(s) for s in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == [1, 2] and lines[1]["lr"] == 0.1
    assert format_eta(3725) == "1:02:05"
