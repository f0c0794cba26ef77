"""detection.predictor: the Predictor on the shared tiny ResNet-18 C4 detector equals the plain model (exact
settings); its fast defaults (BatchNorm folded, channels_last) keep the detections; image listing."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from detection.config import load_detection_config
from detection.faster_rcnn import FasterRCNN, build_faster_rcnn
from detection.predictor import Predictor, list_images
from detection.tta import resize_for_test
from resbackbone.errors import ConfigError
from tests.helpers import BOX_TOL_PX, SCORE_TOL, TINY_CLASSES, TINY_DETECTOR, noise_image


def test_list_images_single_file(tmp_path: Path) -> None:
    f = tmp_path / "x.jpg"
    f.write_bytes(b"")
    assert list_images(f) == [f]


def test_predictor_without_tta_is_exactly_the_plain_model(tiny_detector: FasterRCNN) -> None:
    image = noise_image(80, 120, 3)  # resized to 64 x 96 by the test resize
    got = Predictor(tiny_detector, min_size=64, max_size=96, device="cpu", exact=True)([image])[0]
    with torch.inference_mode():
        tensor = resize_for_test(image, 64, 96)
        assert tuple(tensor.shape) == (3, 64, 96)
        ref = tiny_detector([tensor], orig_sizes=[(80, 120)])[0]
    assert len(ref["boxes"]) > 0
    for key in ("boxes", "scores", "labels"):
        assert torch.equal(got[key], ref[key]), key


@pytest.mark.parametrize("norm", ["bn", "frozen_bn"])
def test_fold_batchnorm_keeps_detections(norm: str) -> None:
    from torch import nn
    from torchvision.ops import FrozenBatchNorm2d

    from resbackbone.frozen_bn import fold_batchnorm

    cfg = load_detection_config(None, [*TINY_DETECTOR, f"model.backbone.norm={norm}"])
    torch.manual_seed(1)
    model = build_faster_rcnn(cfg.model, class_names=TINY_CLASSES)
    with torch.no_grad():  # non-trivial statistics, so that folding has something to get wrong
        for m in model.modules():
            if isinstance(m, (nn.BatchNorm2d, FrozenBatchNorm2d)):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.data.uniform_(0.5, 1.5)
    model.eval()
    image = noise_image(64, 96, 9)
    plain = Predictor(model, min_size=64, max_size=96, device="cpu", fuse_bn=False, channels_last=False)([image])[0]
    fused_predictor = Predictor(model, min_size=64, max_size=96, device="cpu", fuse_bn=True, channels_last=False)
    fused = fused_predictor([image])[0]
    n_norm = sum(isinstance(m, (nn.BatchNorm2d, FrozenBatchNorm2d)) for m in model.modules())
    assert n_norm > 0  # the caller's model is untouched
    assert not any(isinstance(m, (nn.BatchNorm2d, FrozenBatchNorm2d)) for m in fused_predictor.model.modules())
    assert len(plain["boxes"]) > 0 and len(fused["boxes"]) == len(plain["boxes"])
    torch.testing.assert_close(fused["boxes"], plain["boxes"], atol=BOX_TOL_PX, rtol=0)
    torch.testing.assert_close(fused["scores"], plain["scores"], atol=SCORE_TOL, rtol=0)
    assert torch.equal(fused["labels"], plain["labels"])
    with pytest.raises(ValueError, match="eval"):
        fold_batchnorm(model.train())


def test_test_size_override_and_no_resampling_at_the_own_size(tiny_checkpoint: Path) -> None:
    own = Predictor.from_checkpoint(tiny_checkpoint, device="cpu")
    assert (own.min_size, own.max_size) == (64, 96)  # the checkpoint's data.min/max_size_test
    p = Predictor.from_checkpoint(tiny_checkpoint, device="cpu", min_size=50, max_size=80)
    assert (p.min_size, p.max_size) == (50, 80)
    assert Predictor.from_checkpoint(tiny_checkpoint, device="cpu", max_size=200).min_size == 64
    with pytest.raises(ConfigError, match="--min-size 100 --max-size 96"):
        Predictor.from_checkpoint(tiny_checkpoint, device="cpu", min_size=100)
    # An image whose sides already fit is passed through untouched (no interpolation round trip).
    image = noise_image(50, 70, 1)
    assert torch.equal(resize_for_test(image, 50, 70), torch.from_numpy(image).permute(2, 0, 1))
    assert torch.equal(resize_for_test(image, 50, 1000), torch.from_numpy(image).permute(2, 0, 1))
    assert tuple(resize_for_test(image, 60, 1000).shape) == (3, 60, 84)


@pytest.mark.parametrize("arch", ["C4", "DC5", "FPN"])
def test_fast_defaults_stay_within_a_thousandth_of_a_pixel(arch: str, one_thread: None) -> None:
    """The default Predictor (BN folded into the convolutions, channels_last weights; no bf16 on a CPU without bf16
    instructions) gives the plain model's detections: boxes within 1e-3 px, scores within 1e-4, on non-trivial BN
    statistics; the caller's model keeps its BN layers and memory format."""
    from torch import nn
    from torchvision.ops import FrozenBatchNorm2d

    from detection.predictor import cpu_has_bf16
    from tests.helpers import assert_same_detections, randomize_bn_statistics, tiny_config

    torch.manual_seed(0)
    model = build_faster_rcnn(tiny_config(arch), class_names=TINY_CLASSES).eval()
    randomize_bn_statistics(model)
    image = noise_image(90, 140, 3)  # 64 x 100 at the test size: padded, not a multiple of 32
    exact = Predictor(model, min_size=64, max_size=120, device="cpu", exact=True)
    assert (exact.fuse_bn, exact.channels_last, exact.bf16) == (False, False, False) and exact.model is model
    fast = Predictor(model, min_size=64, max_size=120, device="cpu")
    assert (fast.fuse_bn, fast.channels_last, fast.bf16) == (True, True, cpu_has_bf16())
    assert not any(isinstance(m, (nn.BatchNorm2d, FrozenBatchNorm2d)) for m in fast.model.modules())
    assert any(isinstance(m, (nn.BatchNorm2d, FrozenBatchNorm2d)) for m in model.modules())
    conv = next(m for m in fast.model.modules() if isinstance(m, nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    ref = exact([image])[0]
    assert len(ref["boxes"]) > 0
    got = Predictor(model, min_size=64, max_size=120, device="cpu", bf16=False)([image])[0]
    assert_same_detections(got, ref, f"{arch} folded + channels_last", box_tol=1e-3, score_tol=SCORE_TOL)
