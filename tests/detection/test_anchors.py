"""detection.anchors: the anchor grid equals torchvision's AnchorGenerator; size / aspect-ratio / offset conventions."""

from __future__ import annotations

import pytest
import torch
from torchvision.models.detection.anchor_utils import AnchorGenerator as TVAnchorGenerator
from torchvision.models.detection.image_list import ImageList

from detection.anchors import AnchorGenerator, base_anchors


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
