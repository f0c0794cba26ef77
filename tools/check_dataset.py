#!/usr/bin/env python
"""Check a dataset before training on it: per-class counts and every problem, one line each.

    python tools/check_dataset.py coco:annotations/train.json:images/
    python tools/check_dataset.py voc:my_folder --classes classes.txt
    python tools/check_dataset.py yolo:data.yaml:val --json > report.json
    python tools/check_dataset.py voc07-test --data-root /data     # the named sets too
    python tools/check_dataset.py my_folder --split val --draw 8 --output gt_drawn/   # look at the boxes
    python tools/check_dataset.py coco:train.json:images/ --repeat-factor-threshold 0.1  # rare-class factors
    python tools/check_dataset.py coco:train.json:images/ --show-augmented 16 --output seen/ data.lsj_size=512

Prints a table (images, their share of the set, boxes, crowd, difficult per class; images without boxes) and,
with ``--repeat-factor-threshold T``, the repeat factors training would use with ``data.repeat_factor_threshold=T``
(min / mean / max, the classes with the largest), then the errors (unreadable,
missing or undecodable images, sizes that disagree with the annotation, EXIF-rotated photos among them,
duplicate ids, unknown classes, malformed boxes) and warnings (tiny, zero-area or out-of-image boxes). Exit code
1 when there are errors, 2 when the description itself is wrong. Training runs the annotation checks itself and
stops on errors (or skips and counts them with data.skip_bad=true); this tool also decodes every image.
``--draw N --output DIR`` writes N images spread over the set with their ground-truth boxes and class names;
``--show-augmented N --output DIR`` writes N training images as the model sees them: resized and augmented by the
training transform of ``--config`` (default: the config training would pick for this dataset) with ``key=value``
overrides (``data.lsj_size=1024``, ``data.augment=[...]``), boxes and class names drawn.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

from resbackbone.errors import report_input_error

# The name in this tool's one-line errors ("check_dataset: error: ...", argparse's form).
PROG = "check_dataset"

def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from detection.data.catalog import SPEC_HELP

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("dataset", help=SPEC_HELP)
    p.add_argument("--classes", help="class list for a VOC-style folder: a file (one per line) or a,b,c "
                                     "(default: the names found in its XML, sorted)")
    p.add_argument("--data-root", help="data root for the named sets (default: $RESDET_DATA_ROOT or datasets/)")
    p.add_argument("--split", choices=("train", "val", "test"), default="train",
                   help="which split a description without one means: a YOLO set's train / val / test, a "
                        "VOC-style folder's ImageSets/Main list (train: train else trainval; val: val else test)")
    p.add_argument("--min-box-size", type=float, default=2.0, help="warn about boxes with a side under this (px)")
    p.add_argument("--no-decode", action="store_true",
                   help="read only the image headers (size, orientation), not every pixel: faster, misses "
                        "corrupt image data")
    p.add_argument("--json", action="store_true", help="print the report as JSON instead of the table")
    p.add_argument("--draw", type=int, default=0, metavar="N",
                   help="draw N images (spread over the set) with their ground-truth boxes and class names")
    p.add_argument("--output", type=Path, help="folder for the --draw / --show-augmented images")
    p.add_argument("--show-augmented", type=int, default=0, metavar="N",
                   help="write N training images after resize and augmentation, boxes drawn, into --output")
    p.add_argument("--config", help="config whose data section augments for --show-augmented (default: the one "
                                     "training picks for this dataset)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides for --show-augmented")
    p.add_argument("--repeat-factor-threshold", type=float, default=0.0, metavar="T",
                   help="also show the repeat factors of repeat-factor sampling at threshold T (training's "
                        "data.repeat_factor_threshold): per image max over its classes of max(1, sqrt(T / f_c))")
    args = p.parse_intermixed_args(argv)
    if args.draw < 0 or (args.draw and args.output is None):
        p.error("--draw N needs N >= 0 and --output DIR")
    if args.show_augmented < 0 or (args.show_augmented and args.output is None):
        p.error("--show-augmented N needs N >= 0 and --output DIR")
    if args.repeat_factor_threshold < 0:
        p.error(f"--repeat-factor-threshold must be >= 0, got {args.repeat_factor_threshold:g}")
    return args


# Images whose longer side is under this (px) are enlarged for drawing, so the captions stay readable.
MIN_DRAW_SIDE = 480


def draw_samples(dataset: Any, num: int, output: Path) -> list[Path]:
    """Write ``num`` images of ``dataset`` (evenly spaced over its records) with their ground truth drawn."""
    import cv2
    import numpy as np

    from detection.data.transforms import decode_image
    from detection.visualize import draw_detections
    from resbackbone.errors import DataError

    output.mkdir(parents=True, exist_ok=True)
    picks = sorted({round(i) for i in np.linspace(0, len(dataset.records) - 1, min(num, len(dataset.records)))})
    written = []
    for i in picks:
        r = dataset.records[i]
        try:
            image = decode_image(r.file)
        except DataError as e:
            print(f"check_dataset: not drawn: {e}", file=sys.stderr)
            continue
        scale = max(1, MIN_DRAW_SIDE // max(image.shape[:2]))
        if scale > 1:  # nearest-neighbour: the pixels the boxes were drawn on, only bigger
            image = cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_NEAREST)
        drawn = draw_detections(image, r.boxes * scale, r.labels, None, dataset.class_names)
        stem = "".join(c if c.isalnum() or c in "-_." else "_" for c in str(r.image_id))
        path = output / f"{i:05d}_{stem}.jpg"
        cv2.imwrite(str(path), cv2.cvtColor(drawn, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 92])
        written.append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO if not args.json else logging.WARNING, format="%(message)s",
                        stream=sys.stderr)
    from detection.data import build_dataset
    from detection.data.catalog import read_class_list
    from detection.data.check import check_dataset, repeat_factor_report, repeat_factor_summary
    from detection.data.custom import collecting
    from resbackbone.errors import InputError

    try:
        classes = read_class_list(args.classes) if args.classes else None
        problems = collecting()
        dataset = build_dataset(args.dataset, args.data_root, train=args.split == "train", filter_empty=False,
                                classes=classes, problems=problems, side=args.split)
        report = check_dataset(dataset, problems, decode=not args.no_decode, min_box_size=args.min_box_size)
    except InputError as e:
        return report_input_error(PROG, e)
    out = report.as_dict()
    if args.repeat_factor_threshold > 0:
        # As training computes them: over the images with a training box (data.filter_empty drops the others).
        classes = [c for c in dataset.image_classes() if c]
        factors = repeat_factor_report(classes, dataset.class_names, args.repeat_factor_threshold)
        out["repeat_factors"] = factors
    print(json.dumps(out, indent=1) if args.json else report.format())
    if args.repeat_factor_threshold > 0 and not args.json:
        print(repeat_factor_summary(factors))
    if args.draw:
        written = draw_samples(dataset, args.draw, args.output)
        print(f"{len(written)} image(s) with their ground truth drawn in {args.output}", file=sys.stderr)
    if args.show_augmented:
        try:
            written = show_augmented(args, classes)
        except InputError as e:
            return report_input_error(PROG, e)
        print(f"{len(written)} augmented training image(s) with their boxes drawn in {args.output}", file=sys.stderr)
    return 0 if report.ok else 1


def show_augmented(args: argparse.Namespace, classes: Any) -> list[Path]:
    """``--show-augmented``: the training transform of the config (and overrides) on ``args.show_augmented``
    training images, written with their boxes."""
    from detection.config import load_detection_config
    from detection.data import DetectionTransform, build_dataset
    from detection.recipes import config_dir, default_config_name
    from detection.visualize import write_augmented_samples

    cfg = load_detection_config(args.config or config_dir() / default_config_name(args.dataset), args.overrides)
    train = build_dataset(args.dataset, args.data_root, train=True, classes=classes or cfg.data.classes or None,
                          transform=DetectionTransform.from_config(cfg.data, train=True), side=args.split,
                          skip_bad=True)
    return write_augmented_samples(train, args.show_augmented, args.output, seed=cfg.seed)


if __name__ == "__main__":
    sys.exit(main())
