"""Our RPN and RoI heads against torchvision.models.detection components configured the same way, sharing weights.

Where we intentionally differ, the test maps one onto the other:
  * labels: ours foreground [0, K) and background K; torchvision 0 = background, foreground 1..K;
  * box regression: both class-specific; torchvision also predicts (unused) background deltas -> zero rows;
  * RPN loss normalization: ours / (N * batch_size_per_image) (Detectron), torchvision / (number sampled);
  * RoI pooling: torchvision's MultiScaleRoIAlign is RoIAlign with aligned=False, so ours uses aligned=False here;
    our default is aligned=True (Detectron2's: sample at pixel centres, no half-pixel shift of every RoI);
  * losses: torchvision's smooth-L1 beta is fixed at 1/9; ours is configurable (default 0 = L1, Detectron2 C4).
"""

import torch
from torchvision.models.detection.anchor_utils import AnchorGenerator as TVAnchorGenerator
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.roi_heads import RoIHeads as TVRoIHeads
from torchvision.models.detection.rpn import RegionProposalNetwork, RPNHead
from torchvision.ops import MultiScaleRoIAlign

from detection.backbone import build_res5_head
from detection.roi_heads import C4BoxHead, RoIHeads
from detection.rpn import RPN
from tests.helpers import BOX_TOL_PX, SCORE_TOL

SIZES = (16.0, 32.0, 64.0)
RATIOS = (0.5, 1.0, 2.0)
IMAGE = 128
C = 32


def _pair_rpn(pre: int, post: int, *, bs: int = 256, frac: float = 0.5) -> tuple[RPN, RegionProposalNetwork]:
    torch.manual_seed(0)
    ours = RPN(C, anchor_sizes=SIZES, aspect_ratios=RATIOS, pre_nms_topk=(pre, pre), post_nms_topk=(post, post),
               nms_thresh=0.7, batch_size_per_image=bs, positive_fraction=frac, smooth_l1_beta=1.0 / 9)
    for p in ours.head.parameters():  # larger than the 0.01-std init so scores and deltas are diverse
        torch.nn.init.normal_(p, std=0.1)
    head = RPNHead(C, 9)
    head.conv[0][0].load_state_dict(ours.head.conv.state_dict())
    head.cls_logits.load_state_dict(ours.head.objectness.state_dict())
    head.bbox_pred.load_state_dict(ours.head.deltas.state_dict())
    tv = RegionProposalNetwork(
        TVAnchorGenerator((SIZES,), (RATIOS,)), head, 0.7, 0.3, bs, frac,
        {"training": pre, "testing": pre}, {"training": post, "testing": post}, 0.7,
    )
    return ours, tv


def _features(n: int = 2) -> tuple[torch.Tensor, list[tuple[int, int]]]:
    g = torch.Generator().manual_seed(1)
    feats = torch.randn(n, C, IMAGE // 16, IMAGE // 16, generator=g)
    sizes = [(IMAGE, IMAGE), (IMAGE - 20, IMAGE - 40)][:n]  # the second image is padded in the batch
    return feats, sizes


def test_rpn_proposals_match_torchvision() -> None:
    ours, tv = _pair_rpn(pre=300, post=50)
    ours.eval()
    tv.eval()
    feats, sizes = _features()
    with torch.no_grad():
        props, logits, _ = ours(feats, torch.tensor(sizes))
        ref_boxes, ref_scores = tv(ImageList(torch.zeros(2, 3, IMAGE, IMAGE), sizes), {"0": feats})
    for p, s, rb, rs in zip(props, logits, ref_boxes, ref_scores):
        assert p.shape == rb.shape and p.shape[0] > 10
        torch.testing.assert_close(p, rb, atol=BOX_TOL_PX, rtol=0)
        torch.testing.assert_close(torch.sigmoid(s), rs)


def test_rpn_losses_match_torchvision_up_to_normalization() -> None:
    # Sample every labelled anchor (batch = all anchors, positive fraction 1) so both sample the same set.
    anchors = (IMAGE // 16) ** 2 * 9
    ours, tv = _pair_rpn(pre=300, post=50, bs=anchors, frac=1.0)
    ours.train()
    tv.train()
    feats, sizes = _features()
    gt = [torch.tensor([[10.0, 12.0, 50.0, 70.0], [60.0, 60.0, 120.0, 100.0]]), torch.tensor([[5.0, 5.0, 30.0, 25.0]])]
    targets = [{"boxes": b, "labels": torch.ones(len(b), dtype=torch.int64)} for b in gt]
    _, _, losses = ours(feats, torch.tensor(sizes), gt)
    _, ref = tv(ImageList(torch.zeros(2, 3, IMAGE, IMAGE), sizes), {"0": feats}, targets)
    sampled = losses["rpn_num_pos"] * 2 + losses["rpn_num_neg"] * 2
    scale = 2 * anchors / sampled  # ours divides by N * batch_size_per_image, torchvision by the number sampled
    torch.testing.assert_close(losses["loss_rpn_cls"] * scale, ref["loss_objectness"], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(losses["loss_rpn_box"] * scale, ref["loss_rpn_box_reg"], rtol=1e-5, atol=1e-6)


def _pair_heads(k: int = 3, *, train: bool) -> tuple[RoIHeads, TVRoIHeads]:
    torch.manual_seed(0)
    res5, channels = build_res5_head(18, norm="bn", stride_in_1x1=False, shortcut="B")
    box_head = C4BoxHead(res5, channels)
    ours = RoIHeads(box_head, num_classes=k, pooler_resolution=14, sampling_ratio=0, aligned=False,
                    batch_size_per_image=512, positive_fraction=0.25, smooth_l1_beta=1.0 / 9,
                    score_thresh=0.05, nms_thresh=0.5, detections_per_image=100)
    torch.nn.init.normal_(ours.cls_score.weight, std=0.05)
    torch.nn.init.normal_(ours.bbox_pred.weight, std=0.05)
    torch.nn.init.normal_(ours.cls_score.bias, std=0.5)

    class Predictor(torch.nn.Module):
        """torchvision's FastRCNNPredictor layout: class 0 = background, (K+1)*4 deltas."""

        def __init__(self) -> None:
            super().__init__()
            w, b = ours.cls_score.weight.detach(), ours.cls_score.bias.detach()
            self.cls_score = torch.nn.Linear(channels, k + 1)
            self.cls_score.weight.data = torch.cat([w[k:], w[:k]])  # our background row K -> row 0
            self.cls_score.bias.data = torch.cat([b[k:], b[:k]])
            self.bbox_pred = torch.nn.Linear(channels, 4 * (k + 1))
            self.bbox_pred.weight.data = torch.cat([torch.zeros(4, channels), ours.bbox_pred.weight.detach()])
            self.bbox_pred.bias.data = torch.cat([torch.zeros(4), ours.bbox_pred.bias.detach()])

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            return self.cls_score(x), self.bbox_pred(x)

    tv = TVRoIHeads(
        MultiScaleRoIAlign(["0"], 14, 0), box_head, Predictor(), 0.5, 0.5, 512, 0.25, (10.0, 10.0, 5.0, 5.0),
        0.05, 0.5, 100,
    )
    ours.train(train)
    tv.train(train)
    if not train:
        box_head.eval()  # BN in inference mode for both (shared module)
    return ours, tv


def _proposals() -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    out = []
    for n in (40, 25):
        xy = torch.rand(n, 2, generator=g) * 80
        wh = torch.rand(n, 2, generator=g) * 60 + 8
        out.append(torch.cat([xy, (xy + wh).clamp(max=IMAGE - 1)], dim=1))
    return out


def test_roi_head_detections_match_torchvision() -> None:
    ours, tv = _pair_heads(train=False)
    g = torch.Generator().manual_seed(2)
    feats = torch.randn(2, 256, IMAGE // 16, IMAGE // 16, generator=g)
    props = _proposals()
    sizes = [(IMAGE, IMAGE), (IMAGE, IMAGE)]
    with torch.no_grad():
        dets, _ = ours(feats, props, torch.tensor(sizes))
        ref, _ = tv({"0": feats}, props, sizes)
    for d, r in zip(dets, ref):
        assert d["boxes"].shape[0] == r["boxes"].shape[0] > 5
        torch.testing.assert_close(d["scores"], r["scores"], atol=SCORE_TOL, rtol=0)
        torch.testing.assert_close(d["boxes"], r["boxes"], atol=BOX_TOL_PX, rtol=0)
        assert torch.equal(d["labels"], r["labels"] - 1)  # torchvision's 1..K are our 0..K-1


def test_roi_head_losses_match_torchvision() -> None:
    """With every proposal sampled (few proposals, batch 512), training losses agree exactly.

    Both images get the same number of RoIs (25 proposals + 2 ground-truth boxes): ours is a mean per image, then
    over images (exact under gradient accumulation), which is torchvision's mean over all RoIs when the counts
    are equal (tests/detection/test_roi_heads.py covers unequal counts)."""
    ours, tv = _pair_heads(train=True)
    g = torch.Generator().manual_seed(4)
    feats = torch.randn(2, 256, IMAGE // 16, IMAGE // 16, generator=g)
    props = [p[:25] for p in _proposals()]
    gt = [torch.tensor([[10.0, 10.0, 60.0, 70.0], [50.0, 40.0, 110.0, 100.0]]),
          torch.tensor([[20.0, 30, 70, 60], [60.0, 10.0, 100.0, 50.0]])]
    labels = [torch.tensor([0, 2]), torch.tensor([1, 0])]
    sizes = [(IMAGE, IMAGE), (IMAGE, IMAGE)]
    torch.manual_seed(5)
    _, losses = ours(feats, props, torch.tensor(sizes), gt, labels)
    # Same BN batch statistics need the same RoI set; the order differs but BN statistics do not depend on it.
    targets = [{"boxes": b, "labels": lab + 1} for b, lab in zip(gt, labels)]
    _, ref = tv({"0": feats}, [p.clone() for p in props], sizes, targets)
    torch.testing.assert_close(losses["loss_cls"], ref["loss_classifier"], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(losses["loss_box_reg"], ref["loss_box_reg"], rtol=1e-4, atol=1e-5)
    assert 0 < losses["roi_fg_fraction"].item() < 1


# ------------------------------------------------------------------------------------------ several levels (FPN)

STRIDES = (4, 8, 16)


def _pyramid(n: int = 2) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(4)
    return [torch.randn(n, C, IMAGE // s, IMAGE // s, generator=g) for s in STRIDES]


def test_multilevel_rpn_proposals_match_torchvision() -> None:
    """One head over three levels: top-k per level, NMS per (image, level), top-k per image, as torchvision."""
    torch.manual_seed(0)
    pre, post = 100, 60
    ours = RPN(C, anchor_sizes=SIZES, aspect_ratios=RATIOS, stride=STRIDES, pre_nms_topk=(pre, pre),
               post_nms_topk=(post, post), nms_thresh=0.7).eval()
    for p in ours.head.parameters():
        torch.nn.init.normal_(p, std=0.1)
    head = RPNHead(C, 3)
    head.conv[0][0].load_state_dict(ours.head.conv.state_dict())
    head.cls_logits.load_state_dict(ours.head.objectness.state_dict())
    head.bbox_pred.load_state_dict(ours.head.deltas.state_dict())
    tv = RegionProposalNetwork(
        TVAnchorGenerator(tuple((s,) for s in SIZES), (RATIOS,) * 3), head, 0.7, 0.3, 256, 0.5,
        {"training": pre, "testing": pre}, {"training": post, "testing": post}, 0.7,
    ).eval()
    feats = _pyramid()
    sizes = [(IMAGE, IMAGE), (IMAGE - 20, IMAGE - 40)]
    with torch.no_grad():
        props, logits, _ = ours({"a": feats[0], "b": feats[1], "c": feats[2]}, torch.tensor(sizes))
        ref_boxes, ref_scores = tv(ImageList(torch.zeros(2, 3, IMAGE, IMAGE), sizes),
                                   {str(i): f for i, f in enumerate(feats)})
        pred = ours.predict(feats)
        flat = ours.propose_flat(pred.anchors, pred.logits, pred.deltas, torch.tensor(sizes), pred.level_sizes)
    assert pred.level_sizes == tuple((IMAGE // s) ** 2 * 3 for s in STRIDES)
    for i, (p, s, rb, rs) in enumerate(zip(props, logits, ref_boxes, ref_scores)):
        assert p.shape == rb.shape and p.shape[0] == post
        torch.testing.assert_close(p, rb, atol=BOX_TOL_PX, rtol=0)
        torch.testing.assert_close(torch.sigmoid(s), rs)
        torch.testing.assert_close(flat[0][flat[2] == i], p)  # the export path: the same proposals


def test_multilevel_pooling_matches_multiscale_roi_align() -> None:
    """Each RoI from its level (canonical 224 px at level 4, torchvision's epsilon after the log), as
    MultiScaleRoIAlign; boxes of every size so every level and both clamps are used."""
    from detection.pooler import TV_LEVEL_EPSILON, RoIPooler

    pooler = RoIPooler(STRIDES, 7, sampling_ratio=2, aligned=False, level_epsilon=TV_LEVEL_EPSILON,
                       level_epsilon_in_log=False)
    tv = MultiScaleRoIAlign(["0", "1", "2"], 7, 2)
    g = torch.Generator().manual_seed(5)
    feats = _pyramid()
    boxes = []
    for n in (30, 20):
        xy = torch.rand(n, 2, generator=g) * 60
        wh = torch.rand(n, 2, generator=g) ** 2 * 300 + 2  # 2 .. 302 px: levels 2, 3, 4 (clamped above and below)
        boxes.append(torch.cat([xy, xy + wh], dim=1))
    boxes[0][0] = torch.tensor([0.0, 0.0, 112.0, 112.0])  # exactly on the level 3 / 4 boundary (2^-1 x 224)
    ours = pooler(feats, boxes)
    ref = tv({str(i): f for i, f in enumerate(feats)}, boxes, [(IMAGE, IMAGE)] * 2)
    levels = pooler.levels_of(torch.cat(boxes))
    assert set(levels.tolist()) == {0, 1, 2}
    torch.testing.assert_close(ours, ref, rtol=0, atol=0)


def test_level_assignment_epsilon_placement() -> None:
    """Detectron2 adds its epsilon inside the log, torchvision after it: both put a 224 px box on level 4 and a
    112 px box on level 3; the clamps hold."""
    from detection.pooler import D2_LEVEL_EPSILON, TV_LEVEL_EPSILON, assign_levels

    boxes = torch.tensor([[0, 0, 224, 224], [0, 0, 112, 112], [0, 0, 111, 111], [0, 0, 2, 2], [0, 0, 2000, 2000.0]])
    for eps, in_log in ((D2_LEVEL_EPSILON, True), (TV_LEVEL_EPSILON, False)):
        assert assign_levels(boxes, 2, 5, epsilon=eps, epsilon_in_log=in_log).tolist() == [2, 1, 0, 0, 3]
