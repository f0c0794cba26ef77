"""An exponential moving average of a model's weights, on ``torch.optim.swa_utils.AveragedModel``.

The average after optimizer step t is ``ema = d_t * ema + (1 - d_t) * w_t`` with a decay that ramps up,
``d_t = decay * (1 - exp(-t / ramp_iters))`` (timm's and ultralytics' warm-up): early in a run the weights move
fast and a plain 0.999 average would still hold the random init after hundreds of steps. Buffers (BatchNorm
running statistics) are averaged like the parameters (``use_buffers=True``, as timm's ModelEmaV2 / V3 do);
integer buffers (``num_batches_tracked``) are copied. The first update copies the weights (AveragedModel's rule),
which is what the ramp's ``d_1 ~ 0`` gives too.

The step counter is a Python int the caller passes in (the iteration), not read back from the device: no host
sync per step, and a resumed run that restores :meth:`WeightEMA.state_dict` continues the same average bit for bit.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn
from torch.optim.swa_utils import AveragedModel

from ..errors import ConfigError


def ema_decay_at(step: int, decay: float, ramp_iters: int) -> float:
    """The decay of the update after optimizer step ``step`` (1-based): ``decay * (1 - exp(-step / ramp_iters))``;
    ``ramp_iters`` 0 is no ramp (``decay`` from the start)."""
    if ramp_iters <= 0:
        return decay
    return decay * (1.0 - math.exp(-step / ramp_iters))


class WeightEMA:
    """The averaged copy of ``model`` (``averaged.module``, a deep copy on the same device).

    Args:
        model: the trained model (unwrapped from DDP / compile); deep-copied once here.
        decay: the decay the ramp tends to, in [0, 1) (e.g. 0.999).
        ramp_iters: the ramp's time constant in optimizer steps (0: none).
    Call :meth:`update` after every optimizer step with the 1-based step number.
    """

    def __init__(self, model: nn.Module, *, decay: float, ramp_iters: int = 0) -> None:
        if not 0.0 <= decay < 1.0:
            raise ConfigError(f"solver.ema_decay must lie in [0, 1), got {decay}")
        if ramp_iters < 0:
            raise ConfigError(f"solver.ema_ramp_iters must be >= 0, got {ramp_iters}")
        self.decay = decay
        self.ramp_iters = ramp_iters
        self._current = decay  # the decay of the update in progress (set by update, read by _lerp)
        self.averaged = AveragedModel(model, multi_avg_fn=self._lerp, use_buffers=True)
        self.averaged.requires_grad_(False)
        self.averaged.eval()

    @property
    def module(self) -> nn.Module:
        """The averaged model (the architecture of the trained one: evaluate or save it as such)."""
        return self.averaged.module

    @torch.no_grad()
    def _lerp(self, averaged: list[Tensor], current: list[Tensor], _num_averaged: Tensor) -> None:
        # AveragedModel calls this once per (device, dtype) group. torch's get_ema_multi_avg_fn blends integer
        # tensors as float and truncates; a counter has no average, so it is copied.
        if averaged[0].is_floating_point() or averaged[0].is_complex():
            torch._foreach_lerp_(averaged, current, 1.0 - self._current)
        else:
            torch._foreach_copy_(averaged, current)

    def update(self, model: nn.Module, step: int) -> None:
        """Blend ``model``'s weights and buffers in after optimizer step ``step`` (1-based)."""
        self._current = ema_decay_at(step, self.decay, self.ramp_iters)
        self.averaged.update_parameters(model)

    def state_dict(self) -> dict[str, Any]:
        """The averaged weights and buffers plus AveragedModel's ``n_averaged`` (on the CPU, for a checkpoint)."""
        return {k: v.detach().cpu() for k, v in self.averaged.state_dict().items()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.averaged.load_state_dict(state)


__all__ = ["WeightEMA", "ema_decay_at"]
