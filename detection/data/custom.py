"""A user's own datasets: VOC-style folders with any classes, ultralytics-layout YOLO sets, and the problem
collector the loaders and ``tools/check_dataset.py`` share.

- VOC-style: ``<root>/Annotations/**/*.xml`` + ``<root>/JPEGImages/`` (images of any common extension, found by
  the XML's stem), optionally ``<root>/ImageSets/Main/<split>.txt``. Classes: given, or collected from the XML
  (sorted). Boxes follow the VOC convention (1-based inclusive pixels).
- YOLO (ultralytics): ``data.yaml`` with ``path`` (optional), ``train`` / ``val`` / ``test`` (a folder of images,
  a ``.txt`` list of image paths, or a list of those) and ``names`` (a list or ``{index: name}``); labels in
  ``.../labels/...`` beside ``.../images/...``, one ``class cx cy w h`` line per object, normalized to the
  oriented image (a polygon line ``class x1 y1 x2 y2 ...`` gives its bounding box). An image without a label file
  has no objects, as in ultralytics.

Image sizes of YOLO sets are read from the file headers (PIL, EXIF orientation applied, as decoding does).
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from resbackbone.errors import DataError

from .base import Record
from .voc import parse_voc_xml, read_split

logger = logging.getLogger("detection.data")

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


@dataclass
class Problems:
    """Problems met while loading, by kind; ``raise_on`` kinds (None: every kind) raise at once as before.

    The loaders report through :meth:`add`; training without ``skip_bad`` raises on the first, with it and in
    ``tools/check_dataset.py`` they are collected and the offending item is left out.
    """

    raise_on: Callable[[str], bool] | None = None
    items: list[tuple[str, str]] = field(default_factory=list)
    # Not errors (the item is still used, e.g. a box the transform clips or drops): never raise, never stop a run.
    warnings: list[tuple[str, str]] = field(default_factory=list)

    def add(self, kind: str, message: str) -> None:
        if self.raise_on is None or self.raise_on(kind):
            raise DataError(message)
        self.items.append((kind, message))

    def warn(self, kind: str, message: str) -> None:
        self.warnings.append((kind, message))

    def counts(self) -> Counter:
        return Counter(kind for kind, _ in self.items)


def strict() -> Problems:
    """Every problem raises (the default of the loaders)."""
    return Problems(raise_on=None)


def collecting() -> Problems:
    """Every problem is collected and its item skipped."""
    return Problems(raise_on=lambda kind: False)


# ------------------------------------------------------------------------------------------- VOC-style folder


def _index_images(folder: Path) -> dict[str, list[Path]]:
    """Image files under ``folder`` by their path relative to it without the extension ("a/b" for a/b.png)."""
    out: dict[str, list[Path]] = {}
    for p in sorted(folder.rglob("*")):
        if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file():
            out.setdefault(p.relative_to(folder).with_suffix("").as_posix(), []).append(p)
    return out


def voc_folder_ids(root: Path, split: str | None) -> list[str]:
    """The annotated image ids of a VOC-style folder: ``ImageSets/Main/<split>.txt`` or every XML."""
    ann = root / "Annotations"
    if not ann.is_dir():
        raise DataError(f"VOC-style dataset {root}: no Annotations/ folder (expected Annotations/*.xml and "
                        "JPEGImages/)")
    if split:
        return read_split(root, split)
    return sorted(p.relative_to(ann).with_suffix("").as_posix() for p in ann.rglob("*.xml"))


def collect_voc_classes(root: Path, ids: Sequence[str]) -> list[str]:
    """Sorted object names in the XML of ``ids`` (the class list of a folder given none)."""
    import xml.etree.ElementTree as ET

    names: set[str] = set()
    for image_id in ids:
        path = root / "Annotations" / f"{image_id}.xml"
        try:
            names.update((o.findtext("name") or "").strip() for o in ET.parse(path).getroot().iter("object"))
        except (OSError, ET.ParseError):
            continue  # reported by the loader with the file name
    names.discard("")
    return sorted(names)


def load_voc_folder(
    root: Path, class_names: Sequence[str], split: str | None = None, problems: Problems | None = None
) -> list[Record]:
    """Records of a VOC-style folder with the user's ``class_names`` (see the module docstring)."""
    problems = problems or strict()
    images_dir = root / "JPEGImages"
    if not images_dir.is_dir():
        raise DataError(f"VOC-style dataset {root}: no JPEGImages/ folder")
    index = _index_images(images_dir)
    class_to_index = {c: i for i, c in enumerate(class_names)}
    records = []
    for image_id in voc_folder_ids(root, split):
        xml = root / "Annotations" / f"{image_id}.xml"
        files = index.get(image_id, [])
        if not files:
            problems.add("missing_image", f"{xml}: no image {image_id}.* ({'/'.join(IMAGE_EXTENSIONS)}) in "
                                          f"{images_dir}")
            continue
        if len(files) > 1:
            problems.add("ambiguous_image", f"{xml}: several images match {image_id}: "
                                            f"{', '.join(p.name for p in files)}")
            continue
        try:
            h, w, boxes, labels, difficult = parse_voc_xml(xml, class_to_index)
        except DataError as e:
            problems.add("unknown_class" if "unknown class" in str(e) else "bad_annotation", str(e))
            continue
        records.append(Record(files[0], image_id, h, w, boxes, labels, difficult))
    return records


# ------------------------------------------------------------------------------------------------------- YOLO


def read_yolo_yaml(path: Path) -> dict[str, Any]:
    """The ultralytics ``data.yaml`` with ``names`` as a list (a ``{index: name}`` mapping is put in order)."""
    import yaml

    if not path.is_file():
        raise DataError(f"YOLO dataset file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise DataError(f"{path}: invalid YAML ({e})") from e
    if not isinstance(data, dict) or "names" not in data:
        raise DataError(f"{path}: a YOLO data.yaml needs 'names' (and 'train' / 'val')")
    names = data["names"]
    if isinstance(names, dict):
        keys = sorted(names)
        if keys != list(range(len(keys))):
            raise DataError(f"{path}: 'names' indices must be 0..{len(keys) - 1}, got {keys}")
        names = [names[k] for k in keys]
    if not isinstance(names, list) or not all(isinstance(n, str | int) for n in names):
        raise DataError(f"{path}: 'names' must be a list of class names or an index -> name mapping")
    if "nc" in data and int(data["nc"]) != len(names):
        raise DataError(f"{path}: nc={data['nc']} but {len(names)} names")
    data["names"] = [str(n) for n in names]
    return data


def _yolo_split_images(yaml_path: Path, data: dict[str, Any], split: str) -> tuple[list[Path], Path]:
    """The images of ``split`` and the folder their ids are relative to."""
    if split not in data or data[split] in (None, ""):
        raise DataError(f"{yaml_path}: no '{split}' entry (has: {sorted(k for k in data if k != 'names')})")
    base = Path(data.get("path") or ".")
    base = base if base.is_absolute() else (yaml_path.parent / base)
    entries = data[split] if isinstance(data[split], list) else [data[split]]
    images: list[Path] = []
    for entry in entries:
        p = Path(str(entry))
        p = p if p.is_absolute() else base / p
        if p.is_dir():
            images += sorted(q for q in p.rglob("*") if q.suffix.lower() in IMAGE_EXTENSIONS and q.is_file())
        elif p.suffix == ".txt" and p.is_file():
            for line in p.read_text().splitlines():
                if line.strip():
                    q = Path(line.strip())
                    # ultralytics: "./x" is relative to the list's folder, other relative paths to the base.
                    images.append(q if q.is_absolute() else (p.parent / q if line.startswith("./") else base / q))
        else:
            raise DataError(f"{yaml_path}: '{split}' entry {entry!r} is neither an image folder nor a .txt list "
                            f"(looked at {p})")
    return images, base


def yolo_label_path(image: Path) -> Path:
    """ultralytics' rule: the last ``images`` folder of the path becomes ``labels``, the extension ``.txt``."""
    parts = list(image.parts)
    for i in range(len(parts) - 2, -1, -1):
        if parts[i] == "images":
            parts[i] = "labels"
            break
    return Path(*parts).with_suffix(".txt")


def image_size(path: Path) -> tuple[int, int]:
    """``(height, width)`` from the file header, EXIF orientation applied (as decoding does); DataError when
    the file cannot be read."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            w, h = im.size
            orientation = im.getexif().get(0x0112, 1)
    except (OSError, UnidentifiedImageError, ValueError) as e:
        raise DataError(f"cannot read image {path}: {e}") from e
    return (w, h) if orientation in (5, 6, 7, 8) else (h, w)


def load_yolo(
    yaml_path: Path, split: str, problems: Problems | None = None
) -> tuple[list[Record], list[str]]:
    """``(records, class names)`` of one split of an ultralytics-layout set."""
    problems = problems or strict()
    data = read_yolo_yaml(yaml_path)
    names = data["names"]
    images, base = _yolo_split_images(yaml_path, data, split)
    records = []
    for image in images:
        image_id = (image.relative_to(base) if image.is_relative_to(base) else image).with_suffix("").as_posix()
        try:
            h, w = image_size(image)
        except DataError as e:
            problems.add("unreadable_image" if image.is_file() else "missing_image", str(e))
            continue
        label = yolo_label_path(image)
        boxes, labels = [], []
        if label.is_file():
            bad = False
            for n, line in enumerate(label.read_text().splitlines(), start=1):
                if not line.strip():
                    continue
                try:
                    values = [float(v) for v in line.split()]
                except ValueError:
                    values = []
                cls = int(values[0]) if values and values[0].is_integer() else -1
                coords = values[1:]
                if cls < 0 or len(coords) < 4 or (len(coords) > 4 and len(coords) % 2):
                    problems.add("bad_annotation", f"{label}:{n}: expected 'class cx cy w h' (or a polygon), got "
                                                   f"{line.strip()!r}")
                    bad = True
                    break
                if cls >= len(names):
                    problems.add("unknown_class", f"{label}:{n}: class index {cls} outside the {len(names)} names "
                                                  f"of {yaml_path}")
                    bad = True
                    break
                if len(coords) == 4:
                    cx, cy, bw, bh = coords
                    box = (cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2)
                else:  # polygon: its bounding box
                    xs, ys = coords[0::2], coords[1::2]
                    box = (min(xs), min(ys), max(xs), max(ys))
                if box[2] < box[0] or box[3] < box[1]:
                    problems.add("bad_annotation", f"{label}:{n}: negative width or height in {line.strip()!r}")
                    bad = True
                    break
                boxes.append((box[0] * w, box[1] * h, box[2] * w, box[3] * h))
                labels.append(cls)
            if bad:
                continue
        records.append(Record(image, image_id, h, w, np.asarray(boxes, np.float32).reshape(-1, 4),
                              np.asarray(labels, np.int64), np.zeros(len(labels), bool)))
    return records, names
