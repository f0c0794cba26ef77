"""detection.box_coder: encode / decode equal torchvision's BoxCoder, invert each other, clamp, stay float32."""

from __future__ import annotations

import math

import pytest
import torch
from torchvision.models.detection import _utils as tv_utils

from detection.box_coder import BBOX_XFORM_CLIP, BoxCoder
from tests.helpers import random_boxes


@pytest.mark.parametrize("weights", [(1.0, 1.0, 1.0, 1.0), (10.0, 10.0, 5.0, 5.0)])
def test_box_coder_matches_torchvision(weights: tuple) -> None:
    ref_boxes = random_boxes(50, seed=1)
    gt = random_boxes(50, seed=2)
    ours = BoxCoder(weights)
    tv = tv_utils.BoxCoder(weights, bbox_xform_clip=math.log(1000.0 / 16))
    torch.testing.assert_close(ours.encode(ref_boxes, gt), tv.encode_single(gt, ref_boxes))
    deltas = torch.randn(50, 3 * 4)
    dec = ours.decode(deltas, ref_boxes)
    tv_dec = tv.decode_single(deltas, ref_boxes)
    torch.testing.assert_close(dec, tv_dec, rtol=1e-5, atol=1e-4)


def test_decode_inverts_encode_and_clamps() -> None:
    coder = BoxCoder((10.0, 10.0, 5.0, 5.0))
    a, b = random_boxes(100, seed=3), random_boxes(100, seed=4)
    torch.testing.assert_close(coder.decode(coder.encode(a, b), a), b, rtol=1e-5, atol=1e-3)
    # Huge predicted sizes are clamped at log(1000/16) before exp().
    huge = torch.tensor([[0.0, 0.0, 100.0, 100.0]])
    box = coder.decode(huge, torch.tensor([[0.0, 0.0, 16.0, 16.0]]))
    assert torch.isfinite(box).all()
    torch.testing.assert_close(box[0, 2] - box[0, 0], torch.tensor(16.0 * math.exp(BBOX_XFORM_CLIP)))


def test_decode_float32_under_bf16_autocast() -> None:
    coder = BoxCoder()
    ref = torch.tensor([[300.0, 400.0, 700.0, 900.0]])
    deltas = torch.tensor([[0.01, -0.02, 0.1, 0.05]])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = coder.decode(deltas.bfloat16(), ref.bfloat16())
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, coder.decode(deltas.bfloat16().float(), ref), rtol=0, atol=1e-4)
