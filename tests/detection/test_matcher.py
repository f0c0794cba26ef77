"""detection.matcher: the same positive / negative / ignored anchors as torchvision's Matcher (low-quality rule on
and off); no ground truth means all negative."""

from __future__ import annotations

import pytest
import torch
from torchvision.models.detection import _utils as tv_utils
from torchvision.ops import box_iou

from detection.anchors import AnchorGenerator
from detection.boxes import batched_pairwise_iou, pad_boxes
from detection.matcher import IGNORE, NEGATIVE, POSITIVE, Matcher
from tests.helpers import random_boxes


@pytest.mark.parametrize("low_quality", [True, False])
def test_matcher_matches_torchvision(low_quality: bool) -> None:
    anchors = AnchorGenerator((16.0, 32.0, 64.0), (0.5, 1.0, 2.0))(8, 8)
    gts = [random_boxes(4, seed=11), torch.tensor([[10.0, 10.0, 14.0, 13.0]]), random_boxes(2, seed=12)]
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


def test_matcher_without_ground_truth_is_all_negative() -> None:
    padded, valid, _ = pad_boxes([torch.zeros(0, 4)])
    anchors = AnchorGenerator((32.0,), (1.0,))(4, 4)
    _, labels = Matcher(0.7, 0.3, allow_low_quality_matches=True)(batched_pairwise_iou(padded, anchors[None]), valid)
    assert (labels == NEGATIVE).all()
