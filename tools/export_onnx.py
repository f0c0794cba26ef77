#!/usr/bin/env python
"""Export a trained detector (or its backbone alone) to ONNX, checked with onnxruntime.

    python tools/export_onnx.py --checkpoint output/det/model_final.pth --output model.onnx   # any image size
    python tools/export_onnx.py --checkpoint CKPT --output model.onnx --check-image photo.jpg
    python tools/export_onnx.py --checkpoint CKPT --output model_608x800.onnx --size 608 800   # one fixed size
    python tools/export_onnx.py --checkpoint CKPT --output backbone.onnx --backbone-only

Detector graph: input ``image`` float32 (1, 3, H, W) RGB 0-255 at any H x W (dynamic axes; resize images with the
model's test resize first, as tools/infer.py on the file does); normalization, padding, proposals, NMS and RoIAlign
are inside the graph. Outputs ``boxes`` (D, 4) XYXY pixels of the input, ``scores`` (D,), ``labels`` (D,) int64 in
[0, K), D dynamic. The file's metadata_props hold (as JSON) the class names, pixel spec, test size, size
divisibility, score threshold, NMS settings and the training data's category / image ids: what tools/infer.py
--checkpoint model.onnx needs to run it without PyTorch. --size H W exports a graph for that one size instead.
Backbone graph: ``image`` (1, 3, H, W), dynamic H, W -> one feature map per trunk output (normalization included).

The export checks itself before the file is written (unless --no-check): onnxruntime against PyTorch, on an image
the model detects something in (the --check-image files, else the first images of the checkpoint's test set; an
image without detections proves nothing and is passed over), at the test size and transposed at 3/4 of it (two
shapes); the same detections (boxes within 0.01 px, scores within 1e-4) or no file.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import Any

from resbackbone.errors import ConfigError, InputError, report_input_error

logger = logging.getLogger("export_onnx")

# ONNX opset: 17 has every operator the graph uses (NonMaxSuppression, RoiAlign with half-pixel mode from 16).
OPSET = 17
# Images of the checkpoint's test set tried, in order, for one that the model detects something in.
MAX_DATASET_CHECK_IMAGES = 8

# The name in this tool's one-line errors ("export_onnx: error: ...", argparse's form).
PROG = "export_onnx"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="model_final.pth or a training checkpoint")
    p.add_argument("--output", required=True, help="the .onnx file to write")
    p.add_argument("--backbone-only", action="store_true", help="export normalizer + trunk (its feature maps)")
    p.add_argument("--size", type=int, nargs=2, metavar=("H", "W"), default=None,
                   help="a graph for this input size only (default: any size). Backbone: the tracing size")
    p.add_argument("--opset", type=int, default=OPSET)
    p.add_argument("--check-image", nargs="+", default=None, metavar="IMAGE",
                   help="images to check the export on (default: the checkpoint's test set)")
    p.add_argument("--data-root", default=None, help="data root of the checkpoint's test set (datasets/README.md)")
    p.add_argument("--no-check", action="store_true", help="skip the onnxruntime comparison with PyTorch")
    return p.parse_args(argv)


def load(checkpoint: str | Path) -> tuple[Any, Any]:
    """The detector (CPU, eval mode, float32, as trained: no BN folding) and its resolved config."""
    from detection.checkpoint import load_detector

    model, cfg, _ = load_detector(checkpoint, "cpu")
    return model, cfg


def validate_size(size: tuple[int, int] | None) -> None:
    """--size: a ConfigError for a side below 32 px (a stride-32 trunk would have no feature map)."""
    if size is not None and min(size) < 32:
        raise ConfigError(f"--size {size[0]} {size[1]}: both sides must be >= 32 pixels")


def export(checkpoint: str | Path, output: str | Path, *, backbone_only: bool = False,
           size: tuple[int, int] | None = None, opset: int = OPSET, model: Any = None,
           cfg: Any = None) -> tuple[Path, tuple[int, int] | None]:
    """Write the ONNX file; returns its path and the fixed (H, W) of its input (None: any size).

    ``model`` / ``cfg``: the loaded checkpoint, when the caller has it already.
    """
    from detection.export import export_backbone, export_detector, onnx_metadata, padded_size

    validate_size(size)
    if model is None or cfg is None:
        model, cfg = load(checkpoint)
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    if backbone_only:
        trace = size or padded_size((cfg.data.min_size_test, cfg.data.max_size_test))
        export_backbone(model, output, trace, opset=opset)
        return output, None
    export_detector(model, output, onnx_metadata(model, cfg, source=checkpoint, fixed_size=size), opset=opset)
    return output, size


def check_images(cfg: Any, class_names: list[str], paths: list[str] | None, data_root: str | None
                 ) -> list[tuple[str, Any]]:
    """(name, RGB image) to check the export on: ``paths`` (--check-image), else the first images of the
    checkpoint's test set. ConfigError when there are none."""
    from detection.images import decode_image

    if paths:
        return [(Path(p).name, decode_image(p)) for p in paths]
    from detection.data import build_dataset

    name = cfg.data.test
    try:
        if not name:
            raise ConfigError("the checkpoint records no test set")
        records = build_dataset(name, data_root, train=False, classes=class_names).records
    except InputError as e:
        raise ConfigError(f"no image to check the export on: the checkpoint's test set is not available "
                          f"({e}); pass --check-image IMAGE (one the model detects objects in) or --no-check"
                          ) from None
    return [(r.file.name, decode_image(r.file)) for r in records[:MAX_DATASET_CHECK_IMAGES]]


def pick_check_image(model: Any, cfg: Any, images: list[tuple[str, Any]], size: tuple[int, int] | None) -> Any:
    """The first check image PyTorch detects something in at every check size, with its detections (before the
    export: a check that cannot pass fails fast); :func:`detection.export.pick_check_image`."""
    from detection.export import pick_check_image as pick

    return pick(model, images, min_size=cfg.data.min_size_test, max_size=cfg.data.max_size_test, fixed_size=size)


def check(model: Any, onnx_path: str | Path, case: Any) -> Any:
    """onnxruntime on the written file against PyTorch on ``case`` (:func:`detection.export.check_detector_onnx`)."""
    from detection.export import check_detector_onnx

    heads = model.roi_heads
    return check_detector_onnx(onnx_path, case, score_thresh=heads.score_thresh,
                               detections_per_image=heads.detections_per_image)


def check_backbone(model: Any, onnx_path: str | Path, sizes: list[tuple[int, int]]) -> float:
    """Max absolute feature difference between onnxruntime and PyTorch on random images of ``sizes``."""
    import numpy as np
    import onnxruntime as ort
    import torch

    from detection.export import ExportableBackbone

    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    worst = 0.0
    for i, (h, w) in enumerate(sizes):
        image = torch.rand(1, 3, h, w, generator=torch.Generator().manual_seed(i)) * 255
        with torch.inference_mode():
            ref = ExportableBackbone(model).eval()(image)
        for r, g in zip(ref, sess.run(None, {"image": image.numpy()})):
            if tuple(r.shape) != g.shape:
                raise RuntimeError(f"onnxruntime feature shape {g.shape} != PyTorch {tuple(r.shape)}")
            worst = max(worst, float(np.abs(r.numpy().astype(np.float64) - g).max()))
    return worst


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    output = Path(args.output)
    # Written next to the output and moved over it once checked: a failed check leaves no file (and no old one
    # replaced by an unchecked one).
    staging = output.with_name(f".{output.name}.unchecked")
    try:
        model, cfg = load(args.checkpoint)
        fixed = (int(args.size[0]), int(args.size[1])) if args.size else None
        validate_size(fixed)
        case = None
        if not (args.no_check or args.backbone_only):  # before the export: a check that cannot pass fails fast
            images = check_images(cfg, list(model.class_names), args.check_image, args.data_root)
            case = pick_check_image(model, cfg, images, fixed)
        path, size = export(args.checkpoint, staging, backbone_only=args.backbone_only, size=fixed, opset=args.opset,
                            model=model, cfg=cfg)
        what = "backbone" if args.backbone_only else "detector"
        shape = f"{size[0]} x {size[1]} input only" if size else "any input size"
        if args.backbone_only and not args.no_check:
            diff = check_backbone(model, path, [(96, 128), (160, 96)])
            logger.info("onnxruntime vs PyTorch, features at 96 x 128 and 160 x 96 px: max abs difference %.2e", diff)
        elif case is not None:
            r = check(model, path, case)
            if r.passed_over:
                logger.info("passed over %d check image(s) without detections: %s", len(r.passed_over),
                            ", ".join(r.passed_over[:5]))
            logger.info("onnxruntime = PyTorch on %s at %s px (%s detections): max |box difference| %.1e px, "
                        "|score difference| %.1e", r.image, " and ".join(f"{h} x {w}" for h, w in r.sizes),
                        " / ".join(map(str, r.detections)), r.max_box_diff, r.max_score_diff)
        os.replace(path, output)
    except InputError as e:  # the user's input: one line; anything else is a bug and keeps its traceback
        staging.unlink(missing_ok=True)
        return report_input_error(PROG, e)
    except BaseException:
        staging.unlink(missing_ok=True)
        raise
    logger.info("wrote %s %s (%s, batch 1, %.1f MB)", what, output, shape, output.stat().st_size / 1e6)
    return 0


if __name__ == "__main__":
    sys.exit(main())
