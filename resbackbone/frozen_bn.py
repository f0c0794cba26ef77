"""Freezing by structure: whole stages stop training, and their BatchNorm layers become frozen affine maps; and
folding those affine maps into the preceding convolutions for inference.

We use ``torchvision.ops.FrozenBatchNorm2d`` (buffers ``weight, bias, running_mean, running_var``, same state
dict keys as ``nn.BatchNorm2d`` minus ``num_batches_tracked``) rather than re-implementing it.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torchvision.ops import FrozenBatchNorm2d

__all__ = ["FrozenBatchNorm2d", "convert_frozen_batchnorm", "fold_batchnorm", "freeze_module"]


def convert_frozen_batchnorm(module: nn.Module) -> nn.Module:
    """Return ``module`` with every ``BatchNorm2d`` replaced by a ``FrozenBatchNorm2d`` holding its statistics.

    The conversion is in place for children; if ``module`` itself is a BatchNorm2d a new module is returned.
    In eval mode the result computes exactly what the BatchNorm2d computed.
    """
    if isinstance(module, nn.BatchNorm2d):
        frozen = FrozenBatchNorm2d(module.num_features, eps=module.eps)
        if module.affine:
            frozen.weight.copy_(module.weight.detach())
            frozen.bias.copy_(module.bias.detach())
        if module.track_running_stats:
            frozen.running_mean.copy_(module.running_mean)
            frozen.running_var.copy_(module.running_var)
        return frozen.to(module.weight.device if module.affine else frozen.weight.device)
    for name, child in module.named_children():
        new_child = convert_frozen_batchnorm(child)
        if new_child is not child:
            setattr(module, name, new_child)
    return module


def freeze_module(module: nn.Module) -> nn.Module:
    """Stop all training of ``module``: no parameter gets a gradient and BatchNorm statistics stop moving."""
    for p in module.parameters():
        p.requires_grad_(False)
    return convert_frozen_batchnorm(module)


def _bn_affine(bn: nn.Module) -> tuple[Tensor, Tensor] | None:
    """(scale, shift) with ``bn(x) == x * scale + shift`` per channel, for frozen or eval-mode BatchNorm."""
    if isinstance(bn, FrozenBatchNorm2d):
        scale = bn.weight * (bn.running_var + bn.eps).rsqrt()
        return scale, bn.bias - bn.running_mean * scale
    if isinstance(bn, nn.BatchNorm2d) and not bn.training and bn.running_var is not None:
        w = bn.weight if bn.weight is not None else torch.ones_like(bn.running_var)
        b = bn.bias if bn.bias is not None else torch.zeros_like(bn.running_mean)
        scale = w * (bn.running_var + bn.eps).rsqrt()
        return scale, b - bn.running_mean * scale
    return None


@torch.no_grad()
def fold_batchnorm(model: nn.Module) -> int:
    """Fold every normalization layer that directly follows a convolution into that convolution, in place.

    For inference only (the model must be in eval mode): ``bn(conv(x)) == conv'(x)`` with ``conv'.weight =
    conv.weight * scale`` and ``conv'.bias = conv.bias * scale + shift``, and the norm becomes ``nn.Identity``.
    It saves frozen BN's per-channel multiply and add (see benchmarks/RESULTS.md for measured speed-ups) and
    removes the ops an exported graph would carry. "Directly follows" means: the next child registered in the
    same parent after a ``Conv2d`` (the order every ResNet block, the stem and the projection shortcuts are
    built in). Returns the number of folded layers.
    """
    if model.training:
        raise ValueError("fold_batchnorm is for inference: call model.eval() first")
    folded = 0
    for parent in list(model.modules()):
        children = list(parent.named_children())
        for (_, conv), (bn_name, bn) in zip(children, children[1:]):
            if not isinstance(conv, nn.Conv2d):
                continue
            affine = _bn_affine(bn)
            if affine is None:
                continue
            scale, shift = affine
            bias = conv.bias if conv.bias is not None else torch.zeros_like(shift)
            conv.weight.mul_(scale.view(-1, 1, 1, 1))
            conv.bias = nn.Parameter(bias * scale + shift, requires_grad=False)
            setattr(parent, bn_name, nn.Identity())
            folded += 1
    return folded
