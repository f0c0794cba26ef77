"""Training infrastructure shared by the classification and detection trainers.

Everything here is deliberately framework-free (no accelerate import): atomic checkpoint files that
``torch.load(weights_only=True)`` can read, exact RNG capture/restore for bit-identical resume, the SGD recipe of
the paper (momentum 0.9, weight decay 1e-4, none on norm/bias), per-iteration warmup + multistep/cosine schedules,
a JSON-lines + TensorBoard metrics writer, and the non-finite-loss guard.
"""

from __future__ import annotations

import json
import math
import os
import random
import tempfile
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor, nn

ScheduleKind = Literal["multistep", "cosine", "constant"]

ENV_DATA_ROOT = "RESDET_DATA_ROOT"
# The repository checkout this package was imported from (None when it is installed into site-packages).
_CHECKOUT = Path(__file__).resolve().parents[1]
REPO_DATASETS: Path | None = _CHECKOUT / "datasets" if (_CHECKOUT / "pyproject.toml").is_file() else None


def data_root(root: str | Path | None = None) -> Path:
    """Where datasets live: explicit ``root`` > ``$RESDET_DATA_ROOT`` > the checkout's ``datasets/`` folder.

    When the packages are installed (not editable) there is no checkout, and the last fallback is ``./datasets``
    in the working directory rather than a folder inside site-packages.
    """
    if root:
        return Path(root).expanduser()
    env = os.environ.get(ENV_DATA_ROOT)
    if env:
        return Path(env).expanduser()
    return REPO_DATASETS if REPO_DATASETS is not None else Path.cwd() / "datasets"


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


def atomic_torch_save(obj: Any, path: str | Path) -> None:
    """``torch.save`` to a temp file in the same directory, fsync, then ``os.replace``: a crash never leaves a
    truncated file under ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write a small text file atomically (temp file + rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


# ----------------------------------------------------------------------------------------------------------- RNG


def capture_rng_state() -> dict[str, Any]:
    """Python, numpy, torch CPU (and CUDA) generator states as tensors / plain types (``weights_only``-loadable)."""
    np_state = np.random.get_state()  # noqa: NPY002 - the global legacy RNG is what data libraries use
    state: dict[str, Any] = {
        "python": _to_plain(random.getstate()),
        # numpy's (name, keys, pos, has_gauss, cached_gaussian) with the key array as a tensor.
        "numpy": {
            "keys": torch.from_numpy(np.asarray(np_state[1], dtype=np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: Mapping[str, Any]) -> None:
    """Inverse of :func:`capture_rng_state`."""
    random.setstate(_to_tuple(state["python"]))
    npst = state["numpy"]
    keys = npst["keys"].numpy().astype(np.uint32)
    np.random.set_state(("MT19937", keys, npst["pos"], npst["has_gauss"], npst["cached_gaussian"]))  # noqa: NPY002 - the global legacy RNG is what data libraries use
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _to_plain(obj: Any) -> Any:
    if isinstance(obj, tuple):
        return [_to_plain(o) for o in obj]
    return obj


def _to_tuple(obj: Any) -> Any:
    if isinstance(obj, list):
        return tuple(_to_tuple(o) for o in obj)
    return obj


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)  # noqa: NPY002 - the global legacy RNG is what data libraries use
    torch.manual_seed(seed)


# ---------------------------------------------------------------------------------------------------- checkpoints


class CheckpointManager:
    """Numbered checkpoints ``model_{iteration:07d}.pth`` in ``directory``, written atomically, last K kept.

    A ``last_checkpoint`` text file names the newest complete checkpoint; it is updated only after the
    checkpoint file itself is in place, so a crash at any moment leaves a loadable latest checkpoint.
    """

    POINTER = "last_checkpoint"

    def __init__(self, directory: str | Path, *, keep_last: int = 3) -> None:
        if keep_last < 1:
            raise ValueError(f"keep_last must be >= 1, got {keep_last}")
        self.directory = Path(directory)
        self.keep_last = keep_last

    def path_for(self, iteration: int) -> Path:
        return self.directory / f"model_{iteration:07d}.pth"

    def save(self, state: Mapping[str, Any], iteration: int) -> Path:
        path = self.path_for(iteration)
        atomic_torch_save(dict(state), path)
        atomic_write_text(self.directory / self.POINTER, path.name + "\n")
        self._prune()
        return path

    def checkpoints(self) -> list[Path]:
        """Existing numbered checkpoints, oldest first."""
        return sorted(self.directory.glob("model_[0-9]*.pth"))

    def _prune(self) -> None:
        for old in self.checkpoints()[: -self.keep_last]:
            old.unlink(missing_ok=True)

    def latest(self) -> Path | None:
        """The newest complete checkpoint, or None."""
        pointer = self.directory / self.POINTER
        if pointer.is_file():
            candidate = self.directory / pointer.read_text().strip()
            if candidate.is_file():
                return candidate
        found = self.checkpoints()
        return found[-1] if found else None

    @staticmethod
    def load(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
        """Load a checkpoint without unpickling arbitrary objects (``weights_only=True``)."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"checkpoint not found: {path}")
        try:
            return torch.load(path, map_location=map_location, weights_only=True)
        except Exception as e:  # noqa: BLE001 - re-raised with the file name
            raise RuntimeError(f"cannot load checkpoint {path}: {type(e).__name__}: {e}") from e


# ------------------------------------------------------------------------------------------- optimizer, schedule


def parameter_groups(
    model: nn.Module, *, weight_decay: float, weight_decay_norm_bias: float = 0.0
) -> list[dict[str, Any]]:
    """Trainable parameters split into (regular, norm-and-bias) groups with their own weight decay.

    The split is structural: parameters of normalization layers and every bias go to the second group.
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
    if not any(g["params"] for g in groups):
        raise ValueError("the model has no trainable parameters")
    return torch.optim.SGD(groups, lr=lr, momentum=momentum, nesterov=nesterov)


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
    bad = [s for s in steps if not 0 < s <= max_iter]
    if bad:
        raise ValueError(f"lr steps {tuple(bad)} are outside (0, max_iter={max_iter}]")
    kwargs = dict(
        kind=kind, max_iter=max_iter, steps=tuple(steps), gamma=gamma, warmup_iters=warmup_iters,
        warmup_factor=warmup_factor,
    )
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda it: lr_factor(it, **kwargs))  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------------ guards, metrics


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
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
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


def trainable_and_frozen(model: nn.Module) -> tuple[list[str], list[str]]:
    """Names of parameters that do / do not require gradients."""
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    frozen = [n for n, p in model.named_parameters() if not p.requires_grad]
    return trainable, frozen


def cycle(iterable: Iterable[Any]) -> Iterable[Any]:
    """Repeat a finite iterable forever (re-iterating it, so a sampler's new epoch is used)."""
    while True:
        yielded = False
        for item in iterable:
            yielded = True
            yield item
        if not yielded:
            raise ValueError("cannot cycle over an empty iterable (the dataset yields no batch)")
