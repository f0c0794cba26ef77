"""Fast R-CNN RoI heads: proposal sampling, RoI pooling, a per-RoI box head, sibling predictors, losses, and
inference post-processing. The C4 box head is res5 itself (He et al. 2016, Appendix A); DC5 and FPN use two fc
layers (torchvision's FPN v2: four 3x3 convolutions with BatchNorm and one fc).

Shape shorthand: N images, P proposals per image (padded), G ground truth per image (padded), R RoIs in the
whole batch, C channels, S pooled size, D box-head feature size, K foreground classes (background = K).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import batched_nms

from .box_coder import BoxCoder, smooth_l1
from .boxes import (
    batched_pairwise_iou,
    cat_per_image,
    clip_boxes,
    nonempty,
    pad_boxes,
    split_by_image,
    topk_per_image,
)
from .matcher import IGNORE, NEGATIVE, POSITIVE, Matcher
from .pooler import CANONICAL_BOX_SIZE, CANONICAL_LEVEL, D2_LEVEL_EPSILON, RoIPooler
from .rpn import Features, select_levels
from .sampler import sample_balanced

# Detections with a side below this many pixels are dropped after decoding (torchvision's value; Detectron2
# keeps every non-empty box: 0).
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
    """The light per-RoI head of DC5 and FPN: ``num_conv`` 3x3 convolutions (torchvision's v2: 4, with
    BatchNorm), flatten, ``num_fc`` fc layers, each followed by ReLU: ``(R, C, S, S)`` -> ``(R, fc_dim)``."""

    def __init__(
        self,
        in_channels: int,
        resolution: int,
        fc_dim: int = 1024,
        *,
        num_fc: int = 2,
        num_conv: int = 0,
        conv_dim: int = 256,
        conv_norm: Literal["none", "bn"] = "none",
    ) -> None:
        super().__init__()
        if num_fc < 1:
            raise ValueError(f"the box head needs at least one fc layer, got num_fc={num_fc}")
        channels = in_channels
        self.num_conv, self.num_fc = num_conv, num_fc
        for i in range(1, num_conv + 1):
            conv = nn.Conv2d(channels, conv_dim, 3, padding=1, bias=conv_norm == "none")
            nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
            if conv.bias is not None:
                nn.init.constant_(conv.bias, 0.0)
            # With BatchNorm: conv{i}.0 the (bias-free) convolution, conv{i}.1 its BatchNorm.
            self.add_module(f"conv{i}", conv if conv_norm == "none" else nn.Sequential(conv, nn.BatchNorm2d(conv_dim)))
            channels = conv_dim
        width = channels * resolution * resolution
        for i in range(1, num_fc + 1):
            fc = nn.Linear(width, fc_dim)
            nn.init.kaiming_uniform_(fc.weight, a=1)
            nn.init.constant_(fc.bias, 0.0)
            self.add_module(f"fc{i}", fc)
            width = fc_dim
        self.out_channels = fc_dim

    def forward(self, x: Tensor) -> Tensor:
        for i in range(1, self.num_conv + 1):
            x = F.relu(getattr(self, f"conv{i}")(x))
        x = x.flatten(1)  # (R, C', S, S) -> (R, C' S S)
        for i in range(1, self.num_fc + 1):
            x = F.relu(getattr(self, f"fc{i}")(x))
        return x


class RoIHeads(nn.Module):
    """Sampling, pooling, box head, (K+1)-way classifier and class-specific box regressor."""

    def __init__(
        self,
        box_head: nn.Module,
        *,
        num_classes: int,
        strides: Sequence[int] = (16,),
        in_features: Sequence[str] | None = None,
        pooler_type: Literal["roi_align", "roi_pool"] = "roi_align",
        pooler_resolution: int = 14,
        sampling_ratio: int = 0,
        aligned: bool = True,
        canonical_box_size: float = CANONICAL_BOX_SIZE,
        canonical_level: int = CANONICAL_LEVEL,
        level_epsilon: float = D2_LEVEL_EPSILON,
        level_epsilon_in_log: bool = True,
        batch_size_per_image: int = 512,
        positive_fraction: float = 0.25,
        fg_iou_thresh: float = 0.5,
        bg_iou_thresh_lo: float = 0.0,
        bbox_reg_weights: Sequence[float] = (10.0, 10.0, 5.0, 5.0),
        smooth_l1_beta: float = 0.0,
        score_thresh: float = 0.05,
        nms_thresh: float = 0.5,
        detections_per_image: int = 100,
        min_box_size: float = MIN_DETECTION_SIZE,
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
        self.pooler = RoIPooler(
            strides, pooler_resolution, pooler_type=pooler_type, sampling_ratio=sampling_ratio, aligned=aligned,
            canonical_box_size=canonical_box_size, canonical_level=canonical_level, level_epsilon=level_epsilon,
            level_epsilon_in_log=level_epsilon_in_log,
        )
        # Names of the trunk's maps to pool from, in stride order; None: whatever it is given, in order.
        self.in_features = tuple(in_features) if in_features is not None else None
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
        self.min_box_size = min_box_size

    # ------------------------------------------------------------------------------------------------ pieces

    def pool(self, features: Features, boxes: list[Tensor]) -> Tensor:
        """RoI pooling of per-image boxes ``(Ri, 4)`` on the padded batch's maps ``(N, C, H_l, W_l)`` ->
        ``(R, C, S, S)`` (each RoI from its pyramid level when there are several)."""
        levels = select_levels(features, self.in_features, len(self.pooler.strides), "the RoI heads")
        return self.pooler(levels, boxes)

    def predict(self, features: Features, boxes: list[Tensor]) -> tuple[Tensor, Tensor]:
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
        # masked_fill, not boolean-index assignment (which runs nonzero: a host sync on a GPU).
        labels = labels.masked_fill((best < self.bg_iou_thresh_lo) & (labels == NEGATIVE), IGNORE)
        labels = labels.masked_fill(~valid, IGNORE)
        pos, neg = sample_balanced(labels, self.batch_size_per_image, self.positive_fraction)
        keep = pos | neg  # (N, P)
        cls = torch.where(pos, gt_lab.gather(1, matched), torch.full_like(matched, self.num_classes))
        matched_boxes = gt.gather(1, matched[..., None].expand(-1, -1, 4))  # (N, P, 4)
        # The one host read of sampling, unavoidable: per-image RoI lists (and the pooled batch) need their sizes.
        counts = keep.sum(dim=1).tolist()
        # With the total known, nonzero_static gathers the sampled rows without a second read; row-major order
        # of (N, P) is the order boolean indexing would give (image by image).
        idx = torch.nonzero_static(keep.flatten(), size=sum(counts)).squeeze(1)  # (R,)
        rois = list(padded.flatten(0, 1)[idx].split(counts))
        return rois, cls.flatten()[idx], matched_boxes.flatten(0, 1)[idx], pos.flatten()[idx]

    # --------------------------------------------------------------------------------------------- forward

    def forward(
        self,
        features: Features,
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
            return [], self.losses(logits, deltas, torch.cat(rois), cls_t, box_t, fg, roi_weights(rois))
        logits, deltas = self.predict(features, proposals)
        return self.postprocess(logits, deltas, proposals, image_sizes), {}

    def losses(
        self, logits: Tensor, deltas: Tensor, rois: Tensor, cls_t: Tensor, box_t: Tensor, fg: Tensor,
        weights: Tensor | None = None,
    ) -> dict[str, Tensor]:
        """CE over sampled RoIs; class-specific box loss over foreground RoIs, background RoIs counting in the
        denominator (Fast R-CNN / Detectron normalization).

        ``weights`` (R,): each RoI's share of the mean, ``1 / (N * R_i)`` for a RoI of image i with R_i sampled
        RoIs (see :func:`roi_weights`): a mean per image, then over the N images. It equals the plain mean over
        all R RoIs whenever every image fills its sample (the usual case), and makes the loss of a batch exactly
        the image-weighted mean of its micro-batches' losses, so gradient accumulation reproduces the big batch.
        None: the plain mean ``1 / R``.
        """
        logits = logits.float()
        if weights is None:
            weights = logits.new_full((logits.shape[0],), 1.0 / max(logits.shape[0], 1))
        loss_cls = (F.cross_entropy(logits, cls_t, reduction="none") * weights).sum()
        fg_idx = fg.nonzero().squeeze(1)
        d = deltas.float().view(-1, self.num_classes, 4)[fg_idx, cls_t[fg_idx]]  # (F, 4)
        target = self.box_coder.encode(rois[fg_idx], box_t[fg_idx])
        loss_box = (smooth_l1(d, target, self.smooth_l1_beta).sum(dim=1) * weights[fg_idx]).sum()
        with torch.no_grad():
            acc = (logits.argmax(1) == cls_t).float().mean() if logits.numel() else logits.new_zeros(())
        return {
            "loss_cls": loss_cls,
            "loss_box_reg": loss_box,
            "roi_fg_fraction": fg.float().mean().detach() if fg.numel() else logits.new_zeros(()),
            "cls_accuracy": acc,
        }

    @torch.no_grad()
    def class_boxes(self, logits: Tensor, deltas: Tensor, rois: Tensor, sizes: Tensor) -> tuple[Tensor, Tensor]:
        """Softmax, class-specific decode, clip: the predictions before any threshold or NMS.

        Args:
            logits: ``(R, K+1)`` class logits; deltas: ``(R, 4K)`` class-specific deltas (as :meth:`predict`).
            rois: ``(R, 4)`` XYXY input pixels, the boxes the deltas refer to (all images concatenated).
            sizes: ``(R, 2)`` (height, width) of each RoI's image, input pixels; ``(1, 2)`` for one image.
        Returns:
            boxes ``(R, K, 4)`` XYXY clipped to the image and foreground probabilities ``(R, K)`` float32.
        """
        k = self.num_classes
        probs = F.softmax(logits.float(), dim=1)[:, :k]  # (R, K+1) -> (R, K): background column dropped
        boxes = self.box_coder.decode(deltas, rois).view(-1, k, 4)  # (R, 4K) -> (R, K, 4)
        sizes = sizes.to(boxes)
        return clip_boxes(boxes, sizes[:, 0, None], sizes[:, 1, None]), probs

    @torch.no_grad()
    def select(
        self, boxes: Tensor, probs: Tensor, image_index: Tensor | None = None, num_images: int = 1
    ) -> tuple[Candidates, Tensor]:
        """:func:`select_detections` with this head's score threshold, NMS IoU and detections per image."""
        return select_detections(
            boxes,
            probs,
            image_index,
            num_images,
            score_thresh=self.score_thresh,
            nms_thresh=self.nms_thresh,
            detections_per_image=self.detections_per_image,
            min_box_size=self.min_box_size,
        )

    @torch.no_grad()
    def postprocess(
        self, logits: Tensor, deltas: Tensor, boxes: list[Tensor], image_sizes: Tensor
    ) -> list[dict[str, Tensor]]:
        """Softmax, class-specific decode, clip, score threshold, per-class NMS, top detections per image.

        Args:
            logits, deltas: ``(R, K+1)``, ``(R, 4K)`` for the RoIs ``boxes`` (per image ``(Ri, 4)``).
            image_sizes: ``(N, 2)`` (height, width) before padding, input pixels.
        Returns:
            per image ``{"boxes" (D, 4) XYXY input pixels, "scores" (D,), "labels" (D,) in [0, K)}``.
        """
        if not boxes:
            return []
        rois, image_index = cat_per_image(boxes)  # (R, 4), (R,)
        pred, probs = self.class_boxes(logits, deltas, rois, image_sizes[image_index])
        cands, kept = self.select(pred, probs, image_index, len(boxes))
        split = split_by_image(
            cands.image_index[kept], len(boxes), cands.boxes[kept], cands.scores[kept], cands.labels[kept]
        )
        return [{"boxes": b, "scores": s, "labels": c} for b, s, c in zip(*split)]


class Candidates(NamedTuple):
    """Detections that passed the score threshold and the size floor, before NMS, all images flat (C of them)."""

    boxes: Tensor  # (C, 4) XYXY
    scores: Tensor  # (C,) foreground probability
    labels: Tensor  # (C,) class in [0, K)
    image_index: Tensor  # (C,) int64


def roi_weights(rois: list[Tensor]) -> Tensor:
    """(R,) loss weight of every sampled RoI of the per-image lists ``rois``: ``1 / (N * R_i)`` (see
    :meth:`RoIHeads.losses`); an image without RoIs contributes nothing."""
    n = max(len(rois), 1)
    # Built from the known list lengths: no device tensor is read back (no host sync).
    return torch.cat([r.new_full((len(r),), 1.0 / (max(len(r), 1) * n)) for r in rois]) if rois else torch.zeros(0)


def select_detections(
    boxes: Tensor,
    probs: Tensor,
    image_index: Tensor | None,
    num_images: int,
    *,
    score_thresh: float,
    nms_thresh: float,
    detections_per_image: int,
    min_box_size: float = MIN_DETECTION_SIZE,
) -> tuple[Candidates, Tensor]:
    """Score threshold, size floor (``min_box_size``), NMS per (image, class), top detections per image.

    Args:
        boxes: ``(R, K, 4)`` class-specific boxes; probs: ``(R, K)`` their scores (:meth:`RoIHeads.class_boxes`).
        image_index: ``(R,)`` int64 image of each row; None when all rows are of one image (then ``num_images``
            must be 1).
        num_images: N, a Python int.
    Returns:
        the candidates (every (row, class) pair that entered NMS) and ``kept (D,)``, indices into them of the
        detections: grouped by image, by descending score within an image, at most ``detections_per_image`` each.
        Nothing is read back to Python (no ``.tolist()``), so for one image the steps trace into an ONNX graph.
    """
    if image_index is None and num_images != 1:
        raise ValueError(f"image_index is needed for {num_images} images")
    k = probs.shape[1]
    keep = (probs > score_thresh) & nonempty(boxes, min_box_size)  # (R, K)
    # One nonzero (a host read of C, unavoidable: the candidates' number depends on the scores) and integer
    # gathers, rather than one boolean index (each its own nonzero) per gathered tensor. Same rows, same order.
    idx = keep.flatten().nonzero().squeeze(1)  # (C,) into the row-major (R, K)
    b, s, c = boxes.reshape(-1, 4)[idx], probs.reshape(-1)[idx], idx % k  # flat (C, ...); class = column
    # zeros_like (not zeros(C)) keeps C a dynamic size in a traced graph.
    im = torch.zeros_like(c) if image_index is None else image_index[idx // k]
    kept = batched_nms(b, s, im * k + c, nms_thresh)  # descending score
    kept = topk_per_image(kept, im[kept], num_images, detections_per_image)
    return Candidates(b, s, c, im), kept


__all__ = ["C4BoxHead", "Candidates", "FCBoxHead", "MIN_DETECTION_SIZE", "POSITIVE", "RoIHeads", "select_detections"]
