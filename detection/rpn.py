"""Region Proposal Network (Ren et al. 2015) on one stride-16 feature map (C4 / DC5) or on every level of a
feature pyramid (FPN, Lin et al. 2017: one head shared by the levels), batched over images.

Shape shorthand: N images, C feature channels, L levels, H_l x W_l level size, A anchors per location,
M_l = H_l * W_l * A anchors of level l, M = sum of M_l, G padded ground-truth boxes per image, k_l pre-NMS top-k of
level l, k = sum of k_l, R proposals kept per image.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import batched_nms, nms

from .anchors import AnchorConvention, AnchorGenerator
from .box_coder import BoxCoder, smooth_l1
from .boxes import batched_pairwise_iou, clip_boxes, nonempty, pad_boxes, split_by_image, topk_per_image
from .matcher import POSITIVE, Matcher
from .sampler import sample_balanced

# Where invalid (too small) proposal candidates are moved before NMS: a 1 x 1 px box this far above-left of the
# image. Every real box is clipped into the image, so its IoU with the sentinel is 0 (see RPN.propose).
SENTINEL_CORNER = -1.0e4


def _topk_size(limit: int, size: int | Tensor) -> int | Tensor:
    """``min(limit, size)``: how many of ``size`` items a top-``limit`` takes. While tracing for export ``size``
    is a 0-dim tensor (a feature map's dynamic size) and so is the result: a Python ``min`` would compare them on
    the host and freeze the tracing input's answer into the graph (torchvision's ``_topk_min`` does the same)."""
    if isinstance(size, Tensor):
        return size.clamp(max=limit)
    return min(limit, size)


class RPNHead(nn.Module):
    """3x3 conv + ReLU (``num_convs`` of them; torchvision's v2 has 2), then sibling 1x1 convs: an objectness logit
    and 4 deltas per anchor. One head serves every pyramid level."""

    def __init__(self, in_channels: int, num_anchors: int, num_convs: int = 1) -> None:
        super().__init__()
        if num_convs < 1:
            raise ValueError(f"the RPN head needs at least one 3x3 convolution, got num_convs={num_convs}")
        self.conv = nn.Conv2d(in_channels, in_channels, 3, padding=1)
        # The first convolution keeps its name ("conv") whatever the depth: one-conv checkpoints load unchanged.
        self.extra_convs = nn.ModuleList(nn.Conv2d(in_channels, in_channels, 3, padding=1)
                                         for _ in range(num_convs - 1))
        self.objectness = nn.Conv2d(in_channels, num_anchors, 1)
        self.deltas = nn.Conv2d(in_channels, num_anchors * 4, 1)
        for layer in (self.conv, *self.extra_convs, self.objectness, self.deltas):
            nn.init.normal_(layer.weight, std=0.01)
            nn.init.constant_(layer.bias, 0.0)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``(N, C, H, W)`` -> logits ``(N, A, H, W)``, deltas ``(N, 4A, H, W)``."""
        t = F.relu(self.conv(x))
        for conv in self.extra_convs:
            t = F.relu(conv(t))
        return self.objectness(t), self.deltas(t)


# What the detector's modules take as features: one map (a one-level trunk), the maps of the levels in order, or
# the trunk's named maps (each module picks its ``in_features`` by name).
Features = Tensor | Sequence[Tensor] | Mapping[str, Tensor]


def select_levels(features: Features, in_features: Sequence[str] | None, num_levels: int, what: str) -> list[Tensor]:
    """``features`` -> the list of level maps a module runs on, checked against the number it was built for."""
    if isinstance(features, Tensor):
        levels = [features]
    elif isinstance(features, Mapping):
        if in_features is None:
            levels = list(features.values())
        else:
            missing = [n for n in in_features if n not in features]
            if missing:
                raise KeyError(f"{what} needs features {list(in_features)}; the trunk gave {list(features)}")
            levels = [features[n] for n in in_features]
    else:
        levels = list(features)
    if len(levels) != num_levels:
        raise ValueError(f"{what} was built for {num_levels} feature level(s) but got {len(levels)}")
    return levels


class RPNPrediction(NamedTuple):
    """The RPN head on every anchor of every level; anchor ``j`` of every image at row ``j``, levels in order."""

    anchors: Tensor  # (M, 4) XYXY input pixels, shared by all images; M = sum of the levels' M_l
    logits: Tensor  # (N, M) objectness logits
    deltas: Tensor  # (N, M, 4)
    level_sizes: tuple[int, ...]  # (M_1, ..., M_L), Python ints


class RPN(nn.Module):
    """Anchors, head, matching + sampling + losses in training, top-k + NMS proposals always.

    Several levels (FPN): top-k before NMS is taken per level, NMS runs per (image, level), the top R after NMS per
    image (Detectron2's and torchvision's rule). One level (C4 / DC5) is the same code with L = 1.
    """

    def __init__(
        self,
        in_channels: int,
        *,
        anchor_sizes: Sequence[float] = (128.0, 256.0, 512.0),
        aspect_ratios: Sequence[float] = (0.5, 1.0, 2.0),
        stride: int | Sequence[int] = 16,
        in_features: Sequence[str] | None = None,
        head_convs: int = 1,
        anchor_offset: float = 0.0,
        anchor_convention: AnchorConvention = "torchvision",
        anchor_stride_from_padded_size: bool = False,
        batch_size_per_image: int = 256,
        positive_fraction: float = 0.5,
        fg_iou_thresh: float = 0.7,
        bg_iou_thresh: float = 0.3,
        pre_nms_topk: tuple[int, int] = (12000, 6000),
        post_nms_topk: tuple[int, int] = (2000, 1000),
        nms_thresh: float = 0.7,
        min_box_size: float = 1e-3,
        smooth_l1_beta: float = 0.0,
        loss_weight: float = 1.0,
    ) -> None:
        super().__init__()
        self.anchor_generator = AnchorGenerator(
            anchor_sizes, aspect_ratios, stride=stride, offset=anchor_offset, convention=anchor_convention,
            stride_from_padded_size=anchor_stride_from_padded_size,
        )
        self.num_levels = len(self.anchor_generator.strides)
        # Names of the trunk's maps this RPN runs on, in level order; None: whatever it is given, in order.
        self.in_features = tuple(in_features) if in_features is not None else None
        if self.in_features is not None and len(self.in_features) != self.num_levels:
            raise ValueError(f"in_features {self.in_features} for {self.num_levels} anchor levels")
        self.head = RPNHead(in_channels, self.anchor_generator.num_anchors, head_convs)
        self.box_coder = BoxCoder((1.0, 1.0, 1.0, 1.0))
        self.matcher = Matcher(fg_iou_thresh, bg_iou_thresh, allow_low_quality_matches=True)
        self.batch_size_per_image = batch_size_per_image
        self.positive_fraction = positive_fraction
        # (train, test) limits: pre-NMS per level, post-NMS per image.
        self.pre_nms_topk = pre_nms_topk
        self.post_nms_topk = post_nms_topk
        self.nms_thresh = nms_thresh
        # Proposals with a side below this are dropped before NMS (degenerate boxes break RoI pooling statistics):
        # torchvision drops sides < 1e-3 px, Detectron2 only empty boxes (0).
        self.min_box_size = min_box_size
        self.smooth_l1_beta = smooth_l1_beta
        self.loss_weight = loss_weight

    def forward(
        self, features: Features, image_sizes: Tensor, gt_boxes: list[Tensor] | None = None
    ) -> tuple[list[Tensor], list[Tensor], dict[str, Tensor]]:
        """
        Args:
            features: the padded batch's feature maps (see :data:`Features`), each ``(N, C, H_l, W_l)``.
            image_sizes: ``(N, 2)`` (height, width) of each image before padding, input pixels.
            gt_boxes: training only: per image ``(Gi, 4)`` XYXY input pixels (Gi may be 0).
        Returns:
            proposals (per image ``(Ri, 4)``, detached), their objectness logits (per image ``(Ri,)``), and a
            dict of losses and statistics (empty at inference).
        """
        pred = self.predict(features)
        proposals, scores = self.propose(pred.anchors, pred.logits.detach(), pred.deltas.detach(), image_sizes,
                                         pred.level_sizes)
        losses: dict[str, Tensor] = {}
        if self.training:
            if gt_boxes is None:
                raise ValueError("RPN needs gt_boxes in training mode")
            losses = self.losses(pred.anchors, pred.logits, pred.deltas, gt_boxes)
        return proposals, scores, losses

    def predict(self, features: Features) -> RPNPrediction:
        """The head on every anchor of every level (levels concatenated in order; see :class:`RPNPrediction`)."""
        levels = select_levels(features, self.in_features, self.num_levels, "the RPN")
        # Python ints in eager mode; 0-dim tensors while tracing for export, so the graph keeps the sizes dynamic.
        anchors = self.anchor_generator.grid_anchors([(f.shape[-2], f.shape[-1]) for f in levels])
        all_logits, all_deltas = [], []
        for x in levels:
            n, _, h, w = x.shape
            logits, deltas = self.head(x)
            # (N, A, H, W) -> (N, H, W, A) -> (N, M_l); (N, 4A, H, W) -> (N, H, W, A, 4) -> (N, M_l, 4)
            all_logits.append(logits.permute(0, 2, 3, 1).reshape(n, -1))
            all_deltas.append(deltas.view(n, -1, 4, h, w).permute(0, 3, 4, 1, 2).reshape(n, -1, 4))
        if len(levels) == 1:
            return RPNPrediction(anchors[0], all_logits[0], all_deltas[0], (anchors[0].shape[0],))
        return RPNPrediction(torch.cat(anchors), torch.cat(all_logits, 1), torch.cat(all_deltas, 1),
                             tuple(a.shape[0] for a in anchors))

    @torch.no_grad()
    def propose(
        self, anchors: Tensor, logits: Tensor, deltas: Tensor, image_sizes: Tensor,
        level_sizes: Sequence[int] | None = None,
    ) -> tuple[list[Tensor], list[Tensor]]:
        """:meth:`propose_flat` split per image, computed per image so that the host reads nothing but each
        image's NMS output size (the one data-dependent shape a proposal list has).

        Args / candidates: as :meth:`propose_flat`. Returns proposals (per image ``(Ri, 4)`` XYXY input pixels)
        and their logits (per image ``(Ri,)`` float32), by descending logit: the same boxes in the same order as
        :meth:`propose_flat` (NMS of each image is independent of the others).
        """
        boxes, scores, valid, level = self._top_candidates(anchors, logits, deltas, image_sizes, level_sizes)
        n = boxes.shape[0]
        post = self.post_nms_topk[0 if self.training else 1]
        if self.nms_thresh >= 1.0:
            # NMS suppresses nothing, so the sentinels below would all survive: filter on the host instead.
            flat = self.propose_flat(anchors, logits, deltas, image_sizes, level_sizes)
            proposals, proposal_scores = split_by_image(flat[2], n, flat[0], flat[1])
            return proposals, proposal_scores
        # Dropping invalid boxes by a boolean mask would read their number back to the host. Instead they become
        # copies of one sentinel box scored -inf, and one more sentinel is appended per image: the copies have
        # IoU 1 with each other, so NMS keeps exactly one of them, and it comes last (lowest score); it cannot
        # suppress a real box (those rank higher, and have IoU 0 with it). Dropping NMS's last index removes
        # them all, whatever their number.
        sentinel = boxes.new_full((n, 1, 4), SENTINEL_CORNER)
        sentinel[..., 2:] += 1.0  # (N, 1, 4): a 1 x 1 px box, positive area so that copies overlap with IoU 1
        cand = torch.cat([torch.where(valid[..., None], boxes, sentinel), sentinel], dim=1)  # (N, k+1, 4)
        masked = torch.cat([scores.masked_fill(~valid, float("-inf")), scores.new_full((n, 1), float("-inf"))], 1)
        if level is not None:
            # Several levels: NMS per level. The sentinels form group 0 of their own (batched_nms's coordinate
            # offset is 0 for it, so they stay far from every real box), level l is group l + 1.
            groups = torch.cat([level + 1, level.new_zeros(1)])[None].expand(n, -1)  # (N, k+1)
            groups = groups.masked_fill(~torch.cat([valid, valid.new_zeros(n, 1)], 1), 0)
        proposals, proposal_scores = [], []
        for i in range(n):
            # nms returns indices by descending score: a host sync per image (its output size), unavoidable.
            kept = nms(cand[i], masked[i], self.nms_thresh) if level is None else \
                batched_nms(cand[i], masked[i], groups[i], self.nms_thresh)
            kept = kept[:-1][:post]  # (Ri,), all < k (real boxes)
            proposals.append(boxes[i, kept])
            proposal_scores.append(scores[i, kept])
        return proposals, proposal_scores

    @torch.no_grad()
    def _top_candidates(
        self, anchors: Tensor, logits: Tensor, deltas: Tensor, image_sizes: Tensor,
        level_sizes: Sequence[int] | None,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
        """Top-k anchors per image and level by objectness, decoded and clipped: boxes ``(N, k, 4)`` XYXY input
        pixels, their logits ``(N, k)`` float32 (by descending value within each level), ``(N, k)`` bool: both
        sides >= the minimum, and the level of each column ``(k,)`` int64 (None for one level)."""
        m = logits.shape[1]
        mode = 0 if self.training else 1
        limit = self.pre_nms_topk[mode]
        sizes_l = [m] if level_sizes is None else list(level_sizes)
        if not torch.jit.is_tracing():  # traced sizes stay tensors (see _topk_size)
            sizes_l = [int(s) for s in sizes_l]
            if sum(sizes_l) != m:
                raise ValueError(f"level sizes {sizes_l} do not add up to the {m} anchors")
        if len(sizes_l) == 1:
            top_logits, top_idx = logits.float().topk(_topk_size(limit, m), dim=1)  # (N, k)
            level = None
        else:
            tops, idxs, lv, start = [], [], [], 0
            for i, m_l in enumerate(sizes_l):
                t, j = logits[:, start:start + m_l].float().topk(_topk_size(limit, m_l), dim=1)  # (N, k_l)
                tops.append(t)
                idxs.append(j + start)
                # (k_l,) from t's shape, not from a number: a dynamic size in a traced graph.
                lv.append(torch.full_like(t[0], i, dtype=torch.int64))
                start = start + m_l
            top_logits, top_idx, level = torch.cat(tops, 1), torch.cat(idxs, 1), torch.cat(lv)  # (N, k), (k,)
        top_deltas = deltas.gather(1, top_idx[..., None].expand(-1, -1, 4))  # (N, k, 4)
        boxes = self.box_coder.decode(top_deltas, anchors[top_idx])  # (N, k, 4)
        sizes = image_sizes.to(boxes)
        boxes = clip_boxes(boxes, sizes[:, 0, None], sizes[:, 1, None])
        return boxes, top_logits, nonempty(boxes, self.min_box_size), level

    @torch.no_grad()
    def propose_flat(
        self, anchors: Tensor, logits: Tensor, deltas: Tensor, image_sizes: Tensor,
        level_sizes: Sequence[int] | None = None,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Top-k by objectness per level, decode, clip, drop tiny boxes, NMS per image and level, keep the top R
        per image.

        Args:
            anchors, logits, deltas, level_sizes: as :meth:`predict` returns them, ``(M, 4)``, ``(N, M)``,
                ``(N, M, 4)``, the levels' anchor counts (None: one level).
            image_sizes: ``(N, 2)`` (height, width) before padding, input pixels.
        Returns:
            proposals ``(P, 4)`` XYXY input pixels, their logits ``(P,)`` float32 and image index ``(P,)``, grouped
            by image and by descending logit within an image. Nothing is read back to Python (no ``.tolist()``), so
            for N = 1 the steps trace into an ONNX graph (the export path; the model's forward uses
            :meth:`propose`, which reads less back to the host on a GPU).
        """
        boxes, top_logits, keep, level = self._top_candidates(anchors, logits, deltas, image_sizes, level_sizes)
        n, k = keep.shape
        img = torch.arange(n, device=boxes.device)[:, None].expand(n, k)
        # One group per (image, level); the level count comes from the host-side sizes, not from the device.
        group = img if level is None else img * len(level_sizes or ()) + level[None]  # (N, k)
        boxes, scores, img, group = boxes[keep], top_logits[keep], img[keep], group[keep]  # flat (P', ...)
        kept = batched_nms(boxes, scores, group, self.nms_thresh)  # indices by descending score
        kept = topk_per_image(kept, img[kept], n, self.post_nms_topk[0 if self.training else 1])
        return boxes[kept], scores[kept], img[kept]

    def losses(self, anchors: Tensor, logits: Tensor, deltas: Tensor, gt_boxes: list[Tensor]) -> dict[str, Tensor]:
        """Binary CE on sampled anchors + smooth-L1 (L1 at beta 0) on sampled positives, both summed and divided
        by ``N * batch_size_per_image`` (Detectron's normalization; equals the per-sample mean of Ren et al. when
        every image fills its sample)."""
        n, m = logits.shape
        gt, gt_valid, _ = pad_boxes(gt_boxes)  # (N, G, 4)
        with torch.no_grad():
            iou = batched_pairwise_iou(gt, anchors[None].expand(n, -1, -1))  # (N, G, M)
            matched, labels = self.matcher(iou, gt_valid)
            pos, neg = sample_balanced(labels, self.batch_size_per_image, self.positive_fraction)
            matched_gt = gt.gather(1, matched[..., None].expand(-1, -1, 4))  # (N, M, 4)
        sampled = pos | neg
        norm = float(n * self.batch_size_per_image)
        # Masked sums over all N x M anchors instead of boolean indexing: no data-dependent shapes, so nothing
        # is read back to the host (forward or backward). Same terms, summed in another order.
        bce = F.binary_cross_entropy_with_logits(logits.float(), pos.float(), reduction="none")  # (N, M)
        obj_loss = torch.where(sampled, bce, 0.0).sum() / norm
        ref = anchors[None].expand(n, -1, -1)  # (N, M, 4)
        # Non-positives are encoded against themselves (target 0): padding gt boxes have zero area (log 0).
        target = self.box_coder.encode(ref, torch.where(pos[..., None], matched_gt, ref))
        box_l1 = smooth_l1(deltas.float(), target, self.smooth_l1_beta)  # (N, M, 4)
        box_loss = torch.where(pos[..., None], box_l1, 0.0).sum() / norm
        return {
            "loss_rpn_cls": obj_loss * self.loss_weight,
            "loss_rpn_box": box_loss * self.loss_weight,
            "rpn_num_pos": pos.sum().float().detach() / n,
            "rpn_num_neg": neg.sum().float().detach() / n,
            "rpn_pos_labels_fraction": (labels == POSITIVE).float().mean().detach(),
        }
