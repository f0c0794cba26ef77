"""Faster R-CNN the way He et al. 2016 (Appendix A) use it, and ``build_faster_rcnn``: config -> modules.

"C4": stem..res4 once per image (stride 16), RPN on res4, RoI pooling on res4 to 14x14, res5 per RoI (first block
stride 2 -> 7x7), global average pooling, sibling (K+1)-way classifier and class-specific box regressor.
"DC5": res5 dilated on the whole image (stride 16), RPN and 7x7 pooling on it, a 2-fc head.

Shape shorthand: N images, Hi x Wi image sizes, H x W padded batch size, K foreground classes.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from resbackbone.pixels import TORCHVISION_PIXELS, PixelNormalizer, PixelSpec

from .backbone import FEATURE_STRIDE, ResNetTrunk, TimmTrunk, build_res5_head, resnet_depth
from .config import ModelConfig
from .roi_heads import C4BoxHead, FCBoxHead, RoIHeads
from .rpn import RPN

logger = logging.getLogger("detection.faster_rcnn")

# Padded batch sides are multiples of this (the deepest stride of any trunk we build, so features align).
SIZE_DIVISIBILITY = 32


class FasterRCNN(nn.Module):
    """Trunk -> RPN -> RoI heads. Callers pass raw RGB images; the model normalizes them for its weights.

    ``forward(images, targets=None, *, orig_sizes=None)``:
      * ``images``: list of ``(3, Hi, Wi)`` uint8 or float tensors, RGB, values 0-255 (never modified).
      * training: ``targets`` list of ``{"boxes": (Gi, 4) XYXY input pixels, "labels": (Gi,) in [0, K)}``
        (``Gi`` may be 0); returns a dict of ``loss_*`` scalars plus detached statistics.
      * eval: list of ``{"boxes": (D, 4), "scores": (D,), "labels": (D,)}`` per image, in input pixels, or in
        original pixels when ``orig_sizes`` (list of (H0, W0)) is given (scaled per axis, clipped).
    """

    def __init__(
        self,
        trunk: nn.Module,
        rpn: RPN,
        roi_heads: RoIHeads,
        *,
        pixel_spec: PixelSpec = TORCHVISION_PIXELS,
        class_names: Sequence[str] | None = None,
        size_divisibility: int = SIZE_DIVISIBILITY,
    ) -> None:
        super().__init__()
        self.trunk = trunk
        self.rpn = rpn
        self.roi_heads = roi_heads
        self.num_classes = roi_heads.num_classes
        names = tuple(class_names) if class_names is not None else tuple(f"class{i}" for i in range(self.num_classes))
        if len(names) != self.num_classes:
            raise ValueError(f"{len(names)} class names given for num_classes={self.num_classes}")
        self.class_names = names
        self.size_divisibility = size_divisibility
        self.pixel_spec = pixel_spec
        self.normalizer = PixelNormalizer(pixel_spec)

    def set_pixel_spec(self, spec: PixelSpec) -> None:
        """Normalize inputs for other weights (the spec is part of the weights, not of the state dict)."""
        self.pixel_spec = spec
        device = next(self.parameters()).device
        self.normalizer = PixelNormalizer(spec).to(device)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def preprocess(self, images: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
        """Normalize each image, zero-pad into one batch: ``(N, 3, H, W)`` and sizes ``(N, 2)`` (Hi, Wi)."""
        if len(images) == 0:
            raise ValueError("FasterRCNN got an empty list of images")
        for i, im in enumerate(images):
            if im.dim() != 3 or im.shape[0] != 3:
                raise ValueError(f"image {i} must be (3, H, W), got shape {tuple(im.shape)}")
        device = self.device
        hs = [int(im.shape[1]) for im in images]
        ws = [int(im.shape[2]) for im in images]
        d = self.size_divisibility
        h = int(math.ceil(max(hs) / d) * d)
        w = int(math.ceil(max(ws) / d) * d)
        batch = torch.zeros(len(images), 3, h, w, device=device)
        for i, im in enumerate(images):
            # The normalizer returns a new tensor: callers' images are never modified.
            batch[i, :, : hs[i], : ws[i]] = self.normalizer(im.to(device, non_blocking=True)[None].float())[0]
        sizes = torch.tensor([hs, ws], device=device).T  # (N, 2)
        return batch, sizes

    def forward(
        self,
        images: Sequence[Tensor],
        targets: Sequence[dict[str, Any]] | None = None,
        *,
        orig_sizes: Sequence[tuple[int, int]] | None = None,
    ) -> dict[str, Tensor] | list[dict[str, Tensor]]:
        batch, sizes = self.preprocess(images)
        if self.training and batch.device.type == "cuda":
            batch = batch.contiguous(memory_format=torch.channels_last)
        features = self.trunk(batch)  # (N, C, H/16, W/16)
        if self.training:
            if targets is None:
                raise ValueError("FasterRCNN in training mode needs targets (call model.eval() for inference)")
            gt_boxes, gt_labels = self._targets(targets, len(images))
            proposals, _, rpn_losses = self.rpn(features, sizes, gt_boxes)
            _, head_losses = self.roi_heads(features, proposals, sizes, gt_boxes, gt_labels)
            return {**rpn_losses, **head_losses}
        proposals, _, _ = self.rpn(features, sizes)
        detections, _ = self.roi_heads(features, proposals, sizes)
        if orig_sizes is not None:
            detections = self.rescale(detections, sizes, orig_sizes)
        return detections

    def _targets(self, targets: Sequence[dict[str, Any]], n: int) -> tuple[list[Tensor], list[Tensor]]:
        if len(targets) != n:
            raise ValueError(f"{n} images but {len(targets)} targets")
        device = self.device
        boxes, labels = [], []
        for i, t in enumerate(targets):
            b = torch.as_tensor(t["boxes"], dtype=torch.float32, device=device).reshape(-1, 4)
            lab = torch.as_tensor(t["labels"], dtype=torch.int64, device=device).reshape(-1)
            if b.shape[0] != lab.shape[0]:
                raise ValueError(f"target {i}: {b.shape[0]} boxes but {lab.shape[0]} labels")
            if lab.numel() and (int(lab.min()) < 0 or int(lab.max()) >= self.num_classes):
                raise ValueError(
                    f"target {i}: labels must be in [0, {self.num_classes}) (background is implicit), "
                    f"got {sorted(set(lab.tolist()))}"
                )
            boxes.append(b)
            labels.append(lab)
        return boxes, labels

    @staticmethod
    def rescale(
        detections: list[dict[str, Tensor]], sizes: Tensor, orig_sizes: Sequence[tuple[int, int]]
    ) -> list[dict[str, Tensor]]:
        """Input-pixel boxes -> original-image pixels (per-axis scale), clipped to the original image."""
        out = []
        for det, (h, w), (h0, w0) in zip(detections, sizes.tolist(), orig_sizes):
            scale = torch.tensor([w0 / w, h0 / h, w0 / w, h0 / h], device=det["boxes"].device)
            b = det["boxes"] * scale
            b = torch.stack(
                (b[:, 0].clamp(0, w0), b[:, 1].clamp(0, h0), b[:, 2].clamp(0, w0), b[:, 3].clamp(0, h0)), dim=1
            )
            out.append({**det, "boxes": b})
        return out


def _load_resnet_weights(
    model: FasterRCNN, weights: str, depth: int, arch: str
) -> PixelSpec:
    """Load converted ImageNet weights into the trunk (stem..res4 or ..res5) and the C4 res5 head, strictly."""
    from resbackbone.weights import pretrained_state_dict

    state, info = pretrained_state_dict(weights, depth)
    targets: dict[str, nn.Module] = {"trunk.body.": model.trunk.body}
    if arch == "C4":
        targets["roi_heads.box_head.res5."] = model.roi_heads.box_head.res5
    mapped: dict[str, Tensor] = {}
    for prefix in targets:
        if prefix.startswith("trunk"):
            mapped.update({prefix + k: v for k, v in state.items() if not k.startswith("fc.")
                           and (arch == "DC5" or not k.startswith("res5."))})
        else:
            mapped.update({prefix + k[len("res5."):]: v for k, v in state.items() if k.startswith("res5.")})
    own = {k for k in model.state_dict() if k.startswith(tuple(targets))}
    missing = sorted(k for k in own - set(mapped) if not k.endswith("num_batches_tracked"))
    if missing:
        raise ValueError(f"pretrained weights {weights!r} lack {len(missing)} backbone keys, e.g. {missing[:5]}")
    result = model.load_state_dict(mapped, strict=False)
    unexpected = [k for k in result.unexpected_keys]
    if unexpected:
        raise ValueError(f"pretrained weights {weights!r} have keys the detector does not: {unexpected[:5]}")
    logger.info("loaded backbone weights %s (%d tensors)", weights, len(mapped))
    return info.pixel_spec


def weights_stride_in_1x1(weights: str, depth: int) -> bool:
    """Whether the named weights need the stride in the first 1x1 (MSRA caffe models do)."""
    if weights == "msra":
        return True
    if weights in ("none", "torchvision", "timm") or weights.startswith(("torchvision:", "timm:")):
        return False
    from resbackbone.weights import pretrained_state_dict

    return pretrained_state_dict(weights, depth)[1].stride_in_1x1


def build_faster_rcnn(cfg: ModelConfig, *, class_names: Sequence[str] | None = None) -> FasterRCNN:
    """The one place that maps a :class:`ModelConfig` to modules (see the module docstring)."""
    bb = cfg.backbone
    pretrained = bb.weights != "none"
    norm = bb.norm if bb.norm != "auto" else ("frozen_bn" if pretrained else "bn")
    rh = cfg.roi_heads
    a = cfg.anchors
    r = cfg.rpn
    if bb.name.startswith("timm:"):
        trunk: nn.Module = TimmTrunk(bb.name[5:], weights=bb.weights)
        box_head: nn.Module = FCBoxHead(trunk.out_channels, rh.pooler_resolution, rh.fc_dim)
        pixel_spec = trunk.pixel_spec
        if cfg.arch == "C4":
            logger.info("timm backbones have no separable res5: using the 2-fc (DC5-style) box head")
        depth = 0
    else:
        depth = resnet_depth(bb.name)
        stride_in_1x1 = bb.stride_in_1x1 if bb.stride_in_1x1 is not None else weights_stride_in_1x1(bb.weights, depth)
        trunk = ResNetTrunk(
            depth,
            dilated_res5=cfg.arch == "DC5",
            freeze_at=bb.freeze_at,
            norm=norm,
            stride_in_1x1=stride_in_1x1,
            shortcut=bb.shortcut,
        )
        if cfg.arch == "C4":
            res5, channels = build_res5_head(depth, norm=norm, stride_in_1x1=stride_in_1x1, shortcut=bb.shortcut)
            box_head = C4BoxHead(res5, channels)
        else:
            box_head = FCBoxHead(trunk.out_channels, rh.pooler_resolution, rh.fc_dim)
        pixel_spec = TORCHVISION_PIXELS
    rpn = RPN(
        trunk.out_channels,
        anchor_sizes=a.sizes,
        aspect_ratios=a.aspect_ratios,
        stride=FEATURE_STRIDE,
        anchor_offset=a.offset,
        batch_size_per_image=r.batch_size_per_image,
        positive_fraction=r.positive_fraction,
        fg_iou_thresh=r.fg_iou_thresh,
        bg_iou_thresh=r.bg_iou_thresh,
        pre_nms_topk=(r.pre_nms_topk_train, r.pre_nms_topk_test),
        post_nms_topk=(r.post_nms_topk_train, r.post_nms_topk_test),
        nms_thresh=r.nms_thresh,
        min_box_size=r.min_box_size,
        smooth_l1_beta=r.smooth_l1_beta,
        loss_weight=r.loss_weight,
    )
    heads = RoIHeads(
        box_head,
        num_classes=cfg.num_classes,
        spatial_scale=1.0 / FEATURE_STRIDE,
        pooler_type=rh.pooler_type,
        pooler_resolution=rh.pooler_resolution,
        sampling_ratio=rh.sampling_ratio,
        aligned=rh.aligned,
        batch_size_per_image=rh.batch_size_per_image,
        positive_fraction=rh.positive_fraction,
        fg_iou_thresh=rh.fg_iou_thresh,
        bg_iou_thresh_lo=rh.bg_iou_thresh_lo,
        bbox_reg_weights=rh.bbox_reg_weights,
        smooth_l1_beta=rh.smooth_l1_beta,
        score_thresh=rh.score_thresh,
        nms_thresh=rh.nms_thresh,
        detections_per_image=rh.detections_per_image,
    )
    model = FasterRCNN(trunk, rpn, heads, pixel_spec=pixel_spec, class_names=class_names)
    if pretrained and depth:
        model.set_pixel_spec(_load_resnet_weights(model, bb.weights, depth, cfg.arch))
    return model
