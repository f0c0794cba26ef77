"""COCO through pycocotools: ``<root>/coco/{train2017, val2017, train2014, val2014, annotations}``.

Labels are contiguous ``[0, K)`` in sorted category-id order (COCO's ids have gaps up to 90); boxes XYWH -> XYXY
at load; crowd boxes are not training targets (the evaluator ignores matches to them, as pycocotools does).
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
from pathlib import Path
from typing import Any

import numpy as np

from resbackbone.errors import DataError

from .base import Record

logger = logging.getLogger("detection.data")

# The 80 COCO detection categories by category id (1..90 with gaps), i.e. our contiguous label order; the names
# as instances_{train,val}{2014,2017}.json spell them. Models trained elsewhere on COCO (Detectron2, torchvision)
# use this order too.
COCO_CLASS_NAMES = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat", "traffic light",
    "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse", "sheep", "cow",
    "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella", "handbag", "tie", "suitcase", "frisbee",
    "skis", "snowboard", "sports ball", "kite", "baseball bat", "baseball glove", "skateboard", "surfboard",
    "tennis racket", "bottle", "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple",
    "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch",
    "potted plant", "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard", "cell phone",
    "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase", "scissors", "teddy bear",
    "hair drier", "toothbrush",
)


def load_coco(ann_file: Path):  # noqa: ANN201 - pycocotools.coco.COCO
    """pycocotools COCO with its prints captured and a clear error for a missing / broken file."""
    from pycocotools.coco import COCO

    if not ann_file.is_file():
        raise DataError(f"COCO annotation file not found: {ann_file} (see datasets/README.md)")
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            coco = COCO(str(ann_file))
    except Exception as e:  # noqa: BLE001 - json / key errors from a malformed file
        raise DataError(f"cannot read COCO annotation file {ann_file}: {type(e).__name__}: {e}") from e
    check_coco(coco.dataset, ann_file)
    return coco


def load_coco_records(ann_file: Path, image_dir: Path) -> tuple[list[Record], list[str], dict[int, int], object]:
    """``(records, class_names, contiguous_to_category_id, coco)``; every image is listed (filtering of images
    without boxes is the dataset's ``filter_empty`` option)."""
    coco = load_coco(ann_file)
    cat_ids = sorted(coco.getCatIds())
    class_names = [coco.loadCats(c)[0]["name"] for c in cat_ids]
    cat_to_label = {c: i for i, c in enumerate(cat_ids)}
    records = []
    tiny = 0
    for img_id in sorted(coco.getImgIds()):
        info = coco.loadImgs(img_id)[0]
        boxes, labels = [], []
        for ann in coco.imgToAnns.get(img_id, []):
            if ann.get("iscrowd", 0):
                continue
            x, y, w, h = ann["bbox"]
            if w < 1 or h < 1:
                tiny += 1  # COCO has a few sub-pixel boxes; not trainable, and scored by pycocotools as it does
                continue
            boxes.append((x, y, x + w, y + h))
            labels.append(cat_to_label[ann["category_id"]])
        records.append(
            Record(
                image_dir / info["file_name"],
                int(img_id),
                int(info["height"]),
                int(info["width"]),
                np.asarray(boxes, dtype=np.float32).reshape(-1, 4),
                np.asarray(labels, dtype=np.int64),
                np.zeros(len(boxes), dtype=bool),
            )
        )
    if tiny:
        logger.info("%s: %d annotation(s) narrower or lower than 1 px are not training targets", ann_file, tiny)
    return records, class_names, {i: c for c, i in cat_to_label.items()}, coco


def _first_duplicate(ids: list[Any]) -> Any:
    """The first id that occurs a second time, or None."""
    seen: set[Any] = set()
    for i in ids:
        if i in seen:
            return i
        seen.add(i)
    return None


def check_coco(data: dict, ann_file: Path) -> None:
    """Refuse what pycocotools would silently get wrong: duplicate image or annotation ids (the later one wins,
    so an image gets another's pixels or boxes), annotations of unknown images or categories, malformed or
    inverted boxes. One line naming the file and the first offending id."""

    try:
        images, anns, cats = data.get("images", []), data.get("annotations", []), data.get("categories", [])
        image_ids = [im["id"] for im in images]
        cat_ids = {c["id"] for c in cats}
        ann_ids = [a["id"] for a in anns if "id" in a]
    except (KeyError, TypeError) as e:
        raise DataError(f"{ann_file}: an image / category / annotation entry without {e}") from e
    if (d := _first_duplicate(image_ids)) is not None:
        raise DataError(f"{ann_file}: image id {d} is used by more than one image (file names "
                        f"{[im.get('file_name') for im in images if im['id'] == d][:3]})")
    if (d := _first_duplicate(ann_ids)) is not None:
        raise DataError(f"{ann_file}: annotation id {d} is used by more than one annotation")
    known = set(image_ids)
    for a in anns:
        where = f"{ann_file}: annotation {a.get('id', '?')}"
        if a.get("image_id") not in known:
            raise DataError(f"{where} refers to image id {a.get('image_id')!r}, which is not in 'images'")
        if a.get("category_id") not in cat_ids:
            raise DataError(f"{where} has category_id {a.get('category_id')!r}, which is not in 'categories' "
                            f"(ids {sorted(cat_ids)[:10]}{' ...' if len(cat_ids) > 10 else ''})")
        box = a.get("bbox")
        if (not isinstance(box, list | tuple) or len(box) != 4
                or not all(isinstance(v, int | float) and math.isfinite(v) for v in box)):
            raise DataError(f"{where}: bbox must be 4 finite numbers [x, y, width, height], got {box!r}")
        if box[2] < 0 or box[3] < 0:
            raise DataError(f"{where}: bbox {box} has a negative width or height")
