"""Detection data loaders: the shared seeded loaders (:mod:`resbackbone.engine.sampling`) with list batches."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch.utils.data import DataLoader

from resbackbone.engine import sampling


def collate(batch: list[tuple[torch.Tensor, dict[str, Any]]]) -> tuple[list[torch.Tensor], list[dict[str, Any]]]:
    """Detection batches stay lists: images of different sizes are padded by the model, not here."""
    return [b[0] for b in batch], [b[1] for b in batch]


def build_train_loader(
    dataset: Any,
    *,
    batch_size: int,
    seed: int,
    num_workers: int,
    num_replicas: int = 1,
    rank: int = 0,
    aspect_grouping: bool = True,
    start_iter: int = 0,
    seeded: bool = False,
    pin_memory: bool = False,
    repeat_factors: Sequence[float] | None = None,
) -> DataLoader:
    """An infinite loader of ``(images list of (3, H, W) uint8, targets list of dict)`` batches for one process.

    Batches follow :class:`resbackbone.engine.sampling.TrainBatchSampler` (iteration k is a pure function of
    ``(seed, k)``), aspect-ratio grouped from ``dataset.aspect_ratios()``; ``seeded`` draws each image's
    augmentation from ``(seed, iteration, slot)`` (what the trainer uses); ``repeat_factors`` (one per image,
    ``dataset.repeat_factors(t)``) repeats images of rare classes within each epoch. See
    :func:`resbackbone.engine.sampling.build_train_loader`.
    """
    return sampling.build_train_loader(
        dataset, batch_size=batch_size, seed=seed, num_workers=num_workers, num_replicas=num_replicas, rank=rank,
        start_iter=start_iter, aspect_ratios=dataset.aspect_ratios(), aspect_grouping=aspect_grouping,
        seeded=seeded, collate_fn=collate, pin_memory=pin_memory, repeat_factors=repeat_factors,
    )


def build_test_loader(
    dataset: Any, *, batch_size: int, num_workers: int, num_replicas: int = 1, rank: int = 0,
    generator: torch.Generator | None = None,
) -> DataLoader:
    """A finite, ordered loader over this process's contiguous shard of ``dataset`` (every index exactly once
    across ``num_replicas`` processes); no augmentation beyond what the dataset does in evaluation mode.
    ``generator``: the loader's own RNG for its workers' base seed (None: one draw of the global RNG per pass)."""
    return sampling.build_inference_loader(dataset, batch_size=batch_size, num_workers=num_workers,
                                           num_replicas=num_replicas, rank=rank, collate_fn=collate,
                                           generator=generator)
