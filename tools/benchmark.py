#!/usr/bin/env python
"""Time your own detection config: training steps, inference, or the data loader alone.

    python tools/benchmark.py --config configs/det/voc07+12_c4.yaml --mode train --iters 20
    python tools/benchmark.py --config configs/det/synthetic_r18_c4.yaml --mode inference --iters 50
    python tools/benchmark.py --config configs/det/voc07+12_c4.yaml data.num_workers=4 --mode data --iters 100

Uses the config's own data (training set for train / data, test set for inference), batch sizes, resize and
model. Pretrained backbone weights are not loaded (speed does not depend on their values, and this must work
offline): the model is built with the same structure, including frozen BN where the config would freeze it.
``solver.mixed_precision=bf16`` runs under bf16 autocast on a GPU, as the trainer does. Reports ms/iter,
images/s (medians of per-iteration times after --warmup) and peak memory (CUDA: max allocated; CPU: the
process's peak RSS).
"""

from __future__ import annotations

import argparse
import contextlib
import resource
import statistics
import sys
import time
from dataclasses import replace
from typing import Any

from resbackbone.errors import report_input_error

# The name in this tool's one-line errors ("benchmark: error: ...", argparse's form).
PROG = "benchmark"

def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", help="YAML config (default: the dataclass defaults)")
    p.add_argument("--mode", choices=("train", "inference", "data"), default="train")
    p.add_argument("--iters", type=int, default=20, help="timed iterations")
    p.add_argument("--warmup", type=int, default=3, help="untimed iterations first")
    p.add_argument("--cpu", action="store_true", help="run on the CPU even when a GPU is available")
    p.add_argument("overrides", nargs="*", help="key=value config overrides")
    return p.parse_intermixed_args(argv)  # key=value overrides may stand between the flags


def _peak_mb(device: Any) -> float:
    import torch

    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import torch

    from detection.config import load_detection_config
    from detection.data import build_test_dataset, build_test_loader, build_train_dataset, build_train_loader
    from detection.faster_rcnn import build_faster_rcnn
    from resbackbone.engine.schedule import optimizer_from_config
    from resbackbone.errors import InputError

    if args.iters < 1 or args.warmup < 0:
        return report_input_error(PROG, f"--iters must be >= 1 and --warmup >= 0, got {args.iters} / {args.warmup}")
    try:
        cfg = load_detection_config(args.config, args.overrides)
    except InputError as e:
        return report_input_error(PROG, e)
    device = torch.device("cuda" if torch.cuda.is_available() and not args.cpu else "cpu")
    if args.mode == "inference":
        ds = build_test_dataset(cfg.data)
        batch = cfg.test.ims_per_batch
        loader: Any = build_test_loader(ds, batch_size=batch, num_workers=cfg.data.num_workers)
    else:
        ds = build_train_dataset(cfg.data)
        batch = cfg.solver.ims_per_batch
        loader = build_train_loader(ds, batch_size=batch, seed=cfg.seed, num_workers=cfg.data.num_workers,
                                    aspect_grouping=cfg.data.aspect_grouping)

    def batches() -> Any:
        while True:  # the test loader is finite: cycle it
            yield from loader

    stream = batches()
    model = None
    step: Any
    if args.mode == "data":
        def step() -> int:
            images, _ = next(stream)
            return len(images)
    else:
        # As the trainer does: the number of classes follows the data. The architecture alone (weights=None):
        # speed does not depend on the pretrained weights, and they may not be on this machine.
        model_cfg = replace(cfg.model, num_classes=len(ds.class_names))
        model = build_faster_rcnn(model_cfg, class_names=ds.class_names, weights=None).to(device)
        bf16 = cfg.solver.mixed_precision == "bf16" and device.type == "cuda"
        amp = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if bf16 else contextlib.nullcontext
        if args.mode == "train":
            model.train()
            opt = optimizer_from_config(model, cfg.solver)  # the trainer's: SGD or fused AdamW

            def step() -> int:
                images, targets = next(stream)
                images = [im.to(device, non_blocking=True) for im in images]
                targets = [{"boxes": t["boxes"].to(device), "labels": t["labels"].to(device)} for t in targets]
                with amp():
                    out = model(images, targets)
                loss = sum(v for k, v in out.items() if k.startswith("loss_"))
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                return len(images)
        else:
            model.eval()

            def step() -> int:
                images, targets = next(stream)
                with torch.inference_mode(), amp():
                    model([im.to(device, non_blocking=True) for im in images],
                          orig_sizes=[tuple(t["orig_size"]) for t in targets])
                return len(images)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    for _ in range(args.warmup):
        step()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times, counts = [], []
    for _ in range(args.iters):
        sync()
        t0 = time.perf_counter()
        counts.append(step())
        sync()
        times.append(time.perf_counter() - t0)
    med = statistics.median(times)
    ips = sum(counts) / sum(times)
    where = "data loader only" if args.mode == "data" else f"{cfg.model.backbone.name} {cfg.model.arch}"
    print(f"benchmark {args.mode}: {where}, data {ds.name if hasattr(ds, 'name') else ''} ({len(ds)} images), "
          f"batch {batch}, {cfg.data.num_workers} workers, device {device}, {args.iters} iters after "
          f"{args.warmup} warm-up")
    print(f"ms/iter  median {1000 * med:.1f}  (min {1000 * min(times):.1f}, max {1000 * max(times):.1f})")
    print(f"images/s {ips:.2f}  ({sum(counts)} images in {sum(times):.2f} s)")
    what = "max allocated" if device.type == "cuda" else "process peak RSS"
    print(f"peak memory {_peak_mb(device):.0f} MB ({what})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
