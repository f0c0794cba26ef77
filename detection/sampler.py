"""Balanced positive / negative sampling of matched candidates, batched over images.

Shape shorthand: N images, A candidates per image.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .matcher import NEGATIVE, POSITIVE


def sample_balanced(
    labels: Tensor, batch_size_per_image: int, positive_fraction: float, generator: torch.Generator | None = None
) -> tuple[Tensor, Tensor]:
    """Pick up to ``batch_size_per_image * positive_fraction`` positives per image at random, and fill the rest
    of the ``batch_size_per_image`` with random negatives (fewer if an image has fewer).

    Args:
        labels: ``(N, A)`` in {POSITIVE, NEGATIVE, IGNORE}.
    Returns:
        ``(pos_mask, neg_mask)``, both ``(N, A)`` bool.
    """
    n, a = labels.shape
    pos = labels == POSITIVE
    neg = labels == NEGATIVE
    num_pos_max = int(batch_size_per_image * positive_fraction)
    num_pos = pos.sum(dim=1).clamp(max=num_pos_max)  # (N,)
    num_neg = (batch_size_per_image - num_pos).clamp(min=0).minimum(neg.sum(dim=1))
    rand = torch.rand(n, a, device=labels.device, generator=generator)
    pos_mask = _take_random(pos, rand, num_pos)
    neg_mask = _take_random(neg, rand, num_neg)
    return pos_mask, neg_mask


def _take_random(eligible: Tensor, rand: Tensor, count: Tensor) -> Tensor:
    """``count[i]`` random True entries of ``eligible[i]`` (``count[i]`` <= number eligible)."""
    keys = torch.where(eligible, rand, torch.full_like(rand, 2.0))  # ineligible sort last
    order = keys.argsort(dim=1)  # (N, A)
    ranks = torch.empty_like(order)
    ranks.scatter_(1, order, torch.arange(order.shape[1], device=order.device).expand_as(order))
    return (ranks < count[:, None]) & eligible
