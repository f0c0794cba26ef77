"""resbackbone.engine.sampling: training batches are a pure function of (seed, iteration) (exact resume, disjoint
ranks, aspect grouping, epoch coverage); inference shards cover every index once."""

from __future__ import annotations

import pytest
import torch

from resbackbone.engine.sampling import InferenceSampler, TrainBatchSampler
from tests.helpers import take_batches

# 7 landscape (w/h >= 1) and 5 portrait images.
RATIOS = [1.33, 0.75, 1.0, 1.5, 0.6, 1.2, 0.8, 2.0, 0.5, 1.33, 1.33, 0.7]


def test_train_batches_are_a_pure_function_of_seed_and_iteration() -> None:
    a = take_batches(TrainBatchSampler(RATIOS, 2, seed=7), 30)
    assert a == take_batches(TrainBatchSampler(RATIOS, 2, seed=7), 30)
    assert a != take_batches(TrainBatchSampler(RATIOS, 2, seed=8), 30)
    s = TrainBatchSampler(RATIOS, 2, seed=7)
    assert [s.global_batch_at(k) for k in range(30)] == a
    assert all(len(b) == 2 for b in a)


def test_start_iter_resumes_exactly() -> None:
    full = take_batches(TrainBatchSampler(RATIOS, 2, seed=3), 40)
    for k in (1, 5, 6, 17, 33):  # inside the first epoch, at epoch boundaries, several epochs on
        assert take_batches(TrainBatchSampler(RATIOS, 2, seed=3, start_iter=k), 40 - k) == full[k:]


def test_ranks_are_disjoint_and_together_the_global_batch() -> None:
    single = take_batches(TrainBatchSampler(RATIOS, 4, seed=11), 12)  # one process, global batch 4
    per_rank = [take_batches(TrainBatchSampler(RATIOS, 2, seed=11, num_replicas=2, rank=r), 12) for r in (0, 1)]
    for k in range(12):
        assert not set(per_rank[0][k]) & set(per_rank[1][k])
        assert per_rank[0][k] + per_rank[1][k] == single[k]
    resumed = take_batches(TrainBatchSampler(RATIOS, 2, seed=11, num_replicas=2, rank=1, start_iter=5), 7)
    assert resumed == per_rank[1][5:]


def test_aspect_grouping_and_epoch_coverage() -> None:
    s = TrainBatchSampler(RATIOS, 2, seed=0)
    per_epoch = 7 // 2 + 5 // 2  # full batches per orientation group
    for epoch in range(3):
        batches = [s.global_batch_at(epoch * per_epoch + k) for k in range(per_epoch)]
        for b in batches:
            assert len({RATIOS[i] >= 1.0 for i in b}) == 1  # all landscape or all portrait
        flat = [i for b in batches for i in b]
        assert len(flat) == len(set(flat)) == 2 * per_epoch  # no image twice within an epoch
    ungrouped = take_batches(TrainBatchSampler(RATIOS, 3, seed=0, aspect_grouping=False), 8)
    assert any(len({RATIOS[i] >= 1.0 for i in b}) == 2 for b in ungrouped)
    tiny = take_batches(TrainBatchSampler([1.0, 0.5], 4, seed=0), 3)  # fewer images than a batch still works
    assert all(len(b) == 4 and set(b) <= {0, 1} for b in tiny)


def test_sampler_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="empty"):
        TrainBatchSampler([], 2, seed=0)
    with pytest.raises(ValueError, match="rank 2"):
        TrainBatchSampler(RATIOS, 2, seed=0, num_replicas=2, rank=2)


@pytest.mark.parametrize("n", [0, 1, 7, 10])
def test_inference_shards_cover_every_index_once(n: int) -> None:
    shards = [list(InferenceSampler(n, 3, r)) for r in range(3)]
    assert [i for s in shards for i in s] == list(range(n))
    assert max(map(len, shards)) - min(map(len, shards)) <= 1
    assert list(InferenceSampler(n)) == list(range(n))


class _ThreadProbe(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return 1

    def __getitem__(self, i: int) -> int:
        return torch.get_num_threads()


def test_workers_are_capped_to_the_cpus_and_use_one_torch_thread_each(monkeypatch: pytest.MonkeyPatch) -> None:
    from resbackbone.engine import sampling

    monkeypatch.setattr(sampling, "available_cpus", lambda: 4)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    assert sampling.usable_workers(8) == 4 and sampling.usable_workers(2) == 2 and sampling.usable_workers(0) == 0
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")  # two processes on this machine share the 4 CPUs
    assert sampling.usable_workers(8) == 2
    loader = sampling.build_inference_loader(_ThreadProbe(), batch_size=1, num_workers=1,
                                             collate_fn=lambda b: b[0])
    assert loader.num_workers == 1
    assert next(iter(loader)) == 1


OPENCV_WORKERS = r"""
import cv2, numpy as np, torch
from resbackbone.engine.sampling import build_inference_loader, build_train_loader

img = np.random.default_rng(0).integers(0, 255, (1200, 1200, 3), dtype=np.uint8)
for _ in range(3):
    cv2.GaussianBlur(img, (31, 31), 0)  # the parent's OpenCV pool is up and has run work before any fork
before = cv2.getNumThreads()

class Probe(torch.utils.data.Dataset):
    def __len__(self):
        return 3
    def __getitem__(self, i):
        cv2.GaussianBlur(img, (31, 31), 0)  # OpenCV work inside the worker
        return cv2.getNumThreads()

first = lambda b: b[0]
test = build_inference_loader(Probe(), batch_size=1, num_workers=1, collate_fn=first)
seen = list(test) + list(test)  # two passes: workers forked twice
it = iter(build_train_loader(Probe(), batch_size=1, seed=0, num_workers=1, collate_fn=first))
seen += [next(it) for _ in range(4)]
print(seen, before, cv2.getNumThreads())
"""


def test_workers_run_opencv_with_one_thread_after_the_parent_used_its_pool() -> None:
    """OpenCV's thread count is set before the workers fork (in the child it deadlocked): each worker sees 1, the
    parent keeps its own, and nothing hangs (a subprocess with a timeout, so a deadlock fails instead of hanging)."""
    import os
    import subprocess
    import sys

    from tests.helpers import REPO

    env = {**os.environ, "PYTHONPATH": str(REPO)}
    res = subprocess.run([sys.executable, "-c", OPENCV_WORKERS], env=env, capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 0, res.stderr[-3000:]
    seen, before, after = res.stdout.strip().rsplit(" ", 2)
    assert seen == str([1] * 10) and before == after, res.stdout
