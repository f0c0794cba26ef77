#!/usr/bin/env python
"""Our R50-FPN Faster R-CNN against torchvision's ``fasterrcnn_resnet50_fpn`` on the same weights, side by side.

    python benchmarks/bench_fpn.py                       # 800 x 1064 px, inference batch 1, training batch 2
    python benchmarks/bench_fpn.py --size 512 --rounds 2 # quicker

torchvision's model is built as its COCO_V1 weights run (FrozenBN, 91 class slots, its default RPN / RoI settings),
with seeded random weights and non-trivial BN statistics; its state dict is converted by
``detection.torchvision_detector`` (the ``tools/convert_weights.py --torchvision-detector`` path), so both compute
the same detections. torchvision's resize is a no-op at this size (min_size = the image's height).

Measured in interleaved rounds (ours, twin, ours, ...) so machine load hits both alike, medians over rounds:
inference ms/image (eval, batch 1) for ours eager fp32, ours with frozen BN folded into the convolutions, ours
channels_last, ours under bf16 autocast, and the twin; training images/s (forward + backward + SGD step, batch 2);
device->host syncs per training step and per inference batch (``benchmarks/host_syncs.py``). Ratios are ours /
twin speed (> 1: we are faster).
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor, nn

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks.host_syncs import host_syncs  # noqa: E402
from detection.torchvision_detector import convert_torchvision  # noqa: E402
from resbackbone.frozen_bn import fold_batchnorm  # noqa: E402


def build_twin(size: int) -> nn.Module:
    """torchvision's R50-FPN Faster R-CNN as COCO_V1 runs it (FrozenBN eps 0), random weights (seed 0)."""
    from torchvision.models import resnet50
    from torchvision.models.detection import FasterRCNN
    from torchvision.models.detection.backbone_utils import _resnet_fpn_extractor
    from torchvision.ops import FrozenBatchNorm2d

    torch.manual_seed(0)
    body = resnet50(norm_layer=FrozenBatchNorm2d)
    model = FasterRCNN(_resnet_fpn_extractor(body, 3), num_classes=91, min_size=size, max_size=4000)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, FrozenBatchNorm2d):
                m.eps = 0.0
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 2.0)
        # Background favoured so that detections are sparse (as a trained model's), not every class everywhere.
        model.roi_heads.box_predictor.cls_score.bias[0] = 4.0
    return model.eval()


def convert(twin: nn.Module) -> nn.Module:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "tv.pth"
        torch.save(twin.state_dict(), path)
        model, _, _, _ = convert_torchvision(path)
    return model.eval()


def inputs(size: int, batch: int) -> tuple[list[Tensor], list[dict[str, Tensor]]]:
    """``batch`` images (3, size, 4/3 size rounded to 8) 0-255 with 3 random boxes each, labels in [0, 80)."""
    g = torch.Generator().manual_seed(0)
    h, w = size, round(size * 4 / 3 / 8) * 8
    images, targets = [], []
    for _ in range(batch):
        images.append((torch.rand(3, h, w, generator=g) * 255).round())
        xy = torch.rand(3, 2, generator=g) * torch.tensor([w * 0.6, h * 0.6])
        wh = torch.rand(3, 2, generator=g) * torch.tensor([w * 0.3, h * 0.3]) + 16
        targets.append({"boxes": torch.cat([xy, xy + wh], 1), "labels": torch.randint(0, 80, (3,), generator=g)})
    return images, targets


def runners(model: nn.Module, images: list[Tensor], targets: list[dict[str, Tensor]], *, twin: bool,
            autocast: bool = False, inference_mode: bool = True) -> tuple[Callable[[], None], Callable[[], None]]:
    """(training step, inference on one image) closures. The twin takes 0-1 images and labels in its 91 slots.
    ``inference_mode`` False: inference under ``no_grad`` instead (the sync counter's dispatch mode does not see
    ``torch.where(cond)`` under inference mode on CPU, which would flatter the twin, whose code uses it)."""
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-4, momentum=0.9)
    if twin:
        from detection.torchvision_detector import TV_COCO_SLOTS, UNUSED_SLOT

        slots = torch.tensor([i for i, n in enumerate(TV_COCO_SLOTS, start=1) if n != UNUSED_SLOT],
                             device=images[0].device)
        images = [im / 255 for im in images]
        targets = [{"boxes": t["boxes"], "labels": slots[t["labels"]]} for t in targets]

    def train_step() -> None:
        model.train()
        losses = model(images, targets)
        loss = sum(v for k, v in losses.items() if k.startswith("loss"))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def infer() -> None:
        model.eval()
        grad_off = torch.inference_mode() if inference_mode else torch.no_grad()
        with grad_off, torch.autocast(images[0].device.type, torch.bfloat16, enabled=autocast):
            model(images[:1])

    return train_step, infer


def cpu_has_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX-512 BF16 or AMX): elsewhere bf16 autocast is emulated and many
    times slower than fp32, so timing it says nothing."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def timed(fn: Callable[[], None]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", type=int, default=800, help="image height (width 4/3 of it)")
    p.add_argument("--batch", type=int, default=2, help="training images per step")
    p.add_argument("--rounds", type=int, default=3, help="interleaved timing rounds")
    p.add_argument("--train-rounds", type=int, default=2)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--bf16", choices=("auto", "on", "off"), default="auto",
                   help="time bf16 autocast inference (auto: only on CPUs with bf16 instructions)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    twin = build_twin(args.size)
    ours = convert(copy.deepcopy(twin))
    folded = copy.deepcopy(ours)
    fold_batchnorm(folded)
    channels_last = copy.deepcopy(ours).to(memory_format=torch.channels_last)
    images, targets = inputs(args.size, args.batch)
    with torch.inference_mode():
        n_ours, n_twin = len(ours(images[:1])[0]["boxes"]), len(twin([images[0] / 255])[0]["boxes"])
    print(f"{args.size} x {images[0].shape[-1]} px, {torch.get_num_threads()} threads; detections ours {n_ours}, "
          f"twin {n_twin}")
    variants: dict[str, tuple[Callable[[], None], Callable[[], None]]] = {
        "ours fp32": runners(ours, images, targets, twin=False),
        "ours BN folded": runners(folded, images, targets, twin=False),
        "ours channels_last": runners(channels_last, images, targets, twin=False),
        "ours bf16 autocast": runners(ours, images, targets, twin=False, autocast=True),
        "torchvision": runners(twin, images, targets, twin=True),
    }
    if args.bf16 == "off" or (args.bf16 == "auto" and not cpu_has_bf16()):
        print("bf16 autocast not timed: this CPU has no bf16 instructions (emulated bf16 is no guide)")
        del variants["ours bf16 autocast"]
    for _, infer in variants.values():
        infer()  # warm-up (allocator, oneDNN primitive caches)
    infer_s: dict[str, list[float]] = {k: [] for k in variants}
    for _ in range(args.rounds):
        for name, (_, infer) in variants.items():
            infer_s[name].append(timed(infer))
    train_s: dict[str, list[float]] = {"ours fp32": [], "torchvision": []}
    for name in train_s:
        variants[name][0]()  # warm-up step
    for _ in range(args.train_rounds):
        for name in train_s:
            train_s[name].append(timed(variants[name][0]))
    counted = {"ours fp32": runners(ours, images, targets, twin=False, inference_mode=False),
               "torchvision": runners(twin, images, targets, twin=True, inference_mode=False)}
    syncs = {name: (host_syncs(train, sites=False).total, host_syncs(infer, sites=False).total)
             for name, (train, infer) in counted.items()}
    twin_ms = statistics.median(infer_s["torchvision"]) * 1000
    print("\n| model | inference ms/image | vs torchvision |\n|---|---|---|")
    for name, ts in infer_s.items():
        ms = statistics.median(ts) * 1000
        print(f"| {name} | {ms:.0f} | {twin_ms / ms:.2f}x |")
    twin_ips = args.batch / statistics.median(train_s["torchvision"])
    print("\n| model | training images/s | vs torchvision | host syncs / train step | host syncs / inference batch |")
    print("|---|---|---|---|---|")
    for name, ts in train_s.items():
        ips = args.batch / statistics.median(ts)
        print(f"| {name} | {ips:.3f} | {ips / twin_ips:.2f}x | {syncs[name][0]} | {syncs[name][1]} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
