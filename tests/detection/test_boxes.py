"""detection.boxes: batched IoU with padding, per-image clipping, top-k per image, concatenating / splitting by
image."""

from __future__ import annotations

import pytest
import torch
from torchvision.ops import box_iou

from detection.boxes import (
    batched_pairwise_iou,
    cat_per_image,
    clip_boxes,
    pad_boxes,
    split_by_image,
    topk_per_image,
)
from tests.helpers import random_boxes


def test_batched_iou_matches_box_iou_and_padding() -> None:
    gts = [random_boxes(3, seed=5), random_boxes(0, seed=6), random_boxes(5, seed=7)]
    props = torch.stack([random_boxes(40, seed=8 + i) for i in range(3)])
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
    boxes = [random_boxes(3, seed=1), torch.zeros(0, 4), random_boxes(2, seed=2)]
    flat, index = cat_per_image(boxes)
    assert flat.shape == (5, 4) and index.tolist() == [0, 0, 0, 2, 2]
    back, rows = split_by_image(index, 3, flat, torch.arange(5))
    assert [b.shape[0] for b in back] == [3, 0, 2] and all(torch.equal(a, b) for a, b in zip(back, boxes))
    assert [r.tolist() for r in rows] == [[0, 1, 2], [], [3, 4]]
