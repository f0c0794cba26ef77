"""detection.sampler: balanced positive / negative sampling takes the right counts, uniformly at random."""

from __future__ import annotations

import torch

from detection.matcher import IGNORE, NEGATIVE, POSITIVE
from detection.sampler import sample_balanced


def test_sampler_counts_and_uniformity() -> None:
    g = torch.Generator().manual_seed(0)
    labels = torch.full((2, 1000), NEGATIVE, dtype=torch.int8)
    labels[0, :10] = POSITIVE  # few positives: all taken, negatives fill the rest
    labels[1, :400] = POSITIVE  # many positives: capped at 128
    labels[:, 990:] = IGNORE
    hits = torch.zeros(2, 1000)
    for _ in range(200):
        pos, neg = sample_balanced(labels, 256, 0.5, generator=g)
        assert pos.sum(1).tolist() == [10, 128] and neg.sum(1).tolist() == [246, 128]
        assert not (pos & neg).any() and not ((pos | neg) & (labels == IGNORE)).any()
        assert ((pos & (labels == POSITIVE)) == pos).all() and ((neg & (labels == NEGATIVE)) == neg).all()
        hits += pos.float() + neg.float()
    # Random, not "first k": every eligible positive of image 1 is chosen about 128/400 of the time.
    freq = hits[1, :400] / 200
    assert abs(freq.mean().item() - 0.32) < 0.01 and freq.min() > 0.15 and freq.max() < 0.5
    # Fewer negatives than asked for: take what there is.
    scarce = torch.full((1, 20), IGNORE, dtype=torch.int8)
    scarce[0, :3] = NEGATIVE
    pos, neg = sample_balanced(scarce, 256, 0.5)
    assert pos.sum() == 0 and neg.sum() == 3
