"""The best evaluation of a run and early stopping on it: ``patience`` evaluations in a row without a better value
stop the run (Keras' / ultralytics' rule; 0 never stops).

The state is plain Python data (:meth:`EarlyStopping.state` / :meth:`EarlyStopping.load`) that a checkpoint
carries, so a resumed run counts on from where the interrupted one was.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Literal


class EarlyStopping:
    """Follows one metric over the evaluations of a run.

    Args:
        metric: the metric's name (for messages and the saved state).
        mode: "max" (higher is better: AP) or "min" (lower is better: a loss).
        patience: evaluations in a row without improvement after which :attr:`should_stop` is true (0: never).
    """

    def __init__(self, metric: str, *, mode: Literal["max", "min"] = "max", patience: int = 0) -> None:
        if mode not in ("max", "min"):
            raise ValueError(f"mode must be 'max' or 'min', got {mode!r}")
        if patience < 0:
            raise ValueError(f"patience must be >= 0, got {patience}")
        self.metric = metric
        self.mode = mode
        self.patience = patience
        self.best: float | None = None
        self.best_iteration: int | None = None
        self.evaluations_without_improvement = 0

    def improves(self, value: float) -> bool:
        """Whether ``value`` beats the best so far (a NaN / inf value never does; the first finite one does)."""
        if not math.isfinite(value):
            return False
        if self.best is None:
            return True
        return value > self.best if self.mode == "max" else value < self.best

    def update(self, value: float, iteration: int) -> bool:
        """Record the evaluation of ``iteration``; True when it is the new best."""
        if self.improves(value):
            self.best, self.best_iteration = float(value), int(iteration)
            self.evaluations_without_improvement = 0
            return True
        self.evaluations_without_improvement += 1
        return False

    @property
    def should_stop(self) -> bool:
        return self.patience > 0 and self.evaluations_without_improvement >= self.patience

    def reason(self) -> str:
        """Why the run stops, in words (for the log and the records)."""
        return (f"no better {self.metric} in {self.evaluations_without_improvement} evaluation(s) (patience "
                f"{self.patience}); best {self.metric} {self.best if self.best is not None else float('nan'):.4f} at "
                f"iteration {self.best_iteration}")

    def state(self) -> dict[str, Any]:
        return {"metric": self.metric, "mode": self.mode, "value": self.best, "iteration": self.best_iteration,
                "evaluations_without_improvement": self.evaluations_without_improvement}

    def load(self, state: Mapping[str, Any]) -> bool:
        """Restore :meth:`state`; False (and nothing restored) when it followed another metric or direction."""
        if state.get("metric") != self.metric or state.get("mode", "max") != self.mode:
            return False
        value = state.get("value")
        self.best = float(value) if value is not None else None
        iteration = state.get("iteration")
        self.best_iteration = int(iteration) if iteration is not None else None
        self.evaluations_without_improvement = int(state.get("evaluations_without_improvement", 0))
        return True


__all__ = ["EarlyStopping"]
