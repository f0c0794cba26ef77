"""Data loaders for training (infinite, deterministic, sharded) and inference (sharded, ordered)."""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from .samplers import InferenceSampler, TrainBatchSampler


def collate(batch: list[tuple[torch.Tensor, dict[str, Any]]]) -> tuple[list[torch.Tensor], list[dict[str, Any]]]:
    """Detection batches stay lists: images of different sizes are padded by the model, not here."""
    return [b[0] for b in batch], [b[1] for b in batch]


def _seed_worker(worker_id: int) -> None:
    # Library code that uses the global RNGs gets a per-worker seed derived from torch's.
    seed = torch.initial_seed() % 2**32
    random.seed(seed)
    np.random.seed(seed)  # noqa: NPY002 - the global legacy RNG is what data libraries use


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
) -> DataLoader:
    """An infinite loader of ``(images list of (3, H, W) uint8, targets list of dict)`` batches for one process.

    Batches follow :class:`TrainBatchSampler` (iteration k is a pure function of ``(seed, k)``; ``start_iter``
    resumes without loading earlier data). ``dataset`` needs ``aspect_ratios()``. Workers persist across epochs
    and seed numpy / random from torch's per-worker seed, so library code using the global RNGs is reproducible
    once torch's seed is fixed. An error raised in a worker re-raises in the main process with the same type and
    its message (which names the file).
    """
    sampler = TrainBatchSampler(
        dataset.aspect_ratios(), batch_size, seed=seed, num_replicas=num_replicas, rank=rank,
        aspect_grouping=aspect_grouping, start_iter=start_iter,
    )
    return DataLoader(
        dataset, batch_sampler=sampler, collate_fn=collate, num_workers=num_workers,
        persistent_workers=num_workers > 0, worker_init_fn=_seed_worker,
    )


def build_test_loader(
    dataset: Dataset, *, batch_size: int, num_workers: int, num_replicas: int = 1, rank: int = 0
) -> DataLoader:
    """A finite, ordered loader over this process's contiguous shard of ``dataset`` (every index exactly once
    across ``num_replicas`` processes); no augmentation beyond what the dataset does in evaluation mode."""
    sampler = InferenceSampler(len(dataset), num_replicas, rank)  # type: ignore[arg-type]
    return DataLoader(
        dataset, batch_size=batch_size, sampler=sampler, collate_fn=collate, num_workers=num_workers,
        worker_init_fn=_seed_worker,
    )
