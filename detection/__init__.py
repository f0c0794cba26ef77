"""detection: Faster R-CNN on ResNet C4 / DC5 / FPN features (He et al. 2016, Appendix A; Lin et al. 2017).

The model API below is re-exported lazily (PEP 562): ``from detection import FasterRCNN`` imports torch then, but
``import detection.onnx_predictor`` (the onnxruntime runtime) and the other torch-free modules (``images``,
``results``, ``visualize``) load without it. Submodules import heavy pieces (timm, pycocotools) only where used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from resbackbone.lazy import lazy_exports

if TYPE_CHECKING:
    from .anchors import AnchorGenerator, base_anchors
    from .box_coder import BBOX_XFORM_CLIP, BoxCoder
    from .boxes import batched_pairwise_iou, box_area, clip_boxes, nonempty, pad_boxes
    from .faster_rcnn import FasterRCNN, build_faster_rcnn
    from .matcher import Matcher
    from .roi_heads import C4BoxHead, FCBoxHead, RoIHeads
    from .rpn import RPN, RPNHead
    from .sampler import sample_balanced

# Public name -> the submodule defining it (imported when the name is first read).
_LAZY: dict[str, str] = {
    "AnchorGenerator": "anchors",
    "base_anchors": "anchors",
    "BBOX_XFORM_CLIP": "box_coder",
    "BoxCoder": "box_coder",
    "batched_pairwise_iou": "boxes",
    "box_area": "boxes",
    "clip_boxes": "boxes",
    "nonempty": "boxes",
    "pad_boxes": "boxes",
    "FasterRCNN": "faster_rcnn",
    "build_faster_rcnn": "faster_rcnn",
    "Matcher": "matcher",
    "C4BoxHead": "roi_heads",
    "FCBoxHead": "roi_heads",
    "RoIHeads": "roi_heads",
    "RPN": "rpn",
    "RPNHead": "rpn",
    "sample_balanced": "sampler",
}


__getattr__, __dir__ = lazy_exports(__name__, _LAZY, globals())


__all__ = [
    "BBOX_XFORM_CLIP",
    "RPN",
    "AnchorGenerator",
    "BoxCoder",
    "C4BoxHead",
    "FCBoxHead",
    "FasterRCNN",
    "Matcher",
    "RPNHead",
    "RoIHeads",
    "base_anchors",
    "batched_pairwise_iou",
    "box_area",
    "build_faster_rcnn",
    "clip_boxes",
    "nonempty",
    "pad_boxes",
    "sample_balanced",
]
