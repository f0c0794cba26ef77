"""Box utilities on ``XYXY`` tensors in absolute continuous pixels (no "+1": width = x2 - x1).

Shape shorthand: N images, G ground-truth boxes (padded), A anchors / proposals per image, R boxes of all images
concatenated, D boxes kept by NMS.
"""

from __future__ import annotations

from collections.abc import Sequence

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
    # Tensors are converted with .to (torch.as_tensor would be a constant in a traced graph, and warns so).
    h = height.to(boxes) if isinstance(height, Tensor) else torch.as_tensor(height, dtype=boxes.dtype,
                                                                           device=boxes.device)
    w = width.to(boxes) if isinstance(width, Tensor) else torch.as_tensor(width, dtype=boxes.dtype,
                                                                         device=boxes.device)
    x1 = torch.minimum(boxes[..., 0].clamp(min=0), w)
    y1 = torch.minimum(boxes[..., 1].clamp(min=0), h)
    x2 = torch.minimum(boxes[..., 2].clamp(min=0), w)
    y2 = torch.minimum(boxes[..., 3].clamp(min=0), h)
    return torch.stack((x1, y1, x2, y2), dim=-1)


def nonempty(boxes: Tensor, min_size: float) -> Tensor:
    """``(..., 4)`` -> bool ``(...)``: both sides positive and at least ``min_size`` (``min_size`` 0: the non-empty
    boxes, as Detectron2's ``Boxes.nonempty()``; > 0: torchvision's ``remove_small_boxes``)."""
    w = boxes[..., 2] - boxes[..., 0]
    h = boxes[..., 3] - boxes[..., 1]
    return (w >= min_size) & (h >= min_size) & (w > 0) & (h > 0)


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


def cat_per_image(boxes: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
    """Per-image ``(Ri, 4)`` -> all images' boxes ``(R, 4)`` in image order and the image index ``(R,)`` int64 of
    each row. The counts come from the shapes, not from reading device memory."""
    if not boxes:
        return torch.zeros(0, 4), torch.zeros(0, dtype=torch.int64)
    device = boxes[0].device
    # Filled on the device from the host-known counts: no host->device copy (a blocking one on CUDA) and no
    # device->host read.
    index = torch.cat([torch.full((b.shape[0],), i, dtype=torch.int64, device=device) for i, b in enumerate(boxes)])
    return torch.cat(list(boxes)), index


def topk_per_image(kept: Tensor, image_index: Tensor, num_images: int, k: int) -> Tensor:
    """The first ``k`` of each image among NMS survivors, grouped by image.

    Args:
        kept: ``(D,)`` int64 indices kept by NMS, by descending score (as ``batched_nms`` returns them).
        image_index: ``(D,)`` int64 image of each kept item (``image_index[j]`` belongs to ``kept[j]``).
        num_images: N, a Python int.
        k: how many to keep per image.
    Returns:
        ``(D',)`` the kept indices of image 0, then image 1, ..., by descending score within an image, at most
        ``k`` per image.
    """
    if torch.jit.is_tracing() or num_images == 1:
        # The export graph is one image (its batch axis is fixed at 1; ONNX has no bincount). While tracing
        # num_images is a traced size, which this test would otherwise freeze with a warning.
        return kept[:k]
    # A stable sort by image keeps the score order inside each image; rank = position within its image.
    order = image_index.argsort(stable=True)
    kept, image_index = kept[order], image_index[order]
    counts = group_counts(image_index, num_images)
    starts = counts.cumsum(0) - counts
    rank = torch.arange(kept.numel(), device=kept.device) - starts[image_index]
    return kept[rank < k]


def split_by_image(image_index: Tensor, num_images: int, *values: Tensor) -> tuple[list[Tensor], ...]:
    """Rows grouped by image (as :func:`topk_per_image` orders them) -> per value, a list of N per-image tensors.

    Args:
        image_index: ``(D,)`` int64 image of each row, non-decreasing.
        num_images: N.
        values: tensors with D rows each.
    Returns:
        one list per value, ``[(D0, ...), ..., (D{N-1}, ...)]`` (empty tensors for images without rows).
    """
    if num_images == 1:
        return tuple([v] for v in values)  # one image: its rows are all rows, no count to read
    # Python lists per image need the counts on the host: the path's only host read, unavoidable.
    counts = group_counts(image_index, num_images).tolist()
    return tuple(list(v.split(counts)) for v in values)


def group_counts(image_index: Tensor, num_images: int) -> Tensor:
    """``(D,)`` int64 group (image, level) indices in ``[0, N)`` -> ``(N,)`` int64 rows per group. A scatter-add, not
    ``torch.bincount``: on CUDA bincount reads the maximum (and minimum) back to the host to size its output."""
    counts = torch.zeros(num_images, dtype=torch.int64, device=image_index.device)
    return counts.scatter_add_(0, image_index, torch.ones_like(image_index))
