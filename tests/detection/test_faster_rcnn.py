"""detection.faster_rcnn: the forward contract, degenerate inputs, gradients, building from config (DC5, timm and
pretrained trunks), learning a toy set."""

from __future__ import annotations

import copy

import pytest
import torch

from detection import FasterRCNN, build_faster_rcnn
from resbackbone.pixels import TORCHVISION_PIXELS
from tests.helpers import BOX_TOL_PX, SCORE_TOL, randomize_bn_statistics, tiny_config

LOSS_KEYS = {"loss_rpn_cls", "loss_rpn_box", "loss_cls", "loss_box_reg"}


def _images(n: int = 2, size: int = 64, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, 256, (3, size, size - 8 * i), dtype=torch.uint8, generator=g) for i in range(n)]


def _target(boxes: list[list[float]], labels: list[int]) -> dict[str, torch.Tensor]:
    return {"boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4), "labels": torch.tensor(labels).long()}


@pytest.fixture(scope="module")
def c4_model() -> FasterRCNN:
    torch.manual_seed(0)
    return build_faster_rcnn(tiny_config(), class_names=["circle", "square", "triangle"])


def test_build_attributes(c4_model: FasterRCNN) -> None:
    assert c4_model.num_classes == 3
    assert c4_model.class_names == ("circle", "square", "triangle")
    assert c4_model.pixel_spec == TORCHVISION_PIXELS
    assert build_faster_rcnn(tiny_config()).class_names == ("class0", "class1", "class2")
    with pytest.raises(ValueError, match="2 class names"):
        build_faster_rcnn(tiny_config(), class_names=["a", "b"])
    with pytest.raises(ValueError, match="resnet7"):
        cfg = tiny_config(name="resnet7")
        build_faster_rcnn(cfg)
    # From scratch: trainable BN everywhere (FrozenBN only with pretrained weights).
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in c4_model.roi_heads.box_head.modules())


def test_training_losses_gradients_and_inputs_untouched(c4_model: FasterRCNN) -> None:
    model = copy.deepcopy(c4_model).train()
    images = _images()
    targets = [_target([[4, 6, 30, 40], [20, 20, 60, 50]], [0, 2]), _target([[10, 10, 40, 30]], [1])]
    images_before = [im.clone() for im in images]
    targets_before = copy.deepcopy(targets)
    out = model(images, targets)
    assert LOSS_KEYS <= set(out)
    stats = set(out) - LOSS_KEYS
    assert stats and not any(k.startswith("loss_") for k in stats)
    for k in LOSS_KEYS:
        assert out[k].dim() == 0 and torch.isfinite(out[k]) and out[k].requires_grad, k
    assert all(not out[k].requires_grad for k in stats)
    sum(out[k] for k in LOSS_KEYS).backward()
    no_grad = [n for n, p in model.named_parameters() if p.requires_grad and (p.grad is None or not p.grad.abs().sum())]
    assert no_grad == []
    for a, b in zip(images, images_before):
        assert torch.equal(a, b)
    for a, b in zip(targets, targets_before):
        assert all(torch.equal(a[k], b[k]) for k in a)


def test_frozen_parameters_get_no_gradient() -> None:
    torch.manual_seed(0)
    model = build_faster_rcnn(tiny_config(freeze_at=2)).train()
    body = model.trunk.body
    frozen = [p for m in (body.stem, body.res2) for p in m.parameters()]
    assert frozen and all(not p.requires_grad for p in frozen)
    out = model(_images(1), [_target([[4, 6, 30, 40]], [1])])
    sum(out[k] for k in LOSS_KEYS).backward()
    assert all(p.grad is None for p in frozen)
    assert all(p.grad is not None for p in body.res4.parameters())


def test_empty_and_half_empty_targets(c4_model: FasterRCNN) -> None:
    model = copy.deepcopy(c4_model).train()
    empty = _target([], [])
    out = model(_images(), [empty, empty])
    assert all(torch.isfinite(out[k]) for k in LOSS_KEYS)
    assert out["loss_rpn_box"].item() == 0 and out["loss_box_reg"].item() == 0
    assert out["loss_rpn_cls"].item() > 0 and out["loss_cls"].item() > 0
    sum(out[k] for k in LOSS_KEYS).backward()
    out = model(_images(), [empty, _target([[2, 2, 5, 6]], [2])])  # second image: one tiny box
    assert all(torch.isfinite(out[k]) for k in LOSS_KEYS)
    assert out["loss_box_reg"].item() > 0 and out["rpn_num_pos"].item() > 0


def test_bad_targets_raise(c4_model: FasterRCNN) -> None:
    model = copy.deepcopy(c4_model).train()
    with pytest.raises(ValueError, match=r"labels must be in \[0, 3\)"):
        model(_images(1), [_target([[1, 1, 9, 9]], [3])])
    with pytest.raises(ValueError, match="needs targets"):
        model(_images(1))
    with pytest.raises(ValueError, match=r"must be \(3, H, W\)"):
        model([torch.zeros(64, 64)], [_target([], [])])


def test_inference_format_and_rescaling(c4_model: FasterRCNN) -> None:
    model = copy.deepcopy(c4_model).eval()
    model.roi_heads.score_thresh = 0.0  # an untrained model: keep low-score boxes so there is something to check
    images = _images()
    with torch.no_grad():
        dets = model(images)
        scaled = model(images, orig_sizes=[(128, 128), (100, 50)])
    assert len(dets) == 2
    for det, im in zip(dets, images):
        assert det["boxes"].shape[1] == 4 and det["boxes"].dtype == torch.float32
        assert det["labels"].dtype == torch.int64 and det["scores"].shape == det["labels"].shape
        assert det["boxes"].shape[0] > 0 and det["boxes"].shape[0] <= model.roi_heads.detections_per_image
        assert ((det["labels"] >= 0) & (det["labels"] < 3)).all()
        assert (det["boxes"][:, 2] <= im.shape[2] + 1e-4).all() and (det["boxes"][:, 3] <= im.shape[1] + 1e-4).all()
        assert (det["scores"][:-1] >= det["scores"][1:]).all()
    torch.testing.assert_close(scaled[0]["boxes"], dets[0]["boxes"] * 2)
    sx, sy = 50 / images[1].shape[2], 100 / images[1].shape[1]
    expect = dets[1]["boxes"] * torch.tensor([sx, sy, sx, sy])
    expect = torch.minimum(expect, torch.tensor([50.0, 100.0, 50.0, 100.0]))
    torch.testing.assert_close(scaled[1]["boxes"], expect)


def test_zero_proposals_give_empty_detections(c4_model: FasterRCNN) -> None:
    model = copy.deepcopy(c4_model).eval()
    model.rpn.min_box_size = 1e6  # every proposal is "too small"
    with torch.no_grad():
        dets = model(_images())
    for det in dets:
        assert det["boxes"].shape == (0, 4) and det["scores"].shape == (0,) and det["labels"].shape == (0,)
        assert det["labels"].dtype == torch.int64


@pytest.mark.parametrize("arch", ["C4", "DC5", "FPN"])
def test_detections_do_not_depend_on_what_an_image_is_batched_with(arch: str,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """An image alone and in a batch with a larger and a portrait image: the same detections (1e-3 px, 1e-4).
    Batched naively (one padded batch), the padding leaks into its features, anchors and RoIAlign samples."""
    torch.manual_seed(0)
    model = build_faster_rcnn(tiny_config(arch), class_names=["circle", "square", "triangle"]).eval()
    randomize_bn_statistics(model)
    model.roi_heads.score_thresh = 0.0
    g = torch.Generator().manual_seed(3)
    image, larger, portrait = (torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=g)
                               for h, w in ((70, 90), (128, 128), (120, 60)))
    with torch.no_grad():
        alone = model([image])[0]
        batched = [model([larger, image, portrait])[1], model([image, portrait], orig_sizes=[(70, 90)] * 2)[0]]
    assert len(alone["boxes"]) > 0
    for got in batched:
        assert torch.equal(got["labels"], alone["labels"])
        torch.testing.assert_close(got["boxes"], alone["boxes"], atol=1e-3, rtol=0)
        torch.testing.assert_close(got["scores"], alone["scores"], atol=1e-4, rtol=0)
    # The claim can fail: one padded batch for all three moves this image's detections.
    monkeypatch.setattr(model, "padding_groups", lambda images: [list(range(len(images)))])
    with torch.no_grad():
        naive = model([larger, image, portrait])[1]
    assert len(naive["boxes"]) != len(alone["boxes"]) or not torch.allclose(naive["boxes"], alone["boxes"], atol=1e-3)


def test_batch_equals_single_image_inference(c4_model: FasterRCNN) -> None:
    """Padding to the batch size and batching RoIs does not change an image's detections."""
    model = copy.deepcopy(c4_model).eval()
    model.roi_heads.score_thresh = 0.0
    images = _images(2, size=64)
    with torch.no_grad():
        both = model(images)
        alone = model(images[:1])
    torch.testing.assert_close(both[0]["boxes"], alone[0]["boxes"], atol=BOX_TOL_PX, rtol=0)
    torch.testing.assert_close(both[0]["scores"], alone[0]["scores"], atol=SCORE_TOL, rtol=0)


@pytest.mark.parametrize("arch", ["DC5", "FPN"])
def test_dc5_and_fpn_train_and_infer(arch: str) -> None:
    torch.manual_seed(0)
    model = build_faster_rcnn(tiny_config(arch))
    assert model.trunk.out_channels == (512 if arch == "DC5" else 256) and model.roi_heads.box_head.out_channels == 64
    out = model.train()(_images(2), [_target([[4, 6, 30, 40]], [1]), _target([[20, 8, 60, 50]], [2])])
    assert all(torch.isfinite(out[k]) for k in LOSS_KEYS) and out["loss_cls"] > 0
    sum(out[k] for k in LOSS_KEYS).backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    dets = model.eval()(_images(1))
    assert dets[0]["boxes"].shape[1] == 4


@pytest.mark.parametrize("arch", ["C4", "DC5", "FPN", "timm"])
def test_every_trunk_gives_the_channels_and_strides_it_states(arch: str) -> None:
    """The contract the RPN and RoI heads rely on: each named map has the advertised channels and stride."""
    if arch == "timm":
        pytest.importorskip("timm")
    cfg = tiny_config("C4", name="timm:resnet10t") if arch == "timm" else tiny_config(arch)
    trunk = build_faster_rcnn(cfg).trunk.eval()
    h, w = 64, 96
    with torch.no_grad():
        maps = trunk(torch.randn(2, 3, h, w))
    shapes = trunk.output_shape()
    assert list(maps) == list(shapes) and len(maps) == (5 if arch == "FPN" else 1)
    for name, x in maps.items():
        channels, stride = shapes[name]
        assert x.shape == (2, channels, -(-h // stride), -(-w // stride)), name


def test_timm_backbone() -> None:
    pytest.importorskip("timm")
    torch.manual_seed(0)
    model = build_faster_rcnn(tiny_config(name="timm:resnet10t"))
    assert model.trunk.out_channels == 256
    out = model.train()(_images(1), [_target([[4, 6, 30, 40]], [1])])
    sum(out[k] for k in LOSS_KEYS).backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    dets = model.eval()(_images(1))
    assert dets[0]["boxes"].shape[1] == 4


def draw_shapes(n: int, size: int = 128, seed: int = 0) -> tuple[list[torch.Tensor], list[dict[str, torch.Tensor]]]:
    """``n`` noise images with 1-3 non-overlapping filled shapes each: 0 red rectangle, 1 green ellipse,
    2 blue triangle (apex up); boxes are the shapes' exact pixel extents (XYXY, no +1)."""
    g = torch.Generator().manual_seed(seed)
    colours = torch.tensor([[230.0, 40.0, 40.0], [40.0, 200.0, 60.0], [60.0, 80.0, 240.0]])
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    images, targets = [], []
    for _ in range(n):
        img = torch.rand(3, size, size, generator=g) * 90 + 60
        boxes: list[torch.Tensor] = []
        labels: list[int] = []
        for _ in range(int(torch.randint(1, 4, (1,), generator=g))):
            for _attempt in range(20):  # rejection-sample a place that overlaps nothing drawn yet
                w, h = torch.randint(24, 56, (2,), generator=g).tolist()
                x1 = int(torch.randint(0, size - w, (1,), generator=g))
                y1 = int(torch.randint(0, size - h, (1,), generator=g))
                box = torch.tensor([x1, y1, x1 + w, y1 + h], dtype=torch.float32)
                overlap = [(torch.minimum(box[2:], o[2:]) - torch.maximum(box[:2], o[:2])).clamp(min=0) for o in boxes]
                if not any(o.prod() > 0 for o in overlap):
                    break
            c = int(torch.randint(0, 3, (1,), generator=g))
            if c == 0:
                mask = (xx >= x1) & (xx < x1 + w) & (yy >= y1) & (yy < y1 + h)
            elif c == 1:
                mask = ((xx + 0.5 - x1 - w / 2) / (w / 2)) ** 2 + ((yy + 0.5 - y1 - h / 2) / (h / 2)) ** 2 <= 1
            else:
                mask = (yy >= y1) & (yy < y1 + h) & ((xx + 0.5 - x1 - w / 2).abs() <= (yy + 1 - y1) * w / (2 * h))
            img[:, mask] = colours[c][:, None]
            boxes.append(box)
            labels.append(c)
        images.append(img.round().to(torch.uint8))
        targets.append({"boxes": torch.stack(boxes), "labels": torch.tensor(labels)})
    return images, targets


@pytest.mark.slow
def test_overfits_synthetic_shapes_to_high_map() -> None:
    """End to end: a from-scratch ResNet-18 C4 detector learns 4 images of 3 shape classes to VOC mAP@0.5 >= 0.9.

    Evaluated every 10 steps, stopping at the first pass; 80 steps (320 image-iterations) is the bound. In
    development it passed at 40 steps."""
    from detection.evaluation.voc import evaluate_detections

    torch.manual_seed(0)
    cfg = tiny_config()
    cfg.rpn.pre_nms_topk_test = 300
    cfg.rpn.post_nms_topk_test = 50
    cfg.rpn.post_nms_topk_train = 100
    cfg.roi_heads.batch_size_per_image = 32
    model = build_faster_rcnn(cfg, class_names=["rectangle", "ellipse", "triangle"])
    images, targets = draw_shapes(4)
    gt = [{**t, "difficult": torch.zeros(len(t["labels"]), dtype=torch.bool)} for t in targets]
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=0.02, momentum=0.9, weight_decay=1e-4)
    best = 0.0
    for step in range(1, 81):
        model.train()
        for group in opt.param_groups:
            group["lr"] = 0.02 * min(1.0, step / 10)  # linear warm-up: from-scratch BN nets diverge without it
        losses = model(images, targets)
        loss = sum(v for k, v in losses.items() if k.startswith("loss_"))
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 10 == 0:
            model.eval()
            with torch.no_grad():
                dets = model(images)
            best = evaluate_detections(gt, dets, model.class_names)["mAP"]
            if best >= 0.9:
                break
    assert best >= 0.9, f"mAP@0.5 {best:.3f} after {step} steps"


def test_pretrained_weights_load_into_trunk_and_res5(monkeypatch: pytest.MonkeyPatch) -> None:
    """The weights path: stem..res4 into the trunk, res5.* into the C4 head, FrozenBN, the weights' pixel spec.

    ``resbackbone.weights`` is replaced by a stand-in serving a ResNet-18 state dict in our key names."""
    import sys
    import types

    from torchvision.ops import FrozenBatchNorm2d

    import resbackbone.weights as real_weights
    from resbackbone.pixels import PixelSpec
    from resbackbone.resnet import ResNet

    torch.manual_seed(1)
    source = ResNet(18).state_dict()
    spec = PixelSpec(mean=(103.5, 116.3, 123.7), std=(1.0, 1.0, 1.0), channel_order="BGR")
    calls: list[tuple[str, int]] = []

    def pretrained_state_dict(weights: str, depth: int) -> tuple[dict, types.SimpleNamespace]:
        calls.append((weights, depth))
        return dict(source), types.SimpleNamespace(pixel_spec=spec, stride_in_1x1=False)

    fake = types.ModuleType("resbackbone.weights")
    fake.pretrained_state_dict = pretrained_state_dict  # type: ignore[attr-defined]
    fake.load_converted = real_weights.load_converted  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "resbackbone.weights", fake)
    cfg = tiny_config(freeze_at=2)
    cfg.backbone.weights = "some-weights.pth"
    model = build_faster_rcnn(cfg)
    assert calls and calls[0] == ("some-weights.pth", 18)
    assert model.pixel_spec == spec
    state = model.state_dict()
    for key in ("stem.conv1.weight", "res2.0.conv1.weight", "res4.1.conv2.weight", "res4.0.bn1.running_var"):
        assert torch.equal(state["trunk.body." + key], source[key]), key
    assert torch.equal(state["roi_heads.box_head.res5.0.conv1.weight"], source["res5.0.conv1.weight"])
    # norm "auto" with weights -> FrozenBN everywhere in the trunk and the res5 head.
    norms = [m for m in model.modules() if isinstance(m, (FrozenBatchNorm2d, torch.nn.BatchNorm2d))]
    assert norms and all(isinstance(m, FrozenBatchNorm2d) for m in norms)
    # Weights lacking backbone keys are an error that names them.
    del source["res4.0.conv1.weight"]
    with pytest.raises(ValueError, match=r"res4\.0\.conv1\.weight"):
        build_faster_rcnn(cfg)
