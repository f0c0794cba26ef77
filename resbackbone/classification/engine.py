"""Classification training / evaluation with accelerate: the paper's recipes, exact resume, top-1/top-5 error.

Shares the checkpoint, RNG, optimizer, schedule, metrics and guard code with the detection trainer
(:mod:`resbackbone.training`). Data order and augmentation are pure functions of ``(seed, iteration)``
(:class:`EpochBatchSampler`), so ``resume`` reproduces an uninterrupted run exactly on CPU.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader

from .. import cifar as cifar_mod
from .. import resnet as resnet_mod
from ..config import save_config, to_dict
from ..pixels import TORCHVISION_PIXELS, PixelNormalizer, PixelSpec
from ..training import (
    CheckpointManager,
    MetricsWriter,
    build_sgd,
    capture_rng_state,
    check_finite,
    format_eta,
    lr_factor,
    memory_summary,
    restore_rng_state,
    seed_everything,
)
from .config import ClsConfig
from .data import (
    CIFAR_MEAN,
    CIFAR_STD,
    EpochBatchSampler,
    TransformedDataset,
    build_cls_datasets,
    multiscale_predict,
    ten_crop_predict,
    test_transform,
    train_transform,
)

logger = logging.getLogger("resbackbone.classification")
BACKBONE_WEIGHTS = "backbone_weights.pth"


def build_classifier(arch: str, num_classes: int, *, zero_init_residual: bool = False,
                     shortcut: str = "B") -> tuple[nn.Module, PixelSpec, int | None]:
    """``(model, pixel spec, ImageNet-ResNet depth or None)`` for an architecture name."""
    if arch.startswith(("cifar_resnet", "cifar_plain")):
        depth = int(arch.rsplit("resnet", 1)[-1] if "resnet" in arch else arch.rsplit("plain", 1)[-1])
        model = cifar_mod.CifarResNet(depth, num_classes=num_classes, residual=arch.startswith("cifar_resnet"),
                                      zero_init_residual=zero_init_residual)
        return model, PixelSpec(CIFAR_MEAN, CIFAR_STD, "RGB"), None
    for prefix, residual in (("resnet", True), ("plain", False)):
        if arch.startswith(prefix) and arch[len(prefix):].isdigit():
            depth = int(arch[len(prefix):])
            model = resnet_mod.ResNet(depth, num_classes=num_classes, residual=residual, shortcut=shortcut,
                                      zero_init_residual=zero_init_residual)
            return model, TORCHVISION_PIXELS, depth
    raise ValueError(f"unknown arch {arch!r}: resnet18..152, plain18..152, cifar_resnet20..1202, cifar_plain20..1202")


def _topk_correct(logits: Tensor, labels: Tensor, ks: tuple[int, ...] = (1, 5)) -> list[int]:
    k_max = min(max(ks), logits.shape[1])
    top = logits.topk(k_max, dim=1).indices  # (N, k)
    hit = top == labels[:, None]
    return [int(hit[:, : min(k, k_max)].any(dim=1).sum()) for k in ks]


class ClassificationTrainer:
    """``ClassificationTrainer(cfg).train()`` -> final metrics; see the module docstring."""

    def __init__(self, cfg: ClsConfig, *, cpu: bool = False, resume: bool = False, progress: bool = True,
                 stop_after: int | None = None) -> None:
        from accelerate import Accelerator

        self.accelerator = acc = Accelerator(cpu=cpu or not torch.cuda.is_available(),
                                             mixed_precision=cfg.solver.mixed_precision)
        self.progress = progress and acc.is_main_process
        self.stop_after = stop_after
        seed_everything(cfg.seed)
        train, val, test = build_cls_datasets(cfg.data, seed=cfg.seed)
        self.class_names = tuple(train.class_names)  # type: ignore[attr-defined]
        small = cfg.data.dataset in ("synthetic", "cifar10")
        self.train_set = TransformedDataset(train, train_transform(cfg.data, small))
        self.val_set = TransformedDataset(val, test_transform(cfg.data, small))
        self.test_set = TransformedDataset(test, test_transform(cfg.data, small)) if test is not None else None
        if cfg.solver.batch_size % acc.num_processes:
            raise ValueError(f"solver.batch_size={cfg.solver.batch_size} not divisible by {acc.num_processes} "
                             f"processes")
        self.per_process = cfg.solver.batch_size // acc.num_processes
        iters_per_epoch = len(self.train_set) // cfg.solver.batch_size
        if iters_per_epoch == 0:
            raise ValueError(f"training set of {len(self.train_set)} images < one batch of {cfg.solver.batch_size}")
        if cfg.solver.max_iter <= 0:
            cfg = replace(cfg, solver=replace(cfg.solver, max_iter=cfg.solver.epochs * iters_per_epoch))
        self.cfg = cfg
        self.iters_per_epoch = iters_per_epoch
        model, self.pixel_spec, depth = build_classifier(
            cfg.model.arch, len(self.class_names), zero_init_residual=cfg.model.zero_init_residual,
            shortcut=cfg.model.shortcut)
        # Only the residual ImageNet-style nets with projection shortcuts map onto the detector's backbone.
        transferable = cfg.model.arch.startswith("resnet") and cfg.model.shortcut == "B"
        self.depth = depth if transferable else None
        self.normalizer = PixelNormalizer(self.pixel_spec).to(acc.device)
        if cfg.solver.channels_last and acc.device.type == "cuda":
            model = model.to(memory_format=torch.channels_last)
        s = cfg.solver
        optimizer = build_sgd(model, lr=s.base_lr, momentum=s.momentum, weight_decay=s.weight_decay,
                              nesterov=s.nesterov)
        self.model, self.optimizer = acc.prepare(model, optimizer)
        self.forward_model = torch.compile(self.model) if cfg.model.compile else self.model
        self.ema = None
        if s.ema_decay > 0:
            from timm.utils import ModelEmaV3

            self.ema = ModelEmaV3(acc.unwrap_model(self.model), decay=s.ema_decay)
        self.mixup = None
        if s.mixup > 0 or s.cutmix > 0:
            from timm.data import Mixup

            self.mixup = Mixup(mixup_alpha=s.mixup, cutmix_alpha=s.cutmix, label_smoothing=s.label_smoothing,
                               num_classes=len(self.class_names))
        # Schedule state that is not a pure function of the iteration (plateau, accuracy-triggered warm-up).
        self.state: dict[str, Any] = {"plateau_factor": 1.0, "best_val_err": math.inf, "bad_epochs": 0,
                                      "warmup_done": s.warmup_until_train_acc <= 0, "best_top1_err": math.inf}
        self.output_dir = Path(cfg.output_dir)
        self.checkpoints = CheckpointManager(self.output_dir, keep_last=s.keep_last)
        self.metrics = MetricsWriter(self.output_dir, enabled=acc.is_main_process)
        self.start_iter = 0
        if resume:
            self._resume()
        if acc.is_main_process:
            save_config(cfg, self.output_dir / "config.yaml")

    # ------------------------------------------------------------------------------------------------ state

    def _checkpoint(self, iteration: int) -> None:
        acc = self.accelerator
        acc.wait_for_everyone()
        if acc.is_main_process:
            state = {
                "format": "resbackbone/cls-checkpoint",
                "iteration": iteration,
                "model": {k: v.detach().cpu() for k, v in acc.unwrap_model(self.model).state_dict().items()},
                "optimizer": self.optimizer.state_dict(),
                "scaler": acc.scaler.state_dict() if acc.scaler is not None else None,
                "ema": self.ema.module.state_dict() if self.ema is not None else None,
                "schedule": {k: float(v) if isinstance(v, float) else v for k, v in self.state.items()},
                "rng": capture_rng_state(),
                "config": to_dict(self.cfg),
                "class_names": list(self.class_names),
            }
            self.checkpoints.save(state, iteration)
        acc.wait_for_everyone()

    def _resume(self) -> None:
        latest = self.checkpoints.latest()
        if latest is None:
            logger.info("no checkpoint in %s: starting from scratch", self.output_dir)
            return
        ckpt = CheckpointManager.load(latest)
        self.accelerator.unwrap_model(self.model).load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        if ckpt.get("scaler") is not None and self.accelerator.scaler is not None:
            self.accelerator.scaler.load_state_dict(ckpt["scaler"])
        if ckpt.get("ema") is not None and self.ema is not None:
            self.ema.module.load_state_dict(ckpt["ema"])
        self.state.update(ckpt["schedule"])
        restore_rng_state(ckpt["rng"])
        self.start_iter = int(ckpt["iteration"])
        logger.info("resumed from %s at iteration %d", latest, self.start_iter)

    def lr_at(self, it: int) -> float:
        s = self.cfg.solver
        if not self.state["warmup_done"]:
            return s.warmup_lr
        kind = "constant" if s.schedule == "plateau" else s.schedule
        return s.base_lr * self.state["plateau_factor"] * lr_factor(
            it, kind=kind, max_iter=s.max_iter, steps=s.steps, gamma=s.gamma, warmup_iters=s.warmup_iters,
            warmup_factor=s.warmup_factor)

    # ------------------------------------------------------------------------------------------------- loop

    def _loader(self) -> DataLoader:
        acc = self.accelerator
        sampler = EpochBatchSampler(len(self.train_set), self.per_process, seed=self.cfg.seed,
                                    num_replicas=acc.num_processes, rank=acc.process_index,
                                    start_iter=self.start_iter)
        workers = self.cfg.data.num_workers
        return DataLoader(self.train_set, batch_sampler=sampler, num_workers=workers,  # type: ignore[arg-type]
                          persistent_workers=workers > 0, pin_memory=acc.device.type == "cuda",
                          generator=torch.Generator().manual_seed(self.cfg.seed))

    def _prepare(self, images: Tensor) -> Tensor:
        x = self.normalizer(images.to(self.accelerator.device, non_blocking=True))
        if self.cfg.solver.channels_last and x.device.type == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def train(self) -> dict[str, Any]:
        s, acc = self.cfg.solver, self.accelerator
        batches = iter(self._loader()) if self.start_iter < s.max_iter else iter(())
        self.model.train()
        bar = None
        if self.progress:
            from tqdm import tqdm

            bar = tqdm(total=s.max_iter, initial=self.start_iter, desc="train", dynamic_ncols=True)
        correct = seen = 0
        window: list[float] = []
        last = self.start_iter
        result: dict[str, Any] = {}
        try:
            for it in range(self.start_iter, s.max_iter):
                t0 = time.perf_counter()
                lr = self.lr_at(it)
                for g in self.optimizer.param_groups:
                    g["lr"] = lr
                images, labels = next(batches)
                x, y = self._prepare(images), labels.to(acc.device)
                target: Tensor = y
                if self.mixup is not None:
                    x, target = self.mixup(x, y)
                logits = self.forward_model(x)
                loss = (F.cross_entropy(logits.float(), target, label_smoothing=s.label_smoothing)
                        if self.mixup is None else torch.sum(-target * F.log_softmax(logits.float(), 1), 1).mean())
                check_finite({"loss": loss}, it)
                acc.backward(loss)
                self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
                if self.ema is not None:
                    self.ema.update(acc.unwrap_model(self.model), step=it)
                correct += int((logits.argmax(1) == y).sum())
                seen += len(y)
                last = it + 1
                window = (window + [time.perf_counter() - t0])[-20:]
                if bar is not None:
                    ips = s.batch_size * len(window) / sum(window)
                    eta = (s.max_iter - last) * sum(window) / len(window)
                    bar.set_postfix_str(f"loss {float(loss.detach()):.3f} lr {lr:.3g} {ips:.0f} img/s "
                                        f"mem {memory_summary(acc.device)} eta {format_eta(eta)}")
                    bar.update(1)
                if last % self.iters_per_epoch == 0 or last == s.max_iter:
                    train_acc = correct / max(seen, 1)
                    correct = seen = 0
                    result = self._end_of_epoch(last, float(loss.detach()), train_acc, lr)
                if last % s.checkpoint_period == 0 or last == s.max_iter:
                    self._checkpoint(last)
                if self.stop_after is not None and last >= self.stop_after:
                    break
        finally:
            if bar is not None:
                bar.close()
        if last >= s.max_iter:
            result.update(self.final_evaluation())
            self._save_backbone()
        self.metrics.close()
        result["iteration"] = last
        return result

    def _end_of_epoch(self, it: int, loss: float, train_acc: float, lr: float) -> dict[str, Any]:
        s = self.cfg.solver
        val = self.evaluate(self.val_set)
        epoch = it // self.iters_per_epoch
        record = {"epoch": epoch, "loss": loss, "lr": lr, "train_error": 1 - train_acc,
                  "val_top1_error": val["top1_error"], "val_top5_error": val["top5_error"]}
        if not self.state["warmup_done"] and train_acc >= s.warmup_until_train_acc:
            self.state["warmup_done"] = True  # paper 4.2: 0.01 until training error < 80%... then 0.1
            logger.info("training accuracy %.3f reached: warm-up over at iteration %d", train_acc, it)
        if s.schedule == "plateau":
            if val["top1_error"] < self.state["best_val_err"] - 1e-4:
                self.state["best_val_err"], self.state["bad_epochs"] = val["top1_error"], 0
            else:
                self.state["bad_epochs"] += 1
                if self.state["bad_epochs"] >= s.plateau_patience:
                    self.state["plateau_factor"] *= 0.1
                    self.state["bad_epochs"] = 0
                    logger.info("validation error plateaued: lr / 10 at epoch %d", epoch)
        self.metrics.write(it, record)
        if self.progress:
            logger.info("epoch %d: train error %.4f, val top-1 error %.4f, top-5 error %.4f", epoch,
                        1 - train_acc, val["top1_error"], val["top5_error"])
        return record

    @torch.inference_mode()
    def evaluate(self, dataset: Any, *, mode: str = "center") -> dict[str, float]:
        """Top-1 / top-5 error on ``dataset`` ("center", "ten_crop" or "multiscale" testing), all processes."""
        acc = self.accelerator
        model = self.ema.module if self.ema is not None else acc.unwrap_model(self.model)
        was = model.training
        model.eval()
        n = len(dataset)
        shard = range(acc.process_index, n, acc.num_processes)
        loader = DataLoader(torch.utils.data.Subset(dataset, list(shard)), batch_size=self.cfg.test.batch_size,
                            num_workers=self.cfg.data.num_workers)
        c1 = c5 = total = 0
        for images, labels in loader:
            x, y = self._prepare(images), labels.to(acc.device)
            if mode == "ten_crop":
                logits = ten_crop_predict(model, x, self.cfg.data.crop_size)
            elif mode == "multiscale":
                logits = multiscale_predict(model, x, self.cfg.test.scales)
            else:
                logits = model(x)
            a, b = _topk_correct(logits, y)
            c1, c5, total = c1 + a, c5 + b, total + len(y)
        model.train(was)
        counts = torch.tensor([c1, c5, total], device=acc.device)
        counts = acc.reduce(counts, reduction="sum") if acc.num_processes > 1 else counts
        c1, c5, total = counts.tolist()
        return {"top1_error": 1 - c1 / max(total, 1), "top5_error": 1 - c5 / max(total, 1), "images": total}

    def final_evaluation(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        target = self.test_set if self.test_set is not None else self.val_set
        name = "test" if self.test_set is not None else "val"
        res = self.evaluate(target)
        out.update({f"{name}_top1_error": res["top1_error"], f"{name}_top5_error": res["top5_error"]})
        if self.cfg.test.ten_crop:
            res = self.evaluate(self._resized(target), mode="ten_crop")
            out.update({f"{name}_10crop_top1_error": res["top1_error"], f"{name}_10crop_top5_error": res["top5_error"]})
        if self.cfg.test.scales:
            res = self.evaluate(self._resized(target), mode="multiscale")
            out.update({f"{name}_multiscale_top1_error": res["top1_error"]})
        if self.accelerator.is_main_process:
            self.metrics.write(self.cfg.solver.max_iter, out)
        return out

    def _resized(self, dataset: TransformedDataset) -> TransformedDataset:
        """The same images without the centre crop (10-crop / multi-scale testing crop or resize themselves)."""
        from torchvision.transforms import v2

        small = self.cfg.data.dataset in ("synthetic", "cifar10")
        t = v2.Identity() if small else v2.Resize(self.cfg.data.test_resize, antialias=True)
        if small and self.cfg.test.ten_crop:
            # 32 px images: pad so that ten 32 px crops differ (as the CIFAR training crops do).
            t = v2.Pad(self.cfg.data.pad)
        return TransformedDataset(dataset.dataset, t)

    def _save_backbone(self) -> None:
        """``backbone_weights.pth`` for ``tools/train_det.py --backbone-weights PATH`` (ImageNet-style nets)."""
        acc = self.accelerator
        if not acc.is_main_process or self.depth is None:
            return
        from ..weights import save_backbone_weights

        model = self.ema.module if self.ema is not None else acc.unwrap_model(self.model)
        save_backbone_weights(model, self.output_dir / BACKBONE_WEIGHTS, depth=self.depth,
                              pixel_spec=self.pixel_spec, stride_in_1x1=False,
                              extra_meta={"arch": self.cfg.model.arch, "classes": list(self.class_names)})
