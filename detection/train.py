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
from resbackbone.engine.config import from_dict, to_dict
from resbackbone.engine.progress import Progress, check_finite
from resbackbone.engine.schedule import build_lr_scheduler, optimizer_from_config
from resbackbone.engine.trainer import TrainerBase
from resbackbone.errors import ConfigError
from resbackbone.serialization import atomic_torch_save

from .checkpoint import (
    BEST_WEIGHTS_NAME,
    FINAL_WEIGHTS_NAME,
    adopt_architecture,
    dataset_meta,
    detector_payload,
    init_from_detector,
    read_detector_file,
    upgrade_config_dict,
)
from .config import DetectionConfig

logger = logging.getLogger("detection.train")
# Iterations between two metrics.jsonl records.
LOG_PERIOD = 20


def check_config(cfg: DetectionConfig) -> DetectionConfig:
    """Validate combinations the dataclass types cannot express, e.g. frozen BN without pretrained weights."""
    bb = cfg.model.backbone
    if bb.weights == "none" and cfg.model.weights == "none" and bb.norm == "frozen_bn":
        raise ConfigError(
            "model.backbone.norm=frozen_bn needs pretrained weights (model.backbone.weights is 'none'): frozen "
            "statistics of a random init are meaningless; use norm=auto or bn when training from scratch"
        )
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
    max_iter = max(1, math.ceil(s.max_epochs * num_images / s.ims_per_batch))
    steps = tuple(sorted({max(1, round(f * max_iter)) for f in s.step_fractions}))
    warmup = min(s.warmup_iters, max(max_iter // 4, 1)) if s.warmup_iters else 0
    logger.info("schedule: %g epochs of %d images at %d per step = %d iterations, lr steps at %s, warm-up %d",
                s.max_epochs, num_images, s.ims_per_batch, max_iter, list(steps), warmup)
    solver = replace(s, max_iter=max_iter, steps=steps, warmup_iters=warmup)
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
        from .data import build_test_dataset, build_train_dataset
        from .faster_rcnn import FROM_CONFIG, build_faster_rcnn, read_backbone_weights, resolve_model_config

        cfg = check_config(cfg)
        super().__init__(cfg, output_dir=cfg.output_dir, seed=cfg.seed, mixed_precision=cfg.solver.mixed_precision,
                         keep_last=cfg.solver.keep_last, cpu=cpu, progress=progress, stop_after=stop_after,
                         resume=resume, overwrite=overwrite)
        with self.released_on_error():
            self.plan = batch_plan(cfg, self.accelerator.num_processes)
            self.dataset = build_train_dataset(cfg.data)
            cfg = resolve_epoch_schedule(cfg, len(self.dataset))
            logger.info("batch: %s", self.plan.describe())
            if self.plan.accumulation > 1 and cfg.model.backbone.norm == "bn":
                logger.warning("trainable BN with %d accumulated passes: its statistics come from %d image(s) per "
                               "pass, not the whole batch", self.plan.accumulation, self.plan.micro)
            class_names = tuple(self.dataset.class_names)
            model_cfg = cfg.model
            if model_cfg.num_classes != len(class_names):
                logger.info("model.num_classes follows the training set: %d -> %d", model_cfg.num_classes,
                            len(class_names))
                model_cfg = replace(model_cfg, num_classes=len(class_names))
            detector = model_cfg.weights if model_cfg.weights != "none" else None
            if detector is not None:
                # Fine-tuning a trained detector: its architecture, then its tensors; ImageNet weights are not read.
                init_cfg, init_names, init_state = read_detector_file(detector)
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
            self.best: dict[str, Any] = {}
            self.data_counts = {"boxes_dropped": 0, "images_skipped": 0}
            if resume:
                self.resume()
            self.write_config()

    # -------------------------------------------------------------------------------------------- checkpoints

    def extra_state(self) -> dict[str, Any]:
        return {"best": dict(self.best)}

    def load_extra_state(self, ckpt: dict[str, Any]) -> None:
        saved = from_dict(DetectionConfig, upgrade_config_dict(ckpt["config"]))
        if to_dict(replace(saved, solver=self.cfg.solver, test=self.cfg.test)) != to_dict(self.cfg):
            logger.warning("resuming with a config that differs from the checkpoint's (model/data)")
        self.best = dict(ckpt.get("best") or {})
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

    def _loader(self) -> DataLoader:
        from .data import build_train_loader

        cfg, acc = self.cfg, self.accelerator
        return build_train_loader(
            self.dataset, batch_size=self.plan.per_process, seed=cfg.seed, num_workers=cfg.data.num_workers,
            num_replicas=acc.num_processes, rank=acc.process_index, aspect_grouping=cfg.data.aspect_grouping,
            start_iter=self.start_iter, seeded=True,
            pin_memory=acc.device.type == "cuda",
        )

    def _to_device(self, images: list[Tensor], targets: list[dict[str, Any]]) -> tuple[list[Tensor], list[dict]]:
        dev = self.accelerator.device
        images = [im.to(dev, non_blocking=True) for im in images]
        targets = [{k: (v.to(dev) if isinstance(v, Tensor) else v) for k, v in t.items()} for t in targets]
        return images, targets

    def train(self) -> dict[str, Any]:
        """Run to ``solver.max_iter`` (or ``stop_after``), evaluate at the end; returns the final metrics."""
        cfg, acc, s = self.cfg, self.accelerator, self.cfg.solver
        if self.start_iter >= s.max_iter:
            logger.info("checkpoint is already at max_iter=%d: nothing to train", s.max_iter)
        batches = iter(self._loader()) if self.start_iter < s.max_iter else iter(())
        self.model.train()
        start_time = time.perf_counter()
        bar = Progress(s.max_iter, initial=self.start_iter, images_per_step=s.ims_per_batch, device=acc.device,
                       enabled=self.progress)
        last_iter = self.start_iter
        try:
            for it in range(self.start_iter, s.max_iter):
                t0 = time.perf_counter()
                stats = self._step(batches, it)
                last_iter = it + 1
                terms = " ".join(f"{k[5:]} {v:.3f}" for k, v in stats.items() if k.startswith("loss_"))
                bar.step(time.perf_counter() - t0, f"loss {stats['loss']:.3f} ({terms}) lr {stats['lr']:.2e}")
                if last_iter % LOG_PERIOD == 0 or last_iter == s.max_iter:
                    self.metrics.write(last_iter, {**stats, "seconds_per_iter": bar.mean_step()})
                if cfg.test.eval_period > 0 and last_iter % cfg.test.eval_period == 0 and last_iter < s.max_iter:
                    self._periodic_eval(last_iter)
                if last_iter % s.checkpoint_period == 0 or last_iter == s.max_iter:
                    self.save_checkpoint(last_iter)
                if self.stop_after is not None and last_iter >= self.stop_after:
                    break
        finally:
            bar.close()
        train_seconds = time.perf_counter() - start_time
        counts = self.data_counts
        if counts["boxes_dropped"] or counts["images_skipped"]:
            logger.info("data: %d ground-truth box(es) dropped as degenerate after resize / clipping, %d unreadable "
                        "image(s) replaced (data.skip_bad) in this process's batches", counts["boxes_dropped"],
                        counts["images_skipped"])
        result: dict[str, Any] = {"iteration": last_iter, "train_seconds": train_seconds}
        if last_iter >= s.max_iter:
            if self.start_iter < s.max_iter or not (self.output_dir / FINAL_WEIGHTS_NAME).exists():
                self._save_weights(FINAL_WEIGHTS_NAME)
            metrics = self._evaluate()
            result.update(metrics)
            if acc.is_main_process and metrics:
                self.metrics.write(last_iter, {f"test/{k}": v for k, v in metrics.items() if _is_number(v)})
        self.close()
        return result

    def _step(self, batches: Iterator[Any], it: int) -> dict[str, float]:
        """One optimizer step on this process's slice of global batch ``it``, in ``plan.accumulation`` passes.

        The slice is loaded whole (the same images and augmentations whatever the micro-batch) and split; every
        loss is a per-image mean (RPN and RoI head), so weighting each pass by its share of the images makes the
        accumulated gradient the one of the whole slice, and DDP's mean over processes that of the whole batch.
        """
        acc, s, plan = self.accelerator, self.cfg.solver, self.plan
        totals: dict[str, float] = {}
        all_images, all_targets = next(batches)
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
        self.optimizer.zero_grad(set_to_none=True)
        lr = self.optimizer.param_groups[0]["lr"]
        self.scheduler.step()
        totals["loss"] = sum(v for k, v in totals.items() if k.startswith("loss_"))
        totals["lr"] = lr
        totals.update(self.data_counts)  # running totals of this process since the start (or resume)
        return totals

    def _evaluate(self) -> dict[str, Any]:
        model = self.unwrapped
        metrics = evaluate(model, self.cfg, accelerator=self.accelerator, progress=self.progress,
                           dataset=self.test_set)
        model.train()
        return metrics

    def _periodic_eval(self, iteration: int) -> None:
        metrics = self._evaluate()
        if not self.accelerator.is_main_process or not metrics:
            return
        self.metrics.write(iteration, {f"test/{k}": v for k, v in metrics.items() if _is_number(v)})
        score = float(metrics.get("mAP", float("nan")))
        if math.isfinite(score) and score > float(self.best.get("mAP", -1.0)):
            self.best = {"mAP": score, "iteration": iteration}
            payload = detector_payload(self.unwrapped, self.cfg, self.class_names)
            check_finite_state(payload, BEST_WEIGHTS_NAME)
            atomic_torch_save(payload, self.output_dir / BEST_WEIGHTS_NAME)
            logger.info("new best mAP %.4f at iteration %d", score, iteration)

    def _save_weights(self, name: str) -> None:
        self.accelerator.wait_for_everyone()
        if self.accelerator.is_main_process:
            payload = detector_payload(self.unwrapped, self.cfg, self.class_names)
            check_finite_state(payload, name)
            atomic_torch_save(payload, self.output_dir / name)
        self.accelerator.wait_for_everyone()


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


__all__ = ["BatchPlan", "Trainer", "batch_plan", "check_config", "evaluate", "resolve_epoch_schedule"]
