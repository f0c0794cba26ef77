"""Frozen BatchNorm: same output as BatchNorm2d in eval mode; freeze_at freezes exactly the requested stages."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from resbackbone import FrozenBatchNorm2d, ResNet, convert_frozen_batchnorm, resnet18
from tests.helpers import randomize_bn_statistics

pytestmark = pytest.mark.usefixtures("one_thread")


def test_frozen_bn_equals_batchnorm_in_eval() -> None:
    torch.manual_seed(0)
    bn = nn.BatchNorm2d(8)
    randomize_bn_statistics(bn)
    bn.eval()
    frozen = convert_frozen_batchnorm(bn)
    assert isinstance(frozen, FrozenBatchNorm2d)
    x = torch.randn(2, 8, 5, 5) * 3
    assert torch.allclose(frozen(x), bn(x), atol=1e-5)
    # Loading a BatchNorm2d state dict directly gives the same module (num_batches_tracked is dropped).
    loaded = FrozenBatchNorm2d(8)
    loaded.load_state_dict(bn.state_dict())
    assert torch.equal(loaded(x), frozen(x))


def test_frozen_bn_resnet_equals_eval_resnet() -> None:
    torch.manual_seed(0)
    model = resnet18(num_classes=10)
    randomize_bn_statistics(model)
    model.eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        want = model(x)
        frozen = convert_frozen_batchnorm(model)
        assert not any(isinstance(m, nn.BatchNorm2d) for m in frozen.modules())
        # Frozen BN has no train mode: the output is the same even with the model in train().
        assert torch.allclose(frozen.train()(x), want, atol=1e-4)


@pytest.mark.parametrize("out_features", [None, ("res4",)])
def test_freeze_at_2_freezes_exactly_stem_and_res2(out_features: tuple[str, ...] | None) -> None:
    torch.manual_seed(0)
    model = ResNet(18, num_classes=10, out_features=out_features, freeze_at=2).train()
    frozen_stats = {k: v.clone() for k, v in model.state_dict().items() if k.startswith(("stem.", "res2."))}
    res3_mean = model.res3[0].bn1.running_mean.clone()
    out = model(torch.randn(2, 3, 64, 64))
    loss = out.sum() if isinstance(out, torch.Tensor) else sum(v.sum() for v in out.values())
    loss.backward()
    for name, p in model.named_parameters():
        frozen = name.startswith(("stem.", "res2."))
        assert p.requires_grad != frozen, name
        assert (p.grad is None) == frozen, name
        if not frozen:
            assert p.grad.abs().sum() > 0, name  # every trainable parameter really gets a gradient
    # Frozen stages: FrozenBatchNorm2d only, and a train-mode forward leaves their statistics untouched.
    for stage in (model.stem, model.res2):
        norms = [m for m in stage.modules() if isinstance(m, (nn.BatchNorm2d, FrozenBatchNorm2d))]
        assert norms and all(isinstance(m, FrozenBatchNorm2d) for m in norms)
    for k, v in model.state_dict().items():
        if k in frozen_stats:
            assert torch.equal(v, frozen_stats[k]), k
    # The next stage still trains its BatchNorm statistics.
    assert isinstance(model.res3[0].bn1, nn.BatchNorm2d)
    assert not torch.equal(model.res3[0].bn1.running_mean, res3_mean)
