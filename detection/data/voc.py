"""PASCAL VOC in the official devkit layout: ``<root>/VOCdevkit/VOC{2007,2012}/{Annotations, JPEGImages,
ImageSets/Main/<split>.txt}``.

VOC boxes are 1-based inclusive pixel indices; ours are continuous XYXY, so ``(x1 - 1, y1 - 1, x2, y2)``. Images are
found by id in JPEGImages/ as the devkit does, never by the XML's ``<filename>`` (which is wrong in VOC2012's
copies of VOC2007 images).
"""

from __future__ import annotations

import logging
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from resbackbone.errors import DataError

from .base import Record

logger = logging.getLogger("detection.data")

VOC_CLASSES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)


def read_split(year_dir: Path, split: str) -> list[str]:
    """Image ids of ``ImageSets/Main/<split>.txt``."""
    path = year_dir / "ImageSets" / "Main" / f"{split}.txt"
    if not path.is_file():
        raise DataError(f"VOC split file not found: {path} (see datasets/README.md for the expected layout)")
    return [line.split()[0] for line in path.read_text().splitlines() if line.strip()]


def parse_voc_xml(path: Path, class_to_index: dict[str, int]) -> tuple[int, int, np.ndarray, np.ndarray, np.ndarray]:
    """``(height, width, boxes (N, 4) ours, labels (N,), difficult (N,))`` from one annotation file."""
    if not path.is_file():
        raise DataError(f"VOC annotation not found: {path}")
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as e:
        raise DataError(f"malformed VOC XML {path}: {e}") from e
    try:
        size = root.find("size")
        width = int(float(size.findtext("width")))  # type: ignore[union-attr, arg-type]
        height = int(float(size.findtext("height")))  # type: ignore[union-attr, arg-type]
        boxes, labels, difficult = [], [], []
        for obj in root.iter("object"):
            name = (obj.findtext("name") or "").strip()
            if name not in class_to_index:
                raise DataError(f"{path}: unknown class name {name!r} (expected one of the dataset's classes)")
            bb = obj.find("bndbox")
            x1, y1, x2, y2 = (float(bb.findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax"))  # type: ignore
            if x2 < x1 or y2 < y1:
                # An inverted box (negative width or height) counted as an object would change AP: refuse it.
                # (Boxes reaching past the border, common in real annotations, are clipped by the transform.)
                raise DataError(f"{path}: object {len(boxes) + 1} ({name}) has an inverted box xmin={x1:g} "
                                f"ymin={y1:g} xmax={x2:g} ymax={y2:g}")
            boxes.append((x1 - 1.0, y1 - 1.0, x2, y2))  # 1-based inclusive -> continuous
            labels.append(class_to_index[name])
            difficult.append(int(obj.findtext("difficult") or 0) == 1)
    except (AttributeError, TypeError, ValueError) as e:
        if isinstance(e, DataError):
            raise
        raise DataError(f"malformed VOC XML {path}: missing or non-numeric size/bndbox field ({e})") from e
    return (
        height,
        width,
        np.asarray(boxes, dtype=np.float32).reshape(-1, 4),
        np.asarray(labels, dtype=np.int64),
        np.asarray(difficult, dtype=bool),
    )


def load_voc_records(
    year_dirs_and_splits: Sequence[tuple[Path, str]],
    class_names: Sequence[str] = VOC_CLASSES,
    *,
    skip_bad: bool = False,
) -> tuple[list[Record], int]:
    """``(records, number of skipped bad annotations)``; every listed image is parsed once, here (VOC is small
    enough to hold in memory: ~16.5k images for 07+12). ``skip_bad``: warn and skip a bad XML instead of raising."""
    class_to_index = {c: i for i, c in enumerate(class_names)}
    records: list[Record] = []
    skipped = 0
    for year_dir, split in year_dirs_and_splits:
        for image_id in read_split(year_dir, split):
            try:
                h, w, boxes, labels, difficult = parse_voc_xml(year_dir / "Annotations" / f"{image_id}.xml",
                                                               class_to_index)
            except DataError as e:
                if not skip_bad:
                    raise
                skipped += 1
                logger.warning("skipping %s", e)
                continue
            records.append(Record(year_dir / "JPEGImages" / f"{image_id}.jpg", image_id, h, w, boxes, labels,
                                  difficult))
    if skipped:
        logger.warning("skipped %d bad VOC annotations", skipped)
    return records, skipped
