"""A user's own datasets: VOC-style folders with any classes, ultralytics-layout YOLO sets, and the problem
collector the loaders and ``tools/check_dataset.py`` share.

- VOC-style: ``<root>/Annotations/**/*.xml`` + ``<root>/JPEGImages/`` (images of any common extension, found by
  the XML's stem, else by its ``<filename>``), optionally ``<root>/ImageSets/Main/<split>.txt``. The folders may
  also be named as LabelImg and other tools write them (``annotations/`` or ``annots/`` + ``images/``, any letter
  case, or the XML beside the images) or given (``ann_dir``, ``image_dir``). Without a split, the training side
  uses the ``train`` (else ``trainval``) list when there is one, the evaluation side ``val`` (else ``test``).
  Classes: given, or collected from the XML (sorted). Boxes follow the VOC convention (1-based inclusive pixels).
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


# Folder names labeling tools write, matched in any letter case: the devkit's first, then LabelImg's and CVAT's.
ANNOTATION_DIRS = ("Annotations", "annots", "annotation", "xml", "xmls", "labels")
IMAGE_DIRS = ("JPEGImages", "images", "imgs", "img", "image", "pictures")
# ImageSets/Main lists a VOC-style folder's training side uses when no split is named, best first: "trainval"
# holds the images of "val", so "train" goes first (every XML would train on the images it is then scored on).
TRAIN_SPLITS = ("train", "trainval")
# The lists of the evaluation side (check_dataset --split val / test, a test set named without a split).
TEST_SPLITS = {"val": ("val", "test"), "test": ("test", "val")}


@dataclass(frozen=True)
class VocLayout:
    """Where a VOC-style folder keeps its XML and its images (the devkit's names or those of another tool)."""

    root: Path
    ann_dir: Path  # the XML, possibly in sub-folders; the image ids are their paths relative to it
    image_dir: Path  # the images, found by the XML's id, else by its <filename>

    def split_file(self, split: str) -> Path:
        return self.root / "ImageSets" / "Main" / f"{split}.txt"


def _child_dir(root: Path, names: Sequence[str], wanted: Callable[[Path], bool]) -> Path | None:
    """The first sub-folder of ``root`` named one of ``names`` (any letter case) for which ``wanted`` holds."""
    children = {p.name.lower(): p for p in sorted(root.iterdir()) if p.is_dir()} if root.is_dir() else {}
    for name in names:
        p = children.get(name.lower())
        if p is not None and wanted(p):
            return p
    return None


def _has_xml(folder: Path) -> bool:
    return next(folder.rglob("*.xml"), None) is not None


def _has_images(folder: Path) -> bool:
    return any(p.suffix.lower() in IMAGE_EXTENSIONS for p in folder.iterdir())


def _xml_dir(root: Path) -> Path | None:
    """Where a VOC-style folder keeps its XML: an annotation folder of :data:`ANNOTATION_DIRS`, else ``root``
    itself, else its image folder (XML beside the images); None when there is no XML."""
    found = _child_dir(root, ANNOTATION_DIRS, _has_xml)
    if found is None and next(root.glob("*.xml"), None) is not None:
        found = root
    return found or _child_dir(root, IMAGE_DIRS, lambda p: next(p.glob("*.xml"), None) is not None)


def is_voc_folder(root: Path) -> bool:
    """Whether ``root`` looks like a VOC-style folder (see :func:`find_voc_layout`)."""
    return root.is_dir() and _xml_dir(root) is not None


def find_voc_layout(root: Path, ann_dir: str = "", image_dir: str = "") -> VocLayout:
    """The folders of a VOC-style dataset. ``ann_dir`` / ``image_dir``: given (relative to ``root`` unless
    absolute), else the first of :data:`ANNOTATION_DIRS` / :data:`IMAGE_DIRS` in any letter case; without an
    annotation folder, XML in ``root`` or in the image folder (LabelImg's default: XML beside the images); without
    an image folder, the annotation folder when it holds images, else ``root``."""
    if not root.is_dir():
        raise DataError(f"VOC-style dataset {root}: no such folder")
    if ann_dir:
        ann = root / ann_dir
        if not ann.is_dir():
            raise DataError(f"VOC-style dataset {root}: ann_dir {ann_dir!r} is not a folder ({ann})")
    else:
        found = _xml_dir(root)
        if found is None:
            raise DataError(f"VOC-style dataset {root}: no annotation folder with XML ({'/'.join(ANNOTATION_DIRS)}, "
                            "any letter case) and no XML beside the images; name it with ann_dir")
        ann = found
    if image_dir:
        images = root / image_dir
        if not images.is_dir():
            raise DataError(f"VOC-style dataset {root}: image_dir {image_dir!r} is not a folder ({images})")
    else:
        images = _child_dir(root, IMAGE_DIRS, lambda p: True) or (ann if _has_images(ann) else root)
    return VocLayout(root, ann, images)


def default_voc_split(layout: VocLayout, side: str) -> str | None:
    """The ImageSets/Main list a description without a split means on ``side`` ("train", "val" or "test"):
    the first of :data:`TRAIN_SPLITS` / :data:`TEST_SPLITS` that exists; None (every XML) without one."""
    for split in TRAIN_SPLITS if side == "train" else TEST_SPLITS[side]:
        if layout.split_file(split).is_file():
            return split
    return None


def _index_images(folder: Path) -> dict[str, list[Path]]:
    """Image files under ``folder`` by their path relative to it without the extension ("a/b" for a/b.png)."""
    out: dict[str, list[Path]] = {}
    for p in sorted(folder.rglob("*")):
        if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file():
            out.setdefault(p.relative_to(folder).with_suffix("").as_posix(), []).append(p)
    return out


def voc_folder_ids(layout: VocLayout, split: str | None) -> list[str]:
    """The annotated image ids of a VOC-style folder: ``ImageSets/Main/<split>.txt`` or every XML."""
    if split:
        return read_split(layout.root, split)
    return sorted(p.relative_to(layout.ann_dir).with_suffix("").as_posix() for p in layout.ann_dir.rglob("*.xml"))


def collect_voc_classes(layout: VocLayout, ids: Sequence[str]) -> list[str]:
    """Sorted object names in the XML of ``ids`` (the class list of a folder given none)."""
    import xml.etree.ElementTree as ET

    names: set[str] = set()
    for image_id in ids:
        path = layout.ann_dir / f"{image_id}.xml"
        try:
            names.update((o.findtext("name") or "").strip() for o in ET.parse(path).getroot().iter("object"))
        except (OSError, ET.ParseError):
            continue  # reported by the loader with the file name
    names.discard("")
    return sorted(names)


def _xml_filename(xml: Path) -> str:
    """The XML's ``<filename>`` (empty when absent or unreadable: the loader reports a broken XML itself)."""
    import xml.etree.ElementTree as ET

    try:
        return Path((ET.parse(xml).getroot().findtext("filename") or "").strip().replace("\\", "/")).name
    except (OSError, ET.ParseError):
        return ""


def _find_image(xml: Path, image_id: str, index: dict[str, list[Path]], by_name: dict[str, list[Path]]
                ) -> list[Path]:
    """The image of one XML: by its id (the devkit's rule), else, or among several, by its ``<filename>``
    (LabelImg keeps the image's own name there, which need not share the XML's stem), in any letter case."""
    files = index.get(image_id, [])
    if len(files) == 1:
        return files
    name = _xml_filename(xml)
    if name:
        exact = [p for p in files if p.name == name] or by_name.get(name, [])
        named = exact or by_name.get(name.lower(), []) or by_name.get(Path(name).stem.lower(), [])
        if len(named) == 1 or (named and not files):
            return named
    return files


def load_voc_folder(
    layout: VocLayout, class_names: Sequence[str], split: str | None = None, problems: Problems | None = None
) -> list[Record]:
    """Records of a VOC-style folder with the user's ``class_names`` (see the module docstring)."""
    problems = problems or strict()
    index = _index_images(layout.image_dir)
    by_name: dict[str, list[Path]] = {}
    for paths in index.values():
        for p in paths:
            # Exact name, lower-case name and lower-case stem (a <filename> written without its extension).
            for key in {p.name, p.name.lower(), p.stem.lower()}:
                by_name.setdefault(key, []).append(p)
    class_to_index = {c: i for i, c in enumerate(class_names)}
    records = []
    for image_id in voc_folder_ids(layout, split):
        xml = layout.ann_dir / f"{image_id}.xml"
        files = _find_image(xml, image_id, index, by_name)
        if not files:
            problems.add("missing_image", f"{xml}: no image {image_id}.* ({'/'.join(IMAGE_EXTENSIONS)}) and no "
                                          f"image named by its <filename> in {layout.image_dir}")
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
