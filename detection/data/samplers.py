"""Batch samplers whose output is a pure function of ``(seed, iteration)``: exact resume, distributed sharding.

Every process builds the same global batch for iteration k (``num_replicas * batch_size`` indices) and takes
its own slice, so the processes split the data without communicating and a resumed run starts at iteration k
without touching the data of iterations < k.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch


class TrainBatchSampler:
    """Infinite per-process index batches; epochs are seeded permutations, optionally grouped by orientation.

    With ``aspect_grouping`` every global batch holds only landscape (w >= h) or only portrait images, so padding
    wastes little (Detectron2's AspectRatioGroupedDataset, made deterministic).
    """

    def __init__(
        self,
        aspect_ratios: Sequence[float],
        batch_size: int,
        *,
        seed: int,
        num_replicas: int = 1,
        rank: int = 0,
        aspect_grouping: bool = True,
        start_iter: int = 0,
    ) -> None:
        if len(aspect_ratios) == 0:
            raise ValueError("TrainBatchSampler got an empty dataset")
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} not in [0, {num_replicas})")
        self.groups = torch.tensor([0 if a >= 1.0 else 1 for a in aspect_ratios]) if aspect_grouping else None
        self.n = len(aspect_ratios)
        self.batch_size = batch_size
        self.global_batch = batch_size * num_replicas
        self.seed = seed
        self.rank = rank
        self.start_iter = start_iter

    def _epoch_batches(self, epoch: int) -> list[list[int]]:
        """All global batches of one epoch, in order: a fresh seeded permutation split into same-orientation
        batches; each group's partial trailing batch is dropped (those images come back in later epochs)."""
        g = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
        perm = torch.randperm(self.n, generator=g)
        if self.groups is None:
            chunks = [perm]
        else:
            chunks = [perm[self.groups[perm] == k] for k in (0, 1)]
        batches = []
        for c in chunks:
            full = len(c) // self.global_batch * self.global_batch
            batches += [c[i : i + self.global_batch].tolist() for i in range(0, full, self.global_batch)]
        if not batches:  # fewer images than one global batch: sample with replacement from the permutation
            idx = perm.repeat(self.global_batch // self.n + 1)[: self.global_batch]
            batches = [idx.tolist()]
        order = torch.randperm(len(batches), generator=g).tolist()
        return [batches[i] for i in order]

    def global_batch_at(self, iteration: int) -> list[int]:
        """The global batch of iteration ``iteration`` (0-based)."""
        epoch, offset = 0, iteration
        while True:
            batches = self._epoch_batches(epoch)
            if offset < len(batches):
                return batches[offset]
            offset -= len(batches)
            epoch += 1

    def __iter__(self) -> Iterator[list[int]]:
        epoch, offset = 0, self.start_iter
        batches = self._epoch_batches(epoch)
        while offset >= len(batches):  # skip whole epochs without touching data
            offset -= len(batches)
            epoch += 1
            batches = self._epoch_batches(epoch)
        lo = self.rank * self.batch_size
        while True:
            for b in batches[offset:]:
                yield b[lo : lo + self.batch_size]
            offset = 0
            epoch += 1
            batches = self._epoch_batches(epoch)


class InferenceSampler:
    """Contiguous, disjoint shards of ``range(n)`` covering every index exactly once."""

    def __init__(self, n: int, num_replicas: int = 1, rank: int = 0) -> None:
        per, extra = divmod(n, num_replicas)
        self.start = rank * per + min(rank, extra)
        self.stop = self.start + per + (1 if rank < extra else 0)

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.start, self.stop))

    def __len__(self) -> int:
        return self.stop - self.start
