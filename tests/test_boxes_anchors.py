"""Anchors, box coding, matching and sampling: parity with torchvision.models.detection and invariants."""

import math

import pytest
import torch
from torchvision.models.detection import _utils as tv_utils
from torchvision.models.detection.anchor_utils import AnchorGenerator as TVAnchorGenerator
from torchvision.models.detection.image_list import ImageList
from torchvision.ops import box_iou

from detection.anchors import AnchorGenerator, base_anchors
from detection.box_coder import BBOX_XFORM_CLIP, BoxCoder
from detection.boxes import (
    batched_pairwise_iou,
    cat_per_image,
    clip_boxes,
    pad_boxes,
    split_by_image,
    topk_per_image,
)
from detection.matcher import IGNORE, NEGATIVE, POSITIVE, Matcher
from detection.sampler import sample_balanced


def _random_boxes(n: int, size: float = 128.0, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g) * size * 0.8
    wh = torch.rand(n, 2, generator=g) * size * 0.5 + 2.0
    return torch.cat([xy, xy + wh], dim=1)


@pytest.mark.parametrize(
    ("sizes", "ratios", "feat"),
    [((16.0, 32.0, 64.0), (0.5, 1.0, 2.0), (8, 8)), ((128.0, 256.0, 512.0), (0.5, 1.0, 2.0), (5, 7))],
)
def test_anchors_match_torchvision(sizes: tuple, ratios: tuple, feat: tuple) -> None:
    h, w = feat
    ours = AnchorGenerator(sizes, ratios, stride=16, offset=0.0)(h, w)
    tv = TVAnchorGenerator(sizes=(sizes,), aspect_ratios=(ratios,))
    images = ImageList(torch.zeros(1, 3, h * 16, w * 16), [(h * 16, w * 16)])
    ref = tv(images, [torch.zeros(1, 4, h, w)])[0]
    assert ours.shape == (h * w * len(sizes) * len(ratios), 4)
    torch.testing.assert_close(ours, ref, rtol=0, atol=0)


def test_anchor_conventions() -> None:
    a = base_anchors((32.0,), (0.5, 1.0, 2.0))
    w = a[:, 2] - a[:, 0]
    h = a[:, 3] - a[:, 1]
    # aspect ratio = h / w; size = sqrt(area) (up to torchvision's integer rounding of the corners)
    torch.testing.assert_close(h / w, torch.tensor([0.5, 1.0, 2.0]), atol=0, rtol=0.05)
    torch.testing.assert_close((w * h).sqrt(), torch.full((3,), 32.0), atol=0.5, rtol=0)
    shifted = AnchorGenerator((32.0,), (1.0,), stride=16, offset=0.5)(1, 2)
    torch.testing.assert_close(shifted, torch.tensor([[-8.0, -8.0, 24.0, 24.0], [8.0, -8.0, 40.0, 24.0]]))


@pytest.mark.parametrize("weights", [(1.0, 1.0, 1.0, 1.0), (10.0, 10.0, 5.0, 5.0)])
def test_box_coder_matches_torchvision(weights: tuple) -> None:
    ref_boxes = _random_boxes(50, seed=1)
    gt = _random_boxes(50, seed=2)
    ours = BoxCoder(weights)
    tv = tv_utils.BoxCoder(weights, bbox_xform_clip=math.log(1000.0 / 16))
    torch.testing.assert_close(ours.encode(ref_boxes, gt), tv.encode_single(gt, ref_boxes))
    deltas = torch.randn(50, 3 * 4)
    dec = ours.decode(deltas, ref_boxes)
    tv_dec = tv.decode_single(deltas, ref_boxes)
    torch.testing.assert_close(dec, tv_dec, rtol=1e-5, atol=1e-4)


def test_decode_inverts_encode_and_clamps() -> None:
    coder = BoxCoder((10.0, 10.0, 5.0, 5.0))
    a, b = _random_boxes(100, seed=3), _random_boxes(100, seed=4)
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


def test_batched_iou_matches_box_iou_and_padding() -> None:
    gts = [_random_boxes(3, seed=5), _random_boxes(0, seed=6), _random_boxes(5, seed=7)]
    props = torch.stack([_random_boxes(40, seed=8 + i) for i in range(3)])
    padded, valid, _ = pad_boxes(gts)
    iou = batched_pairwise_iou(padded, props)
    assert iou.shape == (3, 5, 40)
    for i, g in enumerate(gts):
        torch.testing.assert_close(iou[i, : len(g)], box_iou(g, props[i]))
        assert (iou[i, len(g):] == 0).all() and not valid[i, len(g):].any()


def test_clip_boxes_per_image_sizes() -> None:
    boxes = torch.tensor([[[-5.0, -5.0, 200.0, 50.0]], [[-5.0, -5.0, 200.0, 50.0]]])
    out = clip_boxes(boxes, torch.tensor([[40.0], [100.0]]), torch.tensor([[100.0], [150.0]]))
    torch.testing.assert_close(out, torch.tensor([[[0.0, 0.0, 100.0, 40.0]], [[0.0, 0.0, 150.0, 50.0]]]))


@pytest.mark.parametrize("low_quality", [True, False])
def test_matcher_matches_torchvision(low_quality: bool) -> None:
    anchors = AnchorGenerator((16.0, 32.0, 64.0), (0.5, 1.0, 2.0))(8, 8)
    gts = [_random_boxes(4, seed=11), torch.tensor([[10.0, 10.0, 14.0, 13.0]]), _random_boxes(2, seed=12)]
    padded, valid, _ = pad_boxes(gts)
    iou = batched_pairwise_iou(padded, anchors[None].expand(3, -1, -1))
    matched, labels = Matcher(0.7, 0.3, allow_low_quality_matches=low_quality)(iou, valid)
    tv = tv_utils.Matcher(0.7, 0.3, allow_low_quality_matches=low_quality)
    for i, g in enumerate(gts):
        ref = tv(box_iou(g, anchors))  # >= 0 matched index, -1 below low, -2 between
        assert torch.equal(labels[i] == POSITIVE, ref >= 0)
        assert torch.equal(labels[i] == NEGATIVE, ref == -1)
        assert torch.equal(labels[i] == IGNORE, ref == -2)
        assert torch.equal(matched[i][ref >= 0], ref[ref >= 0])
    # The tiny box (sub-anchor) still gets at least one positive anchor through the low-quality rule.
    assert (labels[1] == POSITIVE).any() == low_quality


@pytest.mark.parametrize("k", [1, 3, 100])
def test_topk_per_image_equals_a_per_image_loop(k: int) -> None:
    g = torch.Generator().manual_seed(0)
    n = 4
    kept = torch.randperm(50, generator=g)[:40]  # NMS survivors by descending score (any indices)
    image_index = torch.randint(0, n - 1, (40,), generator=g)  # the last image has nothing left
    expect = torch.cat([kept[image_index == i][:k] for i in range(n)])
    assert torch.equal(topk_per_image(kept, image_index, n, k), expect)
    # One image (the ONNX path): a plain slice.
    assert torch.equal(topk_per_image(kept, torch.zeros_like(kept), 1, k), kept[:k])


def test_cat_and_split_by_image_round_trip() -> None:
    boxes = [_random_boxes(3, seed=1), torch.zeros(0, 4), _random_boxes(2, seed=2)]
    flat, index = cat_per_image(boxes)
    assert flat.shape == (5, 4) and index.tolist() == [0, 0, 0, 2, 2]
    back, rows = split_by_image(index, 3, flat, torch.arange(5))
    assert [b.shape[0] for b in back] == [3, 0, 2] and all(torch.equal(a, b) for a, b in zip(back, boxes))
    assert [r.tolist() for r in rows] == [[0, 1, 2], [], [3, 4]]


def test_matcher_without_ground_truth_is_all_negative() -> None:
    padded, valid, _ = pad_boxes([torch.zeros(0, 4)])
    anchors = AnchorGenerator((32.0,), (1.0,))(4, 4)
    _, labels = Matcher(0.7, 0.3, allow_low_quality_matches=True)(batched_pairwise_iou(padded, anchors[None]), valid)
    assert (labels == NEGATIVE).all()


def test_sampler_counts_and_uniformity() -> None:
    g = torch.Generator().manual_seed(0)
    labels = torch.full((2, 1000), NEGATIVE, dtype=torch.int8)
    labels[0, :10] = POSITIVE  # few positives: all taken, negatives fill the rest
    labels[1, :400] = POSITIVE  # many positives: capped at 128
    labels[:, 990:] = IGNORE
    hits = torch.zeros(2, 1000)
    for _ in range(200):
        pos, neg = sample_balanced(labels, 256, 0.5, generator=g)
        assert pos.sum(1).tolist() == [10, 128] and neg.sum(1).tolist() == [246, 128]
        assert not (pos & neg).any() and not ((pos | neg) & (labels == IGNORE)).any()
        assert ((pos & (labels == POSITIVE)) == pos).all() and ((neg & (labels == NEGATIVE)) == neg).all()
        hits += pos.float() + neg.float()
    # Random, not "first k": every eligible positive of image 1 is chosen about 128/400 of the time.
    freq = hits[1, :400] / 200
    assert abs(freq.mean().item() - 0.32) < 0.01 and freq.min() > 0.15 and freq.max() < 0.5
    # Fewer negatives than asked for: take what there is.
    scarce = torch.full((1, 20), IGNORE, dtype=torch.int8)
    scarce[0, :3] = NEGATIVE
    pos, neg = sample_balanced(scarce, 256, 0.5)
    assert pos.sum() == 0 and neg.sum() == 3
