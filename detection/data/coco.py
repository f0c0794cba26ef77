"""COCO through pycocotools: ``<root>/coco/{train2017, val2017, train2014, val2014, annotations}``.

Labels are contiguous ``[0, K)`` in sorted category-id order (COCO's ids have gaps up to 90); boxes XYWH -> XYXY
at load; crowd boxes are not training targets (the evaluator ignores matches to them, as pycocotools does).
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from resbackbone.errors import DataError

from .base import Record
from .custom import Problems, strict

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


def load_coco(ann_file: Path, problems: Problems | None = None):  # noqa: ANN201 - pycocotools.coco.COCO
    """pycocotools COCO with its prints captured and a clear error for a missing / broken file; ``problems``
    receives what :func:`check_coco` finds (default: the first one raises)."""
    from pycocotools.coco import COCO

    if not ann_file.is_file():
        raise DataError(f"COCO annotation file not found: {ann_file} (see datasets/README.md)")
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            coco = COCO(str(ann_file))
    except Exception as e:  # noqa: BLE001 - json / key errors from a malformed file
        raise DataError(f"cannot read COCO annotation file {ann_file}: {type(e).__name__}: {e}") from e
    # Annotations the collector left out (none when problems raise): load_coco_records skips them.
    coco.bad_ann_ids = check_coco(coco.dataset, ann_file, problems or strict())
    return coco


def used_categories(coco: Any) -> list[int]:
    """Sorted category ids that are classes: all, except a category without annotations that is the
    ``supercategory`` of others (Roboflow exports one, e.g. id 0 "objects", as the parent of the real classes)."""
    cats = coco.dataset.get("categories", [])
    parents = {c.get("supercategory") for c in cats}
    counts = Counter(a["category_id"] for a in coco.dataset.get("annotations", []))
    return sorted(c["id"] for c in cats if counts[c["id"]] or c["name"] not in parents)


def load_coco_records(
    ann_file: Path, image_dir: Path, problems: Problems | None = None
) -> tuple[list[Record], list[str], dict[int, int], object]:
    """``(records, class_names, contiguous_to_category_id, coco)``; every image is listed (filtering of images
    without boxes is the dataset's ``filter_empty`` option). Crowd annotations are kept as ``crowd`` boxes."""
    coco = load_coco(ann_file, problems)
    cat_ids = used_categories(coco)
    dropped = sorted(set(coco.getCatIds()) - set(cat_ids))
    if dropped:
        logger.info("%s: categor%s %s without annotations, the parent of the others, %s not a class", ann_file,
                    "y" if len(dropped) == 1 else "ies", [coco.cats[c]["name"] for c in dropped],
                    "is" if len(dropped) == 1 else "are")
    class_names = [coco.loadCats(c)[0]["name"] for c in cat_ids]
    cat_to_label = {c: i for i, c in enumerate(cat_ids)}
    records = []
    tiny = 0
    for img_id in sorted(coco.getImgIds()):
        info = coco.loadImgs(img_id)[0]
        boxes, labels, crowd = [], [], []
        for ann in coco.imgToAnns.get(img_id, []):
            if ann.get("id") in coco.bad_ann_ids or ann["category_id"] not in cat_to_label:
                continue
            x, y, w, h = ann["bbox"]
            is_crowd = bool(ann.get("iscrowd", 0))
            if (w < 1 or h < 1) and not is_crowd:
                tiny += 1  # COCO has a few sub-pixel boxes; not trainable, and scored by pycocotools as it does
                if problems is not None:
                    problems.warn("degenerate_box", f"{ann_file}: annotation {ann.get('id')} (image {img_id}): "
                                                    f"bbox {ann['bbox']} is under 1 px wide or high; not a target")
                continue
            boxes.append((x, y, x + w, y + h))
            labels.append(cat_to_label[ann["category_id"]])
            crowd.append(is_crowd)
        records.append(
            Record(
                image_dir / info["file_name"],
                int(img_id),
                int(info.get("height") or 0),
                int(info.get("width") or 0),
                np.asarray(boxes, dtype=np.float32).reshape(-1, 4),
                np.asarray(labels, dtype=np.int64),
                np.zeros(len(boxes), dtype=bool),
                np.asarray(crowd, dtype=bool),
            )
        )
    if tiny:
        logger.info("%s: %d annotation(s) narrower or lower than 1 px are not training targets", ann_file, tiny)
    return records, class_names, {i: c for c, i in cat_to_label.items()}, coco


def _duplicates(ids: list[Any]) -> list[Any]:
    """The ids that occur more than once, in order of their second occurrence."""
    seen: set[Any] = set()
    out = []
    for i in ids:
        if i in seen and i not in out:
            out.append(i)
        seen.add(i)
    return out


def check_coco(data: dict, ann_file: Path, problems: Problems) -> set[Any]:
    """Report what pycocotools would silently get wrong: duplicate image or annotation ids (the later one wins,
    so an image gets another's pixels or boxes), annotations of unknown images or categories, malformed or
    inverted boxes; each one line naming the file and the id. Returns the ids of the annotations to leave out
    (when ``problems`` collects instead of raising)."""

    try:
        images, anns, cats = data.get("images", []), data.get("annotations", []), data.get("categories", [])
        image_ids = [im["id"] for im in images]
        cat_ids = {c["id"] for c in cats}
        ann_ids = [a["id"] for a in anns if "id" in a]
    except (KeyError, TypeError) as e:
        raise DataError(f"{ann_file}: an image / category / annotation entry without {e}") from e
    for d in _duplicates(image_ids):
        problems.add("duplicate_id", f"{ann_file}: image id {d} is used by more than one image (file names "
                                     f"{[im.get('file_name') for im in images if im['id'] == d][:3]})")
    for d in _duplicates(ann_ids):
        problems.add("duplicate_id", f"{ann_file}: annotation id {d} is used by more than one annotation")
    known = set(image_ids)
    bad: set[Any] = set()
    for a in anns:
        where = f"{ann_file}: annotation {a.get('id', '?')}"
        message = kind = None
        if a.get("image_id") not in known:
            kind = "unknown_image"
            message = f"{where} refers to image id {a.get('image_id')!r}, which is not in 'images'"
        elif a.get("category_id") not in cat_ids:
            kind, message = "unknown_class", (
                f"{where} has category_id {a.get('category_id')!r}, which is not in 'categories' "
                f"(ids {sorted(cat_ids)[:10]}{' ...' if len(cat_ids) > 10 else ''})")
        else:
            box = a.get("bbox")
            if (not isinstance(box, list | tuple) or len(box) != 4
                    or not all(isinstance(v, int | float) and math.isfinite(v) for v in box)):
                kind = "bad_annotation"
                message = f"{where}: bbox must be 4 finite numbers [x, y, width, height], got {box!r}"
            elif box[2] < 0 or box[3] < 0:
                kind, message = "bad_annotation", f"{where}: bbox {box} has a negative width or height"
        if message is not None:
            problems.add(kind, message)
            bad.add(a.get("id"))
    return bad
