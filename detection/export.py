"""Export a trained detector to ONNX (tools/export_onnx.py): single-image wrappers for ``torch.onnx.export``, the
file's metadata, and the check of an exported file against PyTorch with onnxruntime.

:class:`ExportableDetector` runs the model's own inference steps (``RPN.predict`` / ``RPN.propose_flat``,
``RoIHeads.predict`` / ``class_boxes`` / ``select``) for one image, so the exported graph cannot drift from
``FasterRCNN.forward``. With one image these steps have no Python-side data-dependent sizes (no ``.tolist()``
splits, no bincount), so the tracer records the numbers of proposals and detections as dynamic shapes; and every
size derived from the image (padding, anchor grids, per-level top-k and splits, clipping) is computed from the
traced shapes, never frozen into Python ints, so one graph serves every height and width (dynamic axes). The
batch axis stays 1: images of different sizes would be padded to a common size in a batch, which changes their
detections (see ``FasterRCNN.padding_groups``), so a batched graph could not be exact.

We export with the TorchScript-based exporter (``dynamo=False``), for which torchvision registers the ``nms`` and
``roi_align`` symbolics; the dynamo exporter needs the onnxscript package, which this project does not depend on.

Shape shorthand: H x W input image, C feature channels, M anchors, P proposals, D detections, K foreground classes.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from resbackbone.errors import ConfigError

from .images import resize_image
from .onnx_predictor import INPUT_NAME, OUTPUT_NAMES, OnnxMetadata, match_detections, run_graph

# ONNX opset: 17 has every operator the graph uses (NonMaxSuppression, RoiAlign with half-pixel mode from 16).
OPSET = 17
# The size a dynamic graph is traced at: any size gives the same graph (nothing is decided by it), a small one
# traces fast.
TRACE_SIZE = (256, 320)
# What "the same detections" means when the export checks itself (float32 rounding differs between onnxruntime's
# and PyTorch's kernels, and its effect on a box grows with the image size): boxes within a hundredth of a pixel,
# scores within 1e-4. A real difference (a lost offset, another anchor, a class swap) is orders of magnitude larger.
CHECK_BOX_TOL_PX = 1e-2
CHECK_SCORE_TOL = 1e-4
# The export check's second size: the image transposed (portrait <-> landscape) at this fraction of the test size.
CHECK_SECOND_SCALE = 0.75


class ExportableDetector(nn.Module):
    """One image ``(1, 3, H, W)`` float RGB 0-255 -> ``boxes (D, 4)``, ``scores (D,)``, ``labels (D,)``.

    The same computation as ``FasterRCNN.forward`` in eval mode for one image (boxes in the input image's pixels,
    padding to the size divisibility included), for any H x W when traced with dynamic axes. C4, DC5 and FPN
    models (any ``roi_heads.box_head``) are supported.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, image: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        m = self.model
        if not torch.jit.is_tracing() and image.shape[0] != 1:
            raise ValueError(f"the export wrapper takes one image (1, 3, H, W), got {tuple(image.shape)}")
        # Python ints in eager mode, 0-dim tensors while tracing: every size below stays dynamic in the graph.
        h, w = image.shape[-2:]
        x = m.normalizer(image)
        d = m.size_divisibility
        # Zero-pad after normalizing, to the model's size divisibility, exactly as FasterRCNN.preprocess does.
        x = F.pad(x, (0, -w % d, 0, -h % d))
        features = m.trunk(x)  # {name: (1, C, H / stride, W / stride)}
        # From the shape (an ONNX Shape op when traced), not torch.tensor([[h, w]]), which would be a constant.
        sizes = torch._shape_as_tensor(image)[2:][None]  # (1, 2) int64 (H, W)
        rpn = m.rpn
        pred = rpn.predict(features)  # anchors (M, 4), logits (1, M), deltas (1, M, 4), level sizes
        proposals, _, _ = rpn.propose_flat(pred.anchors, pred.logits, pred.deltas, sizes, pred.level_sizes)  # (P, 4)
        heads = m.roi_heads
        cls_logits, box_deltas = heads.predict(features, [proposals])
        boxes, probs = heads.class_boxes(cls_logits, box_deltas, proposals, sizes)  # (P, K, 4), (P, K)
        cands, kept = heads.select(boxes, probs)
        return cands.boxes[kept], cands.scores[kept], cands.labels[kept]


class ExportableBackbone(nn.Module):
    """``(1, 3, H, W)`` float RGB 0-255 -> the trunk's feature maps ``(1, C, H / stride, W / stride)`` in the order
    of ``trunk.output_shape()`` (normalized inside, as the detector does)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.normalizer = model.normalizer
        self.trunk = model.trunk

    def forward(self, image: Tensor) -> tuple[Tensor, ...]:
        return tuple(self.trunk(self.normalizer(image)).values())


def onnx_metadata(model: nn.Module, cfg: Any, *, source: str | Path = "",
                  fixed_size: tuple[int, int] | None = None) -> OnnxMetadata:
    """The metadata an exported detector carries (:class:`~detection.onnx_predictor.OnnxMetadata`): from the
    model (classes, pixel spec, size divisibility, its RoI head's threshold / NMS / cap, the dataset ids it was
    trained with) and its resolved training config ``cfg`` (the test size and test set, the architecture)."""
    heads = model.roi_heads
    spec = model.pixel_spec
    return OnnxMetadata(
        class_names=list(model.class_names),
        min_size=int(cfg.data.min_size_test),
        max_size=int(cfg.data.max_size_test),
        pixel={"mean": list(spec.mean), "std": list(spec.std), "channel_order": spec.channel_order},
        size_divisibility=int(model.size_divisibility),
        score_thresh=float(heads.score_thresh),
        nms_thresh=float(heads.nms_thresh),
        detections_per_image=int(heads.detections_per_image),
        arch=str(cfg.model.arch),
        fixed_size=fixed_size,
        dataset=dict(getattr(model, "dataset_meta", {}) or {}),
        test_dataset=str(cfg.data.test or ""),
        source=Path(source).name,
    )


def _export(module: nn.Module, example: Tensor, path: Path, output_names: Sequence[str],
            dynamic: dict[str, dict[int, str]], opset: int) -> None:
    with torch.no_grad(), warnings.catch_warnings():
        # The tracer's remaining warnings come from torchvision internals that decide the same for every input
        # (batched_nms's size test for its CPU loop, roi_align's shape assertion); ours would be bugs and still show.
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning, module=r"(torch|torchvision\.ops\..*)$")
        warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export", category=DeprecationWarning)
        warnings.filterwarnings("ignore", message=".*torch.jit.script. is deprecated", category=FutureWarning)
        torch.onnx.export(module, (example,), str(path), input_names=[INPUT_NAME], output_names=list(output_names),
                          dynamic_axes=dynamic, opset_version=opset, dynamo=False)


def export_detector(model: nn.Module, path: str | Path, metadata: OnnxMetadata, *, opset: int = OPSET) -> Path:
    """Write ``model`` (eval mode) as an ONNX detector graph with ``metadata`` in its ``metadata_props``.

    ``metadata.fixed_size`` None: height and width are dynamic axes (traced at :data:`TRACE_SIZE`); (H, W): the
    graph takes that size only. The number of detections D is always dynamic; the batch axis is 1.
    """
    path = Path(path)
    h, w = metadata.fixed_size or TRACE_SIZE
    example = torch.rand(1, 3, h, w, generator=torch.Generator().manual_seed(0)) * 255
    dynamic = {name: {0: "detections"} for name in OUTPUT_NAMES}
    if metadata.fixed_size is None:
        dynamic[INPUT_NAME] = {2: "height", 3: "width"}
    _export(ExportableDetector(model).eval(), example, path, OUTPUT_NAMES, dynamic, opset)
    write_metadata(path, metadata.to_props())
    return path


def export_backbone(model: nn.Module, path: str | Path, size: tuple[int, int], *, opset: int = OPSET) -> Path:
    """Write normalizer + trunk as an ONNX graph: ``image (1, 3, H, W)`` with dynamic H, W -> one output per
    feature map, named as the trunk names them (C4: res4; FPN: p2 .. p6), traced at ``size``."""
    path = Path(path)
    names = list(model.trunk.output_shape())
    dynamic = {INPUT_NAME: {2: "height", 3: "width"}, **{n: {2: f"{n}_h", 3: f"{n}_w"} for n in names}}
    example = torch.rand(1, 3, *size, generator=torch.Generator().manual_seed(0)) * 255
    _export(ExportableBackbone(model).eval(), example, path, names, dynamic, opset)
    return path


def write_metadata(path: str | Path, props: dict[str, str]) -> None:
    """Set ``metadata_props`` of the ONNX file at ``path`` (rewritten in place)."""
    import onnx

    proto = onnx.load(str(path))
    onnx.helper.set_model_props(proto, props)
    onnx.save(proto, str(path))


class ExportCheckError(RuntimeError):
    """onnxruntime and PyTorch disagree on an exported graph: a bug in the export (or in onnxruntime)."""


@dataclass
class CheckResult:
    """An export check that passed: the image, the input sizes compared, the detections at each size and the
    largest differences over all of them."""

    image: str
    sizes: list[tuple[int, int]]
    detections: list[int]
    max_box_diff: float = 0.0
    max_score_diff: float = 0.0
    passed_over: list[str] = field(default_factory=list)  # images tried first that gave no detection at some size


def check_sizes(image: np.ndarray, min_size: int, max_size: int, fixed_size: tuple[int, int] | None
                ) -> list[np.ndarray]:
    """The inputs an export is checked on, from one ``(H0, W0, 3)`` uint8 RGB image: a dynamic graph at the test
    size and, transposed (landscape <-> portrait), at :data:`CHECK_SECOND_SCALE` of it (a second shape, most
    often not a multiple of 32); a fixed-size graph at its one size (the image stretched to it)."""
    import cv2

    if fixed_size is not None:
        return [cv2.resize(image, (fixed_size[1], fixed_size[0]), interpolation=cv2.INTER_LINEAR)]
    small = (max(1, round(min_size * CHECK_SECOND_SCALE)), max(1, round(max_size * CHECK_SECOND_SCALE)))
    return [resize_image(image, min_size, max_size),
            resize_image(np.ascontiguousarray(image.transpose(1, 0, 2)), *small)]


@dataclass
class CheckCase:
    """An image chosen to check an export on: its inputs (:func:`check_sizes`) and PyTorch's detections on each."""

    name: str
    inputs: list[np.ndarray]  # (H, W, 3) uint8 RGB, each a graph input
    refs: list[dict[str, np.ndarray]]  # per input {"boxes" (D, 4), "scores" (D,), "labels" (D,)}, D >= 1
    passed_over: list[str] = field(default_factory=list)  # images tried first that gave no detection at some size


def pick_check_image(
    model: nn.Module, images: Sequence[tuple[str, np.ndarray]], *, min_size: int, max_size: int,
    fixed_size: tuple[int, int] | None = None,
) -> CheckCase:
    """The first of ``images`` (name, ``(H0, W0, 3)`` uint8 RGB) on which ``model`` (eager PyTorch, float32) detects
    something at every checked size (:func:`check_sizes`), with its detections: run before exporting, so that a
    check that cannot pass fails fast.

    An image without detections at some size proves nothing (two empty outputs agree whatever the graph does), so
    it is passed over; :class:`ConfigError` when none of ``images`` gives detections.
    """
    model = model.eval()
    passed_over: list[str] = []
    for name, image in images:
        inputs = check_sizes(image, min_size, max_size, fixed_size)
        refs = []
        for x in inputs:
            with torch.inference_mode():
                out = model([torch.from_numpy(x).permute(2, 0, 1)])[0]  # (H, W, 3) -> (3, H, W)
            refs.append({k: v.numpy() for k, v in out.items()})
        if all(len(r["boxes"]) for r in refs):
            return CheckCase(name, inputs, refs, passed_over)
        passed_over.append(name)
    sizes = "at its input size" if fixed_size else "at one or both check sizes"
    raise ConfigError(
        f"cannot check the export: the model detects nothing (score > {model.roi_heads.score_thresh:g}) {sizes} in "
        f"{len(images)} image(s) ({', '.join(n for n, _ in images[:4])}{', ...' if len(images) > 4 else ''}), and "
        "two empty outputs agree whatever the graph computes; pass --check-image with an image it detects objects "
        "in, or --no-check")


def check_detector_onnx(
    path: str | Path, case: CheckCase, *, score_thresh: float, detections_per_image: int,
    box_tol: float = CHECK_BOX_TOL_PX, score_tol: float = CHECK_SCORE_TOL,
) -> CheckResult:
    """onnxruntime on the exported file against PyTorch's detections of ``case`` (:func:`pick_check_image`) at
    each of its sizes. :class:`ExportCheckError` when they disagree
    (:func:`~detection.onnx_predictor.match_detections` decides, allowing only detections that rounding can put on
    either side of the score threshold ``score_thresh`` or the per-image cap ``detections_per_image``)."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    result = CheckResult(case.name, [(x.shape[0], x.shape[1]) for x in case.inputs],
                         [len(r["boxes"]) for r in case.refs], passed_over=case.passed_over)
    for x, ref in zip(case.inputs, case.refs):
        got = run_graph(session, x)
        match = match_detections(got, ref, box_tol=box_tol, score_tol=score_tol, score_thresh=score_thresh,
                                 max_detections=detections_per_image)
        if not match.ok:
            raise ExportCheckError(
                f"onnxruntime and PyTorch disagree on {case.name} at {x.shape[0]} x {x.shape[1]} px "
                f"({len(got['boxes'])} vs {len(ref['boxes'])} detections): {'; '.join(match.unmatched[:3])}")
        result.max_box_diff = max(result.max_box_diff, match.max_box_diff)
        result.max_score_diff = max(result.max_score_diff, match.max_score_diff)
    return result


def padded_size(size: tuple[int, int], divisibility: int = 32) -> tuple[int, int]:
    """``(H, W)`` rounded up to multiples of ``divisibility``."""
    return (math.ceil(size[0] / divisibility) * divisibility, math.ceil(size[1] / divisibility) * divisibility)


__all__ = [
    "CHECK_BOX_TOL_PX",
    "CHECK_SCORE_TOL",
    "CheckCase",
    "CheckResult",
    "ExportCheckError",
    "ExportableBackbone",
    "ExportableDetector",
    "OPSET",
    "check_detector_onnx",
    "check_sizes",
    "export_backbone",
    "export_detector",
    "onnx_metadata",
    "padded_size",
    "pick_check_image",
    "write_metadata",
]
