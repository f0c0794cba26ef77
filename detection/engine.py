"""The detection training loop (accelerate), checkpoint / exact resume, and model loading for evaluation.

One process or many (``accelerate launch``), CPU or GPU, fp32 / bf16 / fp16: accelerate owns the devices, DDP
and mixed precision; the data order is ours. Each process draws its own disjoint slice of every global batch
from :class:`detection.data.TrainBatchSampler`, which is a pure function of ``(seed, iteration)``, and each
sample's augmentation is seeded from ``(seed, iteration, slot)``. A checkpoint therefore only needs the iteration
number as its "data position", and a resumed run sees exactly the batches the uninterrupted run would have seen.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from resbackbone.config import ConfigError, from_dict, save_config, to_dict
from resbackbone.training import (
    CheckpointManager,
    MetricsWriter,
    atomic_torch_save,
    build_lr_scheduler,
    build_sgd,
    capture_rng_state,
    check_finite,
    format_eta,
    memory_summary,
    restore_rng_state,
    seed_everything,
)

from .config import DetectionConfig

logger = logging.getLogger("detection.engine")

# Key of the weights-only file format written at the end of training (model + config + class names).
DETECTOR_FORMAT = "resnet-det/faster-rcnn"
FINAL_WEIGHTS_NAME = "model_final.pth"
# Extra 64-bit mixing constant so per-sample augmentation seeds of different runs / iterations do not collide.
_SEED_MIX = 0x9E3779B97F4A7C15


def sample_seed(seed: int, iteration: int, slot: int) -> int:
    """Augmentation seed of the ``slot``-th image of global micro-batch ``iteration`` (deterministic, 31 bits)."""
    h = (seed * 1_000_003 + iteration) * _SEED_MIX + slot * 2_654_435_761
    return int(h % (2**31 - 1))


class _SeededTrainDataset(Dataset):
    """Wraps a detection dataset so that ``dataset[(index, seed)]`` reseeds its augmentation first.

    Worker processes and their seeds then no longer matter: an image's flip / scale / jitter depends only on
    ``(run seed, iteration, slot)``, which is what makes resume bit-identical with ``num_workers > 0``.
    """

    def __init__(self, dataset: Any) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]) -> Any:
        index, seed = key
        return self.dataset.get_item_seeded(index, seed)


class _SeededBatchSampler:
    """Turns the index batches of a :class:`TrainBatchSampler` into ``(index, sample_seed)`` batches."""

    def __init__(self, sampler: Any, *, seed: int, start_iter: int, per_process: int, rank: int) -> None:
        self.sampler = sampler
        self.seed = seed
        self.start_iter = start_iter
        self.per_process = per_process
        self.rank = rank

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        for k, batch in enumerate(self.sampler, start=self.start_iter):
            base = self.rank * self.per_process
            yield [(int(i), sample_seed(self.seed, k, base + j)) for j, i in enumerate(batch)]


def resolve_backbone_flags(cfg: DetectionConfig) -> DetectionConfig:
    """Validate combinations the dataclass types cannot express, e.g. frozen BN without pretrained weights."""
    bb = cfg.model.backbone
    if bb.weights == "none" and bb.norm == "frozen_bn":
        raise ConfigError(
            "model.backbone.norm=frozen_bn needs pretrained weights (model.backbone.weights is 'none'): frozen "
            "statistics of a random init are meaningless; use norm=auto or bn when training from scratch"
        )
    return cfg


def _per_process_batch(cfg: DetectionConfig, num_processes: int) -> int:
    total = cfg.solver.ims_per_batch
    div = num_processes * cfg.solver.grad_accum_steps
    if total % div:
        raise ConfigError(
            f"solver.ims_per_batch={total} must be divisible by processes ({num_processes}) x "
            f"solver.grad_accum_steps ({cfg.solver.grad_accum_steps})"
        )
    return total // div


def build_train_dataset(cfg: DetectionConfig) -> Any:
    from .data import build_dataset

    d = cfg.data
    dataset = build_dataset(
        d.train,
        d.root,
        train=True,
        min_size=d.min_size_train,
        max_size=d.max_size_train,
        flip_prob=d.flip_prob,
        photometric=d.photometric,
        use_difficult=d.use_difficult,
        filter_empty=d.filter_empty,
    )
    if len(dataset) == 0:
        raise ValueError(f"training dataset {d.train!r} yields no trainable image (after filtering empty images)")
    return dataset


def build_test_dataset(cfg: DetectionConfig, name: str | None = None) -> Any:
    from .data import build_dataset

    d = cfg.data
    return build_dataset(name or d.test, d.root, train=False, min_size=d.min_size_test, max_size=d.max_size_test)


def detector_payload(model: nn.Module, cfg: DetectionConfig, class_names: Sequence[str]) -> dict[str, Any]:
    """The weights-only detector file: everything needed to rebuild and run the model, no pickled objects."""
    return {
        "format": DETECTOR_FORMAT,
        "config": to_dict(cfg),
        "class_names": list(class_names),
        "backbone": resolved_backbone_settings(model),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
    }


def _config_from_checkpoint(ckpt: Mapping[str, Any], path: Path) -> DetectionConfig:
    if "config" not in ckpt:
        raise ValueError(f"{path}: not a resnet-det detector checkpoint (no 'config' entry)")
    return from_dict(DetectionConfig, ckpt["config"])


def load_detector(path: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, DetectionConfig, list[str]]:
    """Rebuild a trained detector from a training checkpoint or a final weights file (``weights_only`` load).

    The backbone is built without re-loading ImageNet weights (they are in the state dict), but with the same
    norm / stride / pixel settings the trained model used.
    """
    from .faster_rcnn import build_faster_rcnn

    path = Path(path)
    ckpt = CheckpointManager.load(path)
    cfg = _config_from_checkpoint(ckpt, path)
    class_names = list(ckpt.get("class_names") or [])
    state = ckpt.get("state_dict", ckpt.get("model"))
    if state is None:
        raise ValueError(f"{path}: no 'state_dict' or 'model' entry")
    resolved = ckpt.get("backbone") or {}
    model = build_faster_rcnn(_rebuild_config(cfg, resolved).model, class_names=class_names or None)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(f"{path}: weights do not fit the model: missing {missing[:8]}, unexpected {unexpected[:8]}")
    if resolved.get("pixel"):
        from resbackbone.pixels import PixelSpec

        px = resolved["pixel"]
        model.set_pixel_spec(PixelSpec(tuple(px["mean"]), tuple(px["std"]), px["channel_order"]))
    return model.to(device).eval(), cfg, class_names


def resolved_backbone_settings(model: nn.Module) -> dict[str, Any]:
    """What the built model actually uses, so a trained detector can be rebuilt without its original weights.

    ``norm`` is "frozen_bn" when no trainable BatchNorm is left, ``stride_in_1x1`` is read from the ResNet trunk
    (False when there is none, e.g. a timm backbone), the pixel spec from the model.
    """
    from torchvision.ops import FrozenBatchNorm2d

    has_bn = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    has_frozen = any(isinstance(m, FrozenBatchNorm2d) for m in model.modules())
    stride_in_1x1 = next((bool(m.stride_in_1x1) for m in model.modules() if hasattr(m, "stride_in_1x1")), False)
    spec = getattr(model, "pixel_spec", None)
    pixel = None
    if spec is not None:
        pixel = {"mean": list(spec.mean), "std": list(spec.std), "channel_order": spec.channel_order}
    return {"norm": "frozen_bn" if has_frozen and not has_bn else "bn", "stride_in_1x1": stride_in_1x1, "pixel": pixel}


def _rebuild_config(cfg: DetectionConfig, resolved: Mapping[str, Any]) -> DetectionConfig:
    """The trained model's config with the weights download replaced by the resolved settings."""
    bb = replace(
        cfg.model.backbone,
        weights="none",
        norm=resolved.get("norm", "bn"),
        stride_in_1x1=bool(resolved.get("stride_in_1x1", False)),
    )
    return replace(cfg, model=replace(cfg.model, backbone=bb))


def load_detector_for_eval(
    path: str | Path, device: str | torch.device = "cpu"
) -> tuple[nn.Module, list[str], int, int, str | None]:
    """``(model, class_names, test_min_size, test_max_size, test_dataset_name)`` for ``tools/eval_det.py``."""
    model, cfg, class_names = load_detector(path, device)
    return model, class_names, cfg.data.min_size_test, cfg.data.max_size_test, cfg.data.test


def evaluate(
    model: nn.Module,
    cfg: DetectionConfig,
    *,
    accelerator: Any = None,
    dataset_name: str | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Score ``model`` on ``dataset_name`` (default ``cfg.data.test``) with the dataset's metric."""
    from .data import build_test_loader
    from .evaluation import build_evaluator
    from .evaluation.inference import run_inference

    dataset = build_test_dataset(cfg, dataset_name)
    num_replicas = accelerator.num_processes if accelerator is not None else 1
    rank = accelerator.process_index if accelerator is not None else 0
    loader = build_test_loader(
        dataset,
        batch_size=cfg.test.ims_per_batch,
        num_workers=cfg.data.num_workers,
        num_replicas=num_replicas,
        rank=rank,
    )
    evaluator = build_evaluator(dataset, cfg.test.metric)
    return run_inference(model, loader, evaluator, accelerator=accelerator, progress=progress)


class Trainer:
    """Detection fine-tuning: ``Trainer(cfg).train()``; see the module docstring for the resume guarantees."""

    def __init__(
        self,
        cfg: DetectionConfig,
        *,
        cpu: bool = False,
        resume: bool = False,
        progress: bool = True,
        stop_after: int | None = None,
    ) -> None:
        from accelerate import Accelerator
        from accelerate.utils import DistributedDataParallelKwargs

        self.cfg = resolve_backbone_flags(cfg)
        self.accelerator = Accelerator(
            # Without a GPU, accelerate only forms a multi-process (gloo) group when told it runs on CPU.
            cpu=cpu or not torch.cuda.is_available(),
            mixed_precision=cfg.solver.mixed_precision,
            kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=False)],
        )
        self.progress = progress and self.accelerator.is_main_process
        # Stop (as if killed) after this iteration: used by tests and to split long runs into jobs.
        self.stop_after = stop_after
        self.output_dir = Path(cfg.output_dir)
        self.per_process = _per_process_batch(cfg, self.accelerator.num_processes)

        seed_everything(cfg.seed)
        self.dataset = build_train_dataset(cfg)
        class_names = tuple(self.dataset.class_names)
        if cfg.model.num_classes != len(class_names):
            logger.info("model.num_classes follows the training set: %d -> %d", cfg.model.num_classes, len(class_names))
            self.cfg = cfg = replace(cfg, model=replace(cfg.model, num_classes=len(class_names)))
        self.class_names = class_names

        from .faster_rcnn import build_faster_rcnn

        model = build_faster_rcnn(cfg.model, class_names=class_names)
        if self.accelerator.device.type == "cuda":
            model = model.to(memory_format=torch.channels_last)
        s = cfg.solver
        optimizer = build_sgd(
            model,
            lr=s.base_lr,
            momentum=s.momentum,
            weight_decay=s.weight_decay,
            weight_decay_norm_bias=s.weight_decay_norm_bias,
        )
        self.scheduler = build_lr_scheduler(
            optimizer,
            kind="multistep",
            max_iter=s.max_iter,
            steps=s.steps,
            gamma=s.gamma,
            warmup_iters=s.warmup_iters,
            warmup_factor=s.warmup_factor,
        )
        # The scheduler is stepped by us once per optimizer step, not by accelerate (which would step it once
        # per process).
        self.model, self.optimizer = self.accelerator.prepare(model, optimizer)
        self.checkpoints = CheckpointManager(self.output_dir, keep_last=s.keep_last)
        self.metrics = MetricsWriter(self.output_dir, enabled=self.accelerator.is_main_process)
        self.start_iter = 0
        self.best: dict[str, Any] = {}
        if resume:
            self._resume()
        if self.accelerator.is_main_process:
            save_config(cfg, self.output_dir / "config.yaml")

    # -------------------------------------------------------------------------------------------- checkpoints

    def _state(self, iteration: int) -> dict[str, Any]:
        scaler = self.accelerator.scaler
        return {
            "format": "resnet-det/train-checkpoint",
            "iteration": iteration,
            "model": {k: v.detach().cpu() for k, v in self.accelerator.unwrap_model(self.model).state_dict().items()},
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": scaler.state_dict() if scaler is not None else None,
            "rng": capture_rng_state(),
            "config": to_dict(self.cfg),
            "class_names": list(self.class_names),
            "backbone": resolved_backbone_settings(self.accelerator.unwrap_model(self.model)),
            "best": dict(self.best),
        }

    def save_checkpoint(self, iteration: int) -> Path | None:
        self.accelerator.wait_for_everyone()
        path = None
        if self.accelerator.is_main_process:
            path = self.checkpoints.save(self._state(iteration), iteration)
        self.accelerator.wait_for_everyone()
        return path

    def _resume(self) -> None:
        latest = self.checkpoints.latest()
        if latest is None:
            logger.info("no checkpoint in %s: starting from scratch", self.output_dir)
            return
        ckpt = CheckpointManager.load(latest)
        saved_cfg = from_dict(DetectionConfig, ckpt["config"])
        if to_dict(replace(saved_cfg, solver=self.cfg.solver, test=self.cfg.test)) != to_dict(
            replace(self.cfg, solver=self.cfg.solver, test=self.cfg.test)
        ):
            logger.warning("resuming %s with a config that differs from the checkpoint's (model/data)", latest)
        self.accelerator.unwrap_model(self.model).load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        if ckpt.get("scaler") is not None and self.accelerator.scaler is not None:
            self.accelerator.scaler.load_state_dict(ckpt["scaler"])
        restore_rng_state(ckpt["rng"])
        self.start_iter = int(ckpt["iteration"])
        self.best = dict(ckpt.get("best") or {})
        logger.info("resumed from %s at iteration %d", latest, self.start_iter)

    # --------------------------------------------------------------------------------------------------- loop

    def _loader(self) -> DataLoader:
        from .data import TrainBatchSampler, collate

        cfg = self.cfg
        acc = self.accelerator
        sampler = TrainBatchSampler(
            self.dataset.aspect_ratios(),
            self.per_process,
            seed=cfg.seed,
            num_replicas=acc.num_processes,
            rank=acc.process_index,
            aspect_grouping=cfg.data.aspect_grouping,
            start_iter=self.start_iter * cfg.solver.grad_accum_steps,
        )
        seeded = _SeededBatchSampler(
            sampler,
            seed=cfg.seed,
            start_iter=self.start_iter * cfg.solver.grad_accum_steps,
            per_process=self.per_process,
            rank=acc.process_index,
        )
        workers = cfg.data.num_workers
        return DataLoader(
            _SeededTrainDataset(self.dataset),
            batch_sampler=seeded,  # type: ignore[arg-type]
            collate_fn=collate,
            num_workers=workers,
            persistent_workers=workers > 0,
            pin_memory=acc.device.type == "cuda",
            # The loader draws its workers' base seed from this generator, not from the global RNG, so creating
            # the iterator at a resume point leaves the global RNG exactly as the uninterrupted run had it.
            generator=torch.Generator().manual_seed(cfg.seed),
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
        images_per_iter = s.ims_per_batch
        start_time = time.perf_counter()
        window: list[float] = []
        bar = None
        if self.progress:
            from tqdm import tqdm

            bar = tqdm(total=s.max_iter, initial=self.start_iter, desc="train", dynamic_ncols=True)
        last_iter = self.start_iter
        try:
            for it in range(self.start_iter, s.max_iter):
                t0 = time.perf_counter()
                stats = self._step(batches, it)
                dt = time.perf_counter() - t0
                window = (window + [dt])[-20:]
                last_iter = it + 1
                if bar is not None:
                    ips = images_per_iter * len(window) / sum(window)
                    eta = (s.max_iter - last_iter) * sum(window) / len(window)
                    terms = " ".join(f"{k[5:]} {v:.3f}" for k, v in stats.items() if k.startswith("loss_"))
                    bar.set_postfix_str(
                        f"loss {stats['loss']:.3f} ({terms}) lr {stats['lr']:.2e} {ips:.1f} img/s "
                        f"mem {memory_summary(acc.device)} eta {format_eta(eta)}"
                    )
                    bar.update(1)
                if last_iter % 20 == 0 or last_iter == s.max_iter:
                    self.metrics.write(last_iter, {**stats, "seconds_per_iter": sum(window) / len(window)})
                if cfg.test.eval_period > 0 and last_iter % cfg.test.eval_period == 0 and last_iter < s.max_iter:
                    self._periodic_eval(last_iter)
                if last_iter % s.checkpoint_period == 0 or last_iter == s.max_iter:
                    self.save_checkpoint(last_iter)
                if self.stop_after is not None and last_iter >= self.stop_after:
                    break
        finally:
            if bar is not None:
                bar.close()
        train_seconds = time.perf_counter() - start_time
        result: dict[str, Any] = {"iteration": last_iter, "train_seconds": train_seconds}
        if last_iter >= s.max_iter:
            if self.start_iter < s.max_iter or not (self.output_dir / FINAL_WEIGHTS_NAME).exists():
                self._save_final()
            metrics = self._evaluate()
            result.update(metrics)
            if acc.is_main_process and metrics:
                self.metrics.write(last_iter, {f"test/{k}": v for k, v in metrics.items() if _is_number(v)})
        self.metrics.close()
        return result

    def _step(self, batches: Iterator[Any], it: int) -> dict[str, float]:
        acc, s = self.accelerator, self.cfg.solver
        totals: dict[str, float] = {}
        for micro in range(s.grad_accum_steps):
            images, targets = next(batches)
            images, targets = self._to_device(images, targets)
            last_micro = micro == s.grad_accum_steps - 1
            ctx = acc.no_sync(self.model) if not last_micro else _nullcontext()
            with ctx:
                out = self.model(images, targets)
                losses = {k: v for k, v in out.items() if k.startswith("loss_")}
                check_finite(losses, it)
                loss = sum(losses.values()) / s.grad_accum_steps
                acc.backward(loss)
            for k, v in out.items():
                totals[k] = totals.get(k, 0.0) + float(v.detach() if isinstance(v, Tensor) else v) / s.grad_accum_steps
        if s.clip_grad_norm > 0:
            acc.clip_grad_norm_(self.model.parameters(), s.clip_grad_norm)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        lr = self.optimizer.param_groups[0]["lr"]
        self.scheduler.step()
        totals["loss"] = sum(v for k, v in totals.items() if k.startswith("loss_"))
        totals["lr"] = lr
        return totals

    def _evaluate(self) -> dict[str, Any]:
        model = self.accelerator.unwrap_model(self.model)
        metrics = evaluate(model, self.cfg, accelerator=self.accelerator, progress=self.progress)
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
            model = self.accelerator.unwrap_model(self.model)
            atomic_torch_save(detector_payload(model, self.cfg, self.class_names), self.output_dir / "model_best.pth")
            logger.info("new best mAP %.4f at iteration %d", score, iteration)

    def _save_final(self) -> None:
        self.accelerator.wait_for_everyone()
        if self.accelerator.is_main_process:
            model = self.accelerator.unwrap_model(self.model)
            atomic_torch_save(detector_payload(model, self.cfg, self.class_names), self.output_dir / FINAL_WEIGHTS_NAME)
        self.accelerator.wait_for_everyone()


class _nullcontext:  # noqa: N801 - mirrors contextlib.nullcontext without its typing quirks under accelerate
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)
