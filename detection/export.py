"""Fixed-size single-image wrappers of a trained detector for ``torch.onnx.export`` (tools/export_onnx.py).

:class:`ExportableDetector` runs the model's own inference steps (``RPN.predict`` / ``RPN.propose_flat``,
``RoIHeads.predict`` / ``class_boxes`` / ``select``) for one image, so the exported graph cannot drift from
``FasterRCNN.forward``. With one image these steps have no Python-side data-dependent sizes (no ``.tolist()``
splits, no bincount), so the tracer records the numbers of proposals and detections as dynamic shapes.

Shape shorthand: H x W input image, C feature channels, M anchors, P proposals, D detections, K foreground classes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class ExportableDetector(nn.Module):
    """One fixed-size image ``(1, 3, H, W)`` float RGB 0-255 -> ``boxes (D, 4)``, ``scores (D,)``, ``labels (D,)``.

    The same computation as ``FasterRCNN.forward`` in eval mode for one image (boxes in the input image's pixels,
    padding to the size divisibility included). C4, DC5 and FPN models (any ``roi_heads.box_head``) are supported.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, image: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        m = self.model
        _, _, h, w = image.shape
        x = m.normalizer(image)
        d = m.size_divisibility
        # Zero-pad after normalizing, to the model's size divisibility, exactly as FasterRCNN.preprocess does.
        x = F.pad(x, (0, -w % d, 0, -h % d))
        features = m.trunk(x)  # {name: (1, C, H / stride, W / stride)}
        # The size is fixed at export, so a constant in the graph is what it should be.
        sizes = torch.tensor([[h, w]], device=image.device)  # (1, 2)
        rpn = m.rpn
        pred = rpn.predict(features)  # anchors (M, 4), logits (1, M), deltas (1, M, 4), level sizes
        proposals, _, _ = rpn.propose_flat(pred.anchors, pred.logits, pred.deltas, sizes, pred.level_sizes)  # (P, 4)
        heads = m.roi_heads
        cls_logits, box_deltas = heads.predict(features, [proposals])
        boxes, probs = heads.class_boxes(cls_logits, box_deltas, proposals, sizes)  # (P, K, 4), (P, K)
        cands, kept = heads.select(boxes, probs)
        return cands.boxes[kept], cands.scores[kept], cands.labels[kept]


class ExportableBackbone(nn.Module):
    """``(1, 3, H, W)`` float RGB 0-255 -> the trunk's feature maps ``(1, C, H / stride, W / stride)`` in the order
    of ``trunk.output_shape()`` (normalized inside, as the detector does)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.normalizer = model.normalizer
        self.trunk = model.trunk

    def forward(self, image: Tensor) -> tuple[Tensor, ...]:
        return tuple(self.trunk(self.normalizer(image)).values())


__all__ = ["ExportableBackbone", "ExportableDetector"]
