#!/usr/bin/env python
"""ResNet classification training throughput: ours vs torchvision's model, same inputs, same step.

    python benchmarks/bench_cls_train.py                       # CPU-sized: resnet18, 64 px, batch 16
    python benchmarks/bench_cls_train.py --arch resnet50 --size 224 --batch 256 --bf16 --channels-last  # GPU

One training step = forward, cross-entropy, backward, SGD(momentum) step, on a fixed synthetic batch already on
the device (so the figure is the model's, not the data loader's). Prints images/s, ms/step and peak memory for
both models and their ratio.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from pathlib import Path

import torch
import torchvision
from torch import nn

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import resbackbone  # noqa: E402


def time_training(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, steps: int, warmup: int, bf16: bool) -> dict:
    device = x.device
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    loss_fn = nn.CrossEntropyLoss()
    amp = torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
    model.train()

    def step() -> None:
        with amp:
            loss = loss_fn(model(x), y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    for _ in range(warmup):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    dt = (time.perf_counter() - t0) / steps
    out = {"ms_per_step": dt * 1000, "images_per_s": x.shape[0] / dt}
    if device.type == "cuda":
        out["peak_mem_gib"] = torch.cuda.max_memory_allocated() / 2**30
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", default="resnet18", choices=["resnet18", "resnet34", "resnet50", "resnet101", "resnet152"])
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--rounds", type=int, default=3, help="interleaved timing rounds (median reported)")
    p.add_argument("--bf16", action="store_true", help="bf16 autocast")
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--compile", action="store_true", help="torch.compile both models")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    x = torch.randn(args.batch, 3, args.size, args.size, device=device)
    y = torch.randint(0, 1000, (args.batch,), device=device)
    fmt = torch.channels_last if args.channels_last else torch.contiguous_format
    x = x.contiguous(memory_format=fmt)
    builders = {
        "resbackbone": lambda: getattr(resbackbone, args.arch)(num_classes=1000),
        "torchvision": lambda: getattr(torchvision.models, args.arch)(weights=None),
    }
    models = {}
    for name, build in builders.items():
        model = build().to(device).to(memory_format=fmt)
        models[name] = torch.compile(model) if args.compile else model
    # Interleaved rounds, median per model: background load on a shared machine hits both alike.
    runs: dict[str, list[dict]] = {name: [] for name in models}
    for _ in range(args.rounds):
        for name, model in models.items():
            runs[name].append(time_training(model, x, y, steps=args.steps, warmup=args.warmup, bf16=args.bf16))
    results = {name: sorted(r, key=lambda d: d["ms_per_step"])[len(r) // 2] for name, r in runs.items()}
    ratio = results["resbackbone"]["images_per_s"] / results["torchvision"]["images_per_s"]
    print(json.dumps({"config": vars(args), "device": torch.cuda.get_device_name() if device.type == "cuda" else
                      "cpu", "results": results, "ratio_ours_over_torchvision": ratio}, indent=1))


if __name__ == "__main__":
    main()
