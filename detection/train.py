"""The detection training loop (accelerate) on the shared infrastructure of :mod:`resbackbone.engine`.

One process or many (``accelerate launch``), CPU or GPU, fp32 / bf16 / fp16: accelerate owns the devices, DDP
and mixed precision; the data order is ours. Each process draws its own disjoint slice of every global batch
from :class:`resbackbone.engine.sampling.TrainBatchSampler` (a pure function of ``(seed, iteration)``), and each
sample's augmentation is seeded from ``(seed, iteration, slot)``. A checkpoint therefore only needs the iteration
number as its "data position", and a resumed run sees exactly the batches the uninterrupted run would have seen.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterator
from contextlib import nullcontext
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader

from resbackbone.engine.checkpoint import check_finite_state
from resbackbone.engine.config import config_differences, from_dict, to_dict
from resbackbone.engine.early_stopping import EarlyStopping
from resbackbone.engine.ema import WeightEMA
from resbackbone.engine.progress import LossWindow, Progress, check_finite, format_eta, memory_summary
from resbackbone.engine.schedule import build_lr_scheduler, optimizer_from_config
from resbackbone.engine.trainer import TrainerBase, TrainingInterrupted
from resbackbone.errors import ConfigError
from resbackbone.serialization import atomic_torch_save

from .checkpoint import (
    BEST_WEIGHTS_NAME,
    DETECTOR_FORMAT_VERSION,
    DETECTOR_UPGRADES,
    FINAL_WEIGHTS_NAME,
    adopt_architecture,
    dataset_meta,
    detector_payload,
    init_from_detector,
    read_detector_file,
)
from .config import DetectionConfig
from .recipes import RECIPES, schedule_at_fractions

logger = logging.getLogger("detection.train")
# Iterations between two metrics.jsonl records / log lines, and the window their losses are smoothed over
# (Detectron2's 20).
LOG_PERIOD = 20
# A CPU run estimated (from its first steps) to take longer than this is told about the CPU-sized recipe.
LONG_CPU_RUN_S = 3600.0
# Steps timed for that estimate, after the first (which pays for allocation and warm-up).
ESTIMATE_STEPS = 3
# Training images written after augmentation, boxes drawn, into <output_dir>/<AUGMENTED_DIR>/ at the start.
AUGMENTED_SAMPLES = 4
AUGMENTED_DIR = "augmented"
# Config keys whose change between a checkpoint and its resume is expected (the schedule, the evaluation, where
# the folder now is, how many loader workers this machine runs).
RESUME_FREE_KEYS = ("solver.", "test.", "output_dir", "data.num_workers", "log_with")
# test.best_metric -> the key of the evaluation's metrics it reads ("mAP": the metric's own headline number).
BEST_METRIC_KEYS = {"mAP": "mAP", "AP50": "AP50", "AP": "AP", "AP50:95": "AP", "val_loss": "val_loss"}
# Mixed into the run's seed for the validation loss's RPN / RoI sampling (any constant apart from the training's).
VAL_LOSS_SEED = 0x5EED


def check_config(cfg: DetectionConfig) -> DetectionConfig:
    """Validate combinations the dataclass types cannot express, e.g. frozen BN without pretrained weights."""
    bb = cfg.model.backbone
    if bb.weights == "none" and cfg.model.weights == "none" and bb.norm == "frozen_bn":
        raise ConfigError(
            "model.backbone.norm=frozen_bn needs pretrained weights (model.backbone.weights is 'none'): frozen "
            "statistics of a random init are meaningless; use norm=auto or bn when training from scratch"
        )
    t = cfg.test
    if t.patience < 0:
        raise ConfigError(f"test.patience must be >= 0 (0: no early stopping), got {t.patience}")
    if t.patience > 0 and t.eval_period <= 0 and t.eval_epochs <= 0:
        raise ConfigError(f"test.patience={t.patience} counts periodic evaluations, and there are none: set "
                          "test.eval_period (iterations) or test.eval_epochs")
    if cfg.data.repeat_factor_threshold < 0:
        raise ConfigError(f"data.repeat_factor_threshold must be >= 0 (0: off), got {cfg.data.repeat_factor_threshold}")
    return cfg


@dataclass(frozen=True)
class BatchPlan:
    """How one optimizer step's ``ims_per_batch`` images are split: ``processes x accumulation x micro``."""

    ims_per_batch: int
    processes: int
    per_process: int  # images of one process per step (its slice of the global batch)
    micro: int  # images per forward / backward pass
    accumulation: int  # passes per step

    def describe(self) -> str:
        return (f"{self.ims_per_batch} images per step = {self.processes} process(es) x {self.accumulation} "
                f"accumulated pass(es) x {self.micro} image(s) per pass")


def batch_plan(cfg: DetectionConfig, num_processes: int) -> BatchPlan:
    """The split of ``solver.ims_per_batch`` over processes and micro-batches of ``solver.ims_per_device``; an
    error saying what to change when the numbers do not divide."""
    s = cfg.solver
    if s.ims_per_batch < 1 or s.ims_per_device < 1:
        raise ConfigError(f"solver.ims_per_batch ({s.ims_per_batch}) and solver.ims_per_device "
                          f"({s.ims_per_device}) must be positive")
    if s.ims_per_batch % num_processes:
        raise ConfigError(f"solver.ims_per_batch={s.ims_per_batch} is not divisible by the {num_processes} "
                          f"processes; use a multiple of {num_processes} (the lr follows with "
                          "solver.reference_ims_per_batch)")
    per_process = s.ims_per_batch // num_processes
    micro = min(s.ims_per_device, per_process)
    if per_process % micro:
        fits = [d for d in range(micro, 0, -1) if per_process % d == 0][0]
        raise ConfigError(f"solver.ims_per_device={s.ims_per_device} does not divide the {per_process} images "
                          f"each of the {num_processes} process(es) gets per step (solver.ims_per_batch="
                          f"{s.ims_per_batch}); use solver.ims_per_device={fits}, or an ims_per_batch that is a "
                          f"multiple of {num_processes * micro}")
    return BatchPlan(s.ims_per_batch, num_processes, per_process, micro, per_process // micro)


def resolve_epoch_schedule(cfg: DetectionConfig, num_images: int) -> DetectionConfig:
    """``solver.max_epochs`` > 0: max_iter and the lr steps from the training set's size (logged)."""
    s = cfg.solver
    if s.max_epochs <= 0:
        if s.step_fractions:
            raise ConfigError("solver.step_fractions needs solver.max_epochs > 0 (else use solver.steps)")
        return cfg
    if any(not 0 < f < 1 for f in s.step_fractions):
        raise ConfigError(f"solver.step_fractions must lie in (0, 1), got {list(s.step_fractions)}")
    solver = schedule_at_fractions(s, max(1, math.ceil(s.max_epochs * num_images / s.ims_per_batch)))
    logger.info("schedule: %g epochs of %d images at %d per step = %d iterations, lr steps at %s, warm-up %d",
                s.max_epochs, num_images, s.ims_per_batch, solver.max_iter, list(solver.steps), solver.warmup_iters)
    test = cfg.test
    if test.eval_epochs > 0:
        test = replace(test, eval_period=max(1, round(test.eval_epochs * num_images / s.ims_per_batch)))
    return replace(cfg, solver=solver, test=test)


def evaluate(
    model: Any, cfg: DetectionConfig, *, accelerator: Any = None, dataset_name: Any = None,
    progress: bool = True, dataset: Any = None,
) -> dict[str, Any]:
    """Score ``model`` on ``dataset_name`` (default ``cfg.data.test``) with the dataset's metric (or
    ``cfg.test.metric``), at the config's test size. ``dataset``: that test set already built (not read again)."""
    from .data import build_test_dataset
    from .evaluation import evaluate_detector

    if dataset is None:
        dataset = build_test_dataset(cfg.data, dataset_name, classes=getattr(model, "class_names", None))
    return evaluate_detector(model, dataset, metric=cfg.test.metric, batch_size=cfg.test.ims_per_batch,
                             num_workers=cfg.data.num_workers, accelerator=accelerator, progress=progress)


class Trainer(TrainerBase):
    """Detection fine-tuning: ``Trainer(cfg).train()``; see the module docstring for the resume guarantees.

    The config is resolved once at start (number of classes from the training set; norm, stride placement and
    pixel spec from the backbone weights) and that resolved config is what ``config.yaml`` and every checkpoint
    hold, so the trained model is rebuilt from it alone (:func:`detection.checkpoint.load_detector`).
    """

    CHECKPOINT_FORMAT = "resnet-det/train-checkpoint"
    # Detection checkpoints hold the detector file's config tree: one version and one set of upgrades for both.
    CHECKPOINT_VERSION = DETECTOR_FORMAT_VERSION
    CHECKPOINT_UPGRADES = DETECTOR_UPGRADES

    def __init__(
        self,
        cfg: DetectionConfig,
        *,
        cpu: bool = False,
        resume: bool = False,
        overwrite: bool = False,
        progress: bool = True,
        stop_after: int | None = None,
    ) -> None:
        from .data import build_test_dataset, build_train_dataset, verify_images, warn_shared_images
        from .faster_rcnn import (
            FROM_CONFIG,
            build_faster_rcnn,
            compile_hot_modules,
            read_backbone_weights,
            resolve_model_config,
        )

        cfg = check_config(cfg)
        super().__init__(cfg, output_dir=cfg.output_dir, seed=cfg.seed, mixed_precision=cfg.solver.mixed_precision,
                         keep_last=cfg.solver.keep_last, cpu=cpu, progress=progress, stop_after=stop_after,
                         resume=resume, overwrite=overwrite, log_with=cfg.log_with)
        with self.released_on_error():
            self.plan = batch_plan(cfg, self.accelerator.num_processes)
            self.dataset = build_train_dataset(cfg.data)
            self.repeat_factors = self._class_balance(cfg)
            cfg = resolve_epoch_schedule(cfg, len(self.dataset))
            logger.info("batch: %s", self.plan.describe())
            if self.plan.accumulation > 1 and cfg.model.backbone.norm == "bn":
                logger.warning("trainable BN with %d accumulated passes: its statistics come from %d image(s) per "
                               "pass, not the whole batch", self.plan.accumulation, self.plan.micro)
            class_names = tuple(self.dataset.class_names)
            model_cfg = cfg.model
            detector = model_cfg.weights if model_cfg.weights != "none" else None
            if detector is not None:
                # Fine-tuning a trained detector: its architecture, then its tensors; ImageNet weights are not read.
                init_cfg, init_names, init_state = read_detector_file(detector)
                # The source's real class count (its file's list), not the config's default.
                source_count = len(init_names) or init_cfg.model.num_classes
                logger.info("model.num_classes = %d, from the training set (%s was trained on %d class(es))",
                            len(class_names), detector, source_count)
            elif model_cfg.num_classes != len(class_names):
                logger.info("model.num_classes = %d, from the training set (the config said %d)", len(class_names),
                            model_cfg.num_classes)
            model_cfg = replace(model_cfg, num_classes=len(class_names))
            if detector is not None:
                model_cfg = adopt_architecture(model_cfg, init_cfg.model, what=detector)
                weights = None
                load: Any = None
            else:
                # Read once and loaded without a second read; without any (from scratch, or a timm trunk, which
                # loads its own through timm) the config says what to do.
                weights = read_backbone_weights(model_cfg)
                load = weights if weights is not None else FROM_CONFIG
            model_cfg = resolve_model_config(model_cfg, weights)
            self.cfg = cfg = replace(cfg, model=model_cfg)
            self.class_names = class_names
            model = build_faster_rcnn(model_cfg, class_names=class_names, weights=load)
            # The test set is read now too: its problems show before training, and its ids go into the files.
            # Kept for every evaluation of the run: a large annotation file is parsed once.
            self.test_set = test_set = build_test_dataset(cfg.data, classes=class_names)
            warn_shared_images(self.dataset, test_set)
            verify_images(self.dataset, self.output_dir)
            if self.accelerator.is_main_process:
                # What the model sees: a few training images after resize and augmentation, boxes drawn.
                from .visualize import write_augmented_samples

                seen = write_augmented_samples(self.dataset, AUGMENTED_SAMPLES, self.output_dir / AUGMENTED_DIR,
                                               seed=cfg.seed)
                logger.info("%d augmented training image(s), as the model sees them, in %s", len(seen),
                            self.output_dir / AUGMENTED_DIR)
            model.dataset_meta = dataset_meta(self.dataset, test_set)
            if detector is not None:
                logger.info("%s", init_from_detector(model, init_state, init_names, what=detector).summary())
            if self.accelerator.device.type == "cuda":
                model = model.to(memory_format=torch.channels_last)
            s = cfg.solver
            optimizer = optimizer_from_config(model, s)
            scheduler = build_lr_scheduler(optimizer, kind=s.schedule, max_iter=s.max_iter, steps=s.steps,
                                           gamma=s.gamma, warmup_iters=s.warmup_iters, warmup_factor=s.warmup_factor)
            self.prepare(model, optimizer, scheduler)
            # The averaged weights (solver.ema_decay): what is evaluated and saved as model_best / model_final.
            self.ema = (WeightEMA(self.unwrapped, decay=s.ema_decay, ramp_iters=s.ema_ramp_iters)
                        if s.ema_decay > 0 else None)
            if self.ema is not None and model_cfg.compile:
                # A deep copy of a module compiled in place runs eager: the averaged copy is compiled on its own.
                compile_hot_modules(self.ema.module)
            self.stopper = EarlyStopping(cfg.test.best_metric,
                                         mode="min" if cfg.test.best_metric == "val_loss" else "max",
                                         patience=cfg.test.patience)
            # Set when early stopping ended the run: {iteration, reason, metric, best_value, best_iteration,
            # metrics}; saved in the checkpoint, so a --resume of that run knows it is over.
            self.early_stop: dict[str, Any] | None = None
            self.data_counts = {"boxes_dropped": 0, "images_skipped": 0}
            self.window = LossWindow(LOG_PERIOD)
            if resume:
                self.resume()
            self.write_config()

    # -------------------------------------------------------------------------------------------- checkpoints

    def extra_state(self) -> dict[str, Any]:
        return {"best": self.stopper.state(), "loss_window": self.window.state(),
                "ema": self.ema.state_dict() if self.ema is not None else None, "early_stop": self.early_stop}

    def check_resumable(self, ckpt: dict[str, Any], path: Any) -> None:
        """A folder holding a run on other classes (another dataset) is refused in one line: its classifier has
        other shapes and its schedule belongs to that data."""
        saved = [str(n) for n in ckpt.get("class_names") or []]
        if not saved or saved == list(self.class_names):
            return
        differs = [f"classes {_names(saved)} vs this run's {_names(self.class_names)}"]
        saved_train = (ckpt.get("config") or {}).get("data", {}).get("train")
        if saved_train is not None and saved_train != to_dict(self.cfg)["data"]["train"]:
            differs.append(f"dataset {_spec_text(saved_train)} vs {_spec_text(self.cfg.data.train)}")
        raise ConfigError(f"{path}: --resume refused: that run is on other data ({'; '.join(differs)}); choose "
                          "another --output-dir, or --overwrite to replace it")

    def load_extra_state(self, ckpt: dict[str, Any]) -> None:
        saved = from_dict(DetectionConfig, ckpt["config"])  # upgraded to today's format by resume()
        differs = config_differences(saved, self.cfg, ignore=RESUME_FREE_KEYS)
        if differs:
            logger.warning("resuming with a config that differs from the checkpoint's in %d field(s): %s",
                           len(differs), "; ".join(differs[:8]) + ("; ..." if len(differs) > 8 else ""))
        self._load_best(ckpt.get("best") or {})
        self.early_stop = ckpt.get("early_stop")
        if self.ema is not None:
            if ckpt.get("ema") is not None:
                self.ema.load_state_dict(ckpt["ema"])
            else:
                logger.warning("solver.ema_decay=%g but the checkpoint holds no averaged weights: the average "
                               "starts from the resumed weights", self.cfg.solver.ema_decay)
        elif ckpt.get("ema") is not None:
            logger.warning("the checkpoint holds averaged weights (EMA) but solver.ema_decay is 0 now: evaluation "
                           "and the saved models use the raw weights")
        self.window.load(ckpt.get("loss_window") or [])
        # The lr of this invocation applies: a run resumed with another solver.base_lr (e.g. after a divergence)
        # must not continue at the checkpoint's. Unchanged, this recomputes exactly the lr the scheduler had.
        base, old = self.cfg.solver.base_lr, list(self.scheduler.base_lrs)
        if any(b != base for b in old):
            logger.info("resuming with solver.base_lr=%g (the checkpoint had %s)", base, old)
        self.scheduler.base_lrs = [base] * len(self.optimizer.param_groups)
        for group, factor in zip(self.optimizer.param_groups, self.scheduler.lr_lambdas):
            group["initial_lr"] = base
            group["lr"] = base * factor(self.scheduler.last_epoch)

    # --------------------------------------------------------------------------------------------------- loop

    def _class_balance(self, cfg: DetectionConfig) -> list[float] | None:
        """Log how often each class occurs in the training set (rarest first) and, with
        ``data.repeat_factor_threshold``, the repeat factors; returns those factors (None: off)."""
        from .data.check import class_frequency_summary, repeat_factor_report, repeat_factor_summary

        classes, names = self.dataset.image_classes(), self.dataset.class_names
        logger.info("training set %s: %s", self.dataset.name, class_frequency_summary(classes, names))
        threshold = cfg.data.repeat_factor_threshold
        if threshold <= 0:
            return None
        report = repeat_factor_report(classes, names, threshold)
        logger.info("data.repeat_factor_threshold: %s", repeat_factor_summary(report))
        return self.dataset.repeat_factors(threshold)

    def _loader(self) -> DataLoader:
        from .data import build_train_loader

        cfg, acc = self.cfg, self.accelerator
        return build_train_loader(
            self.dataset, batch_size=self.plan.per_process, seed=cfg.seed, num_workers=cfg.data.num_workers,
            num_replicas=acc.num_processes, rank=acc.process_index, aspect_grouping=cfg.data.aspect_grouping,
            start_iter=self.start_iter, seeded=True,
            pin_memory=acc.device.type == "cuda", repeat_factors=self.repeat_factors,
        )

    def _to_device(self, images: list[Tensor], targets: list[dict[str, Any]]) -> tuple[list[Tensor], list[dict]]:
        dev = self.accelerator.device
        images = [im.to(dev, non_blocking=True) for im in images]
        targets = [{k: (v.to(dev) if isinstance(v, Tensor) else v) for k, v in t.items()} for t in targets]
        return images, targets

    def train(self) -> dict[str, Any]:
        """Run to ``solver.max_iter`` (or ``stop_after``), evaluate at the end; returns the final metrics.

        SIGINT / SIGTERM stop the run at the next step boundary with a checkpoint of that step, then raise
        :class:`~resbackbone.engine.trainer.TrainingInterrupted` (``--resume`` continues exactly from it)."""
        cfg, acc, s = self.cfg, self.accelerator, self.cfg.solver
        if self.early_stop is not None:
            return self._already_stopped()
        if self.start_iter >= s.max_iter:
            logger.info("checkpoint is already at max_iter=%d: nothing to train", s.max_iter)
        batches = iter(self._loader()) if self.start_iter < s.max_iter else iter(())
        self.model.train()
        start_time = time.perf_counter()
        bar = Progress(s.max_iter, initial=self.start_iter, images_per_step=s.ims_per_batch, device=acc.device,
                       enabled=self.progress)
        last_iter = self.start_iter
        step_times: list[float] = []
        try:
            with self.stop_on_signals():
                if self.start_iter < s.max_iter:
                    logger.info("training iterations %d..%d (Ctrl-C stops after the current step with a checkpoint)",
                                self.start_iter + 1, s.max_iter)
                for it in range(self.start_iter, s.max_iter):
                    t0 = time.perf_counter()
                    stats = self._step(batches, it)
                    last_iter = it + 1
                    seconds = time.perf_counter() - t0
                    step_times.append(seconds)
                    self.window.add({k: v for k, v in stats.items() if k.startswith("loss") or k == "data_time"})
                    terms = " ".join(f"{k[5:]} {v:.3f}" for k, v in stats.items() if k.startswith("loss_"))
                    bar.step(seconds, f"loss {stats['loss']:.3f} ({terms}) lr {stats['lr']:.2e}")
                    if len(step_times) == ESTIMATE_STEPS + 1:
                        self._warn_if_long_on_cpu(sum(step_times[1:]) / ESTIMATE_STEPS, s.max_iter - last_iter)
                    if last_iter % LOG_PERIOD == 0 or last_iter == s.max_iter:
                        self._log(last_iter, stats, bar.mean_step())
                    evaluated = (cfg.test.eval_period > 0 and last_iter % cfg.test.eval_period == 0
                                 and last_iter < s.max_iter)
                    # Early stopping ends the run at this evaluation, with a checkpoint that records it.
                    stopping = evaluated and self._periodic_eval(last_iter)
                    saved = self._checkpoint_due(last_iter, evaluated) or stopping
                    if saved:
                        self.save_checkpoint(last_iter)
                    if stopping:
                        break
                    signum = self.stop_requested()
                    if signum is not None and last_iter < s.max_iter:
                        if last_iter % LOG_PERIOD:  # the step it stopped at is in the log, as a resume starts there
                            self._log(last_iter, stats, bar.mean_step())
                        if not saved:
                            self.save_checkpoint(last_iter)
                        raise TrainingInterrupted(last_iter, signum)
                    if self.stop_after is not None and last_iter >= self.stop_after:
                        break
        except TrainingInterrupted:
            bar.close()
            self.metrics.write_table(plot=True)
            self.close()
            raise
        finally:
            bar.close()
        train_seconds = time.perf_counter() - start_time
        counts = self.data_counts
        if counts["boxes_dropped"] or counts["images_skipped"]:
            logger.info("data: %d ground-truth box(es) dropped (degenerate after resize / clipping, or pushed out "
                        "by augmentation), %d unreadable image(s) replaced (data.skip_bad) in this process's batches",
                        counts["boxes_dropped"],
                        counts["images_skipped"])
        result: dict[str, Any] = {"iteration": last_iter, "train_seconds": train_seconds}
        if self.early_stop is not None:
            # The evaluation that stopped the run is at this very iteration: its numbers are the final ones.
            self._save_weights(FINAL_WEIGHTS_NAME)
            result.update(self.early_stop["metrics"], early_stop=dict(self.early_stop))
            if acc.is_main_process:
                self._write_stop(last_iter)
        elif last_iter >= s.max_iter:
            finished_before = self.start_iter >= s.max_iter
            if not finished_before or not (self.output_dir / FINAL_WEIGHTS_NAME).exists():
                self._save_weights(FINAL_WEIGHTS_NAME)
            metrics = self._evaluate()
            result.update(metrics)
            # A run resumed after its end evaluates again but does not log the same step twice.
            if acc.is_main_process and metrics and not finished_before:
                self._write_eval(last_iter, metrics)
                # The final evaluation competes for model_best.pth too (with periodic evaluation), so that file is
                # the best model of the run even when the last one is.
                if cfg.test.eval_period > 0:
                    self._track_best(last_iter, metrics)
        self.metrics.write_table(plot=True)
        self.close()
        return result

    # ------------------------------------------------------------------------------------------- feedback

    def epoch(self, iteration: int) -> float:
        """Epochs of the training set seen after ``iteration`` steps."""
        return iteration * self.cfg.solver.ims_per_batch / max(len(self.dataset), 1)

    def _checkpoint_due(self, iteration: int, evaluated: bool) -> bool:
        """Every ``checkpoint_period`` and at the end; with an epoch schedule also at every evaluation and every
        ``checkpoint_epochs`` epochs, so a small set that never reaches ``checkpoint_period`` has checkpoints."""
        s = self.cfg.solver
        if iteration % s.checkpoint_period == 0 or iteration == s.max_iter:
            return True
        if s.max_epochs <= 0:
            return False
        if evaluated:
            return True
        if s.checkpoint_epochs <= 0:
            return False
        # A multiple of checkpoint_epochs was crossed by this step (epochs rarely end on a step boundary).
        return math.floor(self.epoch(iteration) / s.checkpoint_epochs + 1e-9) > \
            math.floor(self.epoch(iteration - 1) / s.checkpoint_epochs + 1e-9)

    def _log(self, iteration: int, stats: dict[str, float], seconds_per_iter: float) -> None:
        """A ``metrics.jsonl`` record (+ ``results.csv``) of the smoothed window, and without a progress bar a log
        line like Detectron2's: loss terms, lr, s/it, data time, ETA, memory."""
        w = self.window
        losses = [k for k in stats if k.startswith("loss")]
        record: dict[str, Any] = {"epoch": round(self.epoch(iteration), 4)}
        # Medians over the window (one odd batch does not make the curve), and the means beside them.
        record.update({k: w.median(k) for k in losses})
        record.update({f"{k}_mean": w.mean(k) for k in losses})
        record.update(lr=stats["lr"], seconds_per_iter=seconds_per_iter, data_time=w.median("data_time"),
                      **{k: stats[k] for k in self.data_counts})
        self.metrics.write(iteration, record)
        self.metrics.write_table()
        if self.progress or not self.accelerator.is_main_process:
            return
        s = self.cfg.solver
        terms = " ".join(f"{k[5:]} {record[k]:.3f}" for k in losses if k.startswith("loss_"))
        logger.info("iter %d/%d  epoch %.2f  loss %.3f (%s)  lr %.2e  %.3f s/it (data %.3f)  eta %s  mem %s",
                    iteration, s.max_iter, record["epoch"], record["loss"], terms, stats["lr"], seconds_per_iter,
                    record["data_time"], format_eta((s.max_iter - iteration) * seconds_per_iter),
                    memory_summary(self.accelerator.device))

    def _warn_if_long_on_cpu(self, seconds_per_iter: float, remaining: int) -> None:
        """Once per run: a CPU run that would take hours says so and names the CPU-sized recipe."""
        eta = seconds_per_iter * remaining
        if self.accelerator.device.type != "cpu" or eta < LONG_CPU_RUN_S or not self.accelerator.is_main_process:
            return
        logger.warning("this run needs about %s on the CPU (%.2f s/iteration x %d iterations left); the CPU-sized "
                       "recipe (tools/train_det.py --recipe cpu, %s) is made for it, or shorten it with --epochs / "
                       "--imgsz", format_eta(eta), seconds_per_iter, remaining, "configs/det/" + RECIPES["cpu"])

    def _write_eval(self, iteration: int, metrics: dict[str, Any]) -> None:
        """The evaluation's numbers and per-class AP (``test/AP/<class>``, null without ground truth) as one
        record (the trackers get its numbers) and one log line; the curves figure is redrawn."""
        record: dict[str, Any] = {"epoch": round(self.epoch(iteration), 4)}
        record.update({f"test/{k}": v for k, v in metrics.items() if _is_number(v)})
        record.update({f"test/AP/{name}": ap for name, ap in (metrics.get("per_class") or {}).items()})
        self.metrics.write(iteration, record)
        self.metrics.write_table(plot=True)
        scores = "  ".join(f"{k} {metrics[k]:.4f}" for k in ("mAP", "AP", "AP50") if _is_number(metrics.get(k)))
        if "val_loss" in metrics:
            terms = " ".join(f"{k[9:]} {v:.3f}" for k, v in metrics.items() if k.startswith("val_loss_"))
            scores += f"  val_loss {metrics['val_loss']:.3f} ({terms})"
        logger.info("evaluation at iteration %d%s: %s", iteration, " (EMA weights)" if self.ema is not None else "",
                    scores)

    def _write_stop(self, iteration: int) -> None:
        """The early stop as a ``metrics.jsonl`` record: why, and which evaluation was the best."""
        stop = self.early_stop or {}
        self.metrics.write(iteration, {"epoch": round(self.epoch(iteration), 4), "early_stop/reason": stop["reason"],
                                       "early_stop/metric": stop["metric"],
                                       "early_stop/best_value": stop["best_value"],
                                       "early_stop/best_iteration": stop["best_iteration"]})

    def _already_stopped(self) -> dict[str, Any]:
        """``--resume`` of a run that early stopping ended: says so and trains nothing (its final weights are
        written if the stopped run died before writing them)."""
        stop = self.early_stop or {}
        logger.info("this run already stopped early at iteration %d (%s): nothing to train; its best model is %s. "
                    "To train on, start a new run from its weights in another --output-dir (--init-from %s)",
                    stop["iteration"], stop["reason"], self.output_dir / BEST_WEIGHTS_NAME,
                    self.output_dir / FINAL_WEIGHTS_NAME)
        if not (self.output_dir / FINAL_WEIGHTS_NAME).exists():
            self._save_weights(FINAL_WEIGHTS_NAME)
        self.close()
        return {"iteration": self.start_iter, **stop["metrics"], "early_stop": dict(stop)}

    def _step(self, batches: Iterator[Any], it: int) -> dict[str, float]:
        """One optimizer step on this process's slice of global batch ``it``, in ``plan.accumulation`` passes.

        The slice is loaded whole (the same images and augmentations whatever the micro-batch) and split; every
        loss is a per-image mean (RPN and RoI head), so weighting each pass by its share of the images makes the
        accumulated gradient the one of the whole slice, and DDP's mean over processes that of the whole batch.
        """
        acc, s, plan = self.accelerator, self.cfg.solver, self.plan
        totals: dict[str, float] = {}
        t0 = time.perf_counter()
        all_images, all_targets = next(batches)
        data_time = time.perf_counter() - t0
        for micro, start in enumerate(range(0, plan.per_process, plan.micro)):
            images, targets = self._to_device(all_images[start:start + plan.micro],
                                              all_targets[start:start + plan.micro])
            share = len(images) / plan.per_process
            last_micro = micro == plan.accumulation - 1
            ctx = acc.no_sync(self.model) if not last_micro else nullcontext()
            with ctx:
                out = self.model(images, targets)
                losses = {k: v for k, v in out.items() if k.startswith("loss_")}
                # Numbered as the checkpoints are: iteration it + 1 is the one that would be saved as it + 1.
                check_finite(losses, it + 1)
                acc.backward(sum(losses.values()) * share)
            for k, v in out.items():
                totals[k] = totals.get(k, 0.0) + float(v.detach() if isinstance(v, Tensor) else v) * share
        # Counted from the targets (not the dataset object), so images handled in worker processes count too.
        self.data_counts["boxes_dropped"] += sum(int(t.get("num_dropped", 0)) for t in all_targets)
        self.data_counts["images_skipped"] += sum(bool(t.get("skipped", False)) for t in all_targets)
        if s.clip_grad_norm > 0:
            acc.clip_grad_norm_(self.model.parameters(), s.clip_grad_norm)
        self.optimizer.step()
        if self.ema is not None:
            self.ema.update(self.unwrapped, it + 1)
        self.optimizer.zero_grad(set_to_none=True)
        lr = self.optimizer.param_groups[0]["lr"]
        self.scheduler.step()
        totals["loss"] = sum(v for k, v in totals.items() if k.startswith("loss_"))
        totals["lr"] = lr
        totals["data_time"] = data_time  # waiting for the loader: >> 0 means the data, not the model, is slow
        totals.update(self.data_counts)  # running totals of this process since the start (or resume)
        return totals

    @property
    def eval_model(self) -> torch.nn.Module:
        """What is evaluated and saved as a model file: the averaged weights with EMA, else the trained ones."""
        return self.ema.module if self.ema is not None else self.unwrapped

    def _evaluate(self) -> dict[str, Any]:
        """Score :attr:`eval_model` on the test set; with ``test.val_loss`` (or ``best_metric=val_loss``) add the
        validation loss terms ({} on processes other than the main one)."""
        cfg = self.cfg
        metrics = evaluate(self.eval_model, cfg, accelerator=self.accelerator, progress=self.progress,
                           dataset=self.test_set)
        if cfg.test.val_loss or cfg.test.best_metric == "val_loss":
            from .evaluation import validation_loss

            losses = validation_loss(self.eval_model, self.test_set, seed=cfg.seed * 1_000_003 + VAL_LOSS_SEED,
                                     batch_size=cfg.test.ims_per_batch, num_workers=cfg.data.num_workers,
                                     use_difficult=cfg.data.use_difficult, accelerator=self.accelerator)
            if metrics:
                metrics.update(losses)
        self.unwrapped.train()
        return metrics

    def _periodic_eval(self, iteration: int) -> bool:
        """Evaluate, record, keep the best model; True when early stopping ends the run here (then
        :attr:`early_stop` says why, on every process)."""
        acc = self.accelerator
        metrics = self._evaluate()
        stop: dict[str, Any] | None = None
        if acc.is_main_process and metrics:
            self._write_eval(iteration, metrics)
            self._track_best(iteration, metrics)
            if self.stopper.should_stop:
                st = self.stopper
                stop = {"iteration": iteration, "reason": st.reason(), "metric": st.metric, "best_value": st.best,
                        "best_iteration": st.best_iteration,
                        "metrics": {k: v for k, v in metrics.items() if _is_number(v)}}
        if acc.num_processes > 1:  # only the main process scores: the others follow its decision
            from accelerate.utils import broadcast_object_list

            stop = broadcast_object_list([stop])[0]
        if stop is None:
            return False
        self.early_stop = stop
        logger.info("early stopping at iteration %d: %s", iteration, stop["reason"])
        return True

    def _track_best(self, iteration: int, metrics: dict[str, Any]) -> None:
        """Feed ``test.best_metric`` of this evaluation to the early stopper; a new best writes
        ``model_best.pth`` (main process)."""
        name = self.cfg.test.best_metric
        value = metrics.get(BEST_METRIC_KEYS[name])
        value = float(value) if _is_number(value) else float("nan")
        if self.stopper.update(value, iteration):
            payload = detector_payload(self.eval_model, self.cfg, self.class_names)
            check_finite_state(payload, BEST_WEIGHTS_NAME)
            atomic_torch_save(payload, self.output_dir / BEST_WEIGHTS_NAME)
            logger.info("new best %s %.4f at iteration %d", name, value, iteration)

    def _load_best(self, state: dict[str, Any]) -> None:
        """Restore the early stopper from a checkpoint's ``best`` entry (older checkpoints: ``{"mAP",
        "iteration"}``); one that followed another ``test.best_metric`` is not carried over."""
        if "metric" not in state and "mAP" in state:
            state = {"metric": "mAP", "mode": "max", "value": state["mAP"], "iteration": state.get("iteration")}
        if state and not self.stopper.load(state):
            logger.info("test.best_metric is %s now (the checkpoint followed %s): the best model is chosen anew from "
                        "the next evaluation", self.stopper.metric, state.get("metric"))

    def _save_weights(self, name: str) -> None:
        self.accelerator.wait_for_everyone()
        if self.accelerator.is_main_process:
            payload = detector_payload(self.eval_model, self.cfg, self.class_names)
            check_finite_state(payload, name)
            atomic_torch_save(payload, self.output_dir / name)
        self.accelerator.wait_for_everyone()


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _names(names: Any) -> str:
    names = list(names)
    return f"{len(names)} ({', '.join(names[:5])}{', ...' if len(names) > 5 else ''})"


def _spec_text(spec: Any) -> str:
    from .data.catalog import describe_spec

    try:
        return describe_spec(spec)
    except Exception:  # noqa: BLE001 - a saved description this version cannot parse is still shown as written
        return str(spec)


__all__ = ["BatchPlan", "Trainer", "batch_plan", "check_config", "evaluate", "resolve_epoch_schedule"]
