"""Dataset checks before training: counts per class, and every problem that would make a run wrong or stop it.

Used by ``tools/check_dataset.py``. Errors (the run would fail or learn from wrong boxes): unreadable, missing
or undecodable images, annotation problems the loaders report (unknown classes, malformed or inverted boxes,
annotations of unknown images), duplicate image ids, image sizes that disagree with the annotation (an EXIF
orientation applied by decoding included). Warnings (the item is used, the box is changed or dropped): boxes
under ``min_box_size`` pixels, boxes reaching outside the image (clipped by the transform), zero-area boxes,
truncated images decoded as far as their data goes.

Used by the trainer before its first step: :func:`warn_shared_images` (training and test sets sharing images
inflate the test scores) and :func:`verify_images` (every training image decodes, once, cached).
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import math
import os
from collections import Counter, defaultdict
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from resbackbone.engine.sampling import class_image_frequencies, repeat_factors
from resbackbone.errors import DataError

from .base import DetectionDataset, Record, check_size
from .custom import Problems, image_size
from .transforms import RECOVERED_IMAGE, read_image

logger = logging.getLogger("detection.data")

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

    def image_fraction(self, name: str) -> float:
        """The fraction of the set's images holding class ``name`` (what repeat-factor sampling looks at)."""
        return self.images_per_class[name] / max(self.num_images, 1)

    def format(self, max_messages: int = 10) -> str:
        """The table for stdout: classes, then each kind of error / warning with its first messages."""
        w = max([len("class"), *(len(c) for c in self.class_names)])
        lines = [f"{self.name}: {self.num_images} images, {len(self.class_names)} classes, "
                 f"{sum(self.instances.values())} boxes, {self.images_without_boxes} images without boxes",
                 f"{'class':<{w}}  {'images':>7}  {'(%)':>6}  {'boxes':>7}  {'crowd':>6}  {'difficult':>9}"]
        for c in self.class_names:
            lines.append(f"{c:<{w}}  {self.images_per_class[c]:>7}  {100 * self.image_fraction(c):>6.1f}  "
                         f"{self.instances[c]:>7}  {self.crowd[c]:>6}  {self.difficult[c]:>9}")
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
            if decode:
                image, recovered = read_image(r.file)
                h, w = image.shape[:2]
                if recovered:
                    report.warnings.append(("recovered_image", RECOVERED_IMAGE.format(r.file)))
            else:
                h, w = image_size(r.file)
            check_size(r, h, w)
        except DataError as e:
            text = str(e)
            kind = ("missing_image" if "not found" in text else "size_mismatch" if "differs from" in text
                    else "unreadable_image")
            report.errors.append((kind, text))
    return report


# ------------------------------------------------------------------------------------------- class balance

# Classes named in the one-line summaries (the rarest / most repeated first); the others are counted.
SUMMARY_CLASSES = 8


def class_frequency_summary(image_classes: list[set[int]], class_names: Sequence[str]) -> str:
    """One line: the images and, rarest first, the fraction of them holding each class (``image_classes``: per
    image the classes of its training boxes, ``DetectionDataset.image_classes()``)."""
    freq = class_image_frequencies(image_classes)
    ranked = sorted((freq.get(c, 0.0), name) for c, name in enumerate(class_names))
    shown = ", ".join(f"{name} {100 * f:.1f}%" for f, name in ranked[:SUMMARY_CLASSES])
    more = f", ... ({len(ranked) - SUMMARY_CLASSES} more)" if len(ranked) > SUMMARY_CLASSES else ""
    return f"{len(image_classes)} images; images holding each class, rarest first: {shown}{more}"


def repeat_factor_report(image_classes: list[set[int]], class_names: Sequence[str], threshold: float
                         ) -> dict[str, Any]:
    """Repeat-factor sampling at ``threshold`` on these images (as training computes it, from the boxes it trains
    on: difficult ones left out): the factors' min / mean / max, the images an epoch then draws on average, and
    the classes with the largest factors ``max(1, sqrt(threshold / f_c))``."""
    factors = repeat_factors(image_classes, threshold)
    freq = class_image_frequencies(image_classes)
    per_class = sorted((-max(1.0, math.sqrt(threshold / f)), class_names[c]) for c, f in freq.items())
    return {"threshold": threshold, "min": min(factors, default=1.0), "mean": sum(factors) / max(len(factors), 1),
            "max": max(factors, default=1.0), "images": len(factors), "images_per_epoch": sum(factors),
            "largest": {name: -r for r, name in per_class[:SUMMARY_CLASSES] if -r > 1.0}}


def repeat_factor_summary(report: dict[str, Any]) -> str:
    """:func:`repeat_factor_report` as one line."""
    largest = ", ".join(f"{name} {r:.2f}" for name, r in report["largest"].items()) or "none above 1"
    return (f"repeat factors at threshold {report['threshold']:g}: min {report['min']:.2f}, mean "
            f"{report['mean']:.2f}, max {report['max']:.2f}: an epoch draws {report['images_per_epoch']:.0f} images "
            f"instead of {report['images']} on average; largest: {largest}")


# ------------------------------------------------------------------------------------- before the first step

# Name of the decode-check cache (in the folder given to verify_images, e.g. the run's output folder).
IMAGE_CHECK_FILE = "image_check.json"
# Training sets larger than this are not decode-checked before training (minutes of decoding, every new run);
# tools/check_dataset.py decodes them all.
MAX_VERIFIED_IMAGES = 50_000
_HASH_CHUNK = 1 << 20


def _resolved(path: Path) -> Path:
    try:
        return path.resolve()
    except OSError:
        return path


def _file_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return -1  # missing: never the same content as anything (its absence is reported elsewhere)


def _digest(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha1").hexdigest()


def shared_images(train: DetectionDataset, test: DetectionDataset) -> int:
    """How many images of ``test`` are also images of ``train``: the same file (resolved path) or the same bytes.

    Only files of a size that occurs on both sides are read (and hashed), so two disjoint sets cost one ``stat``
    per image. Copies re-encoded or resized are not found (that would need image similarity, not file equality).
    """
    train_files = {_resolved(r.file) for r in train.records}
    by_size: dict[int, list[Path]] = defaultdict(list)
    for f in train_files:
        by_size[_file_size(f)].append(f)
    by_size.pop(-1, None)
    digest = functools.cache(_digest)  # each file hashed at most once

    count = 0
    for r in test.records:
        f = _resolved(r.file)
        if f in train_files:
            count += 1
            continue
        same_size = by_size.get(_file_size(f), [])
        try:
            count += bool(same_size) and digest(f) in {digest(g) for g in same_size}
        except OSError:
            continue  # unreadable: the loaders report it
    return count


def warn_shared_images(train: DetectionDataset, test: DetectionDataset) -> int:
    """:func:`shared_images`, and one warning line with the count when it is not 0 (the test scores of the run
    would be inflated: the model saw those images)."""
    n = shared_images(train, test)
    if n:
        logger.warning("%d of the %d test images (%s) are also training images (%s), by file or by content: the "
                       "test scores will be inflated; evaluate on images kept out of training (--test-dataset)",
                       n, len(test), test.name, train.name)
    return n


def _check_one(path: Path) -> dict[str, Any]:
    """The cache entry of one file: its decoded size and whether it needed recovery, or the decoding error."""
    try:
        image, recovered = read_image(path)
    except DataError as e:
        return {"error": str(e)}
    return {"height": int(image.shape[0]), "width": int(image.shape[1]), "recovered": recovered}


def _cache_key(path: Path) -> str:
    st = path.stat()
    return f"{_resolved(path)}|{st.st_size}|{st.st_mtime_ns}"


def verify_images(
    dataset: DetectionDataset, cache_dir: str | Path | None = None, *, max_images: int = MAX_VERIFIED_IMAGES
) -> list[str]:
    """Decode every image of ``dataset`` once, before training: an image that would stop the run at iteration
    30 stops it now, in one line naming the file. Returns the messages of the unusable images.

    Truncated JPEGs are recovered as viewers do (one warning per file, see :func:`transforms.read_image`); an
    image that cannot be decoded or whose size is not its annotation's is a DataError naming the file and
    ``data.skip_bad=true`` (with ``skip_bad``, a warning: the dataset skips it when it comes). Results are cached
    in ``cache_dir`` / :data:`IMAGE_CHECK_FILE` by file path + size + modification time, so a resumed or repeated
    run decodes only changed files. Sets over ``max_images`` are not checked (logged).
    """
    records = dataset.records
    if len(records) > max_images:
        logger.info("%s: %d images, not decode-checked before training (over %d; tools/check_dataset.py decodes "
                    "them all)", dataset.name, len(records), max_images)
        return []
    cache_file = Path(cache_dir) / IMAGE_CHECK_FILE if cache_dir is not None else None
    cache: dict[str, dict[str, Any]] = {}
    if cache_file is not None and cache_file.is_file():
        try:
            cache = json.loads(cache_file.read_text())
        except (OSError, ValueError):
            cache = {}  # unreadable cache: decode again
    results: dict[Path, dict[str, Any]] = {}
    todo: dict[str, Path] = {}
    for r in records:
        try:
            key = _cache_key(r.file)
        except OSError:
            results[r.file] = {"error": f"image file not found: {r.file}"}
            continue
        if key in cache:
            results[r.file] = cache[key]
        else:
            todo[key] = r.file
    if todo:
        logger.info("%s: decode-checking %d image(s) before training", dataset.name, len(todo))
        # OpenCV decodes without holding the GIL: threads use the cores without pickling images.
        with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
            for (key, path), entry in zip(todo.items(), pool.map(_check_one, todo.values())):
                cache[key] = results[path] = entry
        if cache_file is not None:
            _write_json(cache_file, cache)
    return _report_verified(dataset, records, results)


def _report_verified(dataset: DetectionDataset, records: list[Record], results: dict[Path, dict[str, Any]]
                     ) -> list[str]:
    """Warn about recovered files; raise (or, with ``skip_bad``, warn) about unusable ones."""
    recovered = sorted({str(r.file) for r in records if results[r.file].get("recovered")})
    for name in recovered[:MAX_LISTED]:
        logger.warning(RECOVERED_IMAGE.format(name))
    if len(recovered) > MAX_LISTED:
        logger.warning("... and %d more recovered image(s)", len(recovered) - MAX_LISTED)
    bad = []
    for r in records:
        entry = results[r.file]
        try:
            if "error" in entry:
                raise DataError(entry["error"])
            check_size(r, entry["height"], entry["width"])
        except DataError as e:
            bad.append(str(e))
    if bad and not dataset.skip_bad:
        raise DataError(f"{bad[0]} ({len(bad)} unusable image(s) in {dataset.name}; tools/check_dataset.py lists "
                        "them, data.skip_bad=true skips such files)")
    if bad:
        logger.warning("%d unusable image(s) in %s will be skipped (data.skip_bad); first: %s", len(bad),
                       dataset.name, bad[0])
    return bad


# Recovered files named one per line before the rest is counted.
MAX_LISTED = 10


def _write_json(path: Path, data: dict[str, Any]) -> None:
    """Write atomically (a crash or a second process never leaves half a file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)
