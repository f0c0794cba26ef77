"""The optimizer and learning-rate schedule of both trainers, and the rules that rescale a schedule.

The paper's SGD (section 3.4: momentum 0.9, weight decay 1e-4; none on norm / bias parameters), a per-iteration
linear warm-up followed by multistep / cosine / constant decay, the linear scaling rule (Goyal et al. 2017) that
moves a recipe to another batch size, and the ``--max-iter`` rule that shortens a schedule keeping its shape.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal

import torch
from torch import nn

from ..errors import ConfigError

ScheduleKind = Literal["multistep", "cosine", "constant"]

# Norm layers whose parameters get ``weight_decay_norm_bias`` instead of the regular decay.
_NORM_TYPES: tuple[type[nn.Module], ...] = (
    nn.BatchNorm1d,
    nn.BatchNorm2d,
    nn.BatchNorm3d,
    nn.SyncBatchNorm,
    nn.GroupNorm,
    nn.LayerNorm,
    nn.InstanceNorm2d,
)


@dataclass
class SolverConfig:
    """Optimizer, schedule and checkpointing fields shared by the detection and classification solvers."""

    # Images per optimizer step over all processes (and accumulation steps).
    ims_per_batch: int = 2
    # "sgd": the paper's (momentum, nesterov below); "adamw": decoupled weight decay, betas below (converges in
    # fewer steps when training from scratch on small data; the paper's ImageNet / VOC recipes use SGD).
    optimizer: Literal["sgd", "adamw"] = "sgd"
    adam_betas: tuple[float, float] = (0.9, 0.999)
    # Learning rate for ims_per_batch images; see reference_ims_per_batch for rescaling.
    base_lr: float = 0.002
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 1e-4
    # Weight decay on norm and bias parameters (0: none, the common practice).
    weight_decay_norm_bias: float = 0.0
    # Total iterations, and iterations at which the lr is multiplied by gamma.
    max_iter: int = 40000
    steps: tuple[int, ...] = (30000,)
    gamma: float = 0.1
    # Linear warm-up from warmup_factor * base_lr over warmup_iters iterations (Goyal et al. 2017).
    warmup_iters: int = 100
    warmup_factor: float = 0.001
    # Clip the global gradient norm (0 = off).
    clip_grad_norm: float = 0.0
    # "no", "bf16" or "fp16" (fp16 uses a loss scaler).
    mixed_precision: Literal["no", "bf16", "fp16"] = "no"
    # The batch size the lr / iteration numbers above were published for (0: use them as written). When it
    # differs from ims_per_batch, the linear scaling rule is applied: lr x ims/ref, and max_iter, steps and
    # warmup_iters x ref/ims, so a paper recipe runs on any number of GPUs.
    reference_ims_per_batch: int = 0
    # Checkpoint every N iterations (and at the end); keep the last K.
    checkpoint_period: int = 5000
    keep_last: int = 3


def apply_linear_scaling(solver: Any) -> Any:
    """Rescale lr and schedule from ``reference_ims_per_batch`` to ``ims_per_batch`` (identity when 0 or equal).

    ``solver``: a :class:`SolverConfig` (or subclass); a ``max_iter`` of 0 (derived later, e.g. from epochs)
    stays 0.
    """
    ref, ims = solver.reference_ims_per_batch, solver.ims_per_batch
    if ref <= 0 or ref == ims:
        return solver
    ratio = ims / ref

    def it(n: int) -> int:
        return max(1, round(n / ratio)) if n > 0 else 0

    return replace(
        solver,
        base_lr=solver.base_lr * ratio,
        max_iter=it(solver.max_iter),
        steps=tuple(it(s) for s in solver.steps),
        warmup_iters=round(solver.warmup_iters / ratio),
        checkpoint_period=it(solver.checkpoint_period),
        reference_ims_per_batch=0,
    )


def rescale_schedule(solver: Any, max_iter: int) -> Any:
    """The schedule shortened (or stretched) to ``max_iter`` iterations, keeping its shape.

    lr steps keep their relative positions (those that land at or past the end are dropped), the warm-up is at
    most half the run, and at least one checkpoint is written. ``solver``: a :class:`SolverConfig` (or subclass)
    whose ``max_iter`` is known (> 0).
    """
    if max_iter < 1:
        raise ConfigError(f"--max-iter must be >= 1, got {max_iter}")
    ratio = max_iter / solver.max_iter if solver.max_iter > 0 else 1.0
    steps = tuple(s2 for s2 in (max(1, round(s * ratio)) for s in solver.steps) if s2 < max_iter)
    return replace(
        solver,
        max_iter=max_iter,
        steps=steps,
        warmup_iters=min(solver.warmup_iters, max_iter // 2),
        checkpoint_period=min(solver.checkpoint_period, max_iter),
    )


def parameter_groups(
    model: nn.Module, *, weight_decay: float, weight_decay_norm_bias: float = 0.0
) -> list[dict[str, Any]]:
    """Trainable parameters split into (regular, norm-and-bias) groups with their own weight decay.

    The split is structural: parameters of normalization layers and every bias go to the second group. Raises
    ``ValueError`` when nothing is trainable (an optimizer over no parameters would silently do nothing).
    """
    regular: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    seen: set[int] = set()
    for module in model.modules():
        is_norm = isinstance(module, _NORM_TYPES)
        for name, p in module.named_parameters(recurse=False):
            if not p.requires_grad or id(p) in seen:
                continue
            seen.add(id(p))
            (no_decay if is_norm or name == "bias" else regular).append(p)
    if not regular and not no_decay:
        raise ValueError("the model has no trainable parameters")
    groups = [{"params": regular, "weight_decay": weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": weight_decay_norm_bias})
    return groups


def build_sgd(
    model: nn.Module,
    *,
    lr: float,
    momentum: float = 0.9,
    weight_decay: float = 1e-4,
    weight_decay_norm_bias: float = 0.0,
    nesterov: bool = False,
) -> torch.optim.SGD:
    """The paper's SGD (section 3.4: momentum 0.9, weight decay 1e-4), without decay on norm/bias parameters."""
    groups = parameter_groups(model, weight_decay=weight_decay, weight_decay_norm_bias=weight_decay_norm_bias)
    return torch.optim.SGD(groups, lr=lr, momentum=momentum, nesterov=nesterov)


def sgd_from_config(model: nn.Module, solver: SolverConfig) -> torch.optim.SGD:
    """:func:`build_sgd` with the solver's settings."""
    return build_sgd(model, lr=solver.base_lr, momentum=solver.momentum, weight_decay=solver.weight_decay,
                     weight_decay_norm_bias=solver.weight_decay_norm_bias, nesterov=solver.nesterov)


def optimizer_from_config(model: nn.Module, solver: SolverConfig) -> torch.optim.Optimizer:
    """The solver's optimizer (``solver.optimizer``): SGD as :func:`build_sgd`, or AdamW with the same split of
    weight decay between regular and norm / bias parameters."""
    if solver.optimizer == "sgd":
        return sgd_from_config(model, solver)
    if solver.optimizer != "adamw":
        raise ConfigError(f"solver.optimizer must be 'sgd' or 'adamw', got {solver.optimizer!r}")
    b1, b2 = solver.adam_betas
    if not (0.0 <= b1 < 1.0 and 0.0 <= b2 < 1.0):
        raise ConfigError(f"solver.adam_betas must lie in [0, 1), got {tuple(solver.adam_betas)}")
    groups = parameter_groups(model, weight_decay=solver.weight_decay,
                              weight_decay_norm_bias=solver.weight_decay_norm_bias)
    # The fused kernel: one pass over the parameters, several times faster on CPU than the default multi-tensor
    # loop.
    return torch.optim.AdamW(groups, lr=solver.base_lr, betas=(b1, b2), fused=True)


def lr_factor(
    it: int,
    *,
    kind: ScheduleKind,
    max_iter: int,
    steps: Sequence[int] = (),
    gamma: float = 0.1,
    warmup_iters: int = 0,
    warmup_factor: float = 0.001,
) -> float:
    """Multiplier of the base lr at iteration ``it`` (0-based): linear warmup, then multistep / cosine / constant."""
    if kind == "multistep":
        factor = gamma ** sum(1 for s in steps if it >= s)
    elif kind == "cosine":
        factor = 0.5 * (1.0 + math.cos(math.pi * min(it, max_iter) / max(max_iter, 1)))
    elif kind == "constant":
        factor = 1.0
    else:
        raise ValueError(f"unknown lr schedule {kind!r}; expected multistep, cosine or constant")
    if it < warmup_iters:
        alpha = it / warmup_iters
        factor *= warmup_factor * (1.0 - alpha) + alpha
    return factor


def build_lr_scheduler(
    optimizer: torch.optim.Optimizer,
    *,
    kind: ScheduleKind = "multistep",
    max_iter: int,
    steps: Sequence[int] = (),
    gamma: float = 0.1,
    warmup_iters: int = 0,
    warmup_factor: float = 0.001,
) -> torch.optim.lr_scheduler.LambdaLR:
    """A per-iteration schedule (call ``scheduler.step()`` once per optimizer step)."""
    # Only a multistep schedule uses the steps (a cosine one keeps the config's unused steps as written).
    steps = tuple(steps) if kind == "multistep" else ()
    bad = [s for s in steps if not 0 < s <= max_iter]
    if bad:
        raise ValueError(f"lr steps {tuple(bad)} are outside (0, max_iter={max_iter}]")
    kwargs = dict(
        kind=kind, max_iter=max_iter, steps=tuple(steps), gamma=gamma, warmup_iters=warmup_iters,
        warmup_factor=warmup_factor,
    )
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda it: lr_factor(it, **kwargs))  # type: ignore[arg-type]


__all__ = [
    "ScheduleKind",
    "SolverConfig",
    "apply_linear_scaling",
    "build_lr_scheduler",
    "build_sgd",
    "lr_factor",
    "optimizer_from_config",
    "parameter_groups",
    "rescale_schedule",
    "sgd_from_config",
]
