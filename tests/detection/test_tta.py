"""detection.tta: the paper's Appendix B test-time improvements (flip, multi-scale, iterative refinement, box voting)
on the shared tiny ResNet-18 C4 detector."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from detection.faster_rcnn import FasterRCNN
from detection.tta import TTAOptions, box_voting, candidates, parse_tta, predict_tta, resize_for_test
from tests.helpers import BOX_TOL_PX, SCORE_TOL, noise_image


def _sorted(det: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Detections in a canonical order (score, then label) so that two equal sets compare element-wise."""
    order = np.lexsort((det["labels"].numpy(), -det["scores"].numpy()))
    idx = torch.as_tensor(order)
    return det["boxes"][idx], det["scores"][idx], det["labels"][idx]


def _mirror(boxes: torch.Tensor, width: int) -> torch.Tensor:
    return torch.stack((width - boxes[:, 2], boxes[:, 1], width - boxes[:, 0], boxes[:, 3]), dim=1)


def test_single_pass_through_tta_merging_equals_the_model(tiny_detector: FasterRCNN) -> None:
    """The TTA machinery (candidates -> original pixels -> merge) with one scale, no flip / refine / voting
    reproduces the model's own post-processing (an image already at the test size, so no rescaling)."""
    image = noise_image(64, 96, 4)
    got = predict_tta(tiny_detector, [image], TTAOptions(scales=(64,)), min_size=64, max_size=96)[0]
    with torch.inference_mode():
        ref = tiny_detector([resize_for_test(image, 64, 96)], orig_sizes=[(64, 96)])[0]
    assert len(ref["boxes"]) > 0 and len(got["boxes"]) == len(ref["boxes"])
    torch.testing.assert_close(got["boxes"], ref["boxes"], atol=BOX_TOL_PX, rtol=0)
    torch.testing.assert_close(got["scores"], ref["scores"], atol=SCORE_TOL, rtol=0)
    assert torch.equal(got["labels"], ref["labels"])


def test_flip_tta_is_mirror_equivariant(tiny_detector: FasterRCNN) -> None:
    """Flip TTA on I unites pass(I) and mirror(pass(mirror I)); on mirror(I) it unites the same two passes
    mirrored. So its detections on the mirrored image are exactly the mirrored detections."""
    image = noise_image(64, 96, 5)
    opts = TTAOptions(flip=True)
    a = predict_tta(tiny_detector, [image], opts, min_size=64, max_size=96)[0]
    b = predict_tta(tiny_detector, [np.ascontiguousarray(image[:, ::-1])], opts, min_size=64, max_size=96)[0]
    assert len(a["boxes"]) > 0 and len(a["boxes"]) == len(b["boxes"])
    ba, sa, la = _sorted(a)
    bb, sb, lb = _sorted({**b, "boxes": _mirror(b["boxes"], 96)})
    torch.testing.assert_close(sa, sb, atol=SCORE_TOL, rtol=0)
    assert torch.equal(la, lb)
    torch.testing.assert_close(ba, bb, atol=BOX_TOL_PX, rtol=0)
    # And the flipped pass really contributes: flip TTA differs from the single pass.
    single = predict_tta(tiny_detector, [image], TTAOptions(scales=(64,)), min_size=64, max_size=96)[0]
    assert not (len(single["boxes"]) == len(a["boxes"]) and torch.allclose(single["boxes"], a["boxes"]))


@pytest.mark.parametrize("spec", ["multiscale", "flip,multiscale,refine"])
def test_tta_detections_are_valid_in_original_pixels(tiny_detector: FasterRCNN, spec: str) -> None:
    h0, w0 = 90, 70
    opts = parse_tta(spec, scales=(48, 80))
    det = predict_tta(tiny_detector, [noise_image(h0, w0, 6), noise_image(64, 64, 7)], opts, min_size=64, max_size=96)
    assert len(det) == 2
    d = det[0]
    assert len(d["boxes"]) > 0 and len(d["boxes"]) <= tiny_detector.roi_heads.detections_per_image
    b = d["boxes"]
    assert torch.isfinite(b).all()
    assert (b[:, [0, 1]] >= 0).all() and (b[:, 2] <= w0 + 1e-4).all() and (b[:, 3] <= h0 + 1e-4).all()
    assert (b[:, 2] > b[:, 0]).all() and (b[:, 3] > b[:, 1]).all()
    assert (d["scores"][:-1] >= d["scores"][1:]).all() and (d["scores"] > tiny_detector.roi_heads.score_thresh).all()
    assert d["labels"].min() >= 0 and d["labels"].max() < 3


def test_refine_pools_every_first_pass_box_again(tiny_detector: FasterRCNN) -> None:
    im = resize_for_test(noise_image(64, 96, 8), 64, 96)
    with torch.inference_mode():
        plain_boxes, plain_scores, _ = candidates(tiny_detector, [im], refine=False)
        boxes, scores, _ = candidates(tiny_detector, [im], refine=True)
    r = plain_boxes[0].shape[0]
    assert r > 0 and boxes[0].shape == (2 * r, 3, 4) and scores[0].shape == (2 * r, 3)
    torch.testing.assert_close(boxes[0][:r], plain_boxes[0])  # first pass unchanged, second pass appended
    assert not torch.allclose(scores[0][r:], plain_scores[0])


def test_box_voting_hand_computed() -> None:
    boxes = torch.tensor([[0.0, 0, 10, 10], [1, 1, 11, 11], [0, 0, 10, 10], [50, 50, 60, 60]])
    scores = torch.tensor([0.75, 0.25, 0.9, 0.5])
    labels = torch.tensor([0, 0, 1, 0])
    voted = box_voting(boxes[:1], labels[:1], boxes, scores, labels)
    # IoU([0,0,10,10],[1,1,11,11]) = 81/119 >= 0.5 -> averaged; class 1 and the distant box do not vote.
    torch.testing.assert_close(voted, torch.tensor([[0.25, 0.25, 10.25, 10.25]]))
    # Below the IoU threshold: the box stays itself.
    far = box_voting(boxes[:1], labels[:1], boxes, scores, labels, iou_thresh=0.7)
    torch.testing.assert_close(far, boxes[:1])


def test_parse_tta() -> None:
    assert not parse_tta("").enabled and not parse_tta(None).enabled
    o = parse_tta("flip, refine")
    assert o.flip and o.refine and o.box_voting and o.scales == ()
    assert parse_tta("multiscale").scales == (200, 400, 600, 800, 1000)
    with pytest.raises(ValueError, match="unknown --tta"):
        parse_tta("flip,zoom")
