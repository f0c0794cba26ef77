"""Seeded sampling, the one scheme of both trainers: data order and augmentation are pure functions of the run.

* :class:`TrainBatchSampler`: every process builds the same global batch for iteration k (``num_replicas *
  batch_size`` indices) from ``(seed, k)`` and takes its own slice, so the processes split the data without
  communicating and a resumed run starts at iteration k without touching the data of iterations < k.
* :class:`SeededBatchSampler` + :class:`SeededDataset`: each image's augmentation is drawn from
  :func:`sample_seed` ``(seed, iteration, slot)``, never from a worker's RNG, so worker processes, their number
  and their seeds do not matter: resume is bit-identical with ``num_workers > 0``.

A checkpoint therefore only needs the iteration number as its "data position".
"""

from __future__ import annotations

import logging
import math
import os
import sys
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from typing import Any, Protocol

import torch
from torch.utils.data import Dataset

logger = logging.getLogger("resbackbone.engine.sampling")

# Extra 64-bit mixing constant so per-sample augmentation seeds of different runs / iterations do not collide.
_SEED_MIX = 0x9E3779B97F4A7C15


def sample_seed(seed: int, iteration: int, slot: int) -> int:
    """Augmentation seed of the ``slot``-th image of global micro-batch ``iteration`` (deterministic, 31 bits)."""
    h = (seed * 1_000_003 + iteration) * _SEED_MIX + slot * 2_654_435_761
    return int(h % (2**31 - 1))


class SeedableDataset(Protocol):
    """A dataset whose item ``index`` can be drawn with its random augmentation taken from ``seed``."""

    def __len__(self) -> int: ...

    def get_item_seeded(self, index: int, seed: int | None) -> Any: ...


class SeededDataset(Dataset):
    """Wraps a :class:`SeedableDataset` so that ``dataset[(index, seed)]`` is ``get_item_seeded(index, seed)``."""

    def __init__(self, dataset: SeedableDataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]) -> Any:
        index, seed = key
        return self.dataset.get_item_seeded(index, seed)


class SeededBatchSampler:
    """Turns the index batches of a :class:`TrainBatchSampler` into ``(index, sample_seed)`` batches.

    ``start_iter`` is the (micro-)batch number of the first batch the wrapped sampler yields; ``per_process`` and
    ``rank`` place this process's images in the global batch (slot = rank * per_process + position).
    """

    def __init__(self, sampler: Any, *, seed: int, start_iter: int, per_process: int, rank: int) -> None:
        self.sampler = sampler
        self.seed = seed
        self.start_iter = start_iter
        self.per_process = per_process
        self.rank = rank

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        base = self.rank * self.per_process
        for k, batch in enumerate(self.sampler, start=self.start_iter):
            yield [(int(i), sample_seed(self.seed, k, base + j)) for j, i in enumerate(batch)]


def class_image_frequencies(image_classes: Sequence[Iterable[int]]) -> dict[int, float]:
    """``{class: fraction of the images that hold it}`` over ``image_classes`` (per image, the classes of its
    boxes; images without any count in the denominator, as Detectron2 counts them)."""
    counts: dict[int, int] = {}
    for classes in image_classes:
        for c in set(classes):
            counts[int(c)] = counts.get(int(c), 0) + 1
    n = max(len(image_classes), 1)
    return {c: k / n for c, k in sorted(counts.items())}


def repeat_factors(image_classes: Sequence[Iterable[int]], threshold: float) -> list[float]:
    """Repeat-factor sampling (Gupta et al., LVIS, CVPR 2019, section 5; Detectron2's
    ``RepeatFactorTrainingSampler.repeat_factors_from_category_frequency``): image i is seen
    ``r_i = max over its classes c of max(1, sqrt(threshold / f_c))`` times per epoch on average, ``f_c`` the
    fraction of images holding class c (:func:`class_image_frequencies`). Images without boxes get 1."""
    if threshold <= 0:
        raise ValueError(f"the repeat-factor threshold must be > 0, got {threshold}")
    freq = class_image_frequencies(image_classes)
    per_class = {c: max(1.0, math.sqrt(threshold / f)) for c, f in freq.items()}
    return [max((per_class[int(c)] for c in classes), default=1.0) for classes in image_classes]


class TrainBatchSampler:
    """Infinite per-process index batches; epochs are seeded permutations, optionally grouped by orientation.

    With ``aspect_grouping`` every global batch holds only landscape (w >= h) or only portrait images, so padding
    wastes little (Detectron2's AspectRatioGroupedDataset, made deterministic).

    With ``repeat_factors`` (one float >= 1 per image, :func:`repeat_factors`) an epoch holds image i
    ``floor(r_i)`` times plus once more with probability ``r_i - floor(r_i)`` (stochastic rounding, drawn from the
    epoch's own ``(seed, epoch)`` generator before its permutation), so rare classes come round more often and the
    order stays a pure function of ``(seed, iteration)``: resume is exact.
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
        repeat_factors: Sequence[float] | None = None,
    ) -> None:
        if len(aspect_ratios) == 0:
            raise ValueError("TrainBatchSampler got an empty dataset")
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} not in [0, {num_replicas})")
        self.repeat_whole: torch.Tensor | None = None
        self.repeat_fraction: torch.Tensor | None = None
        if repeat_factors is not None:
            factors = torch.tensor([float(r) for r in repeat_factors], dtype=torch.float64)
            if len(factors) != len(aspect_ratios) or bool((factors < 1).any()):
                raise ValueError(f"repeat_factors must be one value >= 1 per image ({len(aspect_ratios)} images), "
                                 f"got {len(factors)} with minimum {float(factors.min()) if len(factors) else 'n/a'}")
            self.repeat_whole = factors.floor().long()
            self.repeat_fraction = factors - factors.floor()
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
        if self.repeat_whole is None or self.repeat_fraction is None:
            perm = torch.randperm(self.n, generator=g)
        else:
            # This epoch's copies of each image (stochastic rounding of its factor), then one permutation of them.
            copies = self.repeat_whole + (torch.rand(self.n, generator=g, dtype=torch.float64) < self.repeat_fraction)
            indices = torch.repeat_interleave(torch.arange(self.n), copies)
            perm = indices[torch.randperm(len(indices), generator=g)]
        if self.groups is None:
            chunks = [perm]
        else:
            chunks = [perm[self.groups[perm] == k] for k in (0, 1)]
        batches = []
        for c in chunks:
            full = len(c) // self.global_batch * self.global_batch
            batches += [c[i : i + self.global_batch].tolist() for i in range(0, full, self.global_batch)]
        if not batches:  # fewer images than one global batch: sample with replacement from the permutation
            idx = perm.repeat(self.global_batch // len(perm) + 1)[: self.global_batch]
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
    """Contiguous, disjoint shards of ``range(n)`` covering every index exactly once (evaluation)."""

    def __init__(self, n: int, num_replicas: int = 1, rank: int = 0) -> None:
        per, extra = divmod(n, num_replicas)
        self.start = rank * per + min(rank, extra)
        self.stop = self.start + per + (1 if rank < extra else 0)

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.start, self.stop))

    def __len__(self) -> int:
        return self.stop - self.start




def _seed_worker(worker_id: int) -> None:
    # Library code that uses the global RNGs gets a per-worker seed derived from torch's.
    import random

    import numpy as np

    seed = torch.initial_seed() % 2**32
    random.seed(seed)
    np.random.seed(seed)  # noqa: NPY002 - the global legacy RNG is what data libraries use
    # Threads: torch's worker loop already runs each worker with one intra-op thread, and OpenCV's count is set
    # to one before the fork (WorkerLoader): cv2.setNumThreads here, in a forked worker, deadlocked (futex wait)
    # once the parent had used OpenCV's pool, whose threads do not exist in the child.


@contextmanager
def _one_opencv_thread() -> Iterator[None]:
    """OpenCV at one thread in this process for the duration (no-op unless the program has imported cv2).

    Forked workers inherit it: set in the parent before forking, OpenCV joins its pool's threads here, so each
    child starts with a consistent pool of one and does not start one thread per core of its own."""
    cv2 = sys.modules.get("cv2")
    if cv2 is None:
        yield
        return
    before = cv2.getNumThreads()
    cv2.setNumThreads(1)
    try:
        yield
    finally:
        cv2.setNumThreads(before)


class WorkerLoader(torch.utils.data.DataLoader):
    """A ``DataLoader`` whose worker processes run OpenCV with one thread (W workers x one OpenCV thread per core
    would oversubscribe the cores the model needs); torch already runs each worker with one thread."""

    def __iter__(self) -> Any:
        # Workers are forked in here (at the first call only, when persistent); without workers nothing to limit.
        with _one_opencv_thread() if self.num_workers > 0 else nullcontext():
            return super().__iter__()


def available_cpus() -> int:
    """CPUs this process may run on (its affinity mask, e.g. a container's or a job scheduler's share)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        return os.cpu_count() or 1


def usable_workers(requested: int) -> int:
    """DataLoader workers for one process: ``requested``, but no more than its share of the CPUs it may run on
    (the available CPUs divided by the processes of this machine, ``LOCAL_WORLD_SIZE`` under accelerate /
    torchrun); a cap is logged once."""
    local = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1))
    cap = max(1, available_cpus() // local)
    if requested > cap:
        if (requested, cap) not in _CAPPED:
            _CAPPED.add((requested, cap))
            logger.info("data loading: %d workers requested, %d used (%d CPUs available to %d process(es))",
                        requested, cap, available_cpus(), local)
        return cap
    return max(0, requested)


_CAPPED: set[tuple[int, int]] = set()


def build_train_loader(
    dataset: Any,
    *,
    batch_size: int,
    seed: int,
    num_workers: int,
    num_replicas: int = 1,
    rank: int = 0,
    start_iter: int = 0,
    aspect_ratios: Sequence[float] | None = None,
    aspect_grouping: bool = False,
    seeded: bool = False,
    collate_fn: Any = None,
    pin_memory: bool = False,
    repeat_factors: Sequence[float] | None = None,
) -> torch.utils.data.DataLoader:
    """The infinite training loader of one process: batches of :class:`TrainBatchSampler`, from ``start_iter``.

    Args:
        dataset: indexable by int; with ``seeded`` it must be a :class:`SeedableDataset` and each item's
            augmentation is then drawn from :func:`sample_seed` (exact resume whatever the workers).
        batch_size: images per process per (micro-)batch.
        aspect_ratios: width / height per item for ``aspect_grouping`` (None: all 1, no grouping).
        start_iter: index of the first (micro-)batch: a resumed run skips earlier batches without loading them.
        repeat_factors: per item, how often an epoch holds it on average (:class:`TrainBatchSampler`); None: once.
    Workers persist across epochs and seed numpy / random from torch's per-worker seed, so library code using
    the global RNGs is reproducible too. The loader draws its workers' base seed from a generator of its own,
    not from the global RNG, so creating it at a resume point leaves the global RNG exactly as the uninterrupted
    run had it. An error raised in a worker re-raises in the main process with its type and message.
    """
    ratios = list(aspect_ratios) if aspect_ratios is not None else [1.0] * len(dataset)
    sampler: Any = TrainBatchSampler(
        ratios, batch_size, seed=seed, num_replicas=num_replicas, rank=rank,
        aspect_grouping=aspect_grouping and aspect_ratios is not None, start_iter=start_iter,
        repeat_factors=repeat_factors,
    )
    if seeded:
        sampler = SeededBatchSampler(sampler, seed=seed, start_iter=start_iter, per_process=batch_size, rank=rank)
        dataset = SeededDataset(dataset)
    return WorkerLoader(
        dataset, batch_sampler=sampler, collate_fn=collate_fn, num_workers=(workers := usable_workers(num_workers)),
        persistent_workers=workers > 0, worker_init_fn=_seed_worker, pin_memory=pin_memory,
        generator=torch.Generator().manual_seed(seed),
    )


def build_inference_loader(
    dataset: Any, *, batch_size: int, num_workers: int, num_replicas: int = 1, rank: int = 0,
    collate_fn: Any = None, generator: torch.Generator | None = None,
) -> torch.utils.data.DataLoader:
    """A finite, ordered loader over this process's contiguous shard of ``dataset`` (every index exactly once
    across ``num_replicas`` processes). ``generator``: where each pass draws its workers' base seed (None: the
    global RNG, which the pass then advances by one draw)."""
    return WorkerLoader(
        dataset, batch_size=batch_size, sampler=InferenceSampler(len(dataset), num_replicas, rank),
        collate_fn=collate_fn, num_workers=usable_workers(num_workers), worker_init_fn=_seed_worker,
        generator=generator,
    )


__all__ = ["InferenceSampler", "SeedableDataset", "SeededBatchSampler", "SeededDataset", "TrainBatchSampler",
           "WorkerLoader", "available_cpus", "build_inference_loader", "build_train_loader", "class_image_frequencies",
           "repeat_factors", "sample_seed", "usable_workers"]
