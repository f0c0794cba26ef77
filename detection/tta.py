"""The test-time improvements of He et al. 2016, Appendix B, each switchable, on top of a trained FasterRCNN.

* Box refinement: the first pass's regressed boxes (for each RoI, the box of its best-scoring foreground class)
  are pooled again through the RoI head, giving new scores and new regressed boxes; the new predictions are
  united with the first-pass ones before NMS.
* Box voting (Gidaris & Komodakis 2015, used by the paper after the NMS of the united set): each box kept by NMS
  is replaced by the score-weighted mean of all candidate boxes of its class whose IoU with it is >= 0.5
  (itself included); its score is unchanged.
* Multi-scale testing: the image at several shorter sides (the paper: {200, 400, 600, 800, 1000}).
* Horizontal flip: each scale also on the mirrored image, boxes mirrored back.

Everything is merged in original-image pixels before one per-class NMS. Deviation from the paper: for multiple
scales the paper pools each RoI from two adjacent pyramid levels and merges their features by maxout (from SPP);
that needs a model trained that way. We merge the detections of all scales instead (Detectron's
``TEST.BBOX_AUG`` practice), which works with any trained model.

The detector is used through its public parts (``features``, ``per_padding_group``, ``rpn``, ``roi_heads.predict``,
``roi_heads.class_boxes``) and the model's own candidate selection (:func:`detection.roi_heads.select_detections`,
which also hands back the candidates box voting needs); nothing in it is modified.

Shape shorthand: N images, Ri RoIs of image i (R of all images), K foreground classes, M candidates of one image
(Ri x passes x (1 + refine)), D detections kept, H0 x W0 original image, H x W resized image.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn
from torchvision.ops import box_iou

from resbackbone.errors import ConfigError

from .boxes import cat_per_image, clip_boxes
from .data.transforms import resize_image
from .roi_heads import MIN_DETECTION_SIZE, select_detections

# The paper's multi-scale pyramid (shorter sides, pixels).
PAPER_SCALES = (200, 400, 600, 800, 1000)
# Box voting averages the candidates overlapping a kept box at least this much (Gidaris & Komodakis 2015).
VOTING_IOU = 0.5
# Names accepted by parse_tta.
TTA_NAMES = ("flip", "multiscale", "refine", "voting")


@dataclass(frozen=True)
class TTAOptions:
    """Which test-time improvements to apply. All off (the default) means the plain single-pass model."""

    # Also run each scale on the horizontally mirrored image.
    flip: bool = False
    # Shorter sides to test at; empty: the model's own test size only.
    scales: tuple[int, ...] = ()
    # Long-side cap for every scale; None: scale * (max_size / min_size) of the model's test resize.
    max_size: int | None = None
    # Re-pool the first pass's regressed boxes and unite the new predictions with the old (Appendix B).
    refine: bool = False
    # Replace each kept box by the score-weighted mean of its class's candidates with IoU >= voting_iou.
    box_voting: bool = False
    voting_iou: float = VOTING_IOU

    @property
    def enabled(self) -> bool:
        return self.flip or bool(self.scales) or self.refine or self.box_voting


def parse_tta(spec: str | None, *, scales: Sequence[int] = PAPER_SCALES) -> TTAOptions:
    """``"flip,multiscale,refine"`` -> options. ``refine`` implies box voting (the paper does both together);
    ``voting`` alone turns on voting only. Empty / None -> all off."""
    names = [s.strip() for s in (spec or "").split(",") if s.strip()]
    unknown = sorted(set(names) - set(TTA_NAMES))
    if unknown:
        raise ConfigError(f"unknown --tta item(s) {unknown}: choose from {list(TTA_NAMES)}")
    return TTAOptions(
        flip="flip" in names,
        scales=tuple(int(s) for s in scales) if "multiscale" in names else (),
        refine="refine" in names,
        box_voting="refine" in names or "voting" in names,
    )


def resize_for_test(image: np.ndarray, min_size: int, max_size: int) -> Tensor:
    """The detector's test-time resize (paper rule, one bilinear cv2 resize, as the data pipeline does it).

    ``image`` (H0, W0, 3) uint8 RGB -> ``(3, H, W)`` uint8 tensor.
    """
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"expected an (H, W, 3) uint8 RGB image, got shape {image.shape} dtype {image.dtype}")
    image = resize_image(image, min_size, max_size)
    return torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)  # (H, W, 3) -> (3, H, W)


@torch.no_grad()
def candidates(model: nn.Module, images: Sequence[Tensor], *, refine: bool) -> tuple[list[Tensor], list[Tensor],
                                                                                     Tensor]:
    """One pass of the detector without its final thresholding / NMS.

    Args:
        model: a FasterRCNN in eval mode.
        images: N ``(3, Hi, Wi)`` uint8/float RGB 0-255.
        refine: also re-pool each RoI's regressed box (of its best foreground class) and append those predictions.
    Returns:
        per image boxes ``(Mi, K, 4)`` XYXY input pixels and scores ``(Mi, K)``; input sizes ``(N, 2)`` (Hi, Wi).
    """
    # Each padded size as its own batch, as the model's forward does: an image's candidates do not depend on what
    # it is batched with.
    per_image = model.per_padding_group(images, lambda idx: _candidates([images[i] for i in idx], model, refine))
    boxes_out, probs_out = [b for b, _ in per_image], [p for _, p in per_image]
    sizes = torch.tensor([[int(im.shape[-2]), int(im.shape[-1])] for im in images], device=model.device)
    return boxes_out, probs_out, sizes


def _candidates(images: Sequence[Tensor], model: nn.Module, refine: bool) -> list[tuple[Tensor, Tensor]]:
    """:func:`candidates` for images of one padded size: per image ``((Mi, K, 4), (Mi, K))``."""
    features, sizes = model.features(images)
    proposals, _, _ = model.rpn(features, sizes)
    heads = model.roi_heads
    counts = [p.shape[0] for p in proposals]
    rois, image_index = cat_per_image(proposals)  # (R, 4), (R,)
    roi_sizes = sizes[image_index]  # (R, 2)
    logits, deltas = heads.predict(features, proposals)
    boxes, probs = heads.class_boxes(logits, deltas, rois, roi_sizes)  # (R, K, 4), (R, K)
    out_boxes, out_probs = list(boxes.split(counts)), list(probs.split(counts))  # per image (Ri, K, 4), (Ri, K)
    if refine:
        # Appendix B: "we take the predicted boxes ... pool features again from these, obtain new classification
        # scores and new regressed boxes" - one box per RoI, the one of its most likely foreground class.
        firsts = boxes[torch.arange(boxes.shape[0], device=boxes.device), probs.argmax(1)]  # (R, 4)
        logits2, deltas2 = heads.predict(features, list(firsts.split(counts)))
        boxes2, probs2 = heads.class_boxes(logits2, deltas2, firsts, roi_sizes)
        out_boxes = [torch.cat(pair) for pair in zip(out_boxes, boxes2.split(counts))]  # (2 Ri, K, 4)
        out_probs = [torch.cat(pair) for pair in zip(out_probs, probs2.split(counts))]
    return list(zip(out_boxes, out_probs))


def box_voting(kept_boxes: Tensor, kept_labels: Tensor, boxes: Tensor, scores: Tensor, labels: Tensor,
               iou_thresh: float = VOTING_IOU) -> Tensor:
    """Score-weighted mean of the same-class candidates overlapping each kept box by IoU >= ``iou_thresh``.

    Args:
        kept_boxes: ``(D, 4)`` boxes kept by NMS; kept_labels ``(D,)``.
        boxes, scores, labels: all ``(C, 4)`` / ``(C,)`` / ``(C,)`` candidates that entered NMS (the kept boxes
            are among them, so every kept box votes for itself and the weights never sum to zero).
    Returns:
        ``(D, 4)`` voted boxes.
    """
    if kept_boxes.numel() == 0:
        return kept_boxes
    iou = box_iou(kept_boxes, boxes)  # (D, C)
    w = (iou >= iou_thresh) & (kept_labels[:, None] == labels[None, :])
    w = w.to(scores.dtype) * scores[None, :]  # (D, C)
    return (w @ boxes) / w.sum(dim=1, keepdim=True)  # (D, C) @ (C, 4) -> (D, 4)


def merge_candidates(
    boxes: Tensor,
    scores: Tensor,
    *,
    score_thresh: float,
    nms_thresh: float,
    detections_per_image: int,
    voting_iou: float | None,
    min_box_size: float = MIN_DETECTION_SIZE,
) -> dict[str, Tensor]:
    """Threshold, per-class NMS, optional box voting, top detections: ``(M, K, 4)``, ``(M, K)`` -> detections
    ``{"boxes" (D, 4), "scores" (D,), "labels" (D,)}`` by descending score."""
    cands, kept = select_detections(
        boxes,
        scores,
        image_index=None,
        num_images=1,
        score_thresh=score_thresh,
        nms_thresh=nms_thresh,
        detections_per_image=detections_per_image,
        min_box_size=min_box_size,
    )
    out_boxes = cands.boxes[kept]
    if voting_iou is not None:
        out_boxes = box_voting(out_boxes, cands.labels[kept], cands.boxes, cands.scores, cands.labels, voting_iou)
    return {"boxes": out_boxes, "scores": cands.scores[kept], "labels": cands.labels[kept]}


@torch.no_grad()
def predict_tta(
    model: nn.Module,
    images: Sequence[np.ndarray],
    options: TTAOptions,
    *,
    min_size: int,
    max_size: int,
) -> list[dict[str, Tensor]]:
    """Detections with the chosen test-time improvements, in original-image pixels.

    Args:
        model: a FasterRCNN in eval mode (its ``roi_heads`` score threshold, NMS IoU and detections per image are
            used for the merged set).
        images: N original images ``(H0, W0, 3)`` uint8 RGB.
        options: which improvements; all off -> exactly ``model(test-resized images, orig_sizes=...)``.
        min_size, max_size: the model's test resize (shorter side, long-side cap).
    Returns:
        per image ``{"boxes" (D, 4) XYXY original pixels, "scores" (D,), "labels" (D,) in [0, K)}``.
    """
    orig_sizes = [(int(im.shape[0]), int(im.shape[1])) for im in images]
    device = model.device
    if not options.enabled:
        return model([resize_for_test(im, min_size, max_size).to(device) for im in images], orig_sizes=orig_sizes)
    scales = options.scales or (min_size,)
    per_image_boxes: list[list[Tensor]] = [[] for _ in images]
    per_image_scores: list[list[Tensor]] = [[] for _ in images]
    for s in scales:
        cap = options.max_size if options.max_size is not None else max(1, round(s * max_size / min_size))
        resized = [resize_for_test(im, s, cap).to(device) for im in images]
        for flipped in (False, True) if options.flip else (False,):
            inputs = [im.flip(-1) for im in resized] if flipped else resized
            boxes, scores, _ = candidates(model, inputs, refine=options.refine)
            for i, (b, sc) in enumerate(zip(boxes, scores)):
                h, w = inputs[i].shape[1:]  # the sizes candidates reports, known on the host
                if flipped:  # x -> W - x, and x1 / x2 swap
                    b = torch.stack((w - b[..., 2], b[..., 1], w - b[..., 0], b[..., 3]), dim=-1)
                h0, w0 = orig_sizes[i]
                b = b * b.new_tensor([w0 / w, h0 / h, w0 / w, h0 / h])
                per_image_boxes[i].append(clip_boxes(b, float(h0), float(w0)))
                per_image_scores[i].append(sc)
    heads = model.roi_heads
    return [
        merge_candidates(
            torch.cat(bs), torch.cat(ss),
            score_thresh=heads.score_thresh,
            nms_thresh=heads.nms_thresh,
            detections_per_image=heads.detections_per_image,
            voting_iou=options.voting_iou if options.box_voting else None,
            min_box_size=heads.min_box_size,
        )
        for bs, ss in zip(per_image_boxes, per_image_scores)
    ]


__all__ = [
    "PAPER_SCALES",
    "TTAOptions",
    "VOTING_IOU",
    "box_voting",
    "candidates",
    "merge_candidates",
    "parse_tta",
    "predict_tta",
    "resize_for_test",
]
