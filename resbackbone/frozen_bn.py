"""Freezing by structure: whole stages stop training, and their BatchNorm layers become frozen affine maps.

We use ``torchvision.ops.FrozenBatchNorm2d`` (buffers ``weight, bias, running_mean, running_var``, same state
dict keys as ``nn.BatchNorm2d`` minus ``num_batches_tracked``) rather than re-implementing it.
"""

from __future__ import annotations

from torch import nn
from torchvision.ops import FrozenBatchNorm2d

__all__ = ["FrozenBatchNorm2d", "convert_frozen_batchnorm", "freeze_module"]


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
