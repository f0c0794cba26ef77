"""detection.data.base: seeded items (DetectionDataset.get_item_seeded) are reproducible and vary the scale."""

from __future__ import annotations

from pathlib import Path

import torch


def test_seeded_items_are_reproducible(synthetic_root: Path) -> None:
    from detection.data import DetectionTransform, build_dataset
    from resbackbone.engine.sampling import sample_seed

    ds = build_dataset("synthetic-train", synthetic_root, train=True,
                       transform=DetectionTransform(min_size=(64, 80, 96), max_size=160, train=True, photometric=True))
    seeds = [sample_seed(0, it, slot) for it in range(4) for slot in range(2)]
    assert len(set(seeds)) == len(seeds)
    for s in seeds[:4]:
        a, ta = ds.get_item_seeded(1, s)
        b, tb = ds.get_item_seeded(1, s)
        assert torch.equal(a, b) and torch.equal(ta["boxes"], tb["boxes"])
    sizes = {ds.get_item_seeded(1, s)[0].shape for s in seeds}
    assert len(sizes) > 1, "multi-scale training must vary the size across seeds"
