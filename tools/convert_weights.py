#!/usr/bin/env python
"""Convert weights to our native files: ImageNet backbones (torchvision / timm / MSRA caffe, named or a local file),
a whole trained Detectron2 Faster R-CNN (C4, DC5 or FPN), or a torchvision FPN Faster R-CNN (v1 or v2).

    python tools/convert_weights.py --weights torchvision --depth 50 --output r50_tv.pth
    python tools/convert_weights.py --weights ~/Downloads/R-101.pkl --depth 101 --output r101_msra.pth
    python tools/convert_weights.py --detectron2 model_final_721ade.pkl --output r50_c4_coco.pth
    python tools/convert_weights.py --torchvision-detector fasterrcnn_resnet50_fpn_coco-258fb6c6.pth \
        --output r50_fpn_tv_coco.pth

A backbone file is read with ``torch.load(weights_only=True)`` and accepted anywhere weights are
(``tools/train_det.py --backbone-weights r101_msra.pth``); it records the pixel normalization and stride placement
the weights need. A converted Detectron2 model is a normal detector file (the ``model_final.pth`` format): run it
with tools/infer.py / eval_det.py / export_onnx.py or the Predictor, or fine-tune from it
(``tools/train_det.py --init-from r50_c4_coco.pth``). What its keys tell (C4 / DC5 / FPN, depth, classes, anchors per
location) is read from them; the rest is Detectron2's default for the architecture, overridable below. A converted
torchvision detector is the same kind of file: v1 / v2, depth and classes are read from its keys (torchvision's 91-row
COCO layout maps to the 80 COCO classes), everything else is torchvision's setting (detection/torchvision_detector.py).
"""

from __future__ import annotations

import argparse
import sys

from resbackbone.errors import ConfigError, InputError, report_input_error
from resbackbone.resnet import ResNet
from resbackbone.weights import pretrained_state_dict, save_backbone_weights

# The name in this tool's one-line errors ("convert_weights: error: ...", argparse's form).
PROG = "convert_weights"

def _floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in text.replace(",", " ").split())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected numbers separated by commas, got {text!r}") from None


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--weights", help="backbone weights: torchvision[:TAG] | timm[:tag] | msra | PATH")
    src.add_argument("--detectron2", metavar="MODEL",
                     help="a Detectron2 checkpoint: the model zoo's model_final_*.pkl or a training .pth")
    src.add_argument("--torchvision-detector", metavar="MODEL",
                     help="a torchvision fasterrcnn_resnet50_fpn / _v2 state dict (.pth), published or fine-tuned")
    p.add_argument("--depth", type=int, choices=(18, 34, 50, 101, 152), help="ResNet depth (with --weights)")
    p.add_argument("--output", required=True, help="output .pth file")
    d2 = p.add_argument_group("--detectron2 / --torchvision-detector settings (default: the source library's)")
    d2.add_argument("--class-names", help="file with one class name per line, in the model's order (default: "
                                          "COCO's 80 names for 80 classes, VOC's 20 for 20; --torchvision-detector: "
                                          "rows 1..K, background excluded, rows named N/A dropped; needed unless the "
                                          "model has torchvision's 91 COCO rows)")
    d2.add_argument("--anchor-sizes", type=_floats, help="e.g. 32,64,128,256,512 (Detectron2's default)")
    d2.add_argument("--aspect-ratios", type=_floats, help="e.g. 0.5,1,2 (Detectron2's default)")
    d2.add_argument("--norm-eps", type=float,
                    help="--torchvision-detector: epsilon of the ResNet / FPN BatchNorm (default: 0 for v1, as the "
                         "COCO_V1 weights run in torchvision; 1e-5 for v2)")
    d2.add_argument("--min-size-test", type=int, default=800, help="test shorter side (default 800)")
    d2.add_argument("--max-size-test", type=int, default=1333, help="test longer-side cap (default 1333)")
    d2.add_argument("--pre-nms-topk-test", type=int, default=None,
                    help="--detectron2: RPN proposals before NMS (default Detectron2's: 6000 per image for C4 / DC5, "
                         "1000 per level for FPN)")
    d2.add_argument("--post-nms-topk-test", type=int, default=1000,
                    help="--detectron2: RPN proposals kept per image after NMS (default 1000)")
    d2.add_argument("--no-stride-in-1x1", action="store_true",
                    help="the bottleneck stride is in the 3x3 (RESNETS.STRIDE_IN_1X1: False, torchvision-initialized "
                         "models); the model zoo's MSRA-initialized models have it in the 1x1")
    args = p.parse_args(argv)
    if args.weights and args.depth is None:
        p.error("--weights needs --depth")
    return args


def convert_backbone(args: argparse.Namespace) -> int:
    state, info = pretrained_state_dict(args.weights, args.depth)
    # Keep exactly what the source has: no fc in the weights (e.g. a detector's backbone) -> none in the output,
    # rather than a randomly initialized one that would look pretrained.
    num_classes = int(state["fc.weight"].shape[0]) if "fc.weight" in state else None
    model = ResNet(args.depth, num_classes=num_classes, stride_in_1x1=info.stride_in_1x1)
    result = model.load_state_dict(state, strict=False)
    missing = [k for k in result.missing_keys if not k.endswith("num_batches_tracked")]
    if missing or result.unexpected_keys:  # pretrained_state_dict already checked; this guards the tool itself
        return report_input_error(PROG, f"{args.weights}: missing {missing[:6]}, unexpected "
                                        f"{result.unexpected_keys[:6]}")
    save_backbone_weights(model, args.output, depth=args.depth, pixel_spec=info.pixel_spec,
                          stride_in_1x1=info.stride_in_1x1, extra_meta={"converted_from": info.location})
    print(f"wrote {args.output}: ResNet-{args.depth} from {info.source} ({info.location}); pixels "
          f"{info.pixel_spec.channel_order} mean={info.pixel_spec.mean} std={info.pixel_spec.std}; "
          f"stride_in_1x1={info.stride_in_1x1}")
    print(info)
    return 0


def our_detector_format(path: str) -> str | None:
    """The "format" of ``path`` when it is one of our detector files or training checkpoints, else None (also for
    files torch cannot read safely: a Detectron2 pickle is not ours)."""
    import zipfile

    from resbackbone.errors import CheckpointError
    from resbackbone.serialization import load_torch_file

    if not zipfile.is_zipfile(path):  # ours are torch.save's zip archives; the model zoo's .pkl files are not
        return None
    try:
        data = load_torch_file(path)
    except (CheckpointError, OSError):
        return None
    fmt = data.get("format") if isinstance(data, dict) else None
    return fmt if isinstance(fmt, str) and fmt.startswith("resnet-det/") else None


def convert_detector(args: argparse.Namespace) -> int:
    from detection.checkpoint import save_converted
    from detection.detectron2 import Detectron2Options, convert_detectron2

    fmt = our_detector_format(args.detectron2)
    if fmt is not None:
        raise ConfigError(f"--detectron2 {args.detectron2}: already one of our detector files ({fmt}); use it as it "
                          "is (tools/train_det.py --init-from, infer.py / eval_det.py --checkpoint)")

    names = _read_class_names(args.class_names)
    options = Detectron2Options(
        anchor_sizes=args.anchor_sizes, aspect_ratios=args.aspect_ratios, min_size_test=args.min_size_test,
        max_size_test=args.max_size_test, pre_nms_topk_test=args.pre_nms_topk_test,
        post_nms_topk_test=args.post_nms_topk_test, stride_in_1x1=not args.no_stride_in_1x1, class_names=names,
    )
    model, cfg, class_names, info = convert_detectron2(args.detectron2, options)
    save_converted(model, cfg, class_names, args.output, source=args.detectron2, source_format="detectron2")
    m = cfg.model
    left_out = "".join(f"; left out {n} {part} tensors" for part, n in info.dropped.items())
    print(f"wrote {args.output}: Detectron2 R{info.depth}-{info.arch}, {info.num_classes} classes "
          f"({', '.join(class_names[:3])}, ...), anchors {m.anchors.sizes} x {m.anchors.aspect_ratios} "
          f"(detectron2 convention), pixels {m.pixel.channel_order} mean={m.pixel.mean} std={m.pixel.std}, "
          f"stride_in_1x1={m.backbone.stride_in_1x1}, test size {cfg.data.min_size_test}/{cfg.data.max_size_test}"
          + (", class-agnostic boxes repeated per class" if info.class_agnostic_box else "") + left_out)
    return 0


def _read_class_names(arg: str | None) -> list[str] | None:
    from pathlib import Path

    if not arg:
        return None
    path = Path(arg)
    if not path.is_file():
        raise ConfigError(f"--class-names {path}: no such file")
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


def convert_torchvision_detector(args: argparse.Namespace) -> int:
    from detection.checkpoint import save_converted
    from detection.torchvision_detector import TorchvisionOptions, convert_torchvision

    fmt = our_detector_format(args.torchvision_detector)
    if fmt is not None:
        raise ConfigError(f"--torchvision-detector {args.torchvision_detector}: already one of our detector files "
                          f"({fmt}); use it as it is (tools/train_det.py --init-from, infer.py / eval_det.py "
                          "--checkpoint)")
    options = TorchvisionOptions(class_names=_read_class_names(args.class_names), norm_eps=args.norm_eps,
                                 min_size_test=args.min_size_test, max_size_test=args.max_size_test)
    model, cfg, class_names, info = convert_torchvision(args.torchvision_detector, options)
    save_converted(model, cfg, class_names, args.output, source=args.torchvision_detector,
                   source_format="torchvision")
    m = cfg.model
    left_out = "".join(f"; left out {n} {part} tensors" for part, n in info.dropped.items())
    dropped_rows = info.num_rows - 1 - len(class_names)
    print(f"wrote {args.output}: torchvision {info.version} R{info.depth}-FPN, {len(class_names)} classes "
          f"({', '.join(class_names[:3])}, ...{f'; {dropped_rows} N/A rows dropped' if dropped_rows else ''}), "
          f"BN eps {m.backbone.norm_eps:g}, pixels {m.pixel.channel_order} mean={m.pixel.mean} std={m.pixel.std}, "
          f"test size {cfg.data.min_size_test}/{cfg.data.max_size_test}" + left_out)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        if args.torchvision_detector:
            return convert_torchvision_detector(args)
        return convert_detector(args) if args.detectron2 else convert_backbone(args)
    except InputError as e:  # the user's input: one line; anything else is a bug and keeps its traceback
        return report_input_error(PROG, e)


if __name__ == "__main__":
    sys.exit(main())
