"""COCO through pycocotools: ``<root>/coco/{train2017, val2017, train2014, val2014, annotations}``.

Labels are contiguous ``[0, K)`` in sorted category-id order (COCO's ids have gaps up to 90); boxes XYWH -> XYXY
at load; crowd boxes are not training targets (the evaluator ignores matches to them, as pycocotools does).
"""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import numpy as np

from resbackbone.errors import DataError

from .base import Record

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
            return COCO(str(ann_file))
    except Exception as e:  # noqa: BLE001 - json / key errors from a malformed file
        raise DataError(f"cannot read COCO annotation file {ann_file}: {type(e).__name__}: {e}") from e


def load_coco_records(ann_file: Path, image_dir: Path) -> tuple[list[Record], list[str], dict[int, int], object]:
    """``(records, class_names, contiguous_to_category_id, coco)``; every image is listed (filtering of images
    without boxes is the dataset's ``filter_empty`` option)."""
    coco = load_coco(ann_file)
    cat_ids = sorted(coco.getCatIds())
    class_names = [coco.loadCats(c)[0]["name"] for c in cat_ids]
    cat_to_label = {c: i for i, c in enumerate(cat_ids)}
    records = []
    for img_id in sorted(coco.getImgIds()):
        info = coco.loadImgs(img_id)[0]
        boxes, labels = [], []
        for ann in coco.imgToAnns.get(img_id, []):
            if ann.get("iscrowd", 0):
                continue
            x, y, w, h = ann["bbox"]
            if w < 1 or h < 1:
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
    return records, class_names, {i: c for c, i in cat_to_label.items()}, coco
