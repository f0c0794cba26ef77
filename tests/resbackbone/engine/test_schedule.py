"""resbackbone.engine.schedule: SGD parameter groups, warm-up + step / cosine schedules, the linear scaling rule."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from resbackbone import resnet18
from resbackbone.engine.schedule import build_lr_scheduler, build_sgd, lr_factor


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


def test_linear_scaling_rule_and_max_iter_override() -> None:
    from detection.config import SolverConfig
    from resbackbone.engine.schedule import apply_linear_scaling

    s = apply_linear_scaling(SolverConfig(ims_per_batch=8, reference_ims_per_batch=1, base_lr=0.001,
                                          max_iter=80000, steps=(60000,), warmup_iters=800))
    assert s.base_lr == pytest.approx(0.008) and s.max_iter == 10000 and s.steps == (7500,) and s.warmup_iters == 100
    assert apply_linear_scaling(SolverConfig(ims_per_batch=4)) == SolverConfig(ims_per_batch=4)


def test_cosine_schedule_ignores_the_unused_steps() -> None:
    # A config switched to solver.schedule=cosine keeps its multistep steps as written, possibly past max_iter.
    opt = torch.optim.SGD(nn.Linear(2, 2).parameters(), lr=1.0)
    sched = build_lr_scheduler(opt, kind="cosine", max_iter=10, steps=(20,), warmup_iters=0)
    for _ in range(5):
        opt.step()
        sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(0.5)


def test_adamw_from_config_splits_decay_like_sgd() -> None:
    from resbackbone.engine.schedule import SolverConfig, optimizer_from_config
    from resbackbone.errors import ConfigError

    model = resnet18(num_classes=10)
    solver = SolverConfig(optimizer="adamw", base_lr=1e-3, weight_decay=0.05, adam_betas=(0.9, 0.99))
    opt = optimizer_from_config(model, solver)
    assert isinstance(opt, torch.optim.AdamW)
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0
    assert decay["betas"] == (0.9, 0.99) and decay["lr"] == 1e-3
    sgd_groups = build_sgd(model, lr=0.1, weight_decay=1e-4).param_groups
    assert [len(g["params"]) for g in opt.param_groups] == [len(g["params"]) for g in sgd_groups]
    assert isinstance(optimizer_from_config(model, SolverConfig()), torch.optim.SGD)
    with pytest.raises(ConfigError, match="adam_betas"):
        optimizer_from_config(model, SolverConfig(optimizer="adamw", adam_betas=(0.9, 1.0)))
