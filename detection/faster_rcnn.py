"""Faster R-CNN the way He et al. 2016 (Appendix A) use it, and ``build_faster_rcnn``: config -> modules.

"C4": stem..res4 once per image (stride 16), RPN on res4, RoI pooling on res4 to 14x14, res5 per RoI (first block
stride 2 -> 7x7), global average pooling, sibling (K+1)-way classifier and class-specific box regressor.
"DC5": res5 dilated on the whole image (stride 16), RPN and 7x7 pooling on it, a 2-fc head.
"FPN" (Lin et al. 2017): a feature pyramid P2..P6 on res2..res5, one RPN head on every level, each RoI pooled 7x7
from the level of its size (P2..P5), a 2-fc head. The same modules; the builder assembles them per architecture.

Shape shorthand: N images, Hi x Wi image sizes, H x W padded batch size, K foreground classes.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any, TypeVar

import torch
from torch import Tensor, nn

from resbackbone.errors import ConfigError, WeightsError
from resbackbone.pixels import MSRA_PIXELS, TORCHVISION_PIXELS, PixelNormalizer, PixelSpec
from resbackbone.weights import WeightsInfo

from .backbone import (
    FPN_LEVELS,
    FPNTrunk,
    ResNetTrunk,
    TimmTrunk,
    build_res5_head,
    resnet_depth,
    timm_pixel_spec,
)
from .config import ModelConfig, PixelConfig
from .roi_heads import C4BoxHead, FCBoxHead, RoIHeads
from .rpn import RPN

logger = logging.getLogger("detection.faster_rcnn")

T = TypeVar("T")

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
        # The ids of the data it was trained on (category ids by class, image ids by file name; see
        # detection.checkpoint.dataset_meta), saved with it and used to write results in the dataset's own ids.
        self.dataset_meta: dict[str, Any] = {}

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

    def padding_groups(self, images: Sequence[Tensor]) -> list[list[int]]:
        """Indices of the images that zero-pad to the same ``(H, W)`` (multiples of ``size_divisibility``), in
        order of first appearance.

        At inference each group runs as its own batch: an image's features then see exactly the padding they see
        when it is alone. In one batch with a larger image, every convolution near its right / bottom border
        would read the larger padded area (non-zero after the first BN), its anchors would extend into that area
        and compete in its top-k, and RoIAlign would interpolate across its border: detections would depend on
        what an image is batched with (Detectron2 and torchvision batch that way).
        """
        d = self.size_divisibility
        groups: dict[tuple[int, int], list[int]] = {}
        for i, im in enumerate(images):
            key = (int(math.ceil(int(im.shape[-2]) / d) * d), int(math.ceil(int(im.shape[-1]) / d) * d))
            groups.setdefault(key, []).append(i)
        return list(groups.values())

    def per_padding_group(self, images: Sequence[Tensor], run: Callable[[list[int]], list[T]]) -> list[T]:
        """``run(indices)`` -> one result per image of ``indices``, called once per padding group (see
        :meth:`padding_groups`); the results back in the images' order. Inference paths (forward, TTA) use it."""
        groups = self.padding_groups(images)
        if len(groups) == 1:
            return run(groups[0])
        out: list[Any] = [None] * len(images)
        for idx in groups:
            for i, r in zip(idx, run(idx)):
                out[i] = r
        return out

    def features(self, images: Sequence[Tensor]) -> tuple[dict[str, Tensor], Tensor]:
        """The one feature extraction of training, inference, TTA: normalize, pad into a batch, run the trunk.

        Returns the trunk's named maps (``{name: (N, C, H / stride, W / stride)}``, see ``trunk.output_shape()``)
        and the image sizes ``(N, 2)`` (Hi, Wi) before padding.
        """
        batch, sizes = self.preprocess(images)
        if self.training and batch.device.type == "cuda":
            batch = batch.contiguous(memory_format=torch.channels_last)
        return self.trunk(batch), sizes

    def forward(
        self,
        images: Sequence[Tensor],
        targets: Sequence[dict[str, Any]] | None = None,
        *,
        orig_sizes: Sequence[tuple[int, int]] | None = None,
    ) -> dict[str, Tensor] | list[dict[str, Tensor]]:
        if self.training:
            if targets is None:
                raise ValueError("FasterRCNN in training mode needs targets (call model.eval() for inference)")
            features, sizes = self.features(images)
            gt_boxes, gt_labels = self._targets(targets, len(images))
            proposals, _, rpn_losses = self.rpn(features, sizes, gt_boxes)
            _, head_losses = self.roi_heads(features, proposals, sizes, gt_boxes, gt_labels)
            return {**rpn_losses, **head_losses}
        # Each padded size as its own batch (see padding_groups), results back in the callers' order.
        return self.per_padding_group(
            images, lambda idx: self._detect([images[i] for i in idx],
                                             None if orig_sizes is None else [orig_sizes[i] for i in idx]))

    def _detect(self, images: Sequence[Tensor], orig_sizes: Sequence[tuple[int, int]] | None
                ) -> list[dict[str, Tensor]]:
        """Inference on images of one padded size."""
        features, sizes = self.features(images)
        proposals, _, _ = self.rpn(features, sizes)
        detections, _ = self.roi_heads(features, proposals, sizes)
        if orig_sizes is not None:
            detections = self.rescale(detections, [(int(im.shape[1]), int(im.shape[2])) for im in images], orig_sizes)
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
            boxes.append(b)
            labels.append(lab)
        # One range check for the whole batch: a single host read (on a GPU) instead of a min and a max per image;
        # the offending image is looked for only when there is one.
        every = torch.cat(labels)
        if every.numel() and bool(((every < 0) | (every >= self.num_classes)).any()):
            i, lab = next((i, lab) for i, lab in enumerate(labels)
                          if lab.numel() and (int(lab.min()) < 0 or int(lab.max()) >= self.num_classes))
            raise ValueError(
                f"target {i}: labels must be in [0, {self.num_classes}) (background is implicit), "
                f"got {sorted(set(lab.tolist()))}"
            )
        return boxes, labels

    @staticmethod
    def rescale(
        detections: list[dict[str, Tensor]],
        sizes: Tensor | Sequence[tuple[int, int]],
        orig_sizes: Sequence[tuple[int, int]],
    ) -> list[dict[str, Tensor]]:
        """Input-pixel boxes -> original-image pixels (per-axis scale), clipped to the original image."""
        out = []
        # The sizes may be given as host (h, w) pairs (forward does, from the image shapes): no device read then.
        hw = sizes.tolist() if isinstance(sizes, Tensor) else sizes
        for det, (h, w), (h0, w0) in zip(detections, hw, orig_sizes):
            # Python-float factors, not a 4-element tensor: no host->device copy per image. Multiplying by a
            # Python float rounds it to float32 first, as the tensor did: the same products.
            sx, sy = w0 / w, h0 / h
            b = det["boxes"]
            b = torch.stack(
                ((b[:, 0] * sx).clamp(0, w0), (b[:, 1] * sy).clamp(0, h0), (b[:, 2] * sx).clamp(0, w0),
                 (b[:, 3] * sy).clamp(0, h0)), dim=1
            )
            out.append({**det, "boxes": b})
        return out


@dataclass(frozen=True)
class BackboneWeights:
    """ImageNet (or classification-trained) weights for a ResNet trunk, read and converted once.

    ``state``: our ResNet's key names (``stem.*``, ``res2.*`` .. ``res5.*``, maybe ``fc.*``); ``info``: what they
    need from the model (pixel spec, stride placement).
    """

    state: dict[str, Tensor]
    info: WeightsInfo


# ``build_faster_rcnn(weights=...)`` default: read what ``cfg.backbone.weights`` names.
FROM_CONFIG = "from_config"


def read_backbone_weights(cfg: ModelConfig) -> BackboneWeights | None:
    """The converted, checked weights ``cfg.backbone.weights`` names for our ResNet trunks (None for "none" and
    for timm trunks, which load their own weights through timm)."""
    bb = cfg.backbone
    if bb.weights == "none" or bb.name.startswith("timm:"):
        return None
    from resbackbone.weights import pretrained_state_dict

    state, info = pretrained_state_dict(bb.weights, resnet_depth(bb.name))
    return BackboneWeights(state, info)


def resolve_model_config(cfg: ModelConfig, weights: BackboneWeights | None = None) -> ModelConfig:
    """``cfg`` with every choice left to the weights made concrete: norm, stride placement, pixel spec.

    The result is what the trainer records in ``config.yaml`` and in every checkpoint; building from it gives
    the same architecture and input normalization without the weights file. Rules: ``norm: auto`` is FrozenBN
    with pretrained weights (or a detector in ``model.weights``) and trainable BN from scratch; ``stride_in_1x1``
    and the pixel spec come from ``weights`` when given (read by :func:`read_backbone_weights`), else from the
    weights' name (MSRA caffe: stride in the 1x1, BGR mean-only pixels; a timm trunk: its pretrained statistics;
    otherwise torchvision's).
    Fields already set are kept. Idempotent.
    """
    bb, px = cfg.backbone, cfg.pixel
    pretrained = bb.weights != "none"
    # Starting from a trained detector (model.weights) freezes BN as ImageNet weights do.
    norm = bb.norm if bb.norm != "auto" else ("frozen_bn" if pretrained or cfg.weights != "none" else "bn")
    if bb.name.startswith("timm:"):
        stride_in_1x1 = False
        spec = timm_pixel_spec(bb.name[5:]) if pretrained else TORCHVISION_PIXELS
    elif weights is not None:
        stride_in_1x1, spec = weights.info.stride_in_1x1, weights.info.pixel_spec
    else:
        msra = bb.weights == "msra"
        stride_in_1x1, spec = msra, MSRA_PIXELS if msra else TORCHVISION_PIXELS
    if bb.stride_in_1x1 is not None:
        stride_in_1x1 = bb.stride_in_1x1
    pixel = PixelConfig(
        mean=px.mean if px.mean is not None else spec.mean,
        std=px.std if px.std is not None else spec.std,
        channel_order=px.channel_order if px.channel_order is not None else spec.channel_order,
    )
    return replace(cfg, backbone=replace(bb, norm=norm, stride_in_1x1=stride_in_1x1), pixel=pixel)


def pixel_spec_of(cfg: ModelConfig) -> PixelSpec:
    """The :class:`PixelSpec` of a resolved config (:func:`resolve_model_config`)."""
    px = cfg.pixel
    if px.mean is None or px.std is None or px.channel_order is None:
        raise ValueError("model.pixel is not resolved: call resolve_model_config first")
    return PixelSpec(tuple(px.mean), tuple(px.std), px.channel_order)  # type: ignore[arg-type]


def _load_backbone_weights(model: FasterRCNN, weights: BackboneWeights, arch: str, what: str) -> None:
    """stem..res4 (C4) or stem..res5 (DC5, FPN) into the trunk's ResNet, res5 into the C4 head, with the weights'
    key checks."""
    from resbackbone.weights import load_converted

    load_converted(model.trunk.body, weights.state, weights.info, what=what)
    if arch == "C4":
        res5 = {k[len("res5."):]: v for k, v in weights.state.items() if k.startswith("res5.")}
        head = model.roi_heads.box_head.res5
        missing = sorted(k for k in head.state_dict() if k not in res5 and not k.endswith("num_batches_tracked"))
        if missing:
            raise WeightsError(f"{what} does not cover the res5 head: missing {['res5.' + k for k in missing[:8]]}")
        head.load_state_dict(res5, strict=False)
    logger.info("loaded backbone weights %s (%d tensors)", what, len(weights.state))


def build_faster_rcnn(
    cfg: ModelConfig,
    *,
    class_names: Sequence[str] | None = None,
    weights: BackboneWeights | None | str = FROM_CONFIG,
) -> FasterRCNN:
    """The one place that maps a :class:`ModelConfig` to modules (see the module docstring).

    ``weights``: by default the backbone weights ``cfg.backbone.weights`` names are read and loaded (ImageNet
    initialization); pass what :func:`read_backbone_weights` returned to load those without reading again, or
    None to build the architecture alone (rebuilding a trained detector from its saved, resolved config: its
    weights come from the checkpoint). Choices left to the weights are made by :func:`resolve_model_config`.
    """
    if isinstance(weights, str):
        if weights != FROM_CONFIG:
            raise ValueError(f"weights must be BackboneWeights, None or {FROM_CONFIG!r}, got {weights!r}")
        weights = read_backbone_weights(cfg)
        load_timm = True
    else:
        load_timm = False
    cfg = resolve_model_config(cfg, weights)
    bb = cfg.backbone
    norm = bb.norm
    assert norm != "auto" and bb.stride_in_1x1 is not None
    rh = cfg.roi_heads
    a = cfg.anchors
    r = cfg.rpn
    if cfg.arch == "FPN" and bb.name.startswith("timm:"):
        raise ConfigError(f"model.arch FPN needs one of our ResNets (resnet18..152) as backbone, got {bb.name!r}")
    fc_head = {"fc_dim": rh.fc_dim, "num_fc": rh.num_fc, "num_conv": rh.num_conv, "conv_dim": rh.conv_dim,
               "conv_norm": rh.conv_norm}
    if bb.name.startswith("timm:"):
        trunk: nn.Module = TimmTrunk(bb.name[5:], weights=bb.weights if load_timm else "none")
        box_head: nn.Module = FCBoxHead(trunk.out_channels, rh.pooler_resolution, **fc_head)
        if cfg.arch == "C4":
            logger.info("timm backbones have no separable res5: using the 2-fc (DC5-style) box head")
    else:
        depth = resnet_depth(bb.name)
        if cfg.arch == "FPN":
            trunk = FPNTrunk(depth, out_channels=cfg.fpn.out_channels, norm=cfg.fpn.norm, freeze_at=bb.freeze_at,
                             body_norm=norm, stride_in_1x1=bb.stride_in_1x1, shortcut=bb.shortcut)
        else:
            trunk = ResNetTrunk(depth, dilated_res5=cfg.arch == "DC5", freeze_at=bb.freeze_at, norm=norm,
                                stride_in_1x1=bb.stride_in_1x1, shortcut=bb.shortcut)
        if cfg.arch == "C4":
            res5, channels = build_res5_head(depth, norm=norm, stride_in_1x1=bb.stride_in_1x1, shortcut=bb.shortcut)
            box_head = C4BoxHead(res5, channels)
        else:
            box_head = FCBoxHead(trunk.out_channels, rh.pooler_resolution, **fc_head)
    if bb.norm_eps != DEFAULT_NORM_EPS:
        set_norm_eps(trunk, bb.norm_eps)
        if cfg.arch == "C4":
            set_norm_eps(box_head, bb.norm_eps)
    shapes = trunk.output_shape()
    # FPN: the RPN runs on P2..P6, RoIs are pooled from P2..P5 (P6 only adds large anchors); one map otherwise.
    rpn_features = tuple(shapes)
    if len(a.sizes) % len(rpn_features):
        raise ConfigError(
            f"model.anchors.sizes has {len(a.sizes)} sizes; {cfg.arch} runs its RPN on {len(rpn_features)} feature "
            f"level(s) ({', '.join(rpn_features)}), which share the list evenly in order: give a multiple of "
            f"{len(rpn_features)}, e.g. one per level"
        )
    roi_features = tuple(f for f in shapes if f != FPN_LEVELS[-1]) if cfg.arch == "FPN" else rpn_features
    rpn = RPN(
        trunk.out_channels,
        anchor_sizes=a.sizes,
        aspect_ratios=a.aspect_ratios,
        stride=tuple(shapes[f].stride for f in rpn_features),
        in_features=rpn_features,
        head_convs=r.head_convs,
        anchor_offset=a.offset,
        anchor_convention=a.convention,
        anchor_stride_from_padded_size=a.stride_from_padded_size,
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
        strides=tuple(shapes[f].stride for f in roi_features),
        in_features=roi_features,
        pooler_type=rh.pooler_type,
        pooler_resolution=rh.pooler_resolution,
        sampling_ratio=rh.sampling_ratio,
        aligned=rh.aligned,
        canonical_box_size=rh.canonical_box_size,
        canonical_level=rh.canonical_level,
        level_epsilon=rh.level_epsilon,
        level_epsilon_in_log=rh.level_epsilon_in_log,
        batch_size_per_image=rh.batch_size_per_image,
        positive_fraction=rh.positive_fraction,
        fg_iou_thresh=rh.fg_iou_thresh,
        bg_iou_thresh_lo=rh.bg_iou_thresh_lo,
        bbox_reg_weights=rh.bbox_reg_weights,
        smooth_l1_beta=rh.smooth_l1_beta,
        score_thresh=rh.score_thresh,
        nms_thresh=rh.nms_thresh,
        detections_per_image=rh.detections_per_image,
        min_box_size=rh.min_box_size,
    )
    model = FasterRCNN(trunk, rpn, heads, pixel_spec=pixel_spec_of(cfg), class_names=class_names)
    if weights is not None:
        _load_backbone_weights(model, weights, cfg.arch, bb.weights)
    if cfg.compile:
        compile_hot_modules(model)
    return model


# BatchNorm's default epsilon (torch, torchvision, Detectron2).
DEFAULT_NORM_EPS = 1e-5


def set_norm_eps(module: nn.Module, eps: float) -> None:
    """Set the epsilon of every BatchNorm / FrozenBN in ``module`` (an attribute, not part of the state dict)."""
    from torchvision.ops import FrozenBatchNorm2d

    for m in module.modules():
        if isinstance(m, (nn.BatchNorm2d, FrozenBatchNorm2d)):
            m.eps = eps


def compile_hot_modules(model: FasterRCNN) -> None:
    """``torch.compile`` the trunk (stem..res4 for C4, the dilated stem..res5 for DC5) and the per-RoI box head
    (res5 + pooling for C4, the 2-fc head for DC5): the convolution-heavy parts with static control flow. The RPN
    and RoI sampling / NMS stay eager: their data-dependent shapes would break the graphs anyway.

    ``Module.compile`` compiles each module's call in place, so parameter and buffer names stay as they are
    (``torch.compile(module)`` would wrap them as ``_orig_mod.*``): checkpoints load into compiled and eager
    models alike. Compilation itself happens at the first call; later image sizes / RoI counts may recompile
    once, then run with dynamic shapes.
    """
    model.trunk.compile()
    model.roi_heads.box_head.compile()
