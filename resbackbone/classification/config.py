"""Typed configuration of classification training (strict YAML + ``key=value`` overrides).

Defaults are the embedded synthetic smoke run; ``configs/cls/*.yaml`` hold the paper's recipes (section 3.4 for
ImageNet, 4.2 for CIFAR-10) and modern ones.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from ..engine.config import load_config
from ..engine.schedule import SolverConfig


@dataclass
class ClsModelConfig:
    # resnet18..resnet152, plain18..plain152, cifar_resnet20..1202, cifar_plain20..1202.
    arch: str = "cifar_resnet20"
    # Zero the last BN scale of each residual block (Goyal et al. 2017; not in the paper).
    zero_init_residual: bool = False
    # Shortcut option of paper Table 3 for ImageNet ResNets ("A", "B", "C"); CIFAR nets use "A".
    shortcut: Literal["A", "B", "C"] = "B"
    # torch.compile the model (GPU runs).
    compile: bool = False


@dataclass
class ClsDataConfig:
    # "synthetic", "cifar10", "imagenet" or "folder:<path to an ImageFolder root with train/ and val/>".
    dataset: str = "synthetic"
    # Data root; None: $RESDET_DATA_ROOT or the repo's datasets/.
    root: str | None = None
    # Training crop side (224 ImageNet, 32 CIFAR / synthetic).
    crop_size: int = 32
    # ImageNet scale augmentation: shorter side random in [lo, hi] before the crop (paper: 256, 480).
    scale_range: tuple[int, int] = (256, 480)
    # Evaluation: shorter side resize before the centre crop (ImageNet 256).
    test_resize: int = 256
    # Colour augmentation strength (0 = off).
    color_jitter: float = 0.4
    # CIFAR / synthetic: pixels of zero padding before the random crop (paper: 4).
    pad: int = 4
    # CIFAR-10: images held out of the 50k training set for validation (paper: 45k/5k).
    val_split: int = 5000
    # Synthetic set: images per class (train), classes, image side.
    synthetic_per_class: int = 100
    synthetic_classes: int = 10
    num_workers: int = 2


@dataclass
class ClsSolverConfig(SolverConfig):
    """The shared solver fields (:class:`resbackbone.engine.schedule.SolverConfig`) with classification defaults,
    plus the classification-only schedule and regularization options."""

    ims_per_batch: int = 64
    base_lr: float = 0.1
    # Iterations (0: derive from epochs).
    max_iter: int = 0
    epochs: int = 8
    # "multistep" (steps in iterations), "cosine", or "plateau" (divide by 10 when the validation error stops
    # improving for `plateau_patience` epochs, the paper's ImageNet rule).
    schedule: Literal["multistep", "cosine", "plateau"] = "multistep"
    steps: tuple[int, ...] = ()
    plateau_patience: int = 3
    warmup_iters: int = 0
    # The paper's CIFAR ResNet-110/1202 warm-up: lr = warmup_lr until training accuracy reaches this (0 = off).
    warmup_until_train_acc: float = 0.0
    warmup_lr: float = 0.01
    label_smoothing: float = 0.0
    # timm Mixup / CutMix alphas (0 = off) and model EMA decay (0 = off).
    mixup: float = 0.0
    cutmix: float = 0.0
    ema_decay: float = 0.0
    channels_last: bool = True
    checkpoint_period: int = 500
    keep_last: int = 2


@dataclass
class ClsTestConfig:
    # Evaluate every epoch; ten-crop and multi-scale fully-convolutional testing (paper 3.4) at the end.
    ten_crop: bool = False
    scales: tuple[int, ...] = ()
    # Images per evaluation batch (per process).
    ims_per_batch: int = 256


@dataclass
class ClsConfig:
    model: ClsModelConfig = field(default_factory=ClsModelConfig)
    data: ClsDataConfig = field(default_factory=ClsDataConfig)
    solver: ClsSolverConfig = field(default_factory=ClsSolverConfig)
    test: ClsTestConfig = field(default_factory=ClsTestConfig)
    output_dir: str = "output/cls_synthetic"
    seed: int = 0


def load_cls_config(path: str | Path | None = None, overrides: Sequence[str] = ()) -> ClsConfig:
    return load_config(ClsConfig, path, overrides)
