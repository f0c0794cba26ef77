"""Classification data: ImageNet / any ImageFolder tree, CIFAR-10 (official python pickles, read safely), and a
seeded synthetic set; the paper's augmentation; deterministic, resumable, sharded sampling.

Items are ``(uint8 (3, H, W) RGB tensor, int label)``; the trainer normalizes on the device.
"""

from __future__ import annotations

import pickle
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset
from torchvision.transforms import v2

from ..engine.paths import data_root
from ..errors import ConfigError, DataError
from ..serialization import safe_unpickle
from .config import ClsDataConfig

CIFAR_DIR = "cifar-10-batches-py"
# CIFAR-10 training-set statistics (0-255, RGB) for the CIFAR nets, which have no pixel spec of their own.
CIFAR_MEAN = (125.3, 123.0, 113.9)
CIFAR_STD = (63.0, 62.1, 66.7)


# ---------------------------------------------------------------------------------------------------- CIFAR


def read_cifar_batch(path: Path) -> dict[bytes, Any]:
    if not path.is_file():
        raise DataError(f"CIFAR-10 file not found: {path} (expected the official cifar-10-batches-py layout)")
    try:
        # The official batches are plain pickles: read through the one restricted unpickler (numpy data only).
        return safe_unpickle(path, encoding="bytes")
    except (pickle.UnpicklingError, EOFError, ValueError) as e:
        raise DataError(f"{path}: not a valid CIFAR-10 batch ({e})") from e


class ArrayDataset(Dataset):
    """Images held in memory as ``(N, H, W, 3)`` uint8."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, class_names: Sequence[str]) -> None:
        self.images = images
        self.labels = labels.astype(np.int64)
        self.class_names = tuple(class_names)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        return torch.from_numpy(self.images[i]).permute(2, 0, 1).contiguous(), int(self.labels[i])


def load_cifar10(root: Path, *, split: str, val_split: int = 5000, seed: int = 0) -> ArrayDataset:
    """``split``: "train" (50k minus the held-out val), "val" (the held-out ``val_split``), "test" (10k)."""
    base = root / CIFAR_DIR
    meta = read_cifar_batch(base / "batches.meta")
    names = [n.decode() for n in meta[b"label_names"]]
    files = ["test_batch"] if split == "test" else [f"data_batch_{i}" for i in range(1, 6)]
    data, labels = [], []
    for f in files:
        b = read_cifar_batch(base / f)
        try:
            data.append(np.asarray(b[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
            labels.append(np.asarray(b[b"labels"], dtype=np.int64))
        except KeyError as e:
            raise DataError(f"{base / f}: missing key {e}") from e
    images = np.concatenate(data).transpose(0, 2, 3, 1)  # (N, 3, 32, 32) -> (N, 32, 32, 3)
    y = np.concatenate(labels)
    if split != "test":
        order = np.random.default_rng(seed).permutation(len(y))
        keep = order[val_split:] if split == "train" else order[:val_split]
        images, y = images[np.sort(keep)], y[np.sort(keep)]
    return ArrayDataset(images, y, names)


# ------------------------------------------------------------------------------------------------ synthetic

SYNTHETIC_SHAPES = ("disc", "square", "triangle", "cross", "ring", "hbar", "vbar", "diamond", "dots", "x")


def _draw_synthetic(rng: np.random.Generator, cls: int, size: int) -> np.ndarray:
    bg = rng.integers(0, 256, 3)
    img = np.clip(bg + rng.normal(0, 20, (size, size, 3)), 0, 255).astype(np.uint8)
    colour = tuple(int(v) for v in (255 - bg + rng.integers(-40, 40, 3)).clip(0, 255))
    s = rng.uniform(0.25, 0.4) * size
    cx, cy = rng.uniform(s, size - s, 2)
    c = (int(cx), int(cy))
    r = int(s)
    shape = SYNTHETIC_SHAPES[cls % len(SYNTHETIC_SHAPES)]
    if shape == "disc":
        cv2.circle(img, c, r, colour, -1)
    elif shape == "square":
        cv2.rectangle(img, (c[0] - r, c[1] - r), (c[0] + r, c[1] + r), colour, -1)
    elif shape == "triangle":
        pts = np.array([[cx, cy - s], [cx - s, cy + s], [cx + s, cy + s]], np.int32)
        cv2.fillPoly(img, [pts], colour)
    elif shape == "cross":
        cv2.line(img, (c[0] - r, c[1]), (c[0] + r, c[1]), colour, 3)
        cv2.line(img, (c[0], c[1] - r), (c[0], c[1] + r), colour, 3)
    elif shape == "ring":
        cv2.circle(img, c, r, colour, 2)
    elif shape == "hbar":
        cv2.rectangle(img, (c[0] - r, c[1] - r // 3), (c[0] + r, c[1] + r // 3), colour, -1)
    elif shape == "vbar":
        cv2.rectangle(img, (c[0] - r // 3, c[1] - r), (c[0] + r // 3, c[1] + r), colour, -1)
    elif shape == "diamond":
        pts = np.array([[cx, cy - s], [cx + s, cy], [cx, cy + s], [cx - s, cy]], np.int32)
        cv2.fillPoly(img, [pts], colour)
    elif shape == "dots":
        cv2.circle(img, (c[0] - r // 2, c[1]), max(2, r // 3), colour, -1)
        cv2.circle(img, (c[0] + r // 2, c[1]), max(2, r // 3), colour, -1)
    else:
        cv2.line(img, (c[0] - r, c[1] - r), (c[0] + r, c[1] + r), colour, 3)
        cv2.line(img, (c[0] - r, c[1] + r), (c[0] + r, c[1] - r), colour, 3)
    return img


def synthetic_classification(split: str, *, per_class: int, num_classes: int = 10, size: int = 32,
                             seed: int = 0) -> ArrayDataset:
    """A seeded set of ``num_classes`` shape classes on noisy backgrounds (train / val / test splits differ)."""
    if not 2 <= num_classes <= len(SYNTHETIC_SHAPES):
        raise ConfigError(f"synthetic_classes must be in [2, {len(SYNTHETIC_SHAPES)}], got {num_classes}")
    offset = {"train": 0, "val": 1, "test": 2}[split]
    n = per_class if split == "train" else max(per_class // 4, 10)
    rng = np.random.default_rng([seed, offset])
    labels = np.repeat(np.arange(num_classes), n)
    images = np.stack([_draw_synthetic(rng, int(c), size) for c in labels])
    return ArrayDataset(images, labels, SYNTHETIC_SHAPES[:num_classes])


# ------------------------------------------------------------------------------------------------ ImageFolder


class FolderDataset(Dataset):
    """``<root>/<class>/<image>`` (ImageNet's layout with wnid folders): classes sorted by folder name."""

    EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")

    def __init__(self, root: Path, class_names: Sequence[str] | None = None) -> None:
        if not root.is_dir():
            raise DataError(f"image folder not found: {root} (see datasets/README.md)")
        names = list(class_names) if class_names is not None else sorted(p.name for p in root.iterdir()
                                                                           if p.is_dir())
        if not names:
            raise DataError(f"{root}: no class folders")
        self.class_names = tuple(names)
        self.samples: list[tuple[Path, int]] = []
        for i, n in enumerate(names):
            folder = root / n
            if not folder.is_dir():
                raise DataError(f"{root}: class folder {n!r} missing (it exists in the training split)")
            self.samples += [(p, i) for p in sorted(folder.iterdir()) if p.suffix.lower() in self.EXTENSIONS]
        if not self.samples:
            raise DataError(f"{root}: no images found")
        self.labels = np.array([s[1] for s in self.samples], dtype=np.int64)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        path, label = self.samples[i]
        data = np.fromfile(str(path), dtype=np.uint8)
        img = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
        if img is None:
            raise DataError(f"cannot decode image: {path}")
        return torch.from_numpy(cv2.cvtColor(img, cv2.COLOR_BGR2RGB)).permute(2, 0, 1).contiguous(), label


def build_cls_datasets(cfg: ClsDataConfig, seed: int = 0) -> tuple[Dataset, Dataset, Dataset | None]:
    """``(train, val, test or None)`` for ``cfg.dataset``."""
    name = cfg.dataset
    root = data_root(cfg.root)
    if name == "synthetic":
        kw = dict(per_class=cfg.synthetic_per_class, num_classes=cfg.synthetic_classes, size=cfg.crop_size,
                  seed=seed)
        return (synthetic_classification("train", **kw), synthetic_classification("val", **kw),
                synthetic_classification("test", **kw))
    if name == "cifar10":
        return (load_cifar10(root, split="train", val_split=cfg.val_split, seed=seed),
                load_cifar10(root, split="val", val_split=cfg.val_split, seed=seed),
                load_cifar10(root, split="test"))
    if name == "imagenet" or name.startswith("folder:"):
        base = root / "imagenet" if name == "imagenet" else Path(name[7:]).expanduser()
        train = FolderDataset(base / "train")
        return train, FolderDataset(base / "val", train.class_names), None
    raise DataError(f"unknown classification dataset {name!r}: synthetic, cifar10, imagenet or folder:<path>")


# ------------------------------------------------------------------------------------------------ transforms


def train_transform(cfg: ClsDataConfig, small: bool) -> v2.Transform:
    """CIFAR / synthetic: 4-px pad + crop + flip (paper 4.2). ImageNet: shorter side random in [256, 480], 224
    crop, flip, colour jitter (paper 3.4)."""
    if small:
        return v2.Compose([v2.RandomCrop(cfg.crop_size, padding=cfg.pad), v2.RandomHorizontalFlip()])
    ops: list[v2.Transform] = [
        v2.RandomShortestSize(list(range(cfg.scale_range[0], cfg.scale_range[1] + 1)), antialias=True),
        v2.RandomCrop(cfg.crop_size),
        v2.RandomHorizontalFlip(),
    ]
    if cfg.color_jitter > 0:
        ops.append(v2.ColorJitter(cfg.color_jitter, cfg.color_jitter, cfg.color_jitter))
    return v2.Compose(ops)


def test_transform(cfg: ClsDataConfig, small: bool) -> v2.Transform:
    if small:
        return v2.Identity()
    return v2.Compose([v2.Resize(cfg.test_resize, antialias=True), v2.CenterCrop(cfg.crop_size)])


class TransformedDataset(Dataset):
    """Applies a transform; :meth:`get_item_seeded` draws the augmentation from the given seed only.

    torchvision's v2 transforms draw from the global torch RNG, so the seeded draw runs inside
    ``torch.random.fork_rng``: the caller's RNG state is left exactly as it was.
    """

    def __init__(self, dataset: Dataset, transform: v2.Transform) -> None:
        self.dataset = dataset
        self.transform = transform

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        return self.get_item_seeded(index, None)

    def get_item_seeded(self, index: int, seed: int | None) -> tuple[Tensor, int]:
        img, label = self.dataset[index]
        if seed is None:
            return self.transform(img), label
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return self.transform(img), label


def ten_crop_predict(model: torch.nn.Module, images: Tensor, crop: int) -> Tensor:
    """Paper 3.4 "10-crop testing": 4 corners + centre and their flips, softmax averaged. ``images``
    ``(N, 3, H, W)`` normalized -> probabilities ``(N, K)``."""
    crops = v2.functional.ten_crop(images, [crop, crop])  # 10 x (N, 3, crop, crop)
    probs = torch.stack([model(c).float().softmax(dim=1) for c in crops])  # (10, N, K)
    return probs.mean(dim=0)


def multiscale_predict(model: torch.nn.Module, images: Tensor, scales: Sequence[int]) -> Tensor:
    """Paper 3.4 fully-convolutional multi-scale testing: shorter side resized to each scale (and flipped),
    softmax averaged over scales. The global average pool makes any input size valid."""
    probs = []
    for s in scales:
        x = v2.functional.resize(images, [s], antialias=True)
        probs.append(model(x).float().softmax(dim=1))
        probs.append(model(x.flip(-1)).float().softmax(dim=1))
    return torch.stack(probs).mean(dim=0)
