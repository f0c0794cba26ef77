"""Training checkpoints: numbered files written atomically, the newest K kept, exact RNG capture / restore.

Everything a checkpoint holds is plain tensors and Python data, so ``torch.load(weights_only=True)`` reads it
back and no file can run code when loaded.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import CheckpointError
from ..serialization import atomic_torch_save, atomic_write_text, load_torch_file
from .progress import NonFiniteLossError

# Key of a saved file's format version. Files written before versions existed read as version 0.
FORMAT_VERSION_KEY = "format_version"


def upgrade_to_current(
    payload: Mapping[str, Any], current: int, upgrades: Mapping[int, Callable[[dict[str, Any]], dict[str, Any]]],
    path: str | Path,
) -> dict[str, Any]:
    """``payload`` (a loaded checkpoint / model file) brought to format version ``current``.

    ``upgrades[v]`` turns a version-``v`` payload into a version ``v + 1`` one; each applies once, in order. A file
    from a newer version than ``current`` is refused in one line (its meaning is unknown to this code).
    """
    data = dict(payload)
    version = int(data.get(FORMAT_VERSION_KEY, 0))
    if version > current:
        raise CheckpointError(f"{path}: written by a newer version of this software (format version {version}; this "
                              f"one reads up to {current}): upgrade the package to load it")
    for v in range(version, current):
        data = upgrades[v](data)
    data[FORMAT_VERSION_KEY] = current
    return data


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


def non_finite_tensors(obj: Any, prefix: str = "") -> list[str]:
    """Dotted names of the floating-point tensors in a (nested) dict / list that hold NaN or infinity."""
    if isinstance(obj, torch.Tensor):
        return [prefix or "tensor"] if obj.is_floating_point() and not bool(torch.isfinite(obj).all()) else []
    if isinstance(obj, Mapping):
        return [n for k, v in obj.items() for n in non_finite_tensors(v, f"{prefix}.{k}" if prefix else str(k))]
    if isinstance(obj, (list, tuple)):
        return [n for i, v in enumerate(obj) for n in non_finite_tensors(v, f"{prefix}[{i}]")]
    return []


def check_finite_state(state: Any, what: str) -> None:
    """Refuse to write ``what`` when a tensor in ``state`` is not finite: a checkpoint is only ever a good one
    (resuming from inf BatchNorm statistics or momentum would fail the same way again)."""
    bad = non_finite_tensors(state)
    if bad:
        raise NonFiniteLossError(f"not writing {what}: {len(bad)} tensor(s) hold NaN/inf, e.g. {bad[:4]}")


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
        # Checkpoints of this run (written by it, or the one it resumed from): the only ones pruning may delete.
        self.owned: list[Path] = []

    def adopt(self) -> None:
        """Count the folder's existing checkpoints as this run's (a resumed run continues the earlier one)."""
        self.owned = [p for p in self.checkpoints() if p not in self.owned] + self.owned

    def path_for(self, iteration: int) -> Path:
        return self.directory / f"model_{iteration:07d}.pth"

    def save(self, state: Mapping[str, Any], iteration: int) -> Path:
        """Write ``model_{iteration}.pth`` and point ``last_checkpoint`` at it; a state holding NaN / inf tensors is
        refused (:class:`NonFiniteLossError`) and nothing on disk changes."""
        path = self.path_for(iteration)
        check_finite_state(state, path.name)
        atomic_torch_save(dict(state), path)
        atomic_write_text(self.directory / self.POINTER, path.name + "\n")
        self.owned = [p for p in self.owned if p != path] + [path]
        self._prune()
        return path

    def checkpoints(self) -> list[Path]:
        """Existing numbered checkpoints, oldest first."""
        return sorted(self.directory.glob("model_[0-9]*.pth"))

    def _prune(self) -> None:
        # Only this run's own checkpoints, oldest first: another run's files in the folder are never deleted.
        for old in sorted(self.owned)[: -self.keep_last]:
            old.unlink(missing_ok=True)
            self.owned.remove(old)

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
        """Load a checkpoint without unpickling arbitrary objects (``weights_only=True``); errors name the file."""
        return load_torch_file(path, map_location)


__all__ = ["FORMAT_VERSION_KEY", "CheckpointManager", "capture_rng_state", "check_finite_state", "non_finite_tensors",
           "restore_rng_state", "seed_everything", "upgrade_to_current"]
