#!/usr/bin/env python
"""Count host-synchronizing operations in one detector training step and one inference batch, on any device.

    python benchmarks/host_syncs.py                          # ResNet-18, 128 px, C4, DC5 and FPN; the C4 twin
    python benchmarks/host_syncs.py --backbone resnet50 --size 600 --arch C4 --sites

A host sync is an operation after which the Python thread must wait for the device: it reads device memory back
(``.item()`` / ``int(t)`` / ``bool(t)`` -> ``aten._local_scalar_dense``, ``.tolist()``, a device->host copy) or
its output shape depends on the data, so the host must learn that shape before it can queue the next kernel
(``nonzero``, ``masked_select``, indexing or index-assignment with a boolean mask, ``unique``,
``repeat_interleave`` without ``output_size``, ``bincount`` (CUDA reads the maximum to size its output),
torchvision's ``nms`` (CUDA copies its suppression mask to the host)). On CUDA each one drains the queue, so
the GPU idles while Python catches up; on CPU they cost nothing, which is why they are counted here rather than
timed: the counts are the same on both devices because they come from the program, not from the hardware.

How: a :class:`torch.utils._python_dispatch.TorchDispatchMode` sees every aten op (after autograd, so backward
ops too) and classifies it with :func:`sync_kind`; a :class:`torch.overrides.TorchFunctionMode` sees the
Python-level calls that never reach the dispatcher as an op (``Tensor.tolist``) and ``torch.tensor`` /
``torch.as_tensor`` of Python data with an explicit ``device=`` (a blocking host->device copy on CUDA, counted
separately as ``h2d``). Each hit records the innermost Python frame in the project (``detection/``,
``resbackbone/``), else in torchvision, so the avoidable ones can be found.

Limits: ops inside a C++ kernel (e.g. the ``nonzero`` that a boolean ``index`` runs internally) are not seen
separately; they are counted once, as the op the program called. On CPU, ``.to(device)`` copies are no-ops and
cannot be seen; on CUDA they are counted (``copy d2h`` / ``copy h2d (blocking)``).
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import traceback
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

# Python frames a call site is attributed to, in order of preference (innermost frame in the first root that has
# one): the project's packages, then torchvision (the twin's code; also our calls into torchvision.ops).
PROJECT_ROOTS: tuple[str, ...] = (str(REPO / "detection") + "/", str(REPO / "resbackbone") + "/")
TORCHVISION_ROOT = str(Path(__import__("torchvision").__file__).parent) + "/"

# aten ops that always read device memory or size their output from it (overload-independent names).
ALWAYS_SYNC: dict[str, str] = {
    "aten::_local_scalar_dense": "scalar read (.item(), int(t), float(t), bool(t))",
    "aten::nonzero": "nonzero: output size from the data",
    "aten::masked_select": "masked_select: output size from the data",
    "aten::_unique": "unique",
    "aten::_unique2": "unique",
    "aten::unique_dim": "unique",
    "aten::unique_consecutive": "unique",
    "aten::unique_dim_consecutive": "unique",
    "aten::bincount": "bincount: CUDA reads the maximum to size the output",
    "aten::equal": "equal: a Python bool",
    "aten::is_nonzero": "bool(t)",
    "aten::allclose": "allclose: a Python bool",
    "torchvision::nms": "nms: CUDA copies the suppression mask to the host",
}
# Indexing ops that sync only with a boolean (or uint8) index: the kernel runs nonzero on it.
MASK_INDEX_OPS: tuple[str, ...] = ("aten::index", "aten::_unsafe_index", "aten::index_put", "aten::index_put_",
                                   "aten::_index_put_impl_", "aten::_unsafe_index_put")
REPEAT_INTERLEAVE = "aten::repeat_interleave"


def _has_mask_index(args: tuple[Any, ...]) -> bool:
    """True when the ``indices`` argument (a list of optional tensors, position 1) holds a bool/uint8 tensor."""
    if len(args) < 2 or not isinstance(args[1], (list, tuple)):
        return False
    return any(isinstance(i, torch.Tensor) and i.dtype in (torch.bool, torch.uint8) for i in args[1])


def _device_of(x: Any) -> torch.device | None:
    return x.device if isinstance(x, torch.Tensor) else None


def sync_kind(name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> str | None:
    """The row name under which aten op ``name`` (``"aten::index"``, no overload) with these arguments counts,
    or None when it does not synchronize. Device copies count only across a CUDA boundary."""
    if name in ALWAYS_SYNC:
        return name.replace("::", ".")
    if name in MASK_INDEX_OPS and _has_mask_index(args):
        return f"{name.replace('::', '.')} (bool mask)"
    if name == REPEAT_INTERLEAVE and kwargs.get("output_size") is None:
        return "aten.repeat_interleave (no output_size)"
    if name in ("aten::_to_copy", "aten::copy_", "aten::_copy_from"):
        src = _device_of(args[0]) if name == "aten::_to_copy" else _device_of(args[1] if len(args) > 1 else None)
        dst = kwargs.get("device") if name == "aten::_to_copy" else _device_of(args[0])
        if src is None or dst is None:
            return None
        dst = torch.device(dst)
        if src.type == "cuda" and dst.type == "cpu":
            return "copy d2h"
        non_blocking = kwargs.get("non_blocking", args[2] if name == "aten::copy_" and len(args) > 2 else False)
        if src.type == "cpu" and dst.type == "cuda" and not non_blocking:
            return "copy h2d (blocking)"
    return None


def _call_site() -> str:
    """``path:line (function)`` of the innermost frame under the project roots, else under torchvision."""
    node = torch._C._current_autograd_node()
    if node is not None:  # run by the autograd engine: no Python frames of the forward code
        return f"<backward: {node.name()}>"
    frames = traceback.extract_stack()
    for roots in (PROJECT_ROOTS, (TORCHVISION_ROOT,)):
        for fr in reversed(frames):
            if fr.filename.startswith(roots):
                inside = fr.filename.startswith(str(REPO))
                base = str(REPO) + "/" if inside else str(Path(TORCHVISION_ROOT).parent) + "/"
                return f"{fr.filename[len(base):]}:{fr.lineno} ({fr.name})"
    return "<outside the project>"


@dataclass
class SyncReport:
    """What a :class:`count_host_syncs` block saw: counts per row name and per (row name, call site)."""

    counts: Counter[str] = field(default_factory=Counter)
    sites: Counter[tuple[str, str]] = field(default_factory=Counter)

    @property
    def total(self) -> int:
        """Device->host syncs (``h2d`` copies, counted separately, excluded)."""
        return sum(v for k, v in self.counts.items() if not k.startswith("h2d"))

    def add(self, kind: str, site: bool) -> None:
        self.counts[kind] += 1
        if site:
            self.sites[(kind, _call_site())] += 1


class _DispatchCounter(TorchDispatchMode):
    def __init__(self, report: SyncReport, sites: bool) -> None:
        super().__init__()
        self.report = report
        self.sites = sites

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        kind = sync_kind(func._schema.name, args, kwargs)
        if kind is not None:
            self.report.add(kind, self.sites)
        return func(*args, **kwargs)


class _FunctionCounter(TorchFunctionMode):
    def __init__(self, report: SyncReport, sites: bool) -> None:
        super().__init__()
        self.report = report
        self.sites = sites

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        if func is torch.Tensor.tolist:
            # tolist reads the storage directly (no aten op): the one read the dispatcher cannot see.
            self.report.add("Tensor.tolist", self.sites)
        elif func in (torch.tensor, torch.as_tensor) and kwargs.get("device") is not None and args \
                and not isinstance(args[0], torch.Tensor):
            self.report.add("h2d torch.tensor(Python data, device=...)", self.sites)
        return func(*args, **kwargs)


@contextlib.contextmanager
def count_host_syncs(sites: bool = True) -> Iterator[SyncReport]:
    """Count host syncs of everything run inside the block (forward, backward, optimizer step).

    ``sites``: also record each hit's Python call site (a stack walk per hit; cheap, syncs are rare).
    """
    report = SyncReport()
    with _FunctionCounter(report, sites), _DispatchCounter(report, sites):
        yield report


def host_syncs(fn: Callable[[], Any], *, sites: bool = True) -> SyncReport:
    """Run ``fn()`` once under :func:`count_host_syncs`: counts per row name (``report.counts``)."""
    with count_host_syncs(sites) as report:
        fn()
    return report


# ------------------------------------------------------------------------------------------------- the CLI


def bench_args(argv: list[str]) -> argparse.Namespace:
    """bench_detector's argument namespace (the twin needs its fields) for ``argv``."""
    from benchmarks.bench_detector import parse_args

    return parse_args(argv)


def detector_reports(args: argparse.Namespace, arch: str, *, sites: bool = True) -> dict[str, SyncReport]:
    """Reports for ours and (C4 only: torchvision's C4 twin) the twin, train step and one inference batch.

    Keys ``"ours train"``, ``"ours inference"``, ``"twin train"``, ``"twin inference"``. One warm-up call of each
    runner first, so one-off work (anchor cache, lazy init) is not counted: the steady state is what repeats.
    """
    from benchmarks import bench_detector as bd

    ours = _build_ours(args, arch)
    models = {"ours": ours}
    if arch == "C4":  # the twin is C4 by construction (res5 per RoI)
        models["twin"] = bd.build_twin(ours, args)
    images, targets = bd.make_inputs(args, torch.device("cpu"))
    out: dict[str, SyncReport] = {}
    for kind, model in models.items():
        train, infer = bd._runners(kind, model, images, targets, args)
        for label, fn in (("train", train), ("inference", infer)):
            fn()
            out[f"{kind} {label}"] = host_syncs(fn, sites=sites)
    return out


def _build_ours(args: argparse.Namespace, arch: str) -> Any:
    from benchmarks import bench_detector as bd

    if arch == "C4":
        return bd.build_ours(args)
    from detection.config import load_detection_config
    from detection.faster_rcnn import build_faster_rcnn

    # DC5 or FPN (one anchor size per level P2..P6), 7x7 pooling, the 2-fc head.
    fpn = ["model.anchors.sizes=[32,64,128,256,512]"] if arch == "FPN" else []
    cfg = load_detection_config(None, [
        f"model.arch={arch}",
        *fpn,
        f"model.backbone.name={args.backbone}",
        "model.backbone.norm=frozen_bn",
        f"model.num_classes={args.classes}",
        f"model.rpn.pre_nms_topk_train={args.pre_nms_train}",
        f"model.rpn.post_nms_topk_train={args.post_nms_train}",
        f"model.rpn.pre_nms_topk_test={args.pre_nms_test}",
        f"model.rpn.post_nms_topk_test={args.post_nms_test}",
        f"model.roi_heads.batch_size_per_image={args.rois}",
        "model.roi_heads.pooler_resolution=7",
    ])
    torch.manual_seed(0)
    model = build_faster_rcnn(cfg.model)
    with torch.no_grad():  # as bench_detector: a sparse, realistic detection set at inference
        model.roi_heads.cls_score.bias[-1] = 3.0
    return model


def markdown_table(reports: dict[str, SyncReport]) -> str:
    """One row per sync kind, one column per report, and a total row."""
    kinds = sorted({k for r in reports.values() for k in r.counts})
    cols = list(reports)
    lines = ["| op | " + " | ".join(cols) + " |", "|---|" + "---:|" * len(cols)]
    for k in kinds:
        lines.append(f"| `{k}` | " + " | ".join(str(reports[c].counts.get(k, 0)) for c in cols) + " |")
    lines.append("| **total d2h syncs** | " + " | ".join(f"**{reports[c].total}**" for c in cols) + " |")
    return "\n".join(lines)


def sites_table(reports: dict[str, SyncReport]) -> str:
    """Per report: each (op, Python call site) and its count, most frequent first."""
    lines = []
    for name, rep in reports.items():
        lines.append(f"\n{name}:")
        for (kind, site), n in sorted(rep.sites.items(), key=lambda kv: (-kv[1], kv[0])):
            lines.append(f"  {n:4d}  {kind:40s} {site}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backbone", default="resnet18")
    p.add_argument("--size", type=int, default=128, help="image height; width = 4/3 of it")
    p.add_argument("--batch", type=int, default=2, help="training images per step (inference: 1 image)")
    p.add_argument("--rois", type=int, default=64, help="RoIs sampled per image")
    p.add_argument("--arch", choices=("C4", "DC5", "FPN", "all"), default="all",
                   help="our detector's variant (the torchvision twin exists for C4 only)")
    p.add_argument("--sites", action="store_true", help="also list the Python call site of every sync")
    args = p.parse_args(argv)
    torch.set_num_threads(min(torch.get_num_threads(), 2))
    bench = bench_args([
        f"--backbone={args.backbone}", f"--size={args.size}", f"--batch={args.batch}", f"--rois={args.rois}",
        "--pre-nms-train=2000", "--post-nms-train=300", "--pre-nms-test=1000", "--post-nms-test=100",
        "--device=cpu",
    ])
    for arch in ("C4", "DC5", "FPN") if args.arch == "all" else (args.arch,):
        reports = detector_reports(bench, arch)
        h, w = bench.size, min(bench.max_size, round(bench.size * 4 / 3))
        twin = "torchvision.models.detection assembled the same way" + (", C4 only" if arch != "C4" else "")
        print(f"\nHost syncs, {args.backbone} {arch}, {h}x{w} px, train batch {args.batch} ({args.rois} RoIs/image), "
              f"inference batch 1 (twin: {twin})\n")
        print(markdown_table(reports))
        if args.sites:
            print(sites_table(reports))
    return 0


if __name__ == "__main__":
    sys.exit(main())
