"""IoU matching of anchors / proposals to ground truth, batched over images.

Shape shorthand: N images, G padded ground-truth boxes per image, A anchors or proposals per image.
"""

from __future__ import annotations

import torch
from torch import Tensor

# Match labels.
NEGATIVE, IGNORE, POSITIVE = 0, -1, 1


class Matcher:
    """Assign each of A candidates to its best ground truth and label it positive / negative / ignored.

    IoU >= ``fg_thresh``: positive; IoU < ``bg_thresh``: negative; in between: ignored. With
    ``allow_low_quality_matches`` (the RPN setting of Ren et al. 2015), every candidate whose IoU with some ground
    truth equals that ground truth's highest IoU is positive too, so every object gets an anchor.
    """

    def __init__(self, fg_thresh: float, bg_thresh: float, *, allow_low_quality_matches: bool) -> None:
        if bg_thresh > fg_thresh:
            raise ValueError(f"bg_thresh {bg_thresh} must be <= fg_thresh {fg_thresh}")
        self.fg_thresh = fg_thresh
        self.bg_thresh = bg_thresh
        self.allow_low_quality_matches = allow_low_quality_matches

    def __call__(self, iou: Tensor, gt_valid: Tensor) -> tuple[Tensor, Tensor]:
        """
        Args:
            iou: ``(N, G, A)`` IoU of padded ground truth with candidates.
            gt_valid: ``(N, G)`` bool, False for padding.
        Returns:
            ``matched (N, A)`` int64 index of the best ground truth (0 where an image has none) and
            ``labels (N, A)`` int8 in {POSITIVE, NEGATIVE, IGNORE}.
        """
        iou = iou.masked_fill(~gt_valid[:, :, None], -1.0)
        best, matched = iou.max(dim=1)  # (N, A)
        # masked_fill, not boolean-index assignment: the latter runs nonzero on the mask (a host sync on a GPU).
        labels = torch.full_like(matched, IGNORE, dtype=torch.int8)
        labels = labels.masked_fill_(best < self.bg_thresh, NEGATIVE).masked_fill_(best >= self.fg_thresh, POSITIVE)
        if self.allow_low_quality_matches:
            best_per_gt = iou.max(dim=2, keepdim=True).values  # (N, G, 1)
            # Ties count (as in Detectron / torchvision); a gt with IoU 0 everywhere gets no forced match.
            forced = ((iou == best_per_gt) & (best_per_gt > 0) & gt_valid[:, :, None]).any(dim=1)  # (N, A)
            labels.masked_fill_(forced, POSITIVE)
        # Images without ground truth: best is -1 -> negative everywhere, matched index 0 is never used.
        return matched, labels
