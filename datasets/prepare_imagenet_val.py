#!/usr/bin/env python
"""Sort the flat official ImageNet validation set into <wnid>/ class folders (the ImageFolder layout).

    python datasets/prepare_imagenet_val.py --val-dir datasets/imagenet/val --labels LOC_val_solution.csv
    python datasets/prepare_imagenet_val.py --val-dir datasets/imagenet/val \
        --labels ILSVRC2012_validation_ground_truth.txt --synsets LOC_synset_mapping.txt

Accepts Kaggle's LOC_val_solution.csv (ImageId,PredictionString with the wnid first) or the devkit's ground-truth
file (one 1-based ILSVRC class index per line, in file-name order) plus the synset list giving the wnid order.
Moves files (no copies); re-running is a no-op for files already sorted.
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path


def read_labels(labels: Path, synsets: Path | None, images: list[str]) -> dict[str, str]:
    if labels.suffix == ".csv":
        with labels.open() as f:
            return {row["ImageId"]: row["PredictionString"].split()[0] for row in csv.DictReader(f)}
    if synsets is None:
        raise SystemExit("error: --synsets is needed with a devkit ground-truth .txt file")
    wnids = [line.split()[0] for line in synsets.read_text().splitlines() if line.strip()]
    idx = [int(x) for x in labels.read_text().split()]
    if len(idx) != len(images):
        raise SystemExit(f"error: {labels} has {len(idx)} labels for {len(images)} images in the folder")
    return {Path(name).stem: wnids[i - 1] for name, i in zip(sorted(images), idx)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--val-dir", type=Path, required=True)
    p.add_argument("--labels", type=Path, required=True)
    p.add_argument("--synsets", type=Path)
    args = p.parse_args(argv)
    flat = sorted(f.name for f in args.val_dir.iterdir() if f.is_file() and f.suffix.upper() == ".JPEG")
    mapping = read_labels(args.labels, args.synsets, flat)
    moved = 0
    for name in flat:
        wnid = mapping.get(Path(name).stem)
        if wnid is None:
            print(f"error: no label for {name} in {args.labels}", file=sys.stderr)
            return 1
        (args.val_dir / wnid).mkdir(exist_ok=True)
        (args.val_dir / name).rename(args.val_dir / wnid / name)
        moved += 1
    print(f"sorted {moved} images into {len({mapping[Path(n).stem] for n in flat})} class folders")
    return 0


if __name__ == "__main__":
    sys.exit(main())
