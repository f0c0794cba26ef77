#!/usr/bin/env python
"""Check a dataset before training on it: per-class counts and every problem, one line each.

    python tools/check_dataset.py coco:annotations/train.json:images/
    python tools/check_dataset.py voc:my_folder --classes classes.txt
    python tools/check_dataset.py yolo:data.yaml:val --json > report.json
    python tools/check_dataset.py voc07-test --data-root /data     # the named sets too

Prints a table (images / boxes / crowd / difficult per class, images without boxes) and the errors (unreadable,
missing or undecodable images, sizes that disagree with the annotation, EXIF-rotated photos among them,
duplicate ids, unknown classes, malformed boxes) and warnings (tiny, zero-area or out-of-image boxes). Exit code
1 when there are errors, 2 when the description itself is wrong. Training runs the annotation checks itself and
stops on errors (or skips and counts them with data.skip_bad=true); this tool also decodes every image.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# Running from a source checkout without installing must find the packages too.
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from detection.data.catalog import SPEC_HELP

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("dataset", help=SPEC_HELP)
    p.add_argument("--classes", help="class list for a VOC-style folder: a file (one per line) or a,b,c "
                                     "(default: the names found in its XML, sorted)")
    p.add_argument("--data-root", help="data root for the named sets (default: $RESDET_DATA_ROOT or datasets/)")
    p.add_argument("--split", choices=("train", "test"), default="train",
                   help="which side a description without a split means (a YOLO set's train or val)")
    p.add_argument("--min-box-size", type=float, default=2.0, help="warn about boxes with a side under this (px)")
    p.add_argument("--no-decode", action="store_true",
                   help="read only the image headers (size, orientation), not every pixel: faster, misses "
                        "corrupt image data")
    p.add_argument("--json", action="store_true", help="print the report as JSON instead of the table")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO if not args.json else logging.WARNING, format="%(message)s",
                        stream=sys.stderr)
    from detection.data import build_dataset
    from detection.data.catalog import read_class_list
    from detection.data.check import check_dataset
    from detection.data.custom import collecting
    from resbackbone.errors import InputError

    try:
        classes = read_class_list(args.classes) if args.classes else None
        problems = collecting()
        dataset = build_dataset(args.dataset, args.data_root, train=args.split == "train", filter_empty=False,
                                classes=classes, problems=problems)
        report = check_dataset(dataset, problems, decode=not args.no_decode, min_box_size=args.min_box_size)
    except InputError as e:
        print(f"check_dataset: error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(report.as_dict(), indent=1) if args.json else report.format())
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
