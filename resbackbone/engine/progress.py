"""Training feedback and guards: the progress bar with its time window and ETA, ``metrics.jsonl`` + TensorBoard,
``results.csv`` and the curves figure derived from it, smoothed loss windows, memory figures, and the non-finite-loss
guard."""

from __future__ import annotations

import csv
import io
import json
import math
import os
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..errors import OutputError
from ..serialization import atomic_write_text

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
    """Append-only ``metrics.jsonl`` (one JSON object per write, flushed) plus TensorBoard scalars, or, with
    ``sink``, every record's finite numbers handed to ``sink(values, step)`` instead (the trainers' experiment
    trackers, TensorBoard among them: :mod:`.trackers`)."""

    def __init__(self, output_dir: str | Path, *, enabled: bool = True, tensorboard: bool = True,
                 sink: Callable[[dict[str, float | int], int], None] | None = None) -> None:
        self.enabled = enabled
        self.path = Path(output_dir) / "metrics.jsonl"
        self._tb: Any = None
        self._sink = sink
        if not enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if tensorboard and sink is None:
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
        numbers = {k: v for k, v in metrics.items() if isinstance(v, int | float) and math.isfinite(float(v))}
        if self._sink is not None and numbers:
            self._sink(numbers, step)
        if self._tb is not None:
            for k, v in numbers.items():
                self._tb.add_scalar(k, v, step)
            self._tb.flush()

    def records(self) -> list[dict[str, Any]]:
        """Every record of ``metrics.jsonl`` (a torn last line of a killed run is left out)."""
        if not self.path.is_file():
            return []
        out = []
        for line in self.path.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
        return out

    def truncate_after(self, step: int) -> None:
        """Drop the records past ``step`` (a resumed run repeats those steps and logs them again)."""
        if not self.enabled or not self.path.is_file():
            return
        records = self.records()
        kept = [r for r in records if int(r.get("step", 0)) <= step]
        if len(kept) != len(records):
            atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in kept))

    def write_table(self, *, plot: bool = False) -> None:
        """``results.csv`` (one row per record: each logged step and each evaluation) from ``metrics.jsonl``, and
        with ``plot`` the ``results.png`` curves (losses, lr and test metrics against the iteration)."""
        if not self.enabled:
            return
        records = self.records()
        if not records:
            return
        columns = list(dict.fromkeys(k for r in records for k, v in r.items() if not isinstance(v, dict | list)))
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
        writer.writeheader()
        writer.writerows(records)
        atomic_write_text(self.path.with_name("results.csv"), buf.getvalue())
        if plot:
            plot_curves(records, self.path.with_name("results.png"))

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
            self._tb = None


def plot_curves(records: Sequence[Mapping[str, Any]], path: str | Path) -> Path:
    """One figure of a run's records: loss terms, the lr, and the test metrics (mAP, AP50) against the step."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on training machines
    import matplotlib.pyplot as plt

    def series(key: str) -> tuple[list[float], list[float]]:
        pts = [(r["step"], r[key]) for r in records if isinstance(r.get(key), int | float)]
        return [p[0] for p in pts], [float(p[1]) for p in pts]

    keys = list(dict.fromkeys(k for r in records for k in r))
    # The validation loss (at each evaluation) beside the training losses it is compared with.
    losses = [k for k in keys if (k.startswith("loss") and not k.endswith("_mean")) or k == "test/val_loss"]
    panels = [("losses", losses),
              ("learning rate", [k for k in keys if k == "lr"]),
              ("test", [k for k in keys if k in ("test/mAP", "test/AP50", "test/AP")])]
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.6))
    for ax, (title, names) in zip(axes, panels):
        for name in names:
            xs, ys = series(name)
            ax.plot(xs, ys, marker="o" if name.startswith("test/") else None, markersize=3, label=name)
        ax.set_title(title)
        ax.set_xlabel("iteration")
        if names:
            ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp.png")
    fig.savefig(tmp, dpi=90)
    plt.close(fig)
    os.replace(tmp, path)  # a reader (or a crash) never sees half a PNG
    return path


class LossWindow:
    """The last ``size`` steps' statistics, smoothed for logging: median and mean per key (Detectron2 logs
    medians over 20 iterations: one outlier batch does not dominate a line). ``state()`` / ``load()`` carry it in
    a checkpoint, so a resumed run logs the numbers the uninterrupted one would have."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.items: list[dict[str, float]] = []

    def add(self, stats: Mapping[str, float]) -> None:
        self.items = (self.items + [{k: float(v) for k, v in stats.items()}])[-self.size:]

    def median(self, key: str) -> float:
        values = [d[key] for d in self.items if key in d]
        return statistics.median(values) if values else float("nan")

    def mean(self, key: str) -> float:
        values = [d[key] for d in self.items if key in d]
        return sum(values) / len(values) if values else float("nan")

    def state(self) -> list[dict[str, float]]:
        return [dict(d) for d in self.items]

    def load(self, items: Sequence[Mapping[str, float]]) -> None:
        self.items = [{k: float(v) for k, v in d.items()} for d in items][-self.size:]


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


__all__ = ["LossWindow", "MetricsWriter", "NonFiniteLossError", "PROGRESS_WINDOW", "Progress", "check_finite",
           "format_eta", "memory_summary", "plot_curves"]
