"""One small labelled image set written as a user would have it: COCO JSON (0-based gapped category ids, a
Roboflow-style empty super-category, file names in sub-folders), a VOC-style folder (PNG images, three chosen
classes) and an ultralytics YOLO layout. The images and boxes come from the real VOC2007 sample in
``../shared/data/voc`` when it is there (downscaled), else they are generated."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from tests.helpers import SHARED_DATA

CLASSES = ("person", "car", "chair")  # the order a user chose (VOC-style --classes, YOLO names)
# COCO category ids: 0-based, with gaps, and id 0 the Roboflow-style parent with no annotations.
COCO_CATEGORIES = [
    {"id": 0, "name": "objects", "supercategory": "none"},
    {"id": 2, "name": "car", "supercategory": "objects"},
    {"id": 5, "name": "chair", "supercategory": "objects"},
    {"id": 9, "name": "person", "supercategory": "objects"},
]
COCO_IDS = {"car": 2, "chair": 5, "person": 9}
SHARED_VOC = SHARED_DATA / "voc" / "VOCdevkit" / "VOC2007"


@dataclass
class Sample:
    stem: str
    image: np.ndarray  # (H, W, 3) uint8 RGB
    boxes: list[tuple[float, float, float, float]]  # XYXY continuous pixels
    names: list[str]


def _from_shared_voc(num: int, max_side: int) -> list[Sample]:
    out = []
    for xml in sorted((SHARED_VOC / "Annotations").glob("*.xml")):
        root = ET.parse(xml).getroot()
        objs = [(o.findtext("name"), o.find("bndbox")) for o in root.iter("object")]
        objs = [(n, b) for n, b in objs if n in CLASSES]
        if not objs:
            continue
        image = cv2.cvtColor(cv2.imread(str(SHARED_VOC / "JPEGImages" / f"{xml.stem}.jpg")), cv2.COLOR_BGR2RGB)
        s = max_side / max(image.shape[:2])
        image = cv2.resize(image, (round(image.shape[1] * s), round(image.shape[0] * s)), interpolation=cv2.INTER_AREA)
        h, w = image.shape[:2]
        boxes = []
        for _, b in objs:
            x1, y1, x2, y2 = (float(b.findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax"))
            # Whole pixels, so every format (1-based VOC, COCO, normalized YOLO) holds them exactly.
            boxes.append((min(round((x1 - 1) * s), w - 2), min(round((y1 - 1) * s), h - 2),
                          min(max(round(x2 * s), round((x1 - 1) * s) + 2), w),
                          min(max(round(y2 * s), round((y1 - 1) * s) + 2), h)))
        out.append(Sample(xml.stem, image, boxes, [n for n, _ in objs]))
        if len(out) == num:
            break
    return out


def _generated(num: int, max_side: int) -> list[Sample]:
    rng = np.random.default_rng(0)
    out = []
    for i in range(num):
        h, w = int(rng.integers(max_side * 3 // 4, max_side + 1)), max_side
        image = rng.integers(0, 80, (h, w, 3), dtype=np.uint8)
        boxes, names = [], []
        for j in range(1 + i % 3):
            bw, bh = int(rng.integers(16, 40)), int(rng.integers(16, 40))
            x, y = int(rng.integers(0, w - bw)), int(rng.integers(0, h - bh))
            image[y:y + bh, x:x + bw] = (200, 60 * j, 255 - 60 * j)
            boxes.append((x, y, x + bw, y + bh))
            names.append(CLASSES[(i + j) % 3])
        out.append(Sample(f"img{i:03d}", image, boxes, names))
    return out


def samples(num: int = 12, max_side: int = 112) -> list[Sample]:
    """``num`` images with person / car / chair boxes: real VOC photos if available, else generated."""
    got = _from_shared_voc(num, max_side) if (SHARED_VOC / "Annotations").is_dir() else []
    return got if len(got) == num else _generated(num, max_side)


def write_coco(root: Path, items: list[Sample], split: str) -> Path:
    """``root/annotations/{split}.json`` + ``root/images/<split>/sub/<stem>.jpg``; image ids 100, 103, ..."""
    images, anns = [], []
    for i, s in enumerate(items):
        rel = f"{split}/sub/{s.stem}.jpg"
        path = root / "images" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(path), cv2.cvtColor(s.image, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 95])
        images.append({"id": 100 + 3 * i, "file_name": rel, "height": s.image.shape[0], "width": s.image.shape[1]})
        for (x1, y1, x2, y2), name in zip(s.boxes, s.names):
            anns.append({"id": len(anns) + 1, "image_id": 100 + 3 * i, "category_id": COCO_IDS[name],
                         "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1), "iscrowd": 0})
    ann = root / "annotations" / f"{split}.json"
    ann.parent.mkdir(parents=True, exist_ok=True)
    ann.write_text(json.dumps({"images": images, "annotations": anns, "categories": COCO_CATEGORIES}))
    return ann


def write_voc_folder(root: Path, items: dict[str, list[Sample]]) -> Path:
    """``root/{Annotations, JPEGImages (PNG), ImageSets/Main/<split>.txt}`` (VOC's 1-based boxes)."""
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for split, group in items.items():
        (root / "ImageSets" / "Main" / f"{split}.txt").write_text("".join(f"{s.stem}\n" for s in group))
        for s in group:
            cv2.imwrite(str(root / "JPEGImages" / f"{s.stem}.png"), cv2.cvtColor(s.image, cv2.COLOR_RGB2BGR))
            h, w = s.image.shape[:2]
            objs = "".join(
                f"<object><name>{n}</name><difficult>0</difficult><bndbox><xmin>{x1 + 1}</xmin><ymin>{y1 + 1}</ymin>"
                f"<xmax>{x2}</xmax><ymax>{y2}</ymax></bndbox></object>"
                for (x1, y1, x2, y2), n in zip(s.boxes, s.names))
            (root / "Annotations" / f"{s.stem}.xml").write_text(
                f"<annotation><filename>{s.stem}.png</filename><size><width>{w}</width><height>{h}</height>"
                f"<depth>3</depth></size>{objs}</annotation>")
    return root


def write_yolo(root: Path, items: dict[str, list[Sample]]) -> Path:
    """``root/data.yaml`` + ``root/{images,labels}/<split>/``; names in :data:`CLASSES` order."""
    for split, group in items.items():
        (root / "images" / split).mkdir(parents=True, exist_ok=True)
        (root / "labels" / split).mkdir(parents=True, exist_ok=True)
        for s in group:
            cv2.imwrite(str(root / "images" / split / f"{s.stem}.jpg"), cv2.cvtColor(s.image, cv2.COLOR_RGB2BGR),
                        [cv2.IMWRITE_JPEG_QUALITY, 95])
            h, w = s.image.shape[:2]
            lines = [f"{CLASSES.index(n)} {(x1 + x2) / 2 / w:.6f} {(y1 + y2) / 2 / h:.6f} {(x2 - x1) / w:.6f} "
                     f"{(y2 - y1) / h:.6f}" for (x1, y1, x2, y2), n in zip(s.boxes, s.names)]
            (root / "labels" / split / f"{s.stem}.txt").write_text("\n".join(lines) + "\n")
    data = root / "data.yaml"
    data.write_text(f"path: {root}\ntrain: images/train\nval: images/val\nnames:\n"
                    + "".join(f"  {i}: {n}\n" for i, n in enumerate(CLASSES)))
    return data
