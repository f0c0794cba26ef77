#!/usr/bin/env python
"""Export a trained detector (or its backbone alone) to ONNX.

    python tools/export_onnx.py --checkpoint output/det/model_final.pth --output model.onnx --size 608 800
    python tools/export_onnx.py --checkpoint CKPT --output backbone.onnx --backbone-only

Detector graph: input ``image`` float32 (1, 3, H, W) RGB 0-255 at the fixed --size (resize images the way the
model's test resize does before feeding it); outputs ``boxes`` (D, 4) XYXY pixels of that input, ``scores``
(D,), ``labels`` (D,) int64 in [0, K), D dynamic. Proposals, NMS and RoIAlign are inside the graph
(torchvision's ONNX symbolics). Backbone graph: ``image`` (1, 3, H, W) with dynamic H, W -> ``features``
(1, C, H/16, W/16) (normalization included). Checks the export with onnxruntime on a random image unless
--no-check.
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
from pathlib import Path

from resbackbone.errors import ConfigError, InputError, report_input_error

logger = logging.getLogger("export_onnx")

# ONNX opset: 17 has every operator the graph uses (NonMaxSuppression, RoiAlign with half-pixel mode from 16).
OPSET = 17


# The name in this tool's one-line errors ("export_onnx: error: ...", argparse's form).
PROG = "export_onnx"

def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="model_final.pth or a training checkpoint")
    p.add_argument("--output", required=True, help="the .onnx file to write")
    p.add_argument("--backbone-only", action="store_true", help="export normalizer + trunk (its feature maps)")
    p.add_argument("--size", type=int, nargs=2, metavar=("H", "W"), default=None,
                   help="input size (default: the config's test min_size x max_size, rounded up to 32)")
    p.add_argument("--opset", type=int, default=OPSET)
    p.add_argument("--no-check", action="store_true", help="skip the onnxruntime comparison with PyTorch")
    return p.parse_args(argv)


def export(checkpoint: str | Path, output: str | Path, *, backbone_only: bool = False,
           size: tuple[int, int] | None = None, opset: int = OPSET) -> tuple[Path, tuple[int, int]]:
    """Write the ONNX file; returns its path and the (H, W) it was traced at."""
    import torch

    from detection.checkpoint import load_detector
    from detection.export import ExportableBackbone, ExportableDetector

    model, cfg, _ = load_detector(checkpoint, "cpu")
    if size is None:
        size = (cfg.data.min_size_test, cfg.data.max_size_test)
        size = (int(math.ceil(size[0] / 32) * 32), int(math.ceil(size[1] / 32) * 32))
    h, w = size
    if h < 32 or w < 32:
        raise ConfigError(f"--size {h} {w}: both sides must be >= 32 pixels")
    example = torch.rand(1, 3, h, w) * 255
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    if backbone_only:
        module: torch.nn.Module = ExportableBackbone(model).eval()
        # One output per feature map, named as the trunk names them (C4: res4; FPN: p2 .. p6).
        names = list(model.trunk.output_shape())
        dynamic = {"image": {2: "height", 3: "width"}, **{n: {2: f"{n}_h", 3: f"{n}_w"} for n in names}}
    else:
        module = ExportableDetector(model).eval()
        names = ["boxes", "scores", "labels"]
        dynamic = {"boxes": {0: "detections"}, "scores": {0: "detections"}, "labels": {0: "detections"}}
    # The TorchScript-based exporter, for which torchvision registers nms / roi_align symbolics. The dynamo
    # exporter (dynamo=True) needs the onnxscript package, which this project does not depend on.
    with torch.no_grad():
        torch.onnx.export(module, (example,), str(output), input_names=["image"], output_names=names,
                          dynamic_axes=dynamic, opset_version=opset, dynamo=False)
    return output, (h, w)


def check(checkpoint: str | Path, onnx_path: str | Path, size: tuple[int, int], *, backbone_only: bool) -> float:
    """Max absolute difference between onnxruntime and PyTorch on one random image (raises on a count mismatch)."""
    import numpy as np
    import onnxruntime as ort
    import torch

    from detection.checkpoint import load_detector
    from detection.export import ExportableBackbone, ExportableDetector

    model, _, _ = load_detector(checkpoint, "cpu")
    module = ExportableBackbone(model) if backbone_only else ExportableDetector(model)
    image = (torch.rand(1, 3, *size, generator=torch.Generator().manual_seed(0)) * 255).float()
    with torch.no_grad():
        ref_t = module.eval()(image)
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    got = sess.run(None, {"image": image.numpy()})
    worst = 0.0
    for r, g in zip(ref_t, got):
        if tuple(r.shape) != tuple(g.shape):
            raise RuntimeError(f"onnxruntime output shape {g.shape} != PyTorch {tuple(r.shape)}")
        if r.numel():
            worst = max(worst, float(np.abs(r.numpy().astype(np.float64) - g.astype(np.float64)).max()))
    return worst


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        path, size = export(args.checkpoint, args.output, backbone_only=args.backbone_only,
                            size=tuple(args.size) if args.size else None, opset=args.opset)
    except InputError as e:  # the user's input: one line; anything else is a bug and keeps its traceback
        return report_input_error(PROG, e)
    what = "backbone" if args.backbone_only else "detector"
    logger.info("wrote %s %s (%d x %d input, %.1f MB)", what, path, *size, path.stat().st_size / 1e6)
    if not args.no_check:
        diff = check(args.checkpoint, path, size, backbone_only=args.backbone_only)
        logger.info("onnxruntime vs PyTorch on a random image: max abs difference %.2e", diff)
    return 0


if __name__ == "__main__":
    sys.exit(main())
