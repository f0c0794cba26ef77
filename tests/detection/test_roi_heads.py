"""RoI heads: proposal sampling (ground truth appended, thresholds, background = K), losses, post-processing."""

import torch

from detection.backbone import build_res5_head
from detection.roi_heads import C4BoxHead, FCBoxHead, RoIHeads, select_detections

K = 3


def _heads(**kwargs: object) -> RoIHeads:
    torch.manual_seed(0)
    res5, channels = build_res5_head(18, norm="bn", stride_in_1x1=False, shortcut="B")
    defaults: dict = {"num_classes": K, "pooler_resolution": 7, "batch_size_per_image": 32}
    return RoIHeads(C4BoxHead(res5, channels), **(defaults | kwargs))


def test_sampling_appends_ground_truth_and_labels_background_k() -> None:
    heads = _heads(batch_size_per_image=64, positive_fraction=0.25, bg_iou_thresh_lo=0.1)
    gt = [torch.tensor([[10.0, 10.0, 50.0, 50.0]]), torch.zeros(0, 4)]
    labels = [torch.tensor([2]), torch.zeros(0, dtype=torch.int64)]
    near = torch.tensor([[20.0, 20.0, 70.0, 70.0]])  # IoU 0.28: background
    far = torch.tensor([[100.0, 100.0, 120.0, 120.0]])  # IoU 0 < bg_iou_thresh_lo: ignored (Fast R-CNN's [0.1, 0.5))
    good = torch.tensor([[15.0, 15.0, 50.0, 60.0]])  # IoU 0.79: foreground
    props = [torch.cat([near, far, good]), torch.tensor([[0.0, 0.0, 20.0, 20.0]])]
    rois, cls, matched, fg = heads.sample(props, gt, labels)
    assert [r.shape[0] for r in rois] == [3, 0]  # near, good and the appended gt; image 1 has nothing >= 0.1
    expect_fg = torch.cat([gt[0], good]).sort(0).values
    assert torch.equal(rois[0][fg].sort(0).values, expect_fg)
    assert cls[fg].tolist() == [2, 2] and cls[~fg].tolist() == [K]
    torch.testing.assert_close(rois[0][~fg], near)
    torch.testing.assert_close(matched[fg], gt[0].expand(2, 4))
    # With the Detectron default bg_iou_thresh_lo = 0, an image without objects gives background RoIs (label K).
    rois, cls, _, fg = _heads(bg_iou_thresh_lo=0.0).sample(props, gt, labels)
    assert [r.shape[0] for r in rois] == [4, 1] and cls[-1].item() == K and not fg[-1]


def test_sampling_caps_foreground_fraction() -> None:
    heads = _heads(batch_size_per_image=16, positive_fraction=0.25)
    gt = [torch.tensor([[10.0, 10.0, 60.0, 60.0]])]
    jitter = torch.rand(100, 4, generator=torch.Generator().manual_seed(0)) * 4
    props = [torch.tensor([[10.0, 10.0, 60.0, 60.0]]) + jitter]  # all foreground
    props[0] = torch.cat([props[0], torch.tensor([[70.0, 70.0, 120.0, 120.0]]).expand(30, 4)])
    rois, cls, _, fg = heads.sample(props, gt, [torch.tensor([1])])
    assert fg.sum().item() == 4 and (~fg).sum().item() == 12 and rois[0].shape[0] == 16


def test_losses_normalization_and_no_foreground() -> None:
    heads = _heads()
    logits = torch.randn(6, K + 1, requires_grad=True)
    deltas = torch.randn(6, 4 * K, requires_grad=True)
    rois = torch.tensor([[0.0, 0.0, 10.0, 10.0]]).expand(6, 4)
    gt = torch.tensor([[1.0, 1.0, 11.0, 12.0]]).expand(6, 4)
    cls = torch.tensor([0, 2, K, K, K, K])
    fg = cls < K
    out = heads.losses(logits, deltas, rois, cls, gt, fg)
    torch.testing.assert_close(out["loss_cls"], torch.nn.functional.cross_entropy(logits, cls))
    target = heads.box_coder.encode(rois[:2], gt[:2])
    pred = torch.stack([deltas[0, 0:4], deltas[1, 8:12]])  # class-specific columns of the foreground RoIs
    torch.testing.assert_close(out["loss_box_reg"], (pred - target).abs().sum() / 6)  # / all sampled RoIs
    out = heads.losses(logits, deltas, rois, torch.full((6,), K), gt, torch.zeros(6, dtype=torch.bool))
    assert out["loss_box_reg"].item() == 0 and torch.isfinite(out["loss_cls"])
    (out["loss_box_reg"] + out["loss_cls"]).backward()
    assert deltas.grad is not None and not deltas.grad.any()


def test_postprocess_per_class_nms_threshold_and_cap() -> None:
    heads = _heads(score_thresh=0.2, nms_thresh=0.5, detections_per_image=3)
    boxes = [torch.tensor([[10.0, 10.0, 50.0, 50.0], [11.0, 10.0, 51.0, 50.0], [60.0, 60.0, 100.0, 90.0]])]
    # Logits: RoI 0 class 0 (0.6) and class 1 (0.3); RoI 1 class 0 (0.5, suppressed by RoI 0); RoI 2 class 2.
    probs = torch.tensor([[0.6, 0.3, 0.0, 0.1], [0.5, 0.1, 0.0, 0.4], [0.0, 0.0, 0.9, 0.1]]) + 1e-6
    dets = heads.postprocess(probs.log(), torch.zeros(3, 4 * K), boxes, torch.tensor([[128, 128]]))
    d = dets[0]
    assert d["labels"].tolist() == [2, 0, 1]  # class 1 on the same box survives class 0's NMS (per-class)
    torch.testing.assert_close(d["scores"], torch.tensor([0.9, 0.6, 0.3]), atol=1e-4, rtol=0)
    torch.testing.assert_close(d["boxes"], boxes[0][[2, 0, 0]])
    heads.detections_per_image = 2
    assert heads.postprocess(probs.log(), torch.zeros(3, 4 * K), boxes, torch.tensor([[128, 128]]))[0][
        "labels"
    ].tolist() == [2, 0]


def test_batched_selection_equals_one_image_at_a_time() -> None:
    """NMS per (image, class) and the per-image cap of a batch are the single-image selection of each image."""
    g = torch.Generator().manual_seed(0)
    counts = [30, 0, 25]
    xy = torch.rand(55, K, 2, generator=g) * 60
    boxes = torch.cat([xy, xy + 5 + torch.rand(55, K, 2, generator=g) * 30], dim=-1)  # (R, K, 4)
    probs = torch.rand(55, K, generator=g)
    image_index = torch.repeat_interleave(torch.arange(3), torch.tensor(counts))
    opts = {"score_thresh": 0.3, "nms_thresh": 0.5, "detections_per_image": 8}
    cands, kept = select_detections(boxes, probs, image_index, 3, **opts)
    got = [cands.labels[kept][cands.image_index[kept] == i] for i in range(3)]
    for i, (b, p) in enumerate(zip(boxes.split(counts), probs.split(counts))):
        one, one_kept = select_detections(b, p, None, 1, **opts)
        assert torch.equal(got[i], one.labels[one_kept])
        assert torch.equal(cands.scores[kept][cands.image_index[kept] == i], one.scores[one_kept])
        assert one_kept.numel() <= 8
    assert [g.numel() for g in got][1] == 0 and (cands.image_index[kept].diff() >= 0).all()


def test_zero_rois_in_training_and_inference() -> None:
    heads = _heads()
    feats = torch.randn(2, 256, 8, 8)
    empty = [torch.zeros(0, 4), torch.zeros(0, 4)]
    heads.eval()
    dets, _ = heads(feats, empty, torch.tensor([[128, 128], [128, 128]]))
    assert [d["boxes"].shape for d in dets] == [(0, 4), (0, 4)]
    heads.train()
    _, losses = heads(feats, empty, torch.tensor([[128, 128], [128, 128]]), empty, [torch.zeros(0).long()] * 2)
    assert losses["loss_box_reg"].item() == 0 and torch.isfinite(losses["loss_cls"])


def test_fc_box_head_shapes() -> None:
    head = FCBoxHead(512, 7, fc_dim=64)
    assert head(torch.randn(5, 512, 7, 7)).shape == (5, 64)


def test_roi_pool_is_selectable() -> None:
    """The paper's RoIPool (quantized max pooling) in place of RoIAlign: same shapes, different values."""
    feats = torch.randn(1, 256, 8, 8, generator=torch.Generator().manual_seed(0))
    boxes = [torch.tensor([[3.0, 5.0, 70.0, 90.0], [20.0, 20.0, 40.0, 44.0]])]
    pooled_max = _heads(pooler_type="roi_pool").pool(feats, boxes)
    pooled_align = _heads().pool(feats, boxes)
    assert pooled_max.shape == pooled_align.shape == (2, 256, 7, 7)
    assert not torch.allclose(pooled_max, pooled_align)
    # Max pooling over bins: every RoIPool value is an actual feature value of that image.
    assert torch.isin(pooled_max, feats).all()


def test_losses_are_a_mean_per_image_so_micro_batches_average_exactly() -> None:
    """Images with different RoI counts (3 and 5): the batch loss is the mean of the per-image losses, so two
    micro-batches of one image each, averaged, give the batch's loss (what gradient accumulation relies on)."""
    from detection.roi_heads import roi_weights

    heads = _heads()
    g = torch.Generator().manual_seed(1)
    logits, deltas = torch.randn(8, K + 1, generator=g), torch.randn(8, 4 * K, generator=g)
    rois = [torch.tensor([[0.0, 0.0, 10.0, 10.0]]).expand(3, 4), torch.tensor([[5.0, 5.0, 30.0, 20.0]]).expand(5, 4)]
    gt = torch.tensor([[1.0, 1.0, 11.0, 12.0]]).expand(8, 4)
    cls = torch.tensor([0, K, K, 2, 1, K, K, K])
    fg = cls < K
    whole = heads.losses(logits, deltas, torch.cat(rois), cls, gt, fg, roi_weights(rois))
    parts = [heads.losses(logits[s], deltas[s], rois[i], cls[s], gt[s], fg[s], roi_weights([rois[i]]))
             for i, s in enumerate((slice(0, 3), slice(3, 8)))]
    for key in ("loss_cls", "loss_box_reg"):
        torch.testing.assert_close(whole[key], (parts[0][key] + parts[1][key]) / 2)
    plain = heads.losses(logits, deltas, torch.cat(rois), cls, gt, fg)  # 1 / R: differs with unequal counts
    assert not torch.allclose(plain["loss_cls"], whole["loss_cls"])
