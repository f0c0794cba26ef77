"""detection.visualize: drawing detections in class colours above a score threshold."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from detection.data import VOC_CLASSES


def test_draw_detections() -> None:
    from detection.visualize import class_color, draw_detections

    image = np.zeros((64, 80, 3), np.uint8)
    drawn = draw_detections(image, torch.tensor([[10.0, 20.0, 50.0, 60.0], [0.0, 0.0, 8.0, 8.0]]),
                            torch.tensor([3, 5]), torch.tensor([0.93, 0.2]), VOC_CLASSES, score_thresh=0.5)
    assert drawn.shape == image.shape and drawn.dtype == np.uint8 and not image.any()  # input untouched
    assert tuple(drawn[40, 10]) == class_color(3)  # left edge of the kept box, in its class colour
    assert not drawn[4, 4].any()  # the 0.2 detection is below the threshold
    assert class_color(3) != class_color(4)
    with pytest.raises(ValueError, match="uint8 RGB"):
        draw_detections(image[..., 0], [], [], [], VOC_CLASSES)
