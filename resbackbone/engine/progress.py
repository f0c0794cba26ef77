"""Training feedback and guards: the progress bar with its time window and ETA, ``metrics.jsonl`` + TensorBoard,
memory figures, and the non-finite-loss guard."""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..errors import OutputError

# Step times averaged for images/s and the ETA (recent enough to follow an lr step or an evaluation pause).
PROGRESS_WINDOW = 20


class NonFiniteLossError(RuntimeError):
    """Raised when a loss term is NaN or infinite; the message names the iteration and the terms."""


def check_finite(losses: Mapping[str, Tensor | float], iteration: int) -> None:
    """Raise :class:`NonFiniteLossError` naming every non-finite term (all terms are shown for context)."""
    values = {k: float(v.detach()) if isinstance(v, Tensor) else float(v) for k, v in losses.items()}
    bad = [k for k, v in values.items() if not math.isfinite(v)]
    if bad:
        terms = ", ".join(f"{k}={v:.4g}" for k, v in values.items())
        raise NonFiniteLossError(f"non-finite loss at iteration {iteration} in {', '.join(bad)} ({terms})")


class MetricsWriter:
    """Append-only ``metrics.jsonl`` (one JSON object per write, flushed) plus TensorBoard scalars."""

    def __init__(self, output_dir: str | Path, *, enabled: bool = True, tensorboard: bool = True) -> None:
        self.enabled = enabled
        self.path = Path(output_dir) / "metrics.jsonl"
        self._tb: Any = None
        if not enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # tensorboard is a declared dependency, but the JSON log must not depend on it
                SummaryWriter = None  # noqa: N806
            if SummaryWriter is not None:
                self._tb = SummaryWriter(log_dir=str(Path(output_dir) / "tensorboard"))

    def write(self, step: int, metrics: Mapping[str, float | int | str]) -> None:
        if not self.enabled:
            return
        record = {"step": step, "time": round(time.time(), 3), **metrics}
        try:
            with self.path.open("a") as f:
                f.write(json.dumps(record) + "\n")
        except OSError as e:  # a full disk or a folder made read-only mid-run: one line, not a traceback
            raise OutputError(f"cannot append to {self.path}: {e.strerror or e}") from e
        if self._tb is not None:
            for k, v in metrics.items():
                if isinstance(v, int | float) and math.isfinite(float(v)):
                    self._tb.add_scalar(k, v, step)
            self._tb.flush()

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
            self._tb = None


def memory_summary(device: torch.device | str | None = None) -> str:
    """Peak accelerator memory on CUDA, resident set size of this process otherwise."""
    device = torch.device(device) if device is not None else torch.device("cpu")
    if device.type == "cuda" and torch.cuda.is_available():
        return f"{torch.cuda.max_memory_allocated(device) / 2**30:.2f}G"
    try:
        with open("/proc/self/statm") as f:
            rss_pages = int(f.read().split()[1])
        return f"{rss_pages * os.sysconf('SC_PAGE_SIZE') / 2**30:.2f}G"
    except (OSError, ValueError):
        return "n/a"


def format_eta(seconds: float) -> str:
    """``3725`` -> ``"1:02:05"``."""
    if not math.isfinite(seconds) or seconds < 0:
        return "?"
    s = int(round(seconds))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


class Progress:
    """The training progress bar: a window of recent step times gives images/s and the ETA.

    ``Progress(total, initial, images_per_step, device, enabled)``; call :meth:`step` once per iteration with the
    seconds it took and a short text of the loss terms; :meth:`mean_step` is the windowed seconds per step.
    """

    def __init__(self, total: int, *, initial: int, images_per_step: int, device: torch.device,
                 enabled: bool = True) -> None:
        self.total = total
        self.done = initial
        self.images_per_step = images_per_step
        self.device = device
        self.window: list[float] = []
        self.bar: Any = None
        if enabled:
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=initial, desc="train", dynamic_ncols=True)

    def mean_step(self) -> float:
        return sum(self.window) / len(self.window) if self.window else float("nan")

    def step(self, seconds: float, text: str = "") -> None:
        self.window = (self.window + [seconds])[-PROGRESS_WINDOW:]
        self.done += 1
        if self.bar is None:
            return
        mean = self.mean_step()
        ips = self.images_per_step / mean if mean > 0 else float("nan")
        self.bar.set_postfix_str(f"{text} {ips:.1f} img/s mem {memory_summary(self.device)} "
                                 f"eta {format_eta((self.total - self.done) * mean)}".strip())
        self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


__all__ = ["MetricsWriter", "NonFiniteLossError", "PROGRESS_WINDOW", "Progress", "check_finite", "format_eta",
           "memory_summary"]
