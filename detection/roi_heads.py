"""Fast R-CNN RoI heads: proposal sampling, RoI pooling, a per-RoI box head, sibling predictors, losses, and
inference post-processing. The C4 box head is res5 itself (He et al. 2016, Appendix A); DC5 uses two fc layers.

Shape shorthand: N images, P proposals per image (padded), G ground truth per image (padded), R RoIs in the
whole batch, C channels, S pooled size, D box-head feature size, K foreground classes (background = K).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import batched_nms, roi_align, roi_pool

from .box_coder import BoxCoder
from .boxes import batched_pairwise_iou, clip_boxes, nonempty, pad_boxes
from .matcher import IGNORE, NEGATIVE, POSITIVE, Matcher
from .rpn import _smooth_l1
from .sampler import sample_balanced

# Detections with a side below this many pixels are dropped after decoding (torchvision's value).
MIN_DETECTION_SIZE = 1e-2


class C4BoxHead(nn.Module):
    """res5 applied to each pooled RoI, then global average pooling: ``(R, C4, S, S)`` -> ``(R, C5)``."""

    def __init__(self, res5: nn.Module, out_channels: int) -> None:
        super().__init__()
        self.res5 = res5
        self.out_channels = out_channels

    def forward(self, x: Tensor) -> Tensor:
        return self.res5(x).mean(dim=(2, 3))  # (R, C5, S/2, S/2) -> (R, C5)


class FCBoxHead(nn.Module):
    """The light DC5 head: flatten, fc + ReLU, fc + ReLU: ``(R, C, S, S)`` -> ``(R, fc_dim)``."""

    def __init__(self, in_channels: int, resolution: int, fc_dim: int = 1024) -> None:
        super().__init__()
        self.fc1 = nn.Linear(in_channels * resolution * resolution, fc_dim)
        self.fc2 = nn.Linear(fc_dim, fc_dim)
        self.out_channels = fc_dim
        for fc in (self.fc1, self.fc2):
            nn.init.kaiming_uniform_(fc.weight, a=1)
            nn.init.constant_(fc.bias, 0.0)

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.fc2(F.relu(self.fc1(x.flatten(1)))))


class RoIHeads(nn.Module):
    """Sampling, pooling, box head, (K+1)-way classifier and class-specific box regressor."""

    def __init__(
        self,
        box_head: nn.Module,
        *,
        num_classes: int,
        spatial_scale: float = 1.0 / 16,
        pooler_type: Literal["roi_align", "roi_pool"] = "roi_align",
        pooler_resolution: int = 14,
        sampling_ratio: int = 0,
        aligned: bool = True,
        batch_size_per_image: int = 512,
        positive_fraction: float = 0.25,
        fg_iou_thresh: float = 0.5,
        bg_iou_thresh_lo: float = 0.0,
        bbox_reg_weights: Sequence[float] = (10.0, 10.0, 5.0, 5.0),
        smooth_l1_beta: float = 0.0,
        score_thresh: float = 0.05,
        nms_thresh: float = 0.5,
        detections_per_image: int = 100,
    ) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.box_head = box_head
        dim = int(box_head.out_channels)
        self.num_classes = num_classes
        self.cls_score = nn.Linear(dim, num_classes + 1)
        self.bbox_pred = nn.Linear(dim, num_classes * 4)
        nn.init.normal_(self.cls_score.weight, std=0.01)
        nn.init.normal_(self.bbox_pred.weight, std=0.001)
        nn.init.constant_(self.cls_score.bias, 0.0)
        nn.init.constant_(self.bbox_pred.bias, 0.0)
        self.spatial_scale = spatial_scale
        self.pooler_type = pooler_type
        self.pooler_resolution = pooler_resolution
        self.sampling_ratio = sampling_ratio
        self.aligned = aligned
        self.batch_size_per_image = batch_size_per_image
        self.positive_fraction = positive_fraction
        self.fg_iou_thresh = fg_iou_thresh
        self.bg_iou_thresh_lo = bg_iou_thresh_lo
        self.matcher = Matcher(fg_iou_thresh, fg_iou_thresh, allow_low_quality_matches=False)
        self.box_coder = BoxCoder(tuple(bbox_reg_weights))  # type: ignore[arg-type]
        self.smooth_l1_beta = smooth_l1_beta
        self.score_thresh = score_thresh
        self.nms_thresh = nms_thresh
        self.detections_per_image = detections_per_image

    # ------------------------------------------------------------------------------------------------ pieces

    def pool(self, features: Tensor, boxes: list[Tensor]) -> Tensor:
        """RoI pooling of per-image boxes ``(Ri, 4)`` on ``features (N, C, H, W)`` -> ``(R, C, S, S)``."""
        rois = torch.cat(
            [torch.cat([torch.full_like(b[:, :1], i), b], dim=1) for i, b in enumerate(boxes)], dim=0
        ).to(features.dtype)  # (R, 5): image index, x1, y1, x2, y2
        size = (self.pooler_resolution, self.pooler_resolution)
        if self.pooler_type == "roi_pool":
            return roi_pool(features, rois, size, self.spatial_scale)
        return roi_align(features, rois, size, self.spatial_scale, self.sampling_ratio, self.aligned)

    def predict(self, features: Tensor, boxes: list[Tensor]) -> tuple[Tensor, Tensor]:
        """Class logits ``(R, K+1)`` and class-specific deltas ``(R, 4K)`` for the given per-image boxes."""
        x = self.box_head(self.pool(features, boxes))
        return self.cls_score(x), self.bbox_pred(x)

    @torch.no_grad()
    def sample(
        self, proposals: list[Tensor], gt_boxes: list[Tensor], gt_labels: list[Tensor]
    ) -> tuple[list[Tensor], Tensor, Tensor, Tensor]:
        """Append ground truth to the proposals, match (fg IoU >= 0.5, bg in [bg_lo, 0.5)), sample per image.

        Returns per-image RoIs ``(Ri, 4)``, class targets ``(R,)`` (background = K), matched ground-truth boxes
        ``(R, 4)`` and the foreground mask ``(R,)``.
        """
        props = [torch.cat([p, g.to(p.dtype)], dim=0) for p, g in zip(proposals, gt_boxes)]
        padded, valid, _ = pad_boxes(props)  # (N, P, 4)
        gt, gt_valid, gt_lab = pad_boxes(gt_boxes, gt_labels)  # (N, G, 4)
        assert gt_lab is not None
        iou = batched_pairwise_iou(gt, padded)  # (N, G, P)
        matched, labels = self.matcher(iou, gt_valid)
        best = iou.masked_fill(~gt_valid[:, :, None], 0.0).max(dim=1).values  # (N, P); 0 without gt
        labels[(best < self.bg_iou_thresh_lo) & (labels == NEGATIVE)] = IGNORE
        labels[~valid] = IGNORE
        pos, neg = sample_balanced(labels, self.batch_size_per_image, self.positive_fraction)
        keep = pos | neg  # (N, P)
        cls = torch.where(pos, gt_lab.gather(1, matched), torch.full_like(matched, self.num_classes))
        matched_boxes = gt.gather(1, matched[..., None].expand(-1, -1, 4))  # (N, P, 4)
        counts = keep.sum(dim=1).tolist()
        rois = list(padded[keep].split(counts))
        return rois, cls[keep], matched_boxes[keep], pos[keep]

    # --------------------------------------------------------------------------------------------- forward

    def forward(
        self,
        features: Tensor,
        proposals: list[Tensor],
        image_sizes: Tensor,
        gt_boxes: list[Tensor] | None = None,
        gt_labels: list[Tensor] | None = None,
    ) -> tuple[list[dict[str, Tensor]], dict[str, Tensor]]:
        """Training: losses (and an empty detection list). Inference: per-image detections in input pixels."""
        if self.training:
            if gt_boxes is None or gt_labels is None:
                raise ValueError("RoIHeads needs gt_boxes and gt_labels in training mode")
            rois, cls_t, box_t, fg = self.sample(proposals, gt_boxes, gt_labels)
            logits, deltas = self.predict(features, rois)
            return [], self.losses(logits, deltas, torch.cat(rois), cls_t, box_t, fg)
        logits, deltas = self.predict(features, proposals)
        return self.postprocess(logits, deltas, proposals, image_sizes), {}

    def losses(
        self, logits: Tensor, deltas: Tensor, rois: Tensor, cls_t: Tensor, box_t: Tensor, fg: Tensor
    ) -> dict[str, Tensor]:
        """CE averaged over sampled RoIs; class-specific box loss over foreground RoIs divided by all sampled
        RoIs (Fast R-CNN / Detectron normalization: background RoIs count in the denominator)."""
        logits = logits.float()
        r = max(logits.shape[0], 1)
        loss_cls = F.cross_entropy(logits, cls_t, reduction="sum") / r
        fg_idx = fg.nonzero().squeeze(1)
        d = deltas.float().view(-1, self.num_classes, 4)[fg_idx, cls_t[fg_idx]]  # (F, 4)
        target = self.box_coder.encode(rois[fg_idx], box_t[fg_idx])
        loss_box = _smooth_l1(d, target, self.smooth_l1_beta).sum() / r
        with torch.no_grad():
            acc = (logits.argmax(1) == cls_t).float().mean() if logits.numel() else logits.new_zeros(())
        return {
            "loss_cls": loss_cls,
            "loss_box_reg": loss_box,
            "roi_fg_fraction": fg.float().mean().detach() if fg.numel() else logits.new_zeros(()),
            "cls_accuracy": acc,
        }

    @torch.no_grad()
    def postprocess(
        self, logits: Tensor, deltas: Tensor, boxes: list[Tensor], image_sizes: Tensor
    ) -> list[dict[str, Tensor]]:
        """Softmax, class-specific decode, clip, score threshold, per-class NMS, top detections per image."""
        k = self.num_classes
        counts = [b.shape[0] for b in boxes]
        n = len(boxes)
        device = logits.device
        ref = torch.cat(boxes) if boxes else logits.new_zeros(0, 4)
        probs = F.softmax(logits.float(), dim=1)[:, :k]  # (R, K): background column dropped
        pred = self.box_coder.decode(deltas, ref).view(-1, k, 4)  # (R, 4K) -> (R, K, 4)
        img = torch.repeat_interleave(torch.arange(n, device=device), torch.as_tensor(counts, device=device))
        sizes = image_sizes.to(pred)[img]  # (R, 2)
        pred = clip_boxes(pred, sizes[:, 0, None], sizes[:, 1, None])
        cls = torch.arange(k, device=device).expand_as(probs)  # (R, K)
        img_rk = img[:, None].expand_as(probs)
        keep = (probs > self.score_thresh) & nonempty(pred, MIN_DETECTION_SIZE)
        b, s, c, im = pred[keep], probs[keep], cls[keep], img_rk[keep]
        kept = batched_nms(b, s, im * k + c, self.nms_thresh)  # descending score
        im_k = im[kept]
        order = im_k.argsort(stable=True)
        kept, im_k = kept[order], im_k[order]
        per = torch.bincount(im_k, minlength=n)
        starts = per.cumsum(0) - per
        rank = torch.arange(kept.numel(), device=device) - starts[im_k]
        sel = rank < self.detections_per_image
        kept, im_k = kept[sel], im_k[sel]
        split = torch.bincount(im_k, minlength=n).tolist()
        return [
            {"boxes": bb, "scores": ss, "labels": cc}
            for bb, ss, cc in zip(b[kept].split(split), s[kept].split(split), c[kept].split(split))
        ]


__all__ = ["C4BoxHead", "FCBoxHead", "MIN_DETECTION_SIZE", "POSITIVE", "RoIHeads"]
