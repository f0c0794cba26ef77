"""Image decoding and the detection transform: the paper's shorter-side resize, flip, photometric jitter.

Decoding uses OpenCV; geometric and photometric augmentation uses albumentations with bounding-box support, so
boxes follow the pixels exactly. Boxes are XYXY in continuous pixels (albumentations' "pascal_voc" format is the
same thing: absolute x_min, y_min, x_max, y_max).

Shape shorthand: H0, W0 = decoded image; H, W = after the resize; N = boxes in, M <= N = boxes out.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import albumentations as A
import cv2
import numpy as np

from resbackbone.errors import ConfigError, DataError

logger = logging.getLogger("detection.data")

# Boxes narrower or lower than this (pixels, after resize and clipping) are removed as degenerate.
MIN_BOX_SIDE = 1.0


def read_image(path: str | Path) -> tuple[np.ndarray, bool]:
    """``(image (H, W, 3) uint8 RGB, recovered)``: ``recovered`` when only the tolerant path could decode it.

    ``cv2.imdecode`` refuses a JPEG cut short (an interrupted copy or download), which viewers and ``cv2.imread``
    show with the missing rows grey; such a file is decoded as they do (its boxes are still right). Both apply the
    EXIF orientation. A DataError naming the file when neither can read it.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"image file not found: {path}")
    data = np.fromfile(str(path), dtype=np.uint8)
    image = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    recovered = False
    if image is None and data.size:
        image = cv2.imread(str(path), cv2.IMREAD_COLOR)
        recovered = image is not None
    if image is None:
        raise DataError(f"cannot decode image (corrupt or not an image): {path}")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB), recovered


# The warning for a file decoded only as far as its data goes (training, the pre-training check, check_dataset).
RECOVERED_IMAGE = "{}: truncated or damaged image data, decoded as far as it goes (as image viewers do)"
# Files whose recovery was reported by this process (one warning per file, not one per epoch).
_reported_recovered: set[Path] = set()


def decode_image(path: str | Path) -> np.ndarray:
    """Read an image file as ``(H, W, 3)`` uint8 RGB (see :func:`read_image`); a truncated file that could be
    recovered is reported once per process with its name; a clear error naming the file when it cannot be read."""
    image, recovered = read_image(path)
    if recovered and Path(path) not in _reported_recovered:
        _reported_recovered.add(Path(path))
        logger.warning(RECOVERED_IMAGE.format(path))
    return image


def resize_scale(height: int, width: int, min_size: int, max_size: int) -> float:
    """The paper's rule (Ren et al. 2015): shorter side to ``min_size`` unless the longer side would exceed
    ``max_size``, in which case the longer side becomes ``max_size``."""
    short, long = min(height, width), max(height, width)
    scale = min_size / short
    if long * scale > max_size:
        scale = max_size / long
    return scale


@dataclass
class TransformOutput:
    image: np.ndarray  # (H, W, 3) uint8 RGB
    boxes: np.ndarray  # (M, 4) float32 XYXY in resized pixels
    labels: np.ndarray  # (M,) int64
    difficult: np.ndarray  # (M,) bool
    num_dropped: int  # N - M: boxes removed as degenerate after resize + clipping


class DetectionTransform:
    """Resize (a random ``min_size`` choice when training: multi-scale), then flip / jitter via albumentations.

    Calling with a ``seed`` makes every random decision a function of that seed only (exact resume and
    reproducible augmentation regardless of worker processes).
    """

    def __init__(
        self,
        *,
        min_size: int | Sequence[int],
        max_size: int,
        train: bool,
        flip_prob: float = 0.5,
        photometric: bool = False,
    ) -> None:
        self.min_sizes = (min_size,) if isinstance(min_size, int) else tuple(int(s) for s in min_size)
        if not self.min_sizes or min(self.min_sizes) < 1 or max_size < 1:
            raise ConfigError(f"min_size {min_size} / max_size {max_size} must be positive")
        self.max_size = max_size
        self.train = train
        # Evaluation is a deterministic resize only, whatever flip / jitter options came along.
        self.geometric = (
            A.Compose(
                [A.HorizontalFlip(p=flip_prob)],
                bbox_params=A.BboxParams(
                    # Degenerate boxes are already gone (counted in __call__) and a flip keeps box sizes; a second
                    # size filter here would drop exact 1-px boxes on float round-off of its [0, 1] coordinates.
                    format="pascal_voc", label_fields=["labels", "difficult"], clip=True,
                ),
            )
            if train and flip_prob > 0
            else None
        )
        # Pixel-only, so it runs without box processing.
        self.photometric = (
            A.Compose([A.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.2, hue=0.02, p=0.8)])
            if train and photometric
            else None
        )

    def __call__(
        self, image: np.ndarray, boxes: np.ndarray, labels: np.ndarray, difficult: np.ndarray,
        *, seed: int | None = None,
    ) -> TransformOutput:
        """``image`` (H0, W0, 3) uint8 RGB, ``boxes`` (N, 4) XYXY original pixels, ``labels`` (N,), ``difficult``
        (N,) -> resized / augmented image (H, W, 3) and the surviving M boxes."""
        rng = random.Random(seed)
        h, w = image.shape[:2]
        min_size = rng.choice(self.min_sizes) if self.train else self.min_sizes[0]
        scale = resize_scale(h, w, min_size, self.max_size)
        nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
        # One resize to the final size (albumentations' SmallestMaxSize + LongestMaxSize would interpolate twice
        # when the long-side cap applies); boxes are scaled by the same per-axis factors.
        if (nh, nw) != (h, w):
            image = cv2.resize(image, (nw, nh), interpolation=cv2.INTER_LINEAR)
        boxes = boxes.astype(np.float32).reshape(-1, 4) * np.array([nw / w, nh / h, nw / w, nh / h], np.float32)
        # Clip and drop degenerate boxes ourselves so the count is known with or without augmentation.
        boxes[:, 0::2] = boxes[:, 0::2].clip(0, nw)
        boxes[:, 1::2] = boxes[:, 1::2].clip(0, nh)
        ok = ((boxes[:, 2] - boxes[:, 0]) >= MIN_BOX_SIDE) & ((boxes[:, 3] - boxes[:, 1]) >= MIN_BOX_SIDE)
        dropped = int((~ok).sum())
        boxes, labels, difficult = boxes[ok], labels[ok], difficult[ok]
        if self.geometric is not None:
            self.geometric.set_random_seed(rng.randrange(2**31) if seed is not None else None)
            out = self.geometric(image=image, bboxes=boxes, labels=labels, difficult=difficult)
            image = out["image"]
            boxes = np.asarray(out["bboxes"], dtype=np.float32).reshape(-1, 4)
            labels = np.asarray(out["labels"], dtype=np.int64)
            difficult = np.asarray(out["difficult"], dtype=bool)
        if self.photometric is not None:
            self.photometric.set_random_seed(rng.randrange(2**31) if seed is not None else None)
            image = self.photometric(image=image)["image"]
        return TransformOutput(image, boxes, labels.astype(np.int64), difficult.astype(bool), dropped)
