"""RPN: proposal generation batched over images, loss normalization, degenerate targets, bf16 autocast."""

import torch

from detection.rpn import RPN

C = 16


def _rpn(**kwargs: object) -> RPN:
    torch.manual_seed(0)
    defaults: dict = {"anchor_sizes": (16.0, 32.0, 64.0), "pre_nms_topk": (200, 200), "post_nms_topk": (30, 30)}
    rpn = RPN(C, **(defaults | kwargs))
    for p in rpn.head.parameters():
        torch.nn.init.normal_(p, std=0.1)
    return rpn


def _feats(n: int = 2) -> torch.Tensor:
    return torch.randn(n, C, 8, 8, generator=torch.Generator().manual_seed(1))


def test_proposals_batched_equal_per_image_and_in_bounds() -> None:
    rpn = _rpn().eval()
    feats = _feats()
    sizes = torch.tensor([[128, 128], [100, 70]])
    with torch.no_grad():
        props, logits, losses = rpn(feats, sizes)
        alone = [rpn(feats[i : i + 1], sizes[i : i + 1])[0][0] for i in range(2)]
    assert losses == {}
    for p, s, a, (h, w) in zip(props, logits, alone, sizes.tolist()):
        assert 0 < p.shape[0] <= 30 and s.shape == (p.shape[0],)
        torch.testing.assert_close(p, a)
        assert (p[:, 0] >= 0).all() and (p[:, 2] <= w).all() and (p[:, 3] <= h).all()
        assert (p[:, 2] > p[:, 0]).all() and (s[:-1] >= s[1:]).all()


def test_flat_proposals_are_the_per_image_lists() -> None:
    """propose_flat (the export path) for one image is RPN.forward's proposals; for a batch, grouped by image."""
    rpn = _rpn().eval()
    feats = _feats(3)
    sizes = torch.tensor([[128, 128], [100, 70], [64, 128]])
    with torch.no_grad():
        props, logits, _ = rpn(feats, sizes)
        anchors, obj, deltas, _ = rpn.predict(feats)
        boxes, scores, image_index = rpn.propose_flat(anchors, obj, deltas, sizes)
        one = rpn.propose_flat(*rpn.predict(feats[1:2])[:3], sizes[1:2])
        alone, alone_logits, _ = rpn(feats[1:2], sizes[1:2])
    assert anchors.shape == (8 * 8 * 9, 4) and obj.shape == (3, 8 * 8 * 9) and deltas.shape == (3, 8 * 8 * 9, 4)
    assert torch.equal(boxes, torch.cat(props)) and torch.equal(scores, torch.cat(logits))
    assert image_index.tolist() == sum(([i] * p.shape[0] for i, p in enumerate(props)), [])
    assert torch.equal(one[0], alone[0]) and torch.equal(one[1], alone_logits[0]) and not one[2].any()


def test_loss_normalization_and_empty_targets() -> None:
    rpn = _rpn(batch_size_per_image=64).train()
    feats = _feats().requires_grad_()
    gt = [torch.zeros(0, 4), torch.tensor([[8.0, 8.0, 40.0, 40.0]])]
    _, _, losses = rpn(feats, torch.tensor([[128, 128], [128, 128]]), gt)
    # Every image fills its 64 samples (plenty of negatives); positives only where there is an object.
    torch.testing.assert_close(losses["rpn_num_pos"] + losses["rpn_num_neg"], torch.tensor(64.0))
    assert 0 < losses["rpn_num_pos"].item() <= 16  # image 1 has a few positives, image 0 none (mean over images)
    assert torch.isfinite(losses["loss_rpn_cls"]) and losses["loss_rpn_box"].item() > 0
    _, _, empty = rpn(feats, torch.tensor([[128, 128], [128, 128]]), [torch.zeros(0, 4)] * 2)
    assert empty["loss_rpn_box"].item() == 0 and empty["rpn_num_pos"].item() == 0
    # All logits ~0 -> BCE log(2) per sampled anchor, summed / (N * 64) with 128 sampled: exactly log 2.
    zero = _rpn(batch_size_per_image=64).train()
    torch.nn.init.zeros_(zero.head.objectness.weight)
    torch.nn.init.zeros_(zero.head.objectness.bias)
    _, _, z = zero(feats, torch.tensor([[128, 128], [128, 128]]), [torch.zeros(0, 4)] * 2)
    torch.testing.assert_close(z["loss_rpn_cls"], torch.log(torch.tensor(2.0)))
    (empty["loss_rpn_cls"] + empty["loss_rpn_box"]).backward()
    assert feats.grad is not None and torch.isfinite(feats.grad).all()


def test_bf16_autocast_keeps_boxes_and_losses_float32() -> None:
    rpn = _rpn().train()
    gt = [torch.tensor([[8.0, 8.0, 40.0, 40.0]]), torch.tensor([[50.0, 20.0, 120.0, 90.0]])]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        props, _, losses = rpn(_feats(), torch.tensor([[128, 128], [128, 128]]), gt)
    assert all(p.dtype == torch.float32 for p in props)
    assert losses["loss_rpn_cls"].dtype == torch.float32 and losses["loss_rpn_box"].dtype == torch.float32
    assert torch.isfinite(losses["loss_rpn_cls"]) and torch.isfinite(losses["loss_rpn_box"])
