"""detection.data.loader: collation, training batches that follow the sampler across workers, reproducible worker
seeds, sharded test loading in order, corrupt images reported from a worker."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
import torch

from detection.data import DataError, build_dataset, build_test_loader, build_train_loader, collate
from detection.data.transforms import DetectionTransform
from resbackbone.engine.sampling import TrainBatchSampler
from tests.helpers import take_batches


def _dataset(root: Path, **kw):  # noqa: ANN202
    return build_dataset("synthetic-test", root, train=True, **kw,
                         transform=DetectionTransform(min_size=(64, 96), max_size=128, train=True))


def test_collate_keeps_lists() -> None:
    images, targets = collate([(torch.zeros(3, 4, 5), {"a": 1}), (torch.zeros(3, 6, 5), {"a": 2})])
    assert [i.shape[1] for i in images] == [4, 6] and [t["a"] for t in targets] == [1, 2]


def test_train_loader_batches_follow_the_sampler_across_workers(synthetic_root: Path) -> None:
    ds = _dataset(synthetic_root)
    expected = take_batches(TrainBatchSampler(ds.aspect_ratios(), 3, seed=1, start_iter=2), 4)
    for workers in (0, 2):
        loader = build_train_loader(ds, batch_size=3, seed=1, num_workers=workers, start_iter=2)
        assert loader.persistent_workers == (workers > 0)
        got = list(itertools.islice(iter(loader), 4))
        assert [[t["index"] for t in targets] for _, targets in got] == expected
        for images, targets in got:
            assert all(im.dtype == torch.uint8 and tuple(im.shape[1:]) == t["size"] for im, t in zip(images, targets))
            assert all(t["boxes"].shape[1] == 4 and t["size"][0] in (64, 96) for t in targets)


def test_worker_numpy_seeds_are_reproducible(synthetic_root: Path) -> None:
    class Draws(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return 4

        def aspect_ratios(self) -> list[float]:
            return [1.0] * 4

        def __getitem__(self, i: int) -> tuple[torch.Tensor, dict]:
            return torch.tensor(np.random.rand()), {"index": i}  # noqa: NPY002 - what worker_init_fn seeds

    def run() -> list[float]:
        torch.manual_seed(0)
        loader = build_train_loader(Draws(), batch_size=2, seed=0, num_workers=2)
        return [float(x) for images, _ in itertools.islice(iter(loader), 4) for x in images]

    a, b = run(), run()
    assert a == b and len(set(a)) == len(a)  # reproducible, and the two workers do not repeat each other


def test_test_loader_shards_in_order(synthetic_root: Path) -> None:
    ds = build_dataset("synthetic-test", synthetic_root, train=False,
                       transform=DetectionTransform.resize_only(128, 128))
    seen = []
    for rank in (0, 1):
        for _, targets in build_test_loader(ds, batch_size=8, num_workers=0, num_replicas=2, rank=rank):
            seen += [t["index"] for t in targets]
    assert seen == list(range(len(ds)))


def test_corrupt_image_in_a_worker_names_the_file(synthetic_root: Path) -> None:
    ds = build_dataset("synthetic-test", synthetic_root, train=False,
                       transform=DetectionTransform.resize_only(128, 128))
    bad = ds.records[5].file
    original = bad.read_bytes()
    try:
        bad.write_bytes(b"not a jpeg at all")
        # The worker's exception reaches the main process as the same type, its message naming the file.
        with pytest.raises(DataError, match=rf"JPEGImages/{bad.stem}\.jpg"):
            list(build_test_loader(ds, batch_size=2, num_workers=1))
        # skip_bad at evaluation: every image keeps its one item; the bad one is black, flagged and counted.
        skipping = build_dataset("synthetic-test", synthetic_root, train=False,
                                 skip_bad=True, transform=DetectionTransform.resize_only(128, 128))
        items = [(im, t) for images, targets in build_test_loader(skipping, batch_size=4, num_workers=0)
                 for im, t in zip(images, targets)]
        assert [t["image_id"] for _, t in items] == ds.image_ids and skipping.num_skipped == 1
        flagged = [(im, t) for im, t in items if t["skipped"]]
        assert len(flagged) == 1 and flagged[0][1]["image_id"] == bad.stem and flagged[0][0].max() == 0
        assert len(flagged[0][1]["boxes"]) == len(ds.get_ground_truth(5)["boxes"])
    finally:
        bad.write_bytes(original)
