"""Datasets laid out as real labeling tools write them, tiny (four 40-64 px noise images, two classes):
a LabelImg VOC folder, a Roboflow / CVAT COCO file, and a JPEG cut short as an interrupted copy leaves it."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np

NAMES = ("cat", "dog")
# (stem, height, width, [(class, x1, y1, x2, y2) in continuous pixels])
IMAGES = [
    ("img_0", 48, 64, [("cat", 4, 6, 30, 40)]),
    ("img_1", 64, 48, [("dog", 10, 10, 40, 50), ("cat", 2, 2, 12, 14)]),
    ("img_2", 40, 56, [("dog", 20, 8, 50, 36)]),
    ("img_3", 56, 56, [("cat", 8, 12, 44, 52)]),
]


def noise_image_bgr(h: int, w: int, seed: int) -> np.ndarray:
    """(h, w, 3) uint8 BGR noise (JPEG-incompressible: a cut file is missing real rows)."""
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def write_image(path: Path, h: int, w: int, seed: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), noise_image_bgr(h, w, seed))
    return path


def _labelimg_xml(filename: str, h: int, w: int, objects: list) -> str:
    """An annotation as LabelImg saves it: folder / filename / the annotator's absolute path, 1-based boxes."""
    objs = "".join(
        f"<object><name>{n}</name><pose>Unspecified</pose><truncated>0</truncated><difficult>0</difficult>"
        f"<bndbox><xmin>{x1 + 1}</xmin><ymin>{y1 + 1}</ymin><xmax>{x2}</xmax><ymax>{y2}</ymax></bndbox></object>"
        for n, x1, y1, x2, y2 in objects)
    return (f"<annotation><folder>images</folder><filename>{filename}</filename>"
            f"<path>C:\\Users\\me\\data\\images\\{filename}</path><source><database>Unknown</database></source>"
            f"<size><width>{w}</width><height>{h}</height><depth>3</depth></size><segmented>0</segmented>"
            f"{objs}</annotation>")


def write_labelimg(root: Path, ann_dir: str = "annotations", image_dir: str = "images", *,
                   renamed: bool = False, ext: str = ".jpg") -> Path:
    """A LabelImg folder; ``ann_dir == image_dir``: XML beside the images; ``renamed``: each XML's stem differs
    from its image's name (which only <filename> gives)."""
    for i, (stem, h, w, objects) in enumerate(IMAGES):
        filename = f"photo {i}{ext}" if renamed else f"{stem}{ext}"
        write_image(root / image_dir / filename, h, w, i)
        (root / ann_dir).mkdir(parents=True, exist_ok=True)
        (root / ann_dir / f"{stem}.xml").write_text(_labelimg_xml(filename, h, w, objects))
    return root


def write_coco_export(ann: Path, images: Path, *, sizes: bool = True, parent: bool = True) -> Path:
    """A COCO file as Roboflow (parent category id 0, ids from 0) or, with ``sizes=False``, as CVAT / by hand
    (no width / height) writes it; images in ``images``."""
    cats = [{"id": 0, "name": "objects", "supercategory": "none"}] if parent else []
    cats += [{"id": i + 1, "name": n, "supercategory": "objects"} for i, n in enumerate(NAMES)]
    out_images, anns = [], []
    for i, (stem, h, w, objects) in enumerate(IMAGES):
        write_image(images / f"{stem}_jpg.rf.{i}abc.jpg", h, w, i)
        entry = {"id": i, "license": 1, "file_name": f"{stem}_jpg.rf.{i}abc.jpg", "date_captured": "2024-01-01"}
        out_images.append({**entry, "height": h, "width": w} if sizes else entry)
        for n, x1, y1, x2, y2 in objects:
            anns.append({"id": len(anns), "image_id": i, "category_id": NAMES.index(n) + 1,
                         "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1), "segmentation": [],
                         "iscrowd": 0})
    ann.parent.mkdir(parents=True, exist_ok=True)
    ann.write_text(json.dumps({"info": {"description": "export"}, "licenses": [], "categories": cats,
                               "images": out_images, "annotations": anns}))
    return ann


def truncated_jpeg(path: Path, h: int = 48, w: int = 64, seed: int = 0, keep: float = 0.6) -> Path:
    """A JPEG cut after ``keep`` of its bytes, as an interrupted copy leaves it."""
    data = write_image(path, h, w, seed).read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    return path


EXPECTED = {stem: sorted((n, float(x1), float(y1), float(x2), float(y2)) for n, x1, y1, x2, y2 in objects)
            for stem, _, _, objects in IMAGES}
