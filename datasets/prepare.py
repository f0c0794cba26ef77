#!/usr/bin/env python
"""Verify a data root: which dataset names are usable, what is missing, and whether the counts are the official ones.

    python datasets/prepare.py [--data-root R] [--datasets NAME ...] [--generate-synthetic]

For every dataset name (all of them by default) it reports OK / MISSING / BROKEN:
- MISSING: a folder, split list or annotation file that the name needs is absent (the path is printed).
- BROKEN: the files exist but an image or annotation they list is absent or unreadable (counted, first few named).
- OK: everything listed is present; the image count is compared with the official release (a different count is
  reported, not failed: subsets are legitimate, e.g. the VOC sample in ../shared/data).
Exit status 1 when a name given with --datasets is not OK, or (without --datasets) when any present set is BROKEN.
Images are checked for existence only (decoding every COCO image would take an hour); annotations are parsed.
"""

from __future__ import annotations

import argparse
import json
import sys
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from detection.data.catalog import COCO_SETS, DATASET_NAMES, SYNTHETIC_SETS, VOC_SETS, get_data_root  # noqa: E402
from detection.data.synthetic import generate_synthetic  # noqa: E402

# Images per (VOC year, split) and per COCO annotation file in the official releases.
OFFICIAL_VOC_COUNTS = {
    ("2007", "train"): 2501, ("2007", "val"): 2510, ("2007", "trainval"): 5011, ("2007", "test"): 4952,
    ("2012", "train"): 5717, ("2012", "val"): 5823, ("2012", "trainval"): 11540,
}
OFFICIAL_COCO_COUNTS = {
    "instances_train2017.json": 118287, "instances_val2017.json": 5000,
    "instances_train2014.json": 82783, "instances_val2014.json": 40504,
    "instances_minival2014.json": 5000, "instances_valminusminival2014.json": 35504,
}
MAX_NAMED = 5  # problems named per dataset before only counting


@dataclass
class Report:
    name: str
    status: str = "OK"
    images: int = 0
    official: int | None = None
    problems: list[str] = field(default_factory=list)
    num_problems: int = 0

    def problem(self, status: str, message: str) -> None:
        if self.status != "MISSING":
            self.status = status
        self.num_problems += 1
        if len(self.problems) < MAX_NAMED:
            self.problems.append(message)


def check_voc(name: str, root: Path) -> Report:
    report = Report(name, official=0)
    for year, split in VOC_SETS[name]:
        year_dir = root / "VOCdevkit" / f"VOC{year}"
        split_file = year_dir / "ImageSets" / "Main" / f"{split}.txt"
        if not split_file.is_file():
            report.problem("MISSING", f"missing {split_file}")
            continue
        ids = [line.split()[0] for line in split_file.read_text().splitlines() if line.strip()]
        report.images += len(ids)
        report.official = (report.official or 0) + OFFICIAL_VOC_COUNTS[(year, split)]
        for image_id in ids:
            xml = year_dir / "Annotations" / f"{image_id}.xml"
            jpg = year_dir / "JPEGImages" / f"{image_id}.jpg"
            if not jpg.is_file():
                report.problem("BROKEN", f"missing image {jpg}")
            if not xml.is_file():
                report.problem("BROKEN", f"missing annotation {xml}")
                continue
            try:
                ET.parse(xml)
            except ET.ParseError as e:
                report.problem("BROKEN", f"malformed XML {xml}: {e}")
    return report


def check_coco(name: str, root: Path) -> Report:
    folder, ann = COCO_SETS[name]
    report = Report(name, official=OFFICIAL_COCO_COUNTS[ann])
    ann_file, image_dir = root / "coco" / "annotations" / ann, root / "coco" / folder
    for path in (ann_file, image_dir):
        if not path.exists():
            report.problem("MISSING", f"missing {path}")
    if report.status == "MISSING":
        return report
    try:
        images = json.loads(ann_file.read_text())["images"]
    except (OSError, ValueError, KeyError) as e:
        report.problem("BROKEN", f"unreadable annotation file {ann_file}: {type(e).__name__}: {e}")
        return report
    report.images = len(images)
    present = {p.name for p in image_dir.iterdir()}
    for info in images:
        if info["file_name"] not in present:
            report.problem("BROKEN", f"missing image {image_dir / info['file_name']}")
    return report


def check_synthetic(name: str, root: Path) -> Report:
    split = name.split("-", 1)[1]
    tree = root / "synthetic"
    report = Report(name)
    if not (tree / "GENERATOR.json").is_file():
        report.status = "MISSING"
        report.problems.append(f"not generated yet at {tree} (built on first use, or run with --generate-synthetic)")
        return report
    split_file = tree / "ImageSets" / "Main" / f"{split}.txt"
    ids = split_file.read_text().split() if split_file.is_file() else []
    report.images = len(ids)
    report.official = report.images
    for image_id in ids:
        for path in (tree / "JPEGImages" / f"{image_id}.jpg", tree / "Annotations" / f"{image_id}.xml"):
            if not path.is_file():
                report.problem("BROKEN", f"missing {path}")
    if not (tree / "annotations" / f"instances_{split}.json").is_file():
        report.problem("BROKEN", f"missing {tree / 'annotations' / f'instances_{split}.json'}")
    return report


def check(name: str, root: Path) -> Report:
    if name in VOC_SETS:
        return check_voc(name, root)
    if name in COCO_SETS:
        return check_coco(name, root)
    if name in SYNTHETIC_SETS:
        return check_synthetic(name, root)
    raise SystemExit(f"unknown dataset name {name!r}; valid names: {', '.join(DATASET_NAMES)}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-root", default=None, help="data root (default: $RESDET_DATA_ROOT, else datasets/)")
    parser.add_argument("--datasets", nargs="+", metavar="NAME", help=f"names to check (default: all of "
                        f"{', '.join(DATASET_NAMES)})")
    parser.add_argument("--generate-synthetic", action="store_true", help="write the synthetic tree if needed")
    args = parser.parse_args(argv)
    root = get_data_root(args.data_root)
    print(f"data root: {root}")
    if args.generate_synthetic:
        print(f"synthetic tree: {generate_synthetic(root)}")
    names = args.datasets or list(DATASET_NAMES)
    failed = False
    for name in names:
        r = check(name, root)
        count = ""
        if r.status != "MISSING":
            count = f"{r.images} images"
            if r.official is not None and r.images != r.official:
                count += f" (official release: {r.official}; a subset or a different version)"
        print(f"{r.status:8s} {name:26s} {count}".rstrip())
        for p in r.problems:
            print(f"         - {p}")
        if r.num_problems > len(r.problems):
            print(f"         - ... {r.num_problems - len(r.problems)} more problems")
        failed |= r.status == "BROKEN" or (args.datasets is not None and r.status != "OK")
    if failed:
        print("see datasets/README.md for the expected layouts and downloads")
    return int(failed)


if __name__ == "__main__":
    sys.exit(main())
