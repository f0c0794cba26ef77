#!/usr/bin/env python
"""Convert ImageNet weights (torchvision / timm / MSRA caffe, named or a local file) to our native file.

    python tools/convert_weights.py --weights torchvision --depth 50 --output r50_tv.pth
    python tools/convert_weights.py --weights ~/Downloads/R-101.pkl --depth 101 --output r101_msra.pth

The output is read with ``torch.load(weights_only=True)`` and accepted anywhere weights are
(``tools/train_det.py --backbone-weights r101_msra.pth``); it records the pixel normalization and
stride placement the weights need.
"""

from __future__ import annotations

import argparse
import sys

from resbackbone.errors import InputError
from resbackbone.resnet import ResNet
from resbackbone.weights import pretrained_state_dict, save_backbone_weights


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weights", required=True, help="torchvision[:TAG] | timm[:tag] | msra | PATH")
    p.add_argument("--depth", type=int, required=True, choices=(18, 34, 50, 101, 152))
    p.add_argument("--output", required=True, help="output .pth file")
    args = p.parse_args(argv)
    try:
        state, info = pretrained_state_dict(args.weights, args.depth)
    except InputError as e:  # the user's input: one line; anything else is a bug and keeps its traceback
        print(f"error: {e}", file=sys.stderr)
        return 2
    # Keep exactly what the source has: no fc in the weights (e.g. a detector's backbone) -> none in the output,
    # rather than a randomly initialized one that would look pretrained.
    num_classes = int(state["fc.weight"].shape[0]) if "fc.weight" in state else None
    model = ResNet(args.depth, num_classes=num_classes, stride_in_1x1=info.stride_in_1x1)
    result = model.load_state_dict(state, strict=False)
    missing = [k for k in result.missing_keys if not k.endswith("num_batches_tracked")]
    if missing or result.unexpected_keys:  # pretrained_state_dict already checked; this guards the tool itself
        print(f"error: {args.weights}: missing {missing[:6]}, unexpected {result.unexpected_keys[:6]}", file=sys.stderr)
        return 2
    save_backbone_weights(model, args.output, depth=args.depth, pixel_spec=info.pixel_spec,
                          stride_in_1x1=info.stride_in_1x1, extra_meta={"converted_from": info.location})
    print(f"wrote {args.output}: ResNet-{args.depth} from {info.source} ({info.location}); pixels "
          f"{info.pixel_spec.channel_order} mean={info.pixel_spec.mean} std={info.pixel_spec.std}; "
          f"stride_in_1x1={info.stride_in_1x1}")
    print(info)
    return 0


if __name__ == "__main__":
    sys.exit(main())
