#!/usr/bin/env python
"""CPU inference of R50-C4 and R50-FPN at the real test size, side by side: PyTorch eager fp32, BN folded,
channels_last, both (also with the RoI heads left NCHW), bf16 autocast, onnxruntime (1 and 2 threads) on the
exported graph, and torchvision's twin.

    python benchmarks/bench_cpu_inference.py                         # 800 x 1067 px, 3 rounds, C4 and FPN
    python benchmarks/bench_cpu_inference.py --arch FPN --rounds 2 --size 512

Models: random weights with non-trivial BN statistics (seed 0), so that they give detections. R50-FPN is
torchvision's ``fasterrcnn_resnet50_fpn`` as its COCO_V1 weights run, converted to ours (benchmarks/bench_fpn.py),
so the torchvision row runs the same weights; R50-C4 is ``configs/det/coco_c4_1x.yaml`` (1000 proposals, 14 x 14
pooling, res5 per RoI). The input is one image already at the test size (800 x 1067: a 4:3 photo at min_size 800),
fed as the Predictor feeds it; the ONNX graph is exported once per model by ``detection.export.export_detector``
(dynamic size) and run with onnxruntime's CPU provider.

With ``--checkpoint`` (a trained detector) it measures accuracy instead: the first ``--images`` images of the
checkpoint's test set through the exact Predictor (eager fp32), the default one (BN folded + channels_last), bf16
autocast and onnxruntime on the exported file: mAP@0.5 of each, and how their detections differ from eager fp32.

    python benchmarks/bench_cpu_inference.py --checkpoint output/synthetic_r18_c4/model_final.pth --images 200

Measured in interleaved rounds (every variant once per round, so machine load hits all alike), one warm-up call
each, medians. bf16 autocast runs once (after its warm-up) unless --bf16-rounds: on a CPU without bf16
instructions oneDNN emulates it and it says nothing about bf16 hardware. Each variant's detections are compared
with eager fp32 (:func:`detection.onnx_predictor.match_detections`, 0.01 px / 1e-4): the largest box difference,
and how many detections have no partner.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks.bench_fpn import build_twin, convert  # noqa: E402
from detection.onnx_predictor import match_detections, run_graph  # noqa: E402
from detection.predictor import cpu_has_bf16, optimize_for_inference  # noqa: E402


def randomize_bn(model: nn.Module) -> None:
    """Non-trivial (frozen) BN statistics, as bench_fpn.build_twin gives torchvision's model."""
    from torchvision.ops import FrozenBatchNorm2d

    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.BatchNorm2d, FrozenBatchNorm2d)):
                for t, lo, hi in ((m.weight, 0.5, 1.5), (m.bias, -0.2, 0.2), (m.running_mean, -0.2, 0.2),
                                  (m.running_var, 0.5, 2.0)):
                    t.copy_(torch.rand(t.shape, generator=g) * (hi - lo) + lo)


def build_c4() -> tuple[nn.Module, Any]:
    from detection.config import load_detection_config
    from detection.faster_rcnn import build_faster_rcnn

    cfg = load_detection_config(REPO / "configs/det/coco_c4_1x.yaml", ["model.backbone.weights=none",
                                                                      "model.backbone.norm=frozen_bn"])
    torch.manual_seed(0)
    model = build_faster_rcnn(cfg.model, weights=None).eval()
    randomize_bn(model)
    return model, cfg


def build_fpn(size: int) -> tuple[nn.Module, nn.Module, Any]:
    """Ours (converted) and torchvision's twin, the same weights."""
    from detection.config import load_detection_config

    twin = build_twin(size)
    cfg = load_detection_config(REPO / "configs/det/coco_fpn_1x.yaml", [f"data.min_size_test={size}"])
    return convert(twin), twin, cfg


def timed(fn: Callable[[], Any]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", nargs="+", default=["C4", "FPN"], choices=["C4", "FPN"])
    p.add_argument("--size", type=int, default=800, help="image height (width 4/3 of it, as a 4:3 photo)")
    p.add_argument("--rounds", type=int, default=3, help="interleaved timing rounds")
    p.add_argument("--bf16-rounds", type=int, default=0,
                   help="timed bf16 rounds (0: one call after the warm-up, outside the rounds)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--skip-bf16", action="store_true", help="do not time bf16 autocast (emulated: minutes)")
    p.add_argument("--checkpoint", help="accuracy mode: a trained detector, scored on its test set per variant")
    p.add_argument("--images", type=int, default=200, help="accuracy mode: the first N test images")
    p.add_argument("--data-root", default=None, help="accuracy mode: data root of the test set")
    return p.parse_args(argv)


def accuracy(args: argparse.Namespace) -> int:
    """mAP@0.5 and detection differences of each variant on a trained checkpoint's test set (--checkpoint)."""
    from detection.checkpoint import load_detector
    from detection.data import build_dataset
    from detection.evaluation import build_evaluator, score_predictions
    from detection.export import export_detector, onnx_metadata
    from detection.onnx_predictor import OnnxPredictor
    from detection.predictor import Predictor

    model, cfg, names = load_detector(args.checkpoint, "cpu")
    dataset = build_dataset(cfg.data.test, args.data_root, train=False, classes=names)
    # The evaluator's ground truth is the dataset's: cut to the images scored.
    dataset.records = records = dataset.records[: args.images]
    sizes = {"min_size": cfg.data.min_size_test, "max_size": cfg.data.max_size_test}
    tmp = tempfile.TemporaryDirectory()
    onnx_path = export_detector(model, Path(tmp.name) / "m.onnx", onnx_metadata(model, cfg))
    variants: dict[str, Any] = {
        "eager fp32 (--exact)": Predictor(model, device="cpu", exact=True, **sizes),
        "BN folded + channels_last (fp32)": Predictor(model, device="cpu", bf16=False, **sizes),
        "BN folded + channels_last, bf16 autocast" + ("" if cpu_has_bf16() else " (emulated)"):
            Predictor(model, device="cpu", bf16=True, **sizes),
        "onnxruntime": OnnxPredictor(onnx_path),
    }
    heads = model.roi_heads
    ref: list[dict[str, np.ndarray]] = []
    print(f"{args.checkpoint}: {cfg.data.test}, first {len(records)} images, test size {sizes}")
    print("\n| variant | mAP@0.5 | ms/image | detections vs eager fp32 |\n|---|---|---|---|")
    for name, predictor in variants.items():
        dets: list[dict[str, np.ndarray]] = []

        def pairs(predictor: Any = predictor, dets: list = dets) -> Any:
            for i, (_, image, det) in enumerate(predictor.predict_files([r.file for r in records])):
                det = {k: np.asarray(v) for k, v in det.items()}
                dets.append(det)
                yield {"index": i, "image_id": records[i].image_id, "orig_size": image.shape[:2]}, det

        predictor([records[0].file])  # warm-up (oneDNN primitives, allocator), not timed
        t0 = time.perf_counter()
        metrics = score_predictions(pairs(), build_evaluator(dataset))
        ms = (time.perf_counter() - t0) * 1000 / len(records)
        if not ref:
            ref, agree = dets, f"reference: {sum(len(d['boxes']) for d in dets)} detections"
        else:
            # bf16 rounds scores to ~3 digits: its detections are paired within 1 px / 1e-2 instead.
            box_tol, score_tol = (1.0, 1e-2) if "bf16" in name else (1e-2, 1e-4)
            matches = [match_detections(d, r, box_tol=box_tol, score_tol=score_tol, score_thresh=heads.score_thresh,
                                        max_detections=heads.detections_per_image) for d, r in zip(dets, ref)]
            agree = (f"{sum(m.matched for m in matches)}/{sum(len(r['boxes']) for r in ref)} within {box_tol:g} px"
                     f" / {score_tol:g} (max box diff {max(m.max_box_diff for m in matches):.1e} px, score "
                     f"{max(m.max_score_diff for m in matches):.1e}), {sum(len(m.unmatched) for m in matches)} "
                     "unmatched")
        print(f"| {name} | {metrics['mAP']:.4f} | {ms:.0f} | {agree} |", flush=True)
    tmp.cleanup()
    return 0


def bench(arch: str, args: argparse.Namespace) -> list[tuple[str, float, str]]:
    """(variant, median ms/image, agreement with eager fp32) rows for one architecture."""
    import onnxruntime as ort

    from detection.export import export_detector, onnx_metadata

    twin = None
    if arch == "C4":
        model, cfg = build_c4()
    else:
        model, twin, cfg = build_fpn(args.size)
    h, w = args.size, round(args.size * 4 / 3)
    g = torch.Generator().manual_seed(0)
    image = (torch.rand(3, h, w, generator=g) * 255).round()
    heads = model.roi_heads
    tmp = tempfile.TemporaryDirectory()
    onnx_path = Path(tmp.name) / f"{arch}.onnx"
    t0 = time.perf_counter()
    export_detector(model, onnx_path, onnx_metadata(model, cfg, source="random"))
    print(f"{arch}: exported in {time.perf_counter() - t0:.0f} s ({onnx_path.stat().st_size / 1e6:.0f} MB)")
    array = image.permute(1, 2, 0).numpy().astype(np.uint8)  # (H, W, 3), what the ONNX runtime feeds

    def torch_run(m: nn.Module, bf16: bool = False) -> Callable[[], dict[str, np.ndarray]]:
        def run() -> dict[str, np.ndarray]:
            with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                out = m([image])[0]
            return {k: v.float().numpy() if k != "labels" else v.numpy() for k, v in out.items()}
        return run

    def ort_run(threads: int) -> Callable[[], dict[str, np.ndarray]]:
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
        return lambda: run_graph(session, array)

    fast = optimize_for_inference(model, fuse_bn=True, channels_last=True)
    # NHWC where the maps are image-sized only, the RoI heads NCHW (C4's res5 gets RoIAlign's NCHW crops).
    trunk_only = optimize_for_inference(model, fuse_bn=True)
    trunk_only.trunk.to(memory_format=torch.channels_last)
    trunk_only.rpn.to(memory_format=torch.channels_last)
    variants: dict[str, Callable[[], dict[str, np.ndarray]]] = {
        "eager fp32": torch_run(model),
        "BN folded": torch_run(optimize_for_inference(model, fuse_bn=True)),
        "channels_last": torch_run(optimize_for_inference(model, fuse_bn=False, channels_last=True)),
        "BN folded + channels_last (the Predictor's default)": torch_run(fast),
        "BN folded + channels_last on trunk + RPN only": torch_run(trunk_only),
        "onnxruntime, 1 thread": ort_run(1),
        "onnxruntime, 2 threads": ort_run(2),
    }
    if twin is not None:
        def run_twin() -> dict[str, np.ndarray]:
            with torch.inference_mode():
                twin([image / 255])
            return {}
        variants["torchvision fasterrcnn_resnet50_fpn"] = run_twin
    bf16_name = "BN folded + channels_last, bf16 autocast" + ("" if cpu_has_bf16() else " (emulated)")
    outputs = {name: fn() for name, fn in variants.items()}  # warm-up, and the detections compared
    times: dict[str, list[float]] = {name: [] for name in variants}
    for r in range(args.rounds):
        for name, fn in variants.items():
            times[name].append(timed(fn))
        print(f"{arch} round {r + 1}: " + ", ".join(f"{n} {t[-1] * 1000:.0f}" for n, t in times.items()), flush=True)
    if not args.skip_bf16:
        bf16 = torch_run(fast, bf16=True)
        outputs[bf16_name] = bf16()
        times[bf16_name] = [timed(bf16) for _ in range(max(args.bf16_rounds, 1))]
    ref = outputs["eager fp32"]
    rows = []
    for name, ts in times.items():
        out = outputs[name]
        if not out:
            agree = "(other weights' layout; not compared)"
        elif name == "eager fp32":
            agree = f"reference: {len(ref['boxes'])} detections"
        else:
            m = match_detections(out, ref, box_tol=10.0 if "bf16" in name else 1e-2,
                                 score_tol=1e-1 if "bf16" in name else 1e-4, score_thresh=heads.score_thresh,
                                 max_detections=heads.detections_per_image)
            agree = (f"{m.matched}/{len(ref['boxes'])} matched, max box diff {m.max_box_diff:.1e} px, score "
                     f"{m.max_score_diff:.1e}" + (f", {len(m.unmatched)} unmatched" if m.unmatched else ""))
        rows.append((name, statistics.median(ts) * 1000, agree))
    tmp.cleanup()
    return rows


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.checkpoint:
        return accuracy(args)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU capability "
          f"{torch.backends.cpu.get_cpu_capability()}, bf16 instructions: {cpu_has_bf16()}")
    for arch in args.arch:
        rows = bench(arch, args)
        base = rows[0][1]
        print(f"\n| R50-{arch}, {args.size} x {round(args.size * 4 / 3)} px | ms/image | vs eager fp32 | "
              "detections vs eager fp32 |\n|---|---|---|---|")
        for name, ms, agree in rows:
            print(f"| {name} | {ms:.0f} | {base / ms:.2f}x | {agree} |")
        print(flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
