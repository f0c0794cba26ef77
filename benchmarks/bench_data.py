#!/usr/bin/env python
"""Benchmark (d): data-pipeline throughput (decode + resize + flip + collate), images/s and images/s per worker.

    python benchmarks/bench_data.py                                   # synthetic set, 0 / 1 / 2 workers
    python benchmarks/bench_data.py --data-root ../shared/data/voc --workers 0 1 2 --batches 30

Runs the training loader exactly as the trainer builds it (``build_train_loader``: aspect-ratio grouped,
seeded batches, persistent workers) over the synthetic training set and, when ``--data-root`` holds a
``VOCdevkit/VOC2007`` tree, over VOC 2007 trainval, at the paper's 600 / 1000 resize. Worker start-up and the
first ``--warmup`` batches are excluded. "per worker" divides by the number of worker processes (by 1 for the
in-process loader, 0 workers).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from detection.data import DetectionTransform, build_dataset, build_train_loader, get_data_root  # noqa: E402


def measure(name: str, root: Path | None, *, workers: int, batches: int, warmup: int, batch_size: int,
            min_size: int, max_size: int) -> float:
    """Images per second of the training loader over ``batches`` batches after ``warmup`` batches."""
    ds = build_dataset(name, root, train=True,
                       transform=DetectionTransform(min_size=min_size, max_size=max_size, train=True))
    loader = build_train_loader(ds, batch_size=batch_size, seed=0, num_workers=workers)
    it = iter(loader)
    for _ in range(warmup):
        next(it)
    t0 = time.perf_counter()
    n = 0
    for _ in range(batches):
        images, _ = next(it)
        n += len(images)
    seconds = time.perf_counter() - t0
    del it, loader
    return n / seconds


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-root", default=None,
                   help="a root holding VOCdevkit/VOC2007 to time as well (never written to)")
    p.add_argument("--synthetic-root", default=None,
                   help="where the synthetic set lives / is generated (default: $RESDET_DATA_ROOT or datasets/)")
    p.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--batches", type=int, default=40)
    p.add_argument("--warmup", type=int, default=4)
    p.add_argument("--batch-size", type=int, default=2)
    p.add_argument("--min-size", type=int, default=600)
    p.add_argument("--max-size", type=int, default=1000)
    args = p.parse_args(argv)
    syn_root = get_data_root(args.synthetic_root)
    sets = [("synthetic-train", syn_root)]
    voc_root = Path(args.data_root) if args.data_root else None
    if voc_root is not None and (voc_root / "VOCdevkit" / "VOC2007").is_dir():
        sets.append(("voc07-trainval", voc_root))
    print(f"data pipeline benchmark: train loader, resize {args.min_size}/{args.max_size}, flip 0.5, batch "
          f"{args.batch_size}, {args.batches} batches after {args.warmup} warm-up,"
          f" synthetic root {syn_root}, VOC root {voc_root}")
    print(f"{'dataset':18s}{'workers':>8s}{'images/s':>11s}{'per worker':>12s}")
    for name, r in sets:
        for w in args.workers:
            ips = measure(name, r, workers=w, batches=args.batches, warmup=args.warmup,
                          batch_size=args.batch_size, min_size=args.min_size, max_size=args.max_size)
            print(f"{name:18s}{w:8d}{ips:11.1f}{ips / max(w, 1):12.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
