"""Image decoding and the detection transform: the paper's shorter-side resize, flip, photometric jitter.

Decoding uses OpenCV; geometric and photometric augmentation uses albumentations with bounding-box support, so
boxes follow the pixels exactly. Boxes are XYXY in continuous pixels (albumentations' "pascal_voc" format is the
same thing: absolute x_min, y_min, x_max, y_max).

Shape shorthand: H0, W0 = decoded image; H, W = after the resize; N = boxes in, M <= N = boxes out.
"""

from __future__ import annotations

import logging
import random
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import albumentations as A
import cv2
import numpy as np

from resbackbone.errors import ConfigError

# Decoding and the resize rule live in the torch-free detection.images (the onnxruntime predictor uses them too);
# re-exported here for the data pipeline and its callers.
from ..images import RECOVERED_IMAGE, decode_image, read_image, resize_image, resize_scale  # noqa: F401

if TYPE_CHECKING:
    from ..config import DataConfig

logger = logging.getLogger("detection.data")

# Boxes narrower or lower than this (pixels, after resize and clipping) are removed as degenerate.
MIN_BOX_SIDE = 1.0


@dataclass
class TransformOutput:
    image: np.ndarray  # (H, W, 3) uint8 RGB
    boxes: np.ndarray  # (M, 4) float32 XYXY in resized pixels
    labels: np.ndarray  # (M,) int64
    difficult: np.ndarray  # (M,) bool
    num_dropped: int  # N - M: boxes removed as degenerate after resize + clipping


# Large-scale jitter pads its canvas with this grey (Detectron2's FixedSizeCrop), not black: the padded area then
# normalizes to about zero, as the model's own batch padding does.
LSJ_PAD_VALUE = 128


def build_albumentations(spec: Sequence[Any], key: str = "data.augment") -> A.Compose | None:
    """An albumentations pipeline with box support from a config list ``[{name: RandomBrightnessContrast, p: 0.2},
    ...]``: names resolved against albumentations, the other keys passed through as arguments. Boxes that leave
    the image are clipped (and dropped when nothing is left); an unknown transform or argument, or a transform
    that cannot move boxes, is one ConfigError naming it. None for an empty list."""
    if not spec:
        return None
    steps = []
    for i, entry in enumerate(spec):
        where = f"{key}[{i}]"
        if not isinstance(entry, Mapping) or not isinstance(entry.get("name"), str):
            raise ConfigError(f"{where}: expected a mapping with a 'name' (an albumentations transform), got "
                              f"{entry!r}")
        args = {k: v for k, v in entry.items() if k != "name"}
        cls = getattr(A, entry["name"], None)
        if not (isinstance(cls, type) and issubclass(cls, A.BasicTransform)):
            raise ConfigError(f"{where}: unknown albumentations transform {entry['name']!r}")
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                steps.append(cls(**args))
            except (TypeError, ValueError) as e:
                raise ConfigError(f"{where}: {entry['name']}{args}: {str(e).splitlines()[0]}") from None
        invalid = [str(w.message) for w in caught if "not valid" in str(w.message)]
        if invalid:
            raise ConfigError(f"{where}: {invalid[0]}")
    pipeline = A.Compose(steps, bbox_params=A.BboxParams(format="pascal_voc", label_fields=["labels", "difficult"],
                                                          clip=True))
    try:  # a transform that cannot move boxes fails here, at start, not in a worker an hour later
        pipeline(image=np.zeros((64, 64, 3), np.uint8), bboxes=np.array([[8, 8, 40, 40]], np.float32),
                 labels=np.array([0]), difficult=np.array([False]))
    except NotImplementedError as e:
        raise ConfigError(f"{key}: a transform of {[s['name'] for s in spec]} cannot move boxes ({e})") from None
    return pipeline


class DetectionTransform:
    """Resize (a random ``min_size`` choice when training: multi-scale; or large-scale jitter), then flip, jitter
    and a configured albumentations pipeline, boxes following the pixels.

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
        lsj_size: int = 0,
        lsj_scale: tuple[float, float] = (0.1, 2.0),
        augment: Sequence[Any] = (),
    ) -> None:
        """``lsj_size`` > 0: large-scale jitter in training instead of the shorter-side resize: the image scaled to
        fit an ``lsj_size`` square times a factor drawn uniformly from ``lsj_scale``, then cropped at a random
        place to at most that square and padded to it. ``augment``: an albumentations pipeline as a config list
        (see :func:`build_albumentations`), applied in training after the flip."""
        self.min_sizes = (min_size,) if isinstance(min_size, int) else tuple(int(s) for s in min_size)
        if not self.min_sizes or min(self.min_sizes) < 1 or max_size < 1:
            raise ConfigError(f"min_size {min_size} / max_size {max_size} must be positive")
        if lsj_size < 0 or (lsj_size and not 0 < lsj_scale[0] <= lsj_scale[1]):
            raise ConfigError(f"data.lsj_size ({lsj_size}) must be >= 0 and data.lsj_scale ({list(lsj_scale)}) "
                              "an increasing pair of positive factors")
        self.max_size = max_size
        self.train = train
        self.lsj_size = int(lsj_size) if train else 0
        self.lsj_scale = (float(lsj_scale[0]), float(lsj_scale[1]))
        self.augment = build_albumentations(augment) if train else None
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

    @classmethod
    def resize_only(cls, min_size: int, max_size: int) -> DetectionTransform:
        """The test transform: the paper's resize to shorter side ``min_size`` (longer side at most ``max_size``)."""
        return cls(min_size=min_size, max_size=max_size, train=False)

    @classmethod
    def from_config(cls, data: DataConfig, *, train: bool) -> DetectionTransform:
        """The training transform (multi-scale resize, flip, jitter) or the test resize of ``data``."""
        if train:
            return cls(min_size=data.min_size_train, max_size=data.max_size_train, train=True,
                       flip_prob=data.flip_prob, photometric=data.photometric, lsj_size=data.lsj_size,
                       lsj_scale=data.lsj_scale, augment=data.augment)
        return cls.resize_only(data.min_size_test, data.max_size_test)

    def __call__(
        self, image: np.ndarray, boxes: np.ndarray, labels: np.ndarray, difficult: np.ndarray,
        *, seed: int | None = None,
    ) -> TransformOutput:
        """``image`` (H0, W0, 3) uint8 RGB, ``boxes`` (N, 4) XYXY original pixels, ``labels`` (N,), ``difficult``
        (N,) -> resized / augmented image (H, W, 3) and the surviving M boxes."""
        rng = random.Random(seed)
        h, w = image.shape[:2]
        boxes = boxes.astype(np.float32).reshape(-1, 4)
        if self.lsj_size:
            image, boxes = self._large_scale_jitter(image, boxes, rng)
            nh, nw = image.shape[:2]
        else:
            image = resize_image(image, rng.choice(self.min_sizes) if self.train else self.min_sizes[0],
                                 self.max_size)
            nh, nw = image.shape[:2]
            # Boxes are scaled by the same per-axis factors as the pixels.
            boxes = boxes * np.array([nw / w, nh / h, nw / w, nh / h], np.float32)
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
        if self.augment is not None:
            self.augment.set_random_seed(rng.randrange(2**31) if seed is not None else None)
            before = len(boxes)
            out = self.augment(image=image, bboxes=boxes, labels=labels, difficult=difficult)
            image = out["image"]
            boxes = np.asarray(out["bboxes"], dtype=np.float32).reshape(-1, 4)
            labels = np.asarray(out["labels"], dtype=np.int64)
            difficult = np.asarray(out["difficult"], dtype=bool)
            # Boxes the pipeline pushed out of the image, or shrank below the minimum side, are dropped and counted.
            ok = ((boxes[:, 2] - boxes[:, 0]) >= MIN_BOX_SIDE) & ((boxes[:, 3] - boxes[:, 1]) >= MIN_BOX_SIDE)
            dropped += before - int(ok.sum())
            boxes, labels, difficult = boxes[ok], labels[ok], difficult[ok]
        return TransformOutput(image, boxes, labels.astype(np.int64), difficult.astype(bool), dropped)

    def _large_scale_jitter(self, image: np.ndarray, boxes: np.ndarray, rng: random.Random
                            ) -> tuple[np.ndarray, np.ndarray]:
        """(H0, W0, 3), (N, 4) -> the ``lsj_size`` square canvas (S, S, 3) and the boxes in it (unclipped)."""
        size = self.lsj_size
        h, w = image.shape[:2]
        scale = rng.uniform(*self.lsj_scale) * min(size / h, size / w)
        nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
        image = cv2.resize(image, (nw, nh), interpolation=cv2.INTER_LINEAR)
        boxes = boxes * np.array([nw / w, nh / h, nw / w, nh / h], np.float32)
        # A random window of at most size x size (the whole image when it is smaller), then padding to the square.
        y0, x0 = rng.randint(0, max(nh - size, 0)), rng.randint(0, max(nw - size, 0))
        image = image[y0:y0 + size, x0:x0 + size]
        canvas = np.full((size, size, 3), LSJ_PAD_VALUE, np.uint8)
        canvas[:image.shape[0], :image.shape[1]] = image
        return canvas, boxes - np.array([x0, y0, x0, y0], np.float32)
