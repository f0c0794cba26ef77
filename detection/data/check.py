"""Dataset checks before training: counts per class, and every problem that would make a run wrong or stop it.

Used by ``tools/check_dataset.py``. Errors (the run would fail or learn from wrong boxes): unreadable, missing
or undecodable images, annotation problems the loaders report (unknown classes, malformed or inverted boxes,
annotations of unknown images), duplicate image ids, image sizes that disagree with the annotation (an EXIF
orientation applied by decoding included). Warnings (the item is used, the box is changed or dropped): boxes
under ``min_box_size`` pixels, boxes reaching outside the image (clipped by the transform), zero-area boxes.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from resbackbone.errors import DataError

from .base import DetectionDataset, check_size
from .custom import Problems, image_size
from .transforms import decode_image

# How far past the border (pixels) a box may reach before it is reported: VOC's 1-based boxes reach W + 1 - 1.
OUTSIDE_TOLERANCE = 1.0


@dataclass
class DatasetReport:
    """The result of :func:`check_dataset`: JSON-ready via :meth:`as_dict`."""

    name: str
    class_names: list[str]
    num_images: int = 0
    images_without_boxes: int = 0
    instances: Counter = field(default_factory=Counter)  # class name -> boxes (crowd excluded)
    images_per_class: Counter = field(default_factory=Counter)
    crowd: Counter = field(default_factory=Counter)
    difficult: Counter = field(default_factory=Counter)
    errors: list[tuple[str, str]] = field(default_factory=list)  # (kind, message naming the file)
    warnings: list[tuple[str, str]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors

    def as_dict(self) -> dict[str, Any]:
        return {
            "dataset": self.name, "classes": self.class_names, "images": self.num_images,
            "images_without_boxes": self.images_without_boxes,
            "per_class": {c: {"instances": self.instances[c], "images": self.images_per_class[c],
                              "crowd": self.crowd[c], "difficult": self.difficult[c]} for c in self.class_names},
            "errors": dict(Counter(k for k, _ in self.errors)), "warnings": dict(Counter(k for k, _ in self.warnings)),
            "error_messages": [m for _, m in self.errors], "warning_messages": [m for _, m in self.warnings],
        }

    def format(self, max_messages: int = 10) -> str:
        """The table for stdout: classes, then each kind of error / warning with its first messages."""
        w = max([len("class"), *(len(c) for c in self.class_names)])
        lines = [f"{self.name}: {self.num_images} images, {len(self.class_names)} classes, "
                 f"{sum(self.instances.values())} boxes, {self.images_without_boxes} images without boxes",
                 f"{'class':<{w}}  {'images':>7}  {'boxes':>7}  {'crowd':>6}  {'difficult':>9}"]
        for c in self.class_names:
            lines.append(f"{c:<{w}}  {self.images_per_class[c]:>7}  {self.instances[c]:>7}  {self.crowd[c]:>6}  "
                         f"{self.difficult[c]:>9}")
        for title, items in (("errors", self.errors), ("warnings", self.warnings)):
            counts = Counter(k for k, _ in items)
            detail = ", ".join(f"{n} {k}" for k, n in counts.most_common())
            lines.append(f"{title}: {sum(counts.values())}" + (f" ({detail})" if counts else ""))
            for kind in counts:
                msgs = [m for k, m in items if k == kind]
                lines += [f"  {kind}: {m}" for m in msgs[:max_messages]]
                if len(msgs) > max_messages:
                    lines.append(f"  {kind}: ... {len(msgs) - max_messages} more (--json lists all)")
        return "\n".join(lines)


def check_dataset(
    dataset: DetectionDataset, problems: Problems, *, decode: bool = True, min_box_size: float = 2.0
) -> DatasetReport:
    """Count and check every record of ``dataset`` (built with ``problems`` collecting, ``filter_empty`` off).

    ``decode``: decode every image (slow on big sets: reads every pixel) to find corrupt files and size
    mismatches; False reads only the file headers (size, EXIF orientation).
    """
    report = DatasetReport(dataset.name, list(dataset.class_names), num_images=len(dataset.records))
    report.errors += problems.items
    report.warnings += problems.warnings
    names = dataset.class_names
    seen_ids: dict[Any, str] = {}
    for r in dataset.records:
        if r.image_id in seen_ids:
            report.errors.append(("duplicate_id", f"{r.file}: image id {r.image_id!r} is also the id of "
                                                  f"{seen_ids[r.image_id]}"))
        seen_ids.setdefault(r.image_id, str(r.file))
        crowd = r.crowd if len(r.crowd) == len(r.boxes) else np.zeros(len(r.boxes), bool)
        difficult = r.difficult if len(r.difficult) == len(r.boxes) else np.zeros(len(r.boxes), bool)
        if not (~crowd).any():
            report.images_without_boxes += 1
        for cls in {int(c) for c, k in zip(r.labels, crowd) if not k}:
            report.images_per_class[names[cls]] += 1
        for box, cls, is_crowd, is_difficult in zip(r.boxes, r.labels, crowd, difficult):
            name = names[int(cls)]
            if is_crowd:
                report.crowd[name] += 1
                continue
            report.instances[name] += 1
            report.difficult[name] += int(is_difficult)
            x1, y1, x2, y2 = (float(v) for v in box)
            where = f"{r.file}: {name} box [{x1:g}, {y1:g}, {x2:g}, {y2:g}]"
            if x2 - x1 <= 0 or y2 - y1 <= 0:
                report.warnings.append(("degenerate_box", f"{where} has no area (dropped in training)"))
            elif min(x2 - x1, y2 - y1) < min_box_size:
                report.warnings.append(("small_box", f"{where} is under {min_box_size:g} px on a side"))
            if r.width > 0 and r.height > 0 and (x1 < -OUTSIDE_TOLERANCE or y1 < -OUTSIDE_TOLERANCE or
                                                 x2 > r.width + OUTSIDE_TOLERANCE or y2 > r.height + OUTSIDE_TOLERANCE):
                report.warnings.append(("outside_image", f"{where} reaches outside the {r.width}x{r.height} "
                                                         "image (clipped in training)"))
        try:
            if not r.file.is_file():
                raise DataError(f"image file not found: {r.file}")
            h, w = decode_image(r.file).shape[:2] if decode else image_size(r.file)
            check_size(r, h, w)
        except DataError as e:
            text = str(e)
            kind = ("missing_image" if "not found" in text else "size_mismatch" if "differs from" in text
                    else "unreadable_image")
            report.errors.append((kind, text))
    return report
