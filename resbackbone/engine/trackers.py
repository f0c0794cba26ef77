"""Experiment trackers through accelerate's own: TensorBoard (the default), Weights & Biases, MLflow, Comet,
ClearML, Aim, DVCLive.

The trainer hands ``accelerate.Accelerator(log_with=...)`` the list :func:`build_trackers` makes, starts them with
``init_trackers(project_name, config=...)`` once the config is resolved, and sends every finite number of every
``metrics.jsonl`` record through ``accelerator.log(values, step)``. None of these packages is a dependency: naming
one that is not installed is a one-line :class:`~resbackbone.errors.ConfigError` naming the pip package.

TensorBoard is :class:`RunTensorBoard`, an ``accelerate.tracking.GeneralTracker`` that writes what the project
always wrote (every finite scalar under its record key, in ``<output_dir>/tensorboard``): accelerate's own
TensorBoard tracker would put the run one folder deeper (``<project_dir>/<project_name>``) and add an hparams
run per start.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from accelerate.tracking import GeneralTracker, get_available_trackers

from ..errors import ConfigError
from .config import flatten

# Tracker name (accelerate's) -> the pip package that provides it.
TRACKER_PACKAGES: dict[str, str] = {
    "tensorboard": "tensorboard",
    "wandb": "wandb",
    "mlflow": "mlflow",
    "comet_ml": "comet_ml",
    "clearml": "clearml",
    "aim": "aim",
    "dvclive": "dvclive",
}


class RunTensorBoard(GeneralTracker):
    """TensorBoard scalars in ``log_dir`` (``SummaryWriter.add_scalar`` per finite number, flushed per record)."""

    name = "tensorboard"
    requires_logging_directory = False

    def __init__(self, log_dir: str | Path) -> None:
        super().__init__()
        self.log_dir = Path(log_dir)
        self.writer: Any = None

    @property
    def tracker(self) -> Any:
        return self.writer

    def start(self) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(self.log_dir))

    def store_init_configuration(self, values: dict) -> None:
        """Nothing: the resolved config is ``config.yaml`` beside the logs (as it always was)."""

    def log(self, values: dict, step: int | None = None, **kwargs: Any) -> None:
        if self.writer is None:
            return
        for k, v in values.items():
            if _is_finite_number(v):
                self.writer.add_scalar(k, v, step)
        self.writer.flush()

    def finish(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


def build_trackers(names: Sequence[str], output_dir: str | Path) -> list[str | GeneralTracker]:
    """What ``Accelerator(log_with=...)`` gets for the tracker ``names``: :class:`RunTensorBoard` for
    "tensorboard", the name itself for the others (accelerate builds those). A name that is unknown or whose
    package is not installed is a ConfigError naming the key and the pip package."""
    out: list[str | GeneralTracker] = []
    available = {str(t) for t in get_available_trackers()}
    for name in dict.fromkeys(names):
        if name not in TRACKER_PACKAGES:
            raise ConfigError(f"log_with: unknown tracker {name!r}; expected some of {', '.join(TRACKER_PACKAGES)}")
        if name == "tensorboard":
            try:
                import tensorboard  # noqa: F401 - only whether it is there
            except ImportError:
                raise ConfigError("log_with: tensorboard needs the tensorboard package: pip install tensorboard "
                                  "(or log_with=[] for metrics.jsonl alone)") from None
            out.append(RunTensorBoard(Path(output_dir) / "tensorboard"))
        elif name not in available:
            raise ConfigError(f"log_with: {name} needs the {TRACKER_PACKAGES[name]} package: pip install "
                              f"{TRACKER_PACKAGES[name]}")
        else:
            out.append(name)
    return out


def tracker_config(config: Mapping[str, Any]) -> dict[str, bool | int | float | str]:
    """A nested config dict as the flat ``{"solver.base_lr": 0.002, ...}`` every tracker's hyperparameter table
    takes (lists and None as their text)."""
    return {k: v if isinstance(v, bool | int | float | str) else str(v) for k, v in flatten(config).items()}


def finite_numbers(values: Mapping[str, Any]) -> dict[str, float | int]:
    """The entries of a record that trackers log as scalars: finite numbers (what TensorBoard always got)."""
    return {k: v for k, v in values.items() if _is_finite_number(v)}


def _is_finite_number(v: Any) -> bool:
    return isinstance(v, int | float) and math.isfinite(float(v))


__all__ = ["RunTensorBoard", "TRACKER_PACKAGES", "build_trackers", "finite_numbers", "tracker_config"]
