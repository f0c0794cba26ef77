"""The dataset class every detection source (VOC, COCO, synthetic) produces: parsed records + the pipeline.

A record is one image: its file, id, original size and ground truth in OUR convention (XYXY continuous pixels,
labels in [0, K), a difficult flag). Items are ``(image uint8 (3, H, W) RGB resized, target)`` with target
``{"boxes" float32 (N, 4) resized pixels, "labels" int64 (N,), "difficult" bool (N,), "image_id", "orig_size"
(H0, W0), "size" (H, W), "index" i, "num_dropped" boxes removed as degenerate, "skipped" True for an unreadable
image replaced by a black one (evaluation) or by another image (training) under ``skip_bad``}``.

Shape shorthand: H0, W0 = original image (annotation pixels); H, W = resized image; N = boxes of one image.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch.utils.data import Dataset

from resbackbone.errors import DataError

from .transforms import DetectionTransform, decode_image

logger = logging.getLogger("detection.data")

Family = Literal["voc", "coco", "synthetic", "yolo", "custom"]
Metric = Literal["voc07", "voc", "coco"]


@dataclass
class Record:
    """One annotated image, in original pixels and our conventions."""

    file: Path
    image_id: str | int
    height: int
    width: int
    boxes: np.ndarray  # (N, 4) float32 XYXY
    labels: np.ndarray  # (N,) int64 in [0, K)
    difficult: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool))  # (N,) bool
    # (N,) bool: COCO crowd regions; never training targets, and in VOC-style scoring ignored like difficult
    # boxes (a detection on them is neither right nor wrong), as pycocotools ignores matches to them.
    crowd: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool))


def check_size(record: Record, height: int, width: int) -> None:
    """Refuse an image whose decoded size is not its annotation's: the boxes would be guessed, not known.

    Decoding applies the EXIF orientation (OpenCV's default, as photo viewers and annotation tools show the photo),
    so annotations must be in the oriented pixels; a transposed size is reported as what it most likely is. An
    annotation without a size (0) takes the decoded one.
    """
    if record.height <= 0 or record.width <= 0 or (height, width) == (record.height, record.width):
        return
    hint = ""
    if (height, width) == (record.width, record.height):
        hint = (" (transposed: the photo carries an EXIF orientation, applied when decoding, and the annotation was "
                "made on the stored, unrotated pixels; re-annotate the oriented image or strip the EXIF tag)")
    raise DataError(f"{record.file}: decoded size {width}x{height} (w x h) differs from the annotation's "
                    f"{record.width}x{record.height}{hint}; its boxes cannot be trusted")


class DetectionDataset(Dataset):
    """Records + decode + train/test transform. See the module docstring for the item format.

    ``coco``: the set's ground truth as a ``pycocotools.coco.COCO`` (COCO-format sets, and the synthetic set
    which ships both formats), None otherwise; ``contiguous_to_category_id``: our label in [0, K) -> the
    dataset's own category id (None: the set has no category ids of its own). ``num_skipped``: unreadable items
    met so far (this process), plus the records dropped at load under ``skip_bad``.
    """

    def __init__(
        self,
        records: Sequence[Record],
        class_names: Sequence[str],
        *,
        family: Family,
        default_metric: Metric,
        name: str,
        train: bool,
        transform: DetectionTransform | None = None,
        use_difficult: bool = False,
        filter_empty: bool | None = None,
        skip_bad: bool = False,
        coco: Any = None,
        contiguous_to_category_id: Mapping[int, int] | None = None,
        num_skipped: int = 0,
    ) -> None:
        self.name = name
        self.coco = coco
        self.contiguous_to_category_id = dict(contiguous_to_category_id) if contiguous_to_category_id else None
        self.class_names = tuple(class_names)
        self.family = family
        self.default_metric = default_metric
        self.train = train
        self.use_difficult = use_difficult
        self.skip_bad = skip_bad
        self.num_skipped = num_skipped
        filter_empty = train if filter_empty is None else filter_empty
        records = list(records)
        if filter_empty:
            before = len(records)
            records = [r for r in records if len(self._train_mask(r)) and self._train_mask(r).any()]
            if before != len(records):
                logger.info("%s: %d of %d images have no usable box and are not used", name, before - len(records),
                            before)
        self.records = records
        # The resize and augmentation of every item (DetectionTransform.from_config builds it from a DataConfig);
        # default: the paper's 600 / 1000 resize, flipped half the time in training.
        self.transform = transform or DetectionTransform(min_size=600, max_size=1000, train=train)

    def _train_mask(self, r: Record) -> np.ndarray:
        """(N,) the boxes given as targets: never crowd regions; difficult ones only in evaluation or with
        ``use_difficult``."""
        keep = np.ones(len(r.boxes), dtype=bool)
        if len(r.crowd) == len(r.boxes):
            keep &= ~r.crowd
        if self.train and not self.use_difficult and len(r.difficult) == len(r.boxes):
            keep &= ~r.difficult
        return keep

    def __len__(self) -> int:
        return len(self.records)

    @property
    def image_ids(self) -> list[str | int]:
        return [r.image_id for r in self.records]

    def aspect_ratios(self) -> list[float]:
        """Width / height of every image, from the annotations (no decoding); 1 for an image of unknown size
        (grouping is an optimization: a wrong group costs padding, not correctness)."""
        return [r.width / r.height if r.width > 0 and r.height > 0 else 1.0 for r in self.records]

    def image_classes(self) -> list[set[int]]:
        """Per image, the classes of its training targets (crowd never; difficult only with ``use_difficult`` in
        a training set), from the annotations (no decoding)."""
        return [{int(c) for c in r.labels[self._train_mask(r)]} for r in self.records]

    def repeat_factors(self, threshold: float) -> list[float]:
        """Per image, its repeat factor for repeat-factor sampling at ``threshold`` (LVIS; see
        :func:`resbackbone.engine.sampling.repeat_factors`), over this set's images as training sees them."""
        from resbackbone.engine.sampling import repeat_factors

        return repeat_factors(self.image_classes(), threshold)

    def get_ground_truth(self, index: int) -> dict[str, Any]:
        """All ground truth of an image (difficult included) in ORIGINAL pixels, for evaluation."""
        r = self.records[index]
        difficult = r.difficult if len(r.difficult) == len(r.boxes) else np.zeros(len(r.boxes), dtype=bool)
        if len(r.crowd) == len(r.boxes):
            difficult = difficult | r.crowd
        return {"image_id": r.image_id, "boxes": r.boxes.astype(np.float32), "labels": r.labels.astype(np.int64),
                "difficult": difficult.astype(bool), "height": r.height, "width": r.width}

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict[str, Any]]:
        return self.get_item_seeded(index, None)

    def get_item_seeded(self, index: int, seed: int | None) -> tuple[torch.Tensor, dict[str, Any]]:
        """The item with its random augmentation drawn from ``seed`` (None: from fresh entropy)."""
        try:
            return self._load(index, seed)
        except DataError as e:
            if not self.skip_bad:
                raise
            self.num_skipped += 1  # per process: each DataLoader worker counts (and warns about) its own
            logger.warning("skipping bad item %d (%s); %d skipped so far", index, e, self.num_skipped)
            if self.train:
                # Training only needs *an* image: a seeded substitute keeps the batch full and reproducible.
                fallback = random.Random(index if seed is None else seed).randrange(len(self))
                image, target = self._load(fallback, seed)
                target["skipped"] = True  # flagged, so the trainer counts skips across worker processes
                return image, target
            # Evaluation must keep a one-to-one item <-> image mapping (a substitute would score another image
            # twice): a black image of the annotated size, flagged, so its ground truth counts as missed.
            return self._load(index, seed, blank=True)

    def _load(self, index: int, seed: int | None, blank: bool = False) -> tuple[torch.Tensor, dict[str, Any]]:
        r = self.records[index]
        image = np.zeros((r.height, r.width, 3), np.uint8) if blank else decode_image(r.file)
        check_size(r, image.shape[0], image.shape[1])
        boxes = r.boxes
        keep = self._train_mask(r)
        boxes, labels = boxes[keep], r.labels[keep]
        difficult = r.difficult[keep] if len(r.difficult) == len(r.boxes) else np.zeros(len(boxes), dtype=bool)
        out = self.transform(image, boxes, labels, difficult, seed=seed)
        img = torch.from_numpy(np.ascontiguousarray(out.image.transpose(2, 0, 1)))  # (H, W, 3) -> (3, H, W)
        target = {
            "boxes": torch.from_numpy(out.boxes.astype(np.float32)).reshape(-1, 4),
            "labels": torch.from_numpy(out.labels.astype(np.int64)),
            "difficult": torch.from_numpy(out.difficult.astype(bool)),
            "image_id": r.image_id,
            "orig_size": (int(image.shape[0]), int(image.shape[1])),
            "size": (int(out.image.shape[0]), int(out.image.shape[1])),
            "index": index,
            "num_dropped": out.num_dropped,
            "skipped": blank,
        }
        return img, target
