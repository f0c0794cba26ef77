"""detection: Faster R-CNN on ResNet C4 / DC5 features (He et al. 2016, Appendix A).

Submodules import lazily-heavy pieces (timm, pycocotools) only where used; the model API is re-exported here.
"""

from .anchors import AnchorGenerator, base_anchors
from .box_coder import BBOX_XFORM_CLIP, BoxCoder
from .boxes import batched_pairwise_iou, box_area, clip_boxes, nonempty, pad_boxes
from .faster_rcnn import FasterRCNN, build_faster_rcnn
from .matcher import Matcher
from .roi_heads import C4BoxHead, FCBoxHead, RoIHeads
from .rpn import RPN, RPNHead
from .sampler import sample_balanced

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
