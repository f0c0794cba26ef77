"""What every trainer of the project shares: accelerate set-up, the checkpoint dict, resume, the final weights.

:class:`TrainerBase` owns the ``accelerate.Accelerator`` (1 process, N GPUs, N machines; CPU processes over gloo
when there is no GPU; fp32 / bf16 / fp16), the numbered checkpoints of the output folder, the metrics writer and
the resolved config file. A subclass builds its data and model, calls :meth:`prepare`, and adds its own state
through :meth:`extra_state` / :meth:`load_extra_state`. Data order and augmentation are pure functions of
``(seed, iteration)`` (:mod:`.sampling`), so the checkpoint's iteration is the whole data position and
``resume`` continues exactly where the run left off.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import MappingProxyType
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError, OutputError
from .checkpoint import (
    FORMAT_VERSION_KEY,
    CheckpointManager,
    capture_rng_state,
    restore_rng_state,
    seed_everything,
    upgrade_to_current,
)
from .config import save_config, to_dict
from .progress import MetricsWriter

logger = logging.getLogger("resbackbone.engine")


# Files a run writes into its output folder that --overwrite removes (logs of other tools stay).
RUN_FILES = ("last_checkpoint", "metrics.jsonl", "results.csv", "results.png", "model_final.pth", "model_best.pth")


# Signals that stop a run at the next step boundary with a checkpoint (Ctrl-C, and what schedulers / `kill` send).
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class TrainingInterrupted(Exception):  # noqa: N818 - a request, not an error
    """A stop signal ended the run at a step boundary after writing the checkpoint of ``iteration``."""

    def __init__(self, iteration: int, signum: int) -> None:
        self.iteration = iteration
        self.signum = signum
        super().__init__(f"interrupted at iteration {iteration}; `--resume` continues from it")


# Lock files this process holds. A forked child (a DataLoader worker) inherits their descriptors, and flock locks
# last while any copy is open: the child closes its copies at once, so a killed run's orphaned workers cannot keep
# its folder locked.
_HELD_LOCKS: list[Any] = []


def _close_inherited_locks() -> None:
    for f in _HELD_LOCKS:
        f.close()
    _HELD_LOCKS.clear()


os.register_at_fork(after_in_child=_close_inherited_locks)


class RunFolder:
    """A run's claim on its output folder: an exclusive ``flock`` on ``.run.lock`` (released when the run ends or
    its process dies), holding who took it, so a second run on the same folder stops with a message naming the
    first instead of overwriting its model and interleaving its metrics."""

    LOCK = ".run.lock"

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        self._file: Any = None

    def acquire(self) -> None:
        import fcntl

        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            f = open(self.directory / self.LOCK, "a+")  # noqa: SIM115 - held open for the run's lifetime
        except OSError as e:  # read-only or full disk, no permission: before any work is done
            raise OutputError(f"cannot use output folder {self.directory}: {e.strerror or e}") from e
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "another process"
            f.close()
            raise ConfigError(f"output folder {self.directory} is in use by another run ({holder}); wait for it to "
                              "finish or choose another --output-dir") from None
        f.seek(0)
        f.truncate()
        f.write(f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
        f.flush()
        self._file = f
        _HELD_LOCKS.append(f)

    def release(self) -> None:
        if self._file is not None:
            _HELD_LOCKS.remove(self._file)
            self._file.close()  # closing the descriptor drops the flock
            self._file = None

    def check_reuse(self, *, resume: bool, overwrite: bool) -> None:
        """A folder holding an earlier run's checkpoints or final weights is continued (``resume``) or replaced
        (``overwrite``, which removes them), never mixed with a new run."""
        earlier = sorted(self.directory.glob("model_[0-9]*.pth")) + [
            p for p in (self.directory / "model_final.pth",) if p.exists()]
        if not earlier or resume:
            return
        if not overwrite:
            raise ConfigError(
                f"output folder {self.directory} holds an earlier run ({', '.join(p.name for p in earlier[-3:])}); "
                "pass --resume to continue it or --overwrite to replace it (or choose another --output-dir)")
        for p in [*self.directory.glob("model_[0-9]*.pth"), *(self.directory / n for n in RUN_FILES)]:
            p.unlink(missing_ok=True)
        logger.info("--overwrite: removed the earlier run's checkpoints and logs from %s", self.directory)


class TrainerBase:
    """Accelerator, checkpoints, resume and metrics of one training run (see the module docstring).

    Args:
        cfg: the resolved config dataclass (written to ``config.yaml`` and into every checkpoint).
        output_dir: run folder.
        seed: seeds python / numpy / torch before anything is built.
        mixed_precision: "no", "bf16" or "fp16".
        keep_last: numbered checkpoints kept.
        cpu: run on CPU even when a GPU is present.
        progress: show a progress bar (main process only).
        stop_after: stop (as if killed) after this iteration: used by tests and to split long runs into jobs.
        resume: continue the folder's newest checkpoint (the subclass calls :meth:`resume`); an earlier run's
            folder is only taken with ``resume`` or ``overwrite``.
        overwrite: replace an earlier run in the folder (its checkpoints, final weights and metrics are removed).
        claim: take the folder (lock + reuse check); False for a trainer that only evaluates.
        log_with: experiment trackers (:mod:`.trackers`: tensorboard, wandb, mlflow, comet_ml, clearml, aim,
            dvclive) that get every record's numbers and, at :meth:`write_config`, the resolved config.
    """

    # The "format" entry of this trainer's checkpoints, its version, and the version v -> v + 1 translations of
    # older checkpoints (applied at resume; see checkpoint.upgrade_to_current).
    CHECKPOINT_FORMAT = "resnet-det/train-checkpoint"
    CHECKPOINT_VERSION = 1
    CHECKPOINT_UPGRADES: Mapping[int, Callable[[dict[str, Any]], dict[str, Any]]] = MappingProxyType(
        {0: lambda ckpt: ckpt})  # unversioned checkpoints hold what version 1 does

    def __init__(
        self,
        cfg: Any,
        *,
        output_dir: str | Path,
        seed: int,
        mixed_precision: str,
        keep_last: int,
        cpu: bool = False,
        progress: bool = True,
        stop_after: int | None = None,
        resume: bool = False,
        overwrite: bool = False,
        claim: bool = True,
        log_with: Sequence[str] = ("tensorboard",),
    ) -> None:
        from accelerate import Accelerator
        from accelerate.utils import DistributedDataParallelKwargs

        from .trackers import build_trackers

        self.cfg = cfg
        # Checked before anything is claimed: a tracker whose package is missing is one line, not a half-made run.
        trackers = build_trackers(log_with, output_dir)
        self.accelerator = Accelerator(
            # Without a GPU, accelerate only forms a multi-process (gloo) group when told it runs on CPU.
            cpu=cpu or not torch.cuda.is_available(),
            mixed_precision=mixed_precision,
            kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=False)],
            log_with=trackers or None,
            project_dir=str(output_dir),
        )
        self._trackers_started = self._trackers_finished = False
        self.progress = progress and self.accelerator.is_main_process
        self.stop_after = stop_after
        self.output_dir = Path(output_dir)
        self.folder = RunFolder(self.output_dir)
        if claim:
            self.folder.check_reuse(resume=resume, overwrite=overwrite)
            if self.accelerator.is_main_process:
                self.folder.acquire()
        self.checkpoints = CheckpointManager(self.output_dir, keep_last=keep_last)
        self.metrics = MetricsWriter(self.output_dir, enabled=self.accelerator.is_main_process, sink=self._track)
        self.start_iter = 0
        # The stop signal received during the run (None: none): acted on at the next step boundary.
        self.stop_signal: int | None = None
        self.class_names: tuple[str, ...] = ()
        self.model: nn.Module
        self.optimizer: torch.optim.Optimizer
        self.scheduler: Any = None
        seed_everything(seed)

    # ---------------------------------------------------------------------------------------------- set-up

    def prepare(self, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any = None) -> None:
        """Hand model and optimizer to accelerate (DDP, mixed precision). The scheduler stays ours: it is stepped
        once per optimizer step, not once per process as accelerate would."""
        self.model, self.optimizer = self.accelerator.prepare(model, optimizer)
        self.scheduler = scheduler

    def write_config(self) -> None:
        """``config.yaml`` of the resolved config, and the experiment trackers started with it."""
        if self.accelerator.is_main_process:
            save_config(self.cfg, self.output_dir / "config.yaml")
        self.start_trackers()

    def start_trackers(self) -> None:
        """``accelerator.init_trackers`` (main process) with the run folder's name as the project and the resolved
        config, flattened, as its hyperparameters."""
        from .trackers import tracker_config

        if self._trackers_started or self._trackers_finished or not self.accelerator.log_with:
            return
        self.accelerator.init_trackers(self.output_dir.resolve().name or "run",
                                       config=tracker_config(to_dict(self.cfg)))
        self._trackers_started = True

    def _track(self, values: dict[str, float | int], step: int) -> None:
        # A trainer that writes records without write_config (an evaluation-only run) starts them here.
        self.start_trackers()
        if self._trackers_started:
            self.accelerator.log(values, step=step)

    @contextmanager
    def released_on_error(self) -> Iterator[None]:
        """Wrap a subclass's set-up after ``super().__init__``: if it fails (a bad weights file, a missing dataset),
        the output folder is given back, so the same process (a notebook, a test) can start another run there."""
        try:
            yield
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """End of the run: flush the metrics, finish the trackers and give the output folder back.

        The trackers are finished one by one rather than by ``accelerator.end_training()``, which would also tear
        down the process group that the caller (a script training twice, a test) may still use."""
        self.metrics.close()
        if self._trackers_started:
            for tracker in self.accelerator.trackers:
                tracker.finish()
            self.accelerator.trackers = []
            self._trackers_started, self._trackers_finished = False, True
        self.folder.release()

    @property
    def unwrapped(self) -> nn.Module:
        """The model without its DDP / compile wrappers."""
        return self.accelerator.unwrap_model(self.model)

    # ---------------------------------------------------------------------------------------- stop signals

    @contextmanager
    def stop_on_signals(self) -> Iterator[None]:
        """While inside, SIGINT / SIGTERM only record a stop request (:meth:`stop_requested`), so the loop can finish
        its step and write a checkpoint; a second signal stops at once. Handlers are installed only in the main
        thread (Python allows no other) and restored on exit."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {s: signal.getsignal(s) for s in STOP_SIGNALS}

        def request(signum: int, frame: Any) -> None:
            if self.stop_signal is not None:  # the second one: the user does not want to wait
                signal.signal(signum, previous[signum])
                signal.raise_signal(signum)
                return
            self.stop_signal = signum
            logger.warning("%s: stopping after this step with a checkpoint (again to stop at once, without one)",
                           signal.Signals(signum).name)

        for s in STOP_SIGNALS:
            signal.signal(s, request)
        try:
            yield
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)

    def stop_requested(self) -> int | None:
        """The stop signal number when any process received one (every process agrees: each must write the same
        checkpoint and leave the same loop), else None."""
        if self.accelerator.num_processes == 1:
            return self.stop_signal
        import torch.distributed as dist

        flag = torch.tensor([self.stop_signal or 0], device=self.accelerator.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return int(flag.item()) or None

    # ------------------------------------------------------------------------------------------ checkpoints

    def check_resumable(self, ckpt: dict[str, Any], path: Path) -> None:
        """Refuse (one-line ConfigError) a checkpoint that cannot continue this run; see the subclasses."""

    def extra_state(self) -> dict[str, Any]:
        """Trainer-specific checkpoint entries (plain tensors and Python data only)."""
        return {}

    def load_extra_state(self, ckpt: dict[str, Any]) -> None:
        """Restore what :meth:`extra_state` saved."""

    def checkpoint_state(self, iteration: int) -> dict[str, Any]:
        scaler = self.accelerator.scaler
        return {
            "format": self.CHECKPOINT_FORMAT,
            FORMAT_VERSION_KEY: self.CHECKPOINT_VERSION,
            "iteration": iteration,
            "model": {k: v.detach().cpu() for k, v in self.unwrapped.state_dict().items()},
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
            "scaler": scaler.state_dict() if scaler is not None else None,
            "rng": capture_rng_state(),
            "config": to_dict(self.cfg),
            "class_names": list(self.class_names),
            **self.extra_state(),
        }

    def save_checkpoint(self, iteration: int) -> Path | None:
        """Write ``model_{iteration}.pth`` (main process; every process waits for it)."""
        self.accelerator.wait_for_everyone()
        path = None
        if self.accelerator.is_main_process:
            path = self.checkpoints.save(self.checkpoint_state(iteration), iteration)
        self.accelerator.wait_for_everyone()
        return path

    def resume(self) -> Path | None:
        """Continue from the newest checkpoint of the output folder (None and a log line when there is none)."""
        latest = self.checkpoints.latest()
        if latest is None:
            logger.info("no checkpoint in %s: starting from scratch", self.output_dir)
            return None
        ckpt = upgrade_to_current(CheckpointManager.load(latest), self.CHECKPOINT_VERSION, self.CHECKPOINT_UPGRADES,
                                  latest)
        self.check_resumable(ckpt, latest)
        self.checkpoints.adopt()  # the resumed run's checkpoints are this run's: pruned as it goes
        model_state = self.unwrapped.state_dict()
        other = [f"{k} {tuple(v.shape)} vs {tuple(model_state[k].shape)}" for k, v in ckpt["model"].items()
                 if k in model_state and tuple(v.shape) != tuple(model_state[k].shape)]
        if other:  # a model of another shape: torch's answer is a multi-line traceback
            raise ConfigError(f"{latest}: holds a model of other shapes than this run's ({len(other)} tensor(s), e.g. "
                              f"{other[0]}); resume with the config it was trained with, or choose another "
                              "--output-dir (or --overwrite to replace it)")
        self.unwrapped.load_state_dict(ckpt["model"])
        # torch loads another optimizer's state without a word and fails (or silently differs) steps later.
        saved, current = ckpt["optimizer"].get("param_groups") or [{}], self.optimizer.state_dict()["param_groups"]
        if any((key in saved[0]) != (key in current[0]) for key in ("momentum", "betas")):
            name = type(getattr(self.optimizer, "optimizer", self.optimizer)).__name__  # under accelerate's wrapper
            raise ConfigError(f"{latest}: holds the state of another optimizer than this run's {name} (was "
                              "solver.optimizer changed?); resume with the one it was trained with, or start a new "
                              "run from its weights")
        self.optimizer.load_state_dict(ckpt["optimizer"])
        if ckpt.get("scheduler") is not None and self.scheduler is not None:
            self.scheduler.load_state_dict(ckpt["scheduler"])
        if ckpt.get("scaler") is not None and self.accelerator.scaler is not None:
            self.accelerator.scaler.load_state_dict(ckpt["scaler"])
        restore_rng_state(ckpt["rng"])
        self.start_iter = int(ckpt["iteration"])
        # A killed run may have logged past its last checkpoint: those steps are run again and logged again.
        self.metrics.truncate_after(self.start_iter)
        self.load_extra_state(ckpt)
        logger.info("resumed from %s at iteration %d", latest, self.start_iter)
        return latest


__all__ = ["RUN_FILES", "STOP_SIGNALS", "RunFolder", "TrainerBase", "TrainingInterrupted"]
