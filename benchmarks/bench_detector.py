#!/usr/bin/env python
"""Benchmark (a): our Faster R-CNN C4 against the same architecture assembled from torchvision.models.detection.

    python benchmarks/bench_detector.py                                  # the paper's setting: ResNet-50, 600 px
    python benchmarks/bench_detector.py --backbone resnet18 --size 224 --batch 2 --rois 64 --rounds 5   # CPU

The twin is ``torchvision.models.detection.FasterRCNN`` with: our res4 trunk (a deep copy, same weights) as its
backbone, torchvision's RPN with the same anchors / head weights / top-k / NMS settings, ``MultiScaleRoIAlign``
14x14 on res4 (sampling ratio 0), a box head that runs our res5 copy + global average pooling, and a
``FastRCNNPredictor`` holding our classifier / regressor weights (class 0 = background in torchvision). Both
models use frozen BN (the fine-tuning setting), the same sampler sizes and the same inputs; torchvision's own
resize is made a no-op (its min/max size equal the image), its normalization is the same ImageNet statistics.

Measured, in interleaved rounds (ours, twin, ours, twin, ...) so that machine load hits both alike:
training images/s (forward + backward + SGD step) and inference ms/image (eval mode, batch 1), medians over
rounds; peak memory per model and mode, each in a fresh subprocess (CUDA: max allocated; CPU: the resident set
sampled every ms during two steps, peak minus its size before them). Prints ratios ours / twin (> 1 = we are
faster / leaner). ``--profile`` adds where the time goes (torch.profiler, top ops).
"""

from __future__ import annotations

import argparse
import copy
import multiprocessing as mp
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from detection.config import load_detection_config  # noqa: E402
from detection.faster_rcnn import FasterRCNN, build_faster_rcnn  # noqa: E402


def build_ours(args: argparse.Namespace) -> FasterRCNN:
    cfg = load_detection_config(None, [
        f"model.backbone.name={args.backbone}",
        "model.backbone.norm=frozen_bn",
        f"model.num_classes={args.classes}",
        f"model.rpn.pre_nms_topk_train={args.pre_nms_train}",
        f"model.rpn.post_nms_topk_train={args.post_nms_train}",
        f"model.rpn.pre_nms_topk_test={args.pre_nms_test}",
        f"model.rpn.post_nms_topk_test={args.post_nms_test}",
        f"model.roi_heads.batch_size_per_image={args.rois}",
        # torchvision's MultiScaleRoIAlign is RoIAlign with aligned=False: same op on both sides.
        "model.roi_heads.aligned=false",
    ])
    torch.manual_seed(0)
    model = build_faster_rcnn(cfg.model)
    # A trained head gives realistic detection counts at inference; random init gives near-uniform scores
    # (every class above the 0.05 threshold). Bias the background logit so that both see the same, sparse set.
    with torch.no_grad():
        model.roi_heads.cls_score.bias[-1] = 3.0
    return model


class _Trunk(nn.Module):
    """torchvision's backbone contract: a module with ``out_channels`` returning the res4 feature map."""

    def __init__(self, trunk: nn.Module) -> None:
        super().__init__()
        self.trunk = trunk
        self.out_channels = trunk.out_channels

    def forward(self, x: Tensor) -> Tensor:
        (features,) = self.trunk(x).values()  # our one-level trunk's only map
        return features


class _Res5Head(nn.Module):
    """The C4 box head for torchvision's RoIHeads: res5 then global average pooling -> (R, C5)."""

    def __init__(self, res5: nn.Module) -> None:
        super().__init__()
        self.res5 = res5

    def forward(self, x: Tensor) -> Tensor:
        return self.res5(x).mean(dim=(2, 3))


def build_twin(ours: FasterRCNN, args: argparse.Namespace) -> nn.Module:
    from torchvision.models.detection import FasterRCNN as TVFasterRCNN
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.models.detection.faster_rcnn import FastRCNNPredictor
    from torchvision.models.detection.rpn import RPNHead
    from torchvision.ops import MultiScaleRoIAlign

    src = copy.deepcopy(ours)
    k = args.classes
    anchors = AnchorGenerator(sizes=((128, 256, 512),), aspect_ratios=((0.5, 1.0, 2.0),))
    rpn_head = RPNHead(src.trunk.out_channels, 9)
    rpn_head.conv[0][0].load_state_dict(src.rpn.head.conv.state_dict())
    rpn_head.cls_logits.load_state_dict(src.rpn.head.objectness.state_dict())
    rpn_head.bbox_pred.load_state_dict(src.rpn.head.deltas.state_dict())
    dim = src.roi_heads.cls_score.in_features
    predictor = FastRCNNPredictor(dim, k + 1)
    with torch.no_grad():
        # torchvision: class 0 background, 1..K foreground, (K+1)*4 deltas (background rows unused).
        w, b = src.roi_heads.cls_score.weight, src.roi_heads.cls_score.bias
        predictor.cls_score.weight.copy_(torch.cat([w[k:], w[:k]]))
        predictor.cls_score.bias.copy_(torch.cat([b[k:], b[:k]]))
        predictor.bbox_pred.weight.zero_()
        predictor.bbox_pred.bias.zero_()
        predictor.bbox_pred.weight[4:].copy_(src.roi_heads.bbox_pred.weight)
        predictor.bbox_pred.bias[4:].copy_(src.roi_heads.bbox_pred.bias)
    mean = [m / 255 for m in src.pixel_spec.mean]
    std = [s / 255 for s in src.pixel_spec.std]
    return TVFasterRCNN(
        _Trunk(src.trunk),
        num_classes=None,
        min_size=args.size, max_size=args.max_size,
        image_mean=mean, image_std=std,
        rpn_anchor_generator=anchors, rpn_head=rpn_head,
        rpn_pre_nms_top_n_train=args.pre_nms_train, rpn_pre_nms_top_n_test=args.pre_nms_test,
        rpn_post_nms_top_n_train=args.post_nms_train, rpn_post_nms_top_n_test=args.post_nms_test,
        rpn_nms_thresh=0.7, rpn_fg_iou_thresh=0.7, rpn_bg_iou_thresh=0.3,
        rpn_batch_size_per_image=256, rpn_positive_fraction=0.5,
        box_roi_pool=MultiScaleRoIAlign(["0"], 14, sampling_ratio=0),
        box_head=_Res5Head(src.roi_heads.box_head.res5), box_predictor=predictor,
        box_score_thresh=0.05, box_nms_thresh=0.5, box_detections_per_img=100,
        box_fg_iou_thresh=0.5, box_bg_iou_thresh=0.5,
        box_batch_size_per_image=args.rois, box_positive_fraction=0.25, bbox_reg_weights=(10.0, 10.0, 5.0, 5.0),
    )


def make_inputs(args: argparse.Namespace, device: torch.device) -> tuple[list[Tensor], list[dict[str, Tensor]]]:
    """``batch`` images (3, size, size * 4/3) uint8-valued floats 0-255 with 3 random boxes each."""
    g = torch.Generator().manual_seed(0)
    h, w = args.size, min(args.max_size, round(args.size * 4 / 3))
    images, targets = [], []
    for _ in range(args.batch):
        images.append((torch.rand(3, h, w, generator=g) * 255).round().to(device))
        xy = torch.rand(3, 2, generator=g) * torch.tensor([w * 0.6, h * 0.6])
        wh = torch.rand(3, 2, generator=g) * torch.tensor([w * 0.3, h * 0.3]) + 16
        targets.append({"boxes": torch.cat([xy, xy + wh], 1).to(device),
                        "labels": torch.randint(0, args.classes, (3,), generator=g).to(device)})
    return images, targets


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _runners(kind: str, model: nn.Module, images: list[Tensor], targets: list[dict[str, Tensor]],
             args: argparse.Namespace) -> tuple[Callable[[], None], Callable[[], None]]:
    """(train step, inference on one image) closures for ``kind`` in {"ours", "twin"}."""
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=1e-4, momentum=0.9)
    if kind == "ours":
        tr_images, tr_targets, inf_image = images, targets, [images[0]]
    else:  # torchvision: 0-1 images, labels 1..K
        tr_images = [im / 255 for im in images]
        tr_targets = [{"boxes": t["boxes"], "labels": t["labels"] + 1} for t in targets]
        inf_image = [tr_images[0]]

    def train_step() -> None:
        model.train()
        losses = model(tr_images, tr_targets)
        loss = sum(v for k, v in losses.items() if k.startswith("loss"))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def infer() -> None:
        model.eval()
        with torch.inference_mode():
            model(inf_image)

    return train_step, infer


def _time(fn: Callable[[], None], iters: int, device: torch.device) -> float:
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(iters):
        fn()
    _sync(device)
    return (time.perf_counter() - t0) / iters


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource_page_size() / 2**20


def resource_page_size() -> int:
    import os

    return os.sysconf("SC_PAGE_SIZE")


def _peak_memory_child(kind: str, mode: str, args: argparse.Namespace, queue: Any) -> None:
    import threading

    torch.set_num_threads(args.threads or torch.get_num_threads())
    device = torch.device(args.device)
    ours = build_ours(args).to(device)
    model = ours if kind == "ours" else build_twin(ours, args).to(device)
    if kind != "ours":
        del ours
    images, targets = make_inputs(args, device)
    train, infer = _runners(kind, model, images, targets, args)
    fn = train if mode == "train" else infer
    if device.type == "cuda":
        fn()
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        fn()
        torch.cuda.synchronize()
        queue.put(torch.cuda.max_memory_allocated() / 2**20)
        return
    # CPU: the resident set is sampled every millisecond during two steps; reported is its peak above the
    # resident size before them (model, inputs and optimizer state excluded, as on CUDA the weights are).
    base = _rss_mb()
    peak = [base]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], _rss_mb())
            time.sleep(0.001)

    t = threading.Thread(target=sample, daemon=True)
    t.start()
    fn()
    fn()
    done.set()
    t.join()
    queue.put(peak[0] - base)


def peak_memory(kind: str, mode: str, args: argparse.Namespace) -> float:
    """Peak memory (MiB) of two steps of ``kind`` / ``mode`` in a fresh process, so earlier runs do not count."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_peak_memory_child, args=(kind, mode, args, queue))
    proc.start()
    value = queue.get(timeout=1800)
    proc.join()
    return float(value)


def profile(fn: Callable[[], None], top: int = 10) -> str:
    """One call of ``fn`` under torch.profiler: the top ops by self time and the convolution share."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
    with torch_profile(activities=acts) as prof:
        fn()
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    conv = sum(e.self_cpu_time_total for e in events if "conv" in e.key)
    rows = sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)[:top]
    lines = [f"  {e.key[:48]:48s} {e.self_cpu_time_total / 1e3:10.1f} ms {100 * e.self_cpu_time_total / total:5.1f}%"
             for e in rows]
    lines.append(f"  total self CPU {total / 1e3:.1f} ms, convolution ops {100 * conv / max(total, 1):.1f}%")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backbone", default="resnet50")
    p.add_argument("--size", type=int, default=600, help="image height (shorter side); width = 4/3 of it")
    p.add_argument("--max-size", type=int, default=1000)
    p.add_argument("--batch", type=int, default=2, help="training images per step")
    p.add_argument("--classes", type=int, default=20)
    p.add_argument("--rois", type=int, default=512, help="RoIs sampled per image for the head (paper: 512 on COCO)")
    p.add_argument("--pre-nms-train", type=int, default=12000)
    p.add_argument("--post-nms-train", type=int, default=2000)
    p.add_argument("--pre-nms-test", type=int, default=6000)
    p.add_argument("--post-nms-test", type=int, default=300, help="the paper tests with 300 proposals")
    p.add_argument("--rounds", type=int, default=5, help="interleaved rounds (median reported)")
    p.add_argument("--iters", type=int, default=3, help="iterations per round and model")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch default)")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory subprocesses")
    p.add_argument("--profile", action="store_true", help="also print where the time goes (torch.profiler)")
    p.add_argument("--fuse-bn", action="store_true",
                   help="also time our inference with BN folded into the convs (resbackbone.fold_batchnorm)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    ours = build_ours(args).to(device)
    twin = build_twin(ours, args).to(device)
    images, targets = make_inputs(args, device)
    runners = {k: _runners(k, m, images, targets, args) for k, m in (("ours", ours), ("twin", twin))}
    fused_infer = None
    if args.fuse_bn:
        from resbackbone.frozen_bn import fold_batchnorm

        fused = copy.deepcopy(ours).eval()
        fold_batchnorm(fused)
        fused_infer = _runners("ours", fused, images, targets, args)[1]
    with torch.inference_mode():
        n_ours = len(ours.eval()([images[0]])[0]["boxes"])
        n_twin = len(twin.eval()([images[0] / 255])[0]["boxes"])
    h, w = images[0].shape[1:]
    print(f"detector benchmark: {args.backbone} C4, {h}x{w} px, train batch {args.batch}, {args.rois} RoIs/image, "
          f"RPN top-k train {args.pre_nms_train}/{args.post_nms_train} test {args.pre_nms_test}/{args.post_nms_test},"
          f" device {device} ({torch.get_num_threads()} threads), {args.rounds} rounds x {args.iters} iters")
    print(f"detections on the benchmark image at inference: ours {n_ours}, twin {n_twin}")
    for kind in ("ours", "twin"):
        for fn in runners[kind]:
            for _ in range(args.warmup):
                fn()
    if fused_infer is not None:
        for _ in range(args.warmup):
            fused_infer()
    train_s: dict[str, list[float]] = {"ours": [], "twin": []}
    infer_s: dict[str, list[float]] = {"ours": [], "twin": [], "fused": []}
    for r in range(args.rounds):
        for kind in ("ours", "twin") if r % 2 == 0 else ("twin", "ours"):
            train, infer = runners[kind]
            train_s[kind].append(_time(train, args.iters, device))
            infer_s[kind].append(_time(infer, args.iters, device))
            if kind == "ours" and fused_infer is not None:
                infer_s["fused"].append(_time(fused_infer, args.iters, device))
    med_train = {k: statistics.median(v) for k, v in train_s.items()}
    med_infer = {k: statistics.median(v) for k, v in infer_s.items() if v}
    ips = {k: args.batch / v for k, v in med_train.items()}
    print(f"{'':22s}{'ours':>12s}{'torchvision':>14s}{'ratio':>9s}")
    print(f"{'train images/s':22s}{ips['ours']:12.3f}{ips['twin']:14.3f}{ips['ours'] / ips['twin']:8.2f}x")
    print(f"{'inference ms/image':22s}{1000 * med_infer['ours']:12.1f}{1000 * med_infer['twin']:14.1f}"
          f"{med_infer['twin'] / med_infer['ours']:8.2f}x")
    if "fused" in med_infer:
        print(f"{'  ours, BN folded':22s}{1000 * med_infer['fused']:12.1f}{1000 * med_infer['twin']:14.1f}"
              f"{med_infer['twin'] / med_infer['fused']:8.2f}x")
    print("per-round train s/iter ours " + " ".join(f"{v:.3f}" for v in train_s["ours"])
          + " | twin " + " ".join(f"{v:.3f}" for v in train_s["twin"]))
    print("per-round infer s/img  ours " + " ".join(f"{v:.3f}" for v in infer_s["ours"])
          + " | twin " + " ".join(f"{v:.3f}" for v in infer_s["twin"]))
    if args.profile:
        for kind in ("ours", "twin"):
            for label, fn in zip(("train step", "inference"), runners[kind]):
                print(f"--- profile: {kind} {label} (top ops by self CPU time) ---")
                print(profile(fn))
    if not args.no_memory:
        what = "max allocated" if device.type == "cuda" else "peak resident set above the pre-step size"
        for mode in ("train", "inference"):
            mo, mt = peak_memory("ours", mode, args), peak_memory("twin", mode, args)
            print(f"{'peak memory ' + mode:22s}{mo:10.0f}MB{mt:12.0f}MB{mt / max(mo, 1e-9):8.2f}x   ({what})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
