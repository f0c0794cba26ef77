"""Box utilities on ``XYXY`` tensors in absolute continuous pixels (no "+1": width = x2 - x1).

Shape shorthand: N images, G ground-truth boxes (padded), A anchors / proposals per image.
"""

from __future__ import annotations

import torch
from torch import Tensor


def box_area(boxes: Tensor) -> Tensor:
    """``(..., 4)`` -> ``(...)`` areas (0 for degenerate boxes)."""
    return (boxes[..., 2] - boxes[..., 0]).clamp(min=0) * (boxes[..., 3] - boxes[..., 1]).clamp(min=0)


def batched_pairwise_iou(a: Tensor, b: Tensor) -> Tensor:
    """IoU of every box in ``a`` with every box in ``b``, per image.

    Args:
        a: ``(N, G, 4)`` XYXY (e.g. padded ground truth; padding boxes of zero area give IoU 0).
        b: ``(N, A, 4)`` XYXY (anchors or proposals; must have positive area).
    Returns:
        ``(N, G, A)`` float32.
    """
    a = a.float()
    b = b.float()
    area_a = box_area(a)  # (N, G)
    area_b = box_area(b)  # (N, A)
    lt = torch.maximum(a[:, :, None, :2], b[:, None, :, :2])  # (N, G, A, 2)
    rb = torch.minimum(a[:, :, None, 2:], b[:, None, :, 2:])
    wh = (rb - lt).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]  # (N, G, A)
    union = area_a[:, :, None] + area_b[:, None, :] - inter
    return torch.where(union > 0, inter / union.clamp(min=1e-12), torch.zeros_like(inter))


def clip_boxes(boxes: Tensor, height: Tensor | float, width: Tensor | float) -> Tensor:
    """Clip ``(..., 4)`` boxes to ``[0, width] x [0, height]``; height/width broadcast against ``boxes[..., 0]``."""
    h = torch.as_tensor(height, dtype=boxes.dtype, device=boxes.device)
    w = torch.as_tensor(width, dtype=boxes.dtype, device=boxes.device)
    x1 = torch.minimum(boxes[..., 0].clamp(min=0), w)
    y1 = torch.minimum(boxes[..., 1].clamp(min=0), h)
    x2 = torch.minimum(boxes[..., 2].clamp(min=0), w)
    y2 = torch.minimum(boxes[..., 3].clamp(min=0), h)
    return torch.stack((x1, y1, x2, y2), dim=-1)


def nonempty(boxes: Tensor, min_size: float) -> Tensor:
    """``(..., 4)`` -> bool ``(...)``: both sides at least ``min_size``."""
    return ((boxes[..., 2] - boxes[..., 0]) >= min_size) & ((boxes[..., 3] - boxes[..., 1]) >= min_size)


def pad_boxes(boxes: list[Tensor], labels: list[Tensor] | None = None) -> tuple[Tensor, Tensor, Tensor | None]:
    """Stack per-image boxes into a padded batch.

    Returns ``(padded (N, Gmax, 4), valid (N, Gmax) bool, padded labels (N, Gmax) or None)``; padding boxes are
    all-zero (zero area, so their IoU with anything is 0). ``Gmax`` is at least 1 so that shapes stay valid.
    """
    n = len(boxes)
    gmax = max([1] + [b.shape[0] for b in boxes])
    device = boxes[0].device if boxes else torch.device("cpu")
    out = torch.zeros(n, gmax, 4, device=device)
    valid = torch.zeros(n, gmax, dtype=torch.bool, device=device)
    lab = torch.zeros(n, gmax, dtype=torch.int64, device=device) if labels is not None else None
    for i, b in enumerate(boxes):
        out[i, : b.shape[0]] = b
        valid[i, : b.shape[0]] = True
        if lab is not None and labels is not None:
            lab[i, : b.shape[0]] = labels[i]
    return out, valid, lab
