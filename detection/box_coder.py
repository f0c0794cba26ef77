"""Box regression coding (R-CNN / Fast R-CNN parametrization).

``(dx, dy, dw, dh) = (wx * (gx - px) / pw, wy * (gy - py) / ph, ww * log(gw / pw), wh * log(gh / ph))`` with
centres and sizes from XYXY boxes without "+1". Weights (1, 1, 1, 1) for the RPN, (10, 10, 5, 5) for the RoI head
(they rescale the targets to roughly unit variance, Girshick 2015). Always computed in float32: under bf16
autocast, ``exp`` of a bf16 delta loses whole pixels at 600-1000 px.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

# Largest dw/dh before exp(): a box can grow at most 1000/16 times (legacy Detectron constant, also torchvision's).
BBOX_XFORM_CLIP = math.log(1000.0 / 16)


class BoxCoder:
    """Encode ground truth against reference boxes and decode predicted deltas; shapes ``(..., 4)``."""

    def __init__(self, weights: tuple[float, float, float, float] = (1.0, 1.0, 1.0, 1.0),
                 scale_clamp: float = BBOX_XFORM_CLIP) -> None:
        self.weights = tuple(float(w) for w in weights)
        self.scale_clamp = scale_clamp

    def encode(self, reference: Tensor, target: Tensor) -> Tensor:
        """``reference``, ``target``: ``(..., 4)`` XYXY -> deltas ``(..., 4)`` float32."""
        reference = reference.float()
        target = target.float()
        wx, wy, ww, wh = self.weights
        pw = reference[..., 2] - reference[..., 0]
        ph = reference[..., 3] - reference[..., 1]
        px = reference[..., 0] + 0.5 * pw
        py = reference[..., 1] + 0.5 * ph
        gw = target[..., 2] - target[..., 0]
        gh = target[..., 3] - target[..., 1]
        gx = target[..., 0] + 0.5 * gw
        gy = target[..., 1] + 0.5 * gh
        return torch.stack(
            (wx * (gx - px) / pw, wy * (gy - py) / ph, ww * torch.log(gw / pw), wh * torch.log(gh / ph)), dim=-1
        )

    def decode(self, deltas: Tensor, reference: Tensor) -> Tensor:
        """``deltas`` ``(..., 4k)`` (k boxes per reference, e.g. one per class), ``reference`` ``(..., 4)``
        -> boxes ``(..., 4k)`` XYXY float32."""
        deltas = deltas.float()
        reference = reference.float()
        k = deltas.shape[-1] // 4
        d = deltas.reshape(*deltas.shape[:-1], k, 4)  # (..., 4k) -> (..., k, 4)
        wx, wy, ww, wh = self.weights
        pw = (reference[..., 2] - reference[..., 0])[..., None]
        ph = (reference[..., 3] - reference[..., 1])[..., None]
        px = reference[..., 0][..., None] + 0.5 * pw
        py = reference[..., 1][..., None] + 0.5 * ph
        dx = d[..., 0] / wx
        dy = d[..., 1] / wy
        dw = (d[..., 2] / ww).clamp(max=self.scale_clamp)
        dh = (d[..., 3] / wh).clamp(max=self.scale_clamp)
        cx = dx * pw + px
        cy = dy * ph + py
        w = torch.exp(dw) * pw
        h = torch.exp(dh) * ph
        boxes = torch.stack((cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h), dim=-1)
        return boxes.reshape(deltas.shape)  # (..., k, 4) -> (..., 4k)


def smooth_l1(x: Tensor, y: Tensor, beta: float) -> Tensor:
    """Elementwise smooth-L1 (Huber / beta) between predicted and target deltas, any shape; L1 when ``beta`` is 0
    (Detectron2's default for both heads; torchvision uses 1/9)."""
    diff = (x - y).abs()
    if beta <= 0:
        return diff
    return torch.where(diff < beta, 0.5 * diff * diff / beta, diff - 0.5 * beta)
