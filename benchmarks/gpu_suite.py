#!/usr/bin/env python
"""What only a GPU can show, in one run of at most ~8 minutes: a JSON file and a Markdown block for RESULTS.md.

    python benchmarks/gpu_suite.py --out output/gpu_suite             # GPU: the paper's 600 px, ResNet-50
    python benchmarks/gpu_suite.py --smoke --out /tmp/suite           # any machine: 64 px, ResNet-18, 1 iteration
    bash benchmarks/gpu_suite.sh                                      # the same as the first line, with sizes

Measured (each one a record ``{"value": float, "unit": str}`` or ``{"value": null, "skipped": reason}``):

* ``det.<fp32|bf16>.<ours|twin>.*``: our Faster R-CNN C4 against the same architecture assembled from
  torchvision.models.detection (:mod:`benchmarks.bench_detector`'s twin, same weights and inputs), at 600 px:
  training images/s (forward + backward + SGD step, batch ``--det-batch``), inference ms/image (batch 1), and the
  peak memory of one step above what was allocated before it (``torch.cuda.max_memory_allocated``: activations,
  gradients; the weights and optimizer state of both models are resident and excluded). bf16 = autocast.
  Timings are medians of interleaved rounds (ours, twin, twin, ours, ...).
* ``fpn.<fp32|bf16>.<ours|twin>.*``: the same measurements for our R50-FPN against torchvision's own
  ``fasterrcnn_resnet50_fpn`` on the same converted weights (:mod:`benchmarks.bench_fpn`), at the same image size.
* ``cls.*``: ResNet classification training images/s at 224 px, bf16 autocast, channels_last: ours eager,
  ours ``torch.compile``-d, torchvision's eager model for the ratio (:func:`bench_cls_train.time_training`).
* ``voc_card.*``: the memory one device needs for the VOC card command (``configs/det/voc07+12_c4.yaml``,
  ResNet-101 C4, 600 x 1000 px images, at ``solver.ims_per_device`` images per micro-batch, its precision):
  ``torch.cuda.max_memory_allocated`` over a training step with only that model on the device.

On a CPU every measurement still runs at the smoke sizes (so the test suite exercises the code), except: CUDA
memory (N/A), bf16 timings (CPU autocast is no guide to a GPU's; ``--cpu-bf16`` runs them anyway) and the
compiled classification model (minutes of CPU compilation; ``--cpu-compile``). Those are recorded as skipped,
with the reason. A time budget (``--budget-s``) skips whatever would start after it, also recorded; the JSON is
rewritten after every measurement, so a run killed from outside keeps what it measured.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import gc
import json
import math
import platform
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks import bench_cls_train, bench_detector, bench_fpn  # noqa: E402

VOC_CARD_CONFIG = REPO / "configs" / "det" / "voc07+12_c4.yaml"
# The micro-batch of the VOC card command when the solver config has no ims_per_device field (older trees).
DEFAULT_IMS_PER_DEVICE = 2
PRECISIONS = ("fp32", "bf16")
KINDS = ("ours", "twin")
MIB = 2**20

Record = dict[str, Any]


def measured(value: float, unit: str) -> Record:
    return {"value": float(value), "unit": unit}


def skipped(reason: str, unit: str = "") -> Record:
    return {"value": None, "unit": unit, "skipped": reason}


class Suite:
    """The results so far, rewritten to ``<out>/gpu_suite.json`` after every record; the time budget."""

    def __init__(self, out: Path, meta: dict[str, Any], budget_s: float) -> None:
        self.out = out
        self.meta = meta
        self.records: dict[str, Record] = {}
        self.t0 = time.perf_counter()
        self.budget_s = budget_s

    def over_budget(self) -> bool:
        return time.perf_counter() - self.t0 > self.budget_s

    def put(self, key: str, record: Record) -> None:
        self.records[key] = record
        self.write()

    def write(self) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        data = {"meta": {**self.meta, "elapsed_s": round(time.perf_counter() - self.t0, 1)},
                "measurements": self.records}
        (self.out / "gpu_suite.json").write_text(json.dumps(data, indent=1) + "\n")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _amp(fn: Callable[[], None], device: torch.device, bf16: bool) -> Callable[[], None]:
    """``fn`` under bf16 autocast (losses and box decoding stay float32 inside the model) when ``bf16``."""
    if not bf16:
        return fn

    def run() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16):
            fn()

    return run


def step_peak_mib(fn: Callable[[], None], device: torch.device) -> float:
    """Peak CUDA memory of one ``fn()`` above what was allocated before it (MiB)."""
    _sync(device)
    before = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    fn()
    _sync(device)
    return (torch.cuda.max_memory_allocated(device) - before) / MIB


# ------------------------------------------------------------------------------------------------ detector


def detector_args(args: argparse.Namespace) -> argparse.Namespace:
    """bench_detector's namespace at this run's sizes (the twin and the inputs are built from it)."""
    argv = [f"--backbone={args.det_backbone}", f"--size={args.det_size}", f"--max-size={args.det_max_size}",
            f"--batch={args.det_batch}", f"--rois={args.det_rois}", f"--device={args.device}",
            f"--rounds={args.rounds}", f"--iters={args.iters}", f"--warmup={args.warmup}"]
    if args.smoke:
        argv += ["--pre-nms-train=200", "--post-nms-train=50", "--pre-nms-test=100", "--post-nms-test=20"]
    return bench_detector.parse_args(argv)


def run_detector(suite: Suite, args: argparse.Namespace, device: torch.device) -> None:
    """Ours (C4) vs the torchvision twin, fp32 and bf16: train images/s, inference ms/image, step peak memory."""
    bargs = detector_args(args)
    ours = bench_detector.build_ours(bargs).to(device)
    twin = bench_detector.build_twin(ours, bargs).to(device)
    images, targets = bench_detector.make_inputs(bargs, device)
    models = {"ours": ours, "twin": twin}
    compare_pair(suite, args, device, "det", lambda kind: bench_detector._runners(kind, models[kind], images, targets,
                                                                                 bargs), bargs.batch, bargs)
    models.clear()
    del ours, twin
    _free(device)


def run_fpn(suite: Suite, args: argparse.Namespace, device: torch.device) -> None:
    """Our R50-FPN vs torchvision's fasterrcnn_resnet50_fpn on the same (converted) weights
    (:mod:`benchmarks.bench_fpn`), fp32 and bf16, at the detector's image size."""
    bargs = detector_args(args)
    twin = bench_fpn.build_twin(args.det_size)
    ours = bench_fpn.convert(twin).to(device)
    twin = twin.to(device)
    images, targets = bench_fpn.inputs(args.det_size, args.det_batch)
    images = [im.to(device) for im in images]
    targets = [{k: v.to(device) for k, v in t.items()} for t in targets]
    models = {"ours": ours, "twin": twin}
    compare_pair(suite, args, device, "fpn", lambda kind: bench_fpn.runners(models[kind], images, targets,
                                                                            twin=kind == "twin"), args.det_batch,
                 bargs)
    models.clear()
    del ours, twin
    _free(device)


def compare_pair(suite: Suite, args: argparse.Namespace, device: torch.device, family: str,
                 make_runners: Callable[[str], tuple[Callable[[], None], Callable[[], None]]], batch: int,
                 bargs: argparse.Namespace) -> None:
    """``<family>.<fp32|bf16>.<ours|twin>.*`` records: interleaved timing rounds of the (train step, inference)
    closures ``make_runners(kind)`` gives, their step peak memory on CUDA, and the ours / twin ratios."""
    for prec in PRECISIONS:
        bf16 = prec == "bf16"
        prefix = f"{family}.{prec}"
        keys = [f"{prefix}.{k}.{m}" for k in KINDS for m in
                ("train_images_per_s", "inference_ms_per_image", "train_step_peak_mib", "inference_peak_mib")]
        keys += [f"{prefix}.ratio.train", f"{prefix}.ratio.inference"]
        reason = None
        if bf16 and device.type == "cpu" and not args.cpu_bf16:
            reason = "bf16 autocast on CPU says nothing about a GPU's bf16 (use --cpu-bf16 to run it anyway)"
        elif suite.over_budget():
            reason = f"time budget of {args.budget_s:.0f} s used up before this measurement"
        if reason:
            for key in keys:
                suite.put(key, skipped(reason))
            continue
        runners = {}
        for kind in KINDS:
            train, infer = make_runners(kind)
            runners[kind] = (_amp(train, device, bf16), _amp(infer, device, bf16))
            for fn in runners[kind]:
                for _ in range(bargs.warmup):
                    fn()
        train_s: dict[str, list[float]] = {k: [] for k in KINDS}
        infer_s: dict[str, list[float]] = {k: [] for k in KINDS}
        for r in range(bargs.rounds):
            for kind in KINDS if r % 2 == 0 else KINDS[::-1]:  # interleaved: load hits both alike
                train, infer = runners[kind]
                train_s[kind].append(bench_detector._time(train, bargs.iters, device))
                infer_s[kind].append(bench_detector._time(infer, bargs.iters, device))
        med_train = {k: statistics.median(v) for k, v in train_s.items()}
        med_infer = {k: statistics.median(v) for k, v in infer_s.items()}
        for kind in KINDS:
            suite.put(f"{prefix}.{kind}.train_images_per_s", measured(batch / med_train[kind], "images/s"))
            suite.put(f"{prefix}.{kind}.inference_ms_per_image", measured(1000 * med_infer[kind], "ms/image"))
            for mode, fn in zip(("train_step_peak_mib", "inference_peak_mib"), runners[kind]):
                if device.type != "cuda":
                    suite.put(f"{prefix}.{kind}.{mode}", skipped("CUDA memory: N/A on CPU", "MiB"))
                else:
                    suite.put(f"{prefix}.{kind}.{mode}", measured(step_peak_mib(fn, device), "MiB"))
        suite.put(f"{prefix}.ratio.train", measured(med_train["twin"] / med_train["ours"], "x (ours faster > 1)"))
        suite.put(f"{prefix}.ratio.inference", measured(med_infer["twin"] / med_infer["ours"], "x (ours faster > 1)"))


def _free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


# ------------------------------------------------------------------------------------------ classification


def run_classification(suite: Suite, args: argparse.Namespace, device: torch.device) -> None:
    """ResNet training images/s, bf16 autocast + channels_last: ours eager and compiled, torchvision eager."""
    import torchvision

    import resbackbone

    torch.manual_seed(0)
    x = torch.randn(args.cls_batch, 3, args.cls_size, args.cls_size, device=device)
    x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 1000, (args.cls_batch,), device=device)
    bf16 = device.type == "cuda" or args.cpu_bf16
    variants: dict[str, Callable[[], torch.nn.Module]] = {
        "ours.eager": lambda: getattr(resbackbone, args.cls_arch)(num_classes=1000),
        "ours.compiled": lambda: torch.compile(getattr(resbackbone, args.cls_arch)(num_classes=1000)),
        "torchvision.eager": lambda: getattr(torchvision.models, args.cls_arch)(weights=None),
    }
    for name, build in variants.items():
        keys = (f"cls.{name}.images_per_s", f"cls.{name}.peak_mib")
        reason = None
        if name.endswith("compiled") and device.type == "cpu" and not args.cpu_compile:
            reason = "torch.compile of a ResNet takes minutes on a CPU (use --cpu-compile to run it anyway)"
        elif suite.over_budget():
            reason = f"time budget of {args.budget_s:.0f} s used up before this measurement"
        if reason:
            suite.put(keys[0], skipped(reason, "images/s"))
            suite.put(keys[1], skipped(reason, "MiB"))
            continue
        model = build().to(device).to(memory_format=torch.channels_last)
        # Compilation happens in the warm-up steps, so the timed steps are the steady state.
        warmup = args.warmup + (2 if name.endswith("compiled") else 0)
        res = bench_cls_train.time_training(model, x, y, steps=args.cls_steps, warmup=warmup, bf16=bf16)
        suite.put(keys[0], measured(res["images_per_s"], "images/s"))
        # time_training resets the peak after its warm-up: the peak of the timed steps (weights included).
        if "peak_mem_gib" in res:
            suite.put(keys[1], measured(res["peak_mem_gib"] * 1024, "MiB"))
        else:
            suite.put(keys[1], skipped("CUDA memory: N/A on CPU", "MiB"))
        del model
        _free(device)
    if not bf16:
        suite.meta["cls_precision"] = "fp32 (CPU: bf16 skipped, see --cpu-bf16)"


# -------------------------------------------------------------------------------------------- VOC card


def voc_card_model_and_batch(args: argparse.Namespace, device: torch.device) -> tuple[Any, list[Tensor],
                                                                                       list[dict[str, Tensor]], Any]:
    """The VOC card's model (its config, no weights file: memory does not depend on the values) and one
    micro-batch of ``solver.ims_per_device`` images at the config's largest training size."""
    from detection.config import load_detection_config
    from detection.faster_rcnn import build_faster_rcnn

    # Smoke: the same code path on a model a CPU runs in a second (memory is not measured there anyway).
    overrides = [f"model.backbone.name={args.det_backbone}", "model.rpn.pre_nms_topk_train=200",
                 "model.rpn.post_nms_topk_train=50", "model.roi_heads.batch_size_per_image=16",
                 "model.roi_heads.pooler_resolution=8"] if args.smoke else []
    cfg = load_detection_config(VOC_CARD_CONFIG, overrides)
    micro = int(getattr(cfg.solver, "ims_per_device", DEFAULT_IMS_PER_DEVICE))
    h = args.det_size if args.smoke else max(cfg.data.min_size_train)
    w = args.det_max_size if args.smoke else cfg.data.max_size_train  # the widest image the resize allows
    torch.manual_seed(0)
    model = build_faster_rcnn(replace(cfg.model, num_classes=20), weights=None).to(device).train()
    g = torch.Generator().manual_seed(0)
    images = [(torch.rand(3, h, w, generator=g) * 255).round().to(device) for _ in range(micro)]
    box = torch.tensor([[0.1 * w, 0.1 * h, 0.5 * w, 0.6 * h], [0.4 * w, 0.3 * h, 0.9 * w, 0.9 * h]])
    targets = [{"boxes": box.to(device), "labels": torch.tensor([3, 11], device=device)} for _ in images]
    return model, images, targets, cfg


def run_voc_card(suite: Suite, args: argparse.Namespace, device: torch.device) -> None:
    """Peak memory per device of the VOC card command's training step at its micro-batch."""
    if suite.over_budget():
        reason = f"time budget of {args.budget_s:.0f} s used up before this measurement"
        for key, unit in (("voc_card.train_peak_mib", "MiB"), ("voc_card.step_s", "s"),
                          ("voc_card.ims_per_device", "images")):
            suite.put(key, skipped(reason, unit))
        return
    model, images, targets, cfg = voc_card_model_and_batch(args, device)
    bf16 = cfg.solver.mixed_precision == "bf16" and device.type == "cuda"
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-4, momentum=0.9)

    def step() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext():
            losses = model(images, targets)
        loss = sum(v for k, v in losses.items() if k.startswith("loss"))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    step()  # momentum buffers and gradients exist from here on, as in training
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    t = bench_detector._time(step, max(1, args.iters), device)
    suite.put("voc_card.ims_per_device", measured(len(images), "images"))
    suite.put("voc_card.step_s", measured(t, "s"))
    if device.type == "cuda":
        suite.put("voc_card.train_peak_mib", measured(torch.cuda.max_memory_allocated(device) / MIB, "MiB"))
    else:
        suite.put("voc_card.train_peak_mib", skipped("CUDA memory: N/A on CPU", "MiB"))
    suite.meta["voc_card"] = (f"{cfg.model.backbone.name} {cfg.model.arch}, {len(images)} images of "
                              f"{images[0].shape[1]}x{images[0].shape[2]} px, precision "
                              f"{'bf16' if bf16 else 'fp32'} (config: {cfg.solver.mixed_precision})")


# -------------------------------------------------------------------------------------------- Markdown


def _fmt(rec: Record | None, digits: int = 1) -> str:
    if rec is None:
        return "missing"
    if rec.get("value") is None:
        return "skipped"
    return f"{rec['value']:.{digits}f}"


def markdown(records: dict[str, Record], meta: dict[str, Any]) -> str:
    """The block for benchmarks/RESULTS.md: one table per section, then the reasons of skipped entries."""
    r = records.get
    lines = [f"### GPU suite: {meta['device_name']}, {meta['date']}", "",
             f"`{meta['command']}`; torch {meta['torch']}, {meta['elapsed_s']:.0f} s.", "",
             f"Detector: {meta['detector']}; FPN: R50-FPN against torchvision's fasterrcnn_resnet50_fpn, same "
             "weights and image size.", "",
             "| | ours | torchvision | ratio (ours faster > 1) |", "|---|---:|---:|---:|"]
    for family, name in (("det", "C4"), ("fpn", "FPN")):
        for prec in PRECISIONS:
            p = f"{family}.{prec}"
            lines.append(f"| {name} {prec} train images/s | {_fmt(r(f'{p}.ours.train_images_per_s'), 2)} | "
                         f"{_fmt(r(f'{p}.twin.train_images_per_s'), 2)} | {_fmt(r(f'{p}.ratio.train'), 2)} |")
            lines.append(f"| {name} {prec} inference ms/image | {_fmt(r(f'{p}.ours.inference_ms_per_image'))} | "
                         f"{_fmt(r(f'{p}.twin.inference_ms_per_image'))} | {_fmt(r(f'{p}.ratio.inference'), 2)} |")
            for mode, label in (("train_step_peak_mib", "train step peak MiB"), ("inference_peak_mib",
                                                                                 "inference peak MiB")):
                lines.append(f"| {name} {prec} {label} | {_fmt(r(f'{p}.ours.{mode}'), 0)} | "
                             f"{_fmt(r(f'{p}.twin.{mode}'), 0)} | |")
    lines += ["", f"Classification training: {meta['classification']}.", "",
              "| | images/s | peak MiB |", "|---|---:|---:|"]
    for name in ("ours.eager", "ours.compiled", "torchvision.eager"):
        lines.append(f"| {name} | {_fmt(r(f'cls.{name}.images_per_s'))} | {_fmt(r(f'cls.{name}.peak_mib'), 0)} |")
    lines += ["", f"VOC card (`configs/det/voc07+12_c4.yaml`): {meta.get('voc_card', 'not run')}: "
              f"peak {_fmt(r('voc_card.train_peak_mib'), 0)} MiB per device, "
              f"{_fmt(r('voc_card.step_s'), 3)} s per micro-batch step."]
    reasons = sorted({rec["skipped"] for rec in records.values() if rec.get("skipped")})
    if reasons:
        lines += ["", "Skipped: " + "; ".join(reasons) + "."]
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------------ main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="output/gpu_suite", help="folder for gpu_suite.json and gpu_suite.md")
    p.add_argument("--smoke", action="store_true",
                   help="tiny sizes for any machine: ResNet-18, 64 px, 1 timed iteration (overrides the sizes below)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--budget-s", type=float, default=450.0, help="start no measurement after this many seconds")
    p.add_argument("--det-backbone", default="resnet50")
    p.add_argument("--det-size", type=int, default=600, help="image height (the paper's 600 px); width 4/3")
    p.add_argument("--det-max-size", type=int, default=1000)
    p.add_argument("--det-batch", type=int, default=2, help="training images per step")
    p.add_argument("--det-rois", type=int, default=512, help="RoIs sampled per image")
    p.add_argument("--rounds", type=int, default=3, help="interleaved timing rounds (median reported)")
    p.add_argument("--iters", type=int, default=5, help="iterations per round")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--cls-arch", default="resnet50")
    p.add_argument("--cls-size", type=int, default=224)
    p.add_argument("--cls-batch", type=int, default=256)
    p.add_argument("--cls-steps", type=int, default=20)
    p.add_argument("--cpu-bf16", action="store_true", help="on a CPU, run the bf16 measurements too")
    p.add_argument("--cpu-compile", action="store_true", help="on a CPU, run the compiled classifier too")
    args = p.parse_args(argv)
    if args.smoke:
        args.det_backbone, args.det_size, args.det_max_size, args.det_batch, args.det_rois = \
            "resnet18", 64, 96, 2, 16
        args.rounds, args.iters, args.warmup = 1, 1, 1
        args.cls_arch, args.cls_size, args.cls_batch, args.cls_steps = "resnet18", 32, 4, 2
    return args


@contextlib.contextmanager
def _deterministic_threads(device: torch.device) -> Iterator[None]:
    """On a CPU, at most 2 threads: the suite shares small machines (and CI) with other jobs."""
    before = torch.get_num_threads()
    if device.type == "cpu":
        torch.set_num_threads(min(before, 2))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("gpu_suite: no CUDA device, falling back to the CPU", file=sys.stderr)
        args.device = "cpu"
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({platform.processor() or 'cpu'})"
    h, w = args.det_size, min(args.det_max_size, round(args.det_size * 4 / 3))
    meta = {
        "date": datetime.date.today().isoformat(),
        "device": str(device), "device_name": name, "torch": torch.__version__,
        "command": "python benchmarks/gpu_suite.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "detector": f"{args.det_backbone} C4, {h}x{w} px, train batch {args.det_batch}, {args.det_rois} RoIs/image, "
                    f"{args.rounds} rounds x {args.iters} iterations",
        "classification": f"{args.cls_arch}, {args.cls_size} px, batch {args.cls_batch}, channels_last, "
                          f"{'bf16' if device.type == 'cuda' or args.cpu_bf16 else 'fp32'}, {args.cls_steps} steps",
        "smoke": args.smoke,
    }
    out = Path(args.out)
    suite = Suite(out, meta, args.budget_s)
    with _deterministic_threads(device):
        run_detector(suite, args, device)
        run_fpn(suite, args, device)
        run_classification(suite, args, device)
        run_voc_card(suite, args, device)
        _free(device)  # the VOC card's model went out of scope with run_voc_card
    suite.write()
    meta = json.loads((out / "gpu_suite.json").read_text())["meta"]
    md = markdown(suite.records, meta)
    (out / "gpu_suite.md").write_text(md)
    print(md)
    bad = [k for k, rec in suite.records.items()
           if rec.get("value") is None and not rec.get("skipped") or
           rec.get("value") is not None and not math.isfinite(rec["value"])]
    if bad:
        print(f"gpu_suite: non-finite or unexplained entries: {bad}", file=sys.stderr)
        return 1
    return 0


__all__ = ["main", "markdown", "measured", "skipped"]

if __name__ == "__main__":
    sys.exit(main())
