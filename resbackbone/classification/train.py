"""Classification training / evaluation with accelerate: the paper's recipes, exact resume, top-1/top-5 error.

Built on the shared infrastructure of :mod:`resbackbone.engine` (accelerator, checkpoints, resume, seeded
sampling, schedule, progress), as the detection trainer is. Data order and augmentation are pure functions of
``(seed, iteration)``, so ``resume`` reproduces an uninterrupted run exactly on CPU.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader

from .. import cifar as cifar_mod
from .. import resnet as resnet_mod
from ..engine.checkpoint import CheckpointManager
from ..engine.progress import Progress, check_finite
from ..engine.sampling import build_inference_loader, build_train_loader
from ..engine.schedule import apply_linear_scaling, lr_factor, optimizer_from_config
from ..engine.trainer import TrainerBase
from ..errors import ConfigError, DataError
from ..pixels import TORCHVISION_PIXELS, PixelNormalizer, PixelSpec
from .config import ClsConfig
from .data import (
    CIFAR_MEAN,
    CIFAR_STD,
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
    raise ConfigError(f"unknown arch {arch!r}: resnet18..152, plain18..152, cifar_resnet20..1202, cifar_plain20..1202")


def _topk_correct(logits: Tensor, labels: Tensor, ks: tuple[int, ...] = (1, 5)) -> list[int]:
    k_max = min(max(ks), logits.shape[1])
    top = logits.topk(k_max, dim=1).indices  # (N, k)
    hit = top == labels[:, None]
    return [int(hit[:, : min(k, k_max)].any(dim=1).sum()) for k in ks]


class ClassificationTrainer(TrainerBase):
    """``ClassificationTrainer(cfg).train()`` -> final metrics; see the module docstring."""

    CHECKPOINT_FORMAT = "resbackbone/cls-checkpoint"

    def __init__(self, cfg: ClsConfig, *, cpu: bool = False, resume: bool = False, overwrite: bool = False,
                 progress: bool = True, stop_after: int | None = None, evaluate_only: bool = False) -> None:
        cfg = replace(cfg, solver=apply_linear_scaling(cfg.solver))
        super().__init__(cfg, output_dir=cfg.output_dir, seed=cfg.seed, mixed_precision=cfg.solver.mixed_precision,
                         keep_last=cfg.solver.keep_last, cpu=cpu, progress=progress, stop_after=stop_after,
                         resume=resume, overwrite=overwrite, claim=not evaluate_only)
        with self.released_on_error():
            acc = self.accelerator
            train, val, test = build_cls_datasets(cfg.data, seed=cfg.seed)
            self.class_names = tuple(train.class_names)  # type: ignore[attr-defined]
            small = cfg.data.dataset in ("synthetic", "cifar10")
            self.train_set = TransformedDataset(train, train_transform(cfg.data, small))
            self.val_set = TransformedDataset(val, test_transform(cfg.data, small))
            self.test_set = TransformedDataset(test, test_transform(cfg.data, small)) if test is not None else None
            if cfg.solver.ims_per_batch % acc.num_processes:
                raise ConfigError(f"solver.ims_per_batch={cfg.solver.ims_per_batch} is not divisible by "
                                  f"{acc.num_processes} processes")
            self.per_process = cfg.solver.ims_per_batch // acc.num_processes
            iters_per_epoch = len(self.train_set) // cfg.solver.ims_per_batch
            if iters_per_epoch == 0:
                raise DataError(f"training set of {len(self.train_set)} images < one batch of "
                                f"{cfg.solver.ims_per_batch}")
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
            s = cfg.solver
            if s.channels_last and acc.device.type == "cuda":
                model = model.to(memory_format=torch.channels_last)
            self.prepare(model, optimizer_from_config(model, s))
            self.forward_model = torch.compile(self.model) if cfg.model.compile else self.model
            self.ema = None
            if s.ema_decay > 0:
                from timm.utils import ModelEmaV3

                self.ema = ModelEmaV3(self.unwrapped, decay=s.ema_decay)
            self.mixup = None
            if s.mixup > 0 or s.cutmix > 0:
                from timm.data import Mixup

                self.mixup = Mixup(mixup_alpha=s.mixup, cutmix_alpha=s.cutmix, label_smoothing=s.label_smoothing,
                                   num_classes=len(self.class_names))
            # Schedule state that is not a pure function of the iteration (plateau, accuracy-triggered warm-up).
            self.state: dict[str, Any] = {"plateau_factor": 1.0, "best_val_err": math.inf, "bad_epochs": 0,
                                          "warmup_done": s.warmup_until_train_acc <= 0, "best_top1_err": math.inf}
            if resume:
                self.resume()
            if not evaluate_only:
                self.write_config()

    # ------------------------------------------------------------------------------------------------ state

    def extra_state(self) -> dict[str, Any]:
        return {
            "ema": self.ema.module.state_dict() if self.ema is not None else None,
            "schedule": {k: float(v) if isinstance(v, float) else v for k, v in self.state.items()},
        }

    def load_extra_state(self, ckpt: dict[str, Any]) -> None:
        if ckpt.get("ema") is not None and self.ema is not None:
            self.ema.module.load_state_dict(ckpt["ema"])
        self.state.update(ckpt["schedule"])

    def load_weights(self, path: str) -> None:
        """Model weights of a checkpoint of this trainer (for ``--eval-only``)."""
        self.unwrapped.load_state_dict(CheckpointManager.load(path)["model"])

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
        return build_train_loader(self.train_set, batch_size=self.per_process, seed=self.cfg.seed,
                                  num_workers=self.cfg.data.num_workers, num_replicas=acc.num_processes,
                                  rank=acc.process_index, start_iter=self.start_iter, seeded=True,
                                  pin_memory=acc.device.type == "cuda")

    def _prepare(self, images: Tensor) -> Tensor:
        x = self.normalizer(images.to(self.accelerator.device, non_blocking=True))
        if self.cfg.solver.channels_last and x.device.type == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def train(self) -> dict[str, Any]:
        s, acc = self.cfg.solver, self.accelerator
        batches = iter(self._loader()) if self.start_iter < s.max_iter else iter(())
        self.model.train()
        bar = Progress(s.max_iter, initial=self.start_iter, images_per_step=s.ims_per_batch, device=acc.device,
                       enabled=self.progress)
        correct = seen = 0
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
                check_finite({"loss": loss}, it + 1)  # numbered as the checkpoints are
                acc.backward(loss)
                self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
                if self.ema is not None:
                    self.ema.update(self.unwrapped, step=it)
                correct += int((logits.argmax(1) == y).sum())
                seen += len(y)
                last = it + 1
                bar.step(time.perf_counter() - t0, f"loss {float(loss.detach()):.3f} lr {lr:.3g}")
                if last % self.iters_per_epoch == 0 or last == s.max_iter:
                    train_acc = correct / max(seen, 1)
                    correct = seen = 0
                    result = self._end_of_epoch(last, float(loss.detach()), train_acc, lr)
                if last % s.checkpoint_period == 0 or last == s.max_iter:
                    self.save_checkpoint(last)
                if self.stop_after is not None and last >= self.stop_after:
                    break
        finally:
            bar.close()
        if last >= s.max_iter:
            result.update(self.final_evaluation())
            self._save_backbone()
        self.close()
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
        model = self.ema.module if self.ema is not None else self.unwrapped
        was = model.training
        model.eval()
        loader = build_inference_loader(dataset, batch_size=self.cfg.test.ims_per_batch,
                                        num_workers=self.cfg.data.num_workers, num_replicas=acc.num_processes,
                                        rank=acc.process_index)
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

        model = self.ema.module if self.ema is not None else self.unwrapped
        save_backbone_weights(model, self.output_dir / BACKBONE_WEIGHTS, depth=self.depth,
                              pixel_spec=self.pixel_spec, stride_in_1x1=False,
                              extra_meta={"arch": self.cfg.model.arch, "classes": list(self.class_names)})
