"""Transforms (resize rule, flip, jitter, degenerate boxes), samplers (pure in (seed, k), resume, ranks) and loaders."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
import torch

from detection.data import (
    DataError,
    DetectionTransform,
    InferenceSampler,
    TrainBatchSampler,
    build_dataset,
    build_test_loader,
    build_train_loader,
    collate,
    decode_image,
    generate_synthetic,
    resize_scale,
)

# ------------------------------------------------------------------------------------------------ transforms


@pytest.mark.parametrize(
    ("h", "w", "min_size", "max_size", "scale"),
    [
        (375, 500, 600, 1000, 1.6),  # typical VOC landscape: shorter side -> 600
        (500, 353, 600, 1000, 600 / 353),  # portrait, long side 850 < 1000
        (300, 1000, 600, 1000, 1.0),  # very wide: long side capped at 1000 wins
        (200, 500, 600, 1000, 2.0),  # 600 would make it 1500 wide -> 1000 / 500
        (800, 1200, 600, 1000, 0.75),  # downscaling
        (128, 128, 128, 128, 1.0),
    ],
)
def test_resize_scale_is_the_paper_rule(h: int, w: int, min_size: int, max_size: int, scale: float) -> None:
    assert resize_scale(h, w, min_size, max_size) == pytest.approx(scale)


def _image(h: int = 60, w: int = 80) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (h, w, 3), np.uint8)


def _call(t: DetectionTransform, image: np.ndarray, boxes: list, seed: int | None = 0):  # noqa: ANN202
    b = np.asarray(boxes, np.float32).reshape(-1, 4)
    return t(image, b, np.arange(len(b), dtype=np.int64), np.zeros(len(b), bool), seed=seed)


def test_flip_moves_boxes_with_pixels_and_twice_is_identity() -> None:
    flip = DetectionTransform(min_size=60, max_size=1000, train=True, flip_prob=1.0)
    image = _image()
    boxes = [[10.0, 5.0, 30.5, 40.0], [0.0, 0.0, 80.0, 60.0]]
    once = _call(flip, image, boxes)
    np.testing.assert_array_equal(once.image, image[:, ::-1])
    np.testing.assert_allclose(once.boxes, [[49.5, 5.0, 70.0, 40.0], [0.0, 0.0, 80.0, 60.0]], atol=1e-4)
    twice = _call(flip, once.image, once.boxes)
    np.testing.assert_array_equal(twice.image, image)
    np.testing.assert_allclose(twice.boxes, boxes, atol=1e-4)
    assert once.labels.tolist() == [0, 1]


def test_degenerate_boxes_are_clipped_removed_and_counted() -> None:
    t = DetectionTransform(min_size=60, max_size=1000, train=False)
    out = _call(t, _image(), [
        [-5.0, -5.0, 20.0, 20.0],  # partly outside: clipped
        [70.0, 10.0, 95.0, 30.0],  # partly outside on the right: clipped to 80
        [10.0, 10.0, 10.5, 30.0],  # 0.5 px wide: degenerate
        [90.0, 10.0, 100.0, 30.0],  # entirely outside: nothing left after clipping
        [5.0, 5.0, 6.0, 6.0],  # exactly 1 px: kept
    ])
    np.testing.assert_allclose(out.boxes, [[0, 0, 20, 20], [70, 10, 80, 30], [5, 5, 6, 6]])
    assert out.labels.tolist() == [0, 1, 4] and out.num_dropped == 2


def test_resize_scales_boxes_and_eval_is_deterministic() -> None:
    t = DetectionTransform(min_size=(90, 120), max_size=1000, train=False, flip_prob=0.5)
    outs = [_call(t, _image(), [[8.0, 6.0, 40.0, 30.0]], seed=s) for s in range(4)]
    for o in outs:  # evaluation: always the first min_size, never flipped
        assert o.image.shape == (90, 120, 3)
        np.testing.assert_allclose(o.boxes, [[12.0, 9.0, 60.0, 45.0]])


def test_training_multiscale_and_seeded_augmentation() -> None:
    t = DetectionTransform(min_size=(30, 60, 90), max_size=1000, train=True, flip_prob=0.5, photometric=True)
    image = _image()
    outs = [_call(t, image, [[8.0, 6.0, 40.0, 30.0]], seed=s) for s in range(24)]
    assert {o.image.shape[0] for o in outs} == {30, 60, 90}
    flipped = [o.boxes[0, 0] > (o.image.shape[1] / 2 - 20) for o in outs]
    assert any(flipped) and not all(flipped)
    again = [_call(t, image, [[8.0, 6.0, 40.0, 30.0]], seed=s) for s in range(24)]
    for a, b in zip(outs, again):  # a seed fixes every random choice
        np.testing.assert_array_equal(a.image, b.image)
        np.testing.assert_array_equal(a.boxes, b.boxes)
    # Photometric jitter changes pixels, never boxes.
    plain = DetectionTransform(min_size=60, max_size=1000, train=True, flip_prob=0.0)
    jitter = DetectionTransform(min_size=60, max_size=1000, train=True, flip_prob=0.0, photometric=True)
    changed = 0
    for s in range(6):
        p, j = _call(plain, image, [[8.0, 6.0, 40.0, 30.0]], s), _call(jitter, image, [[8.0, 6.0, 40.0, 30.0]], s)
        np.testing.assert_array_equal(p.boxes, j.boxes)
        changed += int(not np.array_equal(p.image, j.image))
    assert changed >= 3


def test_decode_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="missing.jpg"):
        decode_image(tmp_path / "missing.jpg")
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 truncated")
    with pytest.raises(DataError, match=r"bad\.jpg"):
        decode_image(bad)


# -------------------------------------------------------------------------------------------------- samplers

# 7 landscape (w/h >= 1) and 5 portrait images.
RATIOS = [1.33, 0.75, 1.0, 1.5, 0.6, 1.2, 0.8, 2.0, 0.5, 1.33, 1.33, 0.7]


def _take(sampler: TrainBatchSampler, n: int) -> list[list[int]]:
    return list(itertools.islice(iter(sampler), n))


def test_train_batches_are_a_pure_function_of_seed_and_iteration() -> None:
    a = _take(TrainBatchSampler(RATIOS, 2, seed=7), 30)
    assert a == _take(TrainBatchSampler(RATIOS, 2, seed=7), 30)
    assert a != _take(TrainBatchSampler(RATIOS, 2, seed=8), 30)
    s = TrainBatchSampler(RATIOS, 2, seed=7)
    assert [s.global_batch_at(k) for k in range(30)] == a
    assert all(len(b) == 2 for b in a)


def test_start_iter_resumes_exactly() -> None:
    full = _take(TrainBatchSampler(RATIOS, 2, seed=3), 40)
    for k in (1, 5, 6, 17, 33):  # inside the first epoch, at epoch boundaries, several epochs on
        assert _take(TrainBatchSampler(RATIOS, 2, seed=3, start_iter=k), 40 - k) == full[k:]


def test_ranks_are_disjoint_and_together_the_global_batch() -> None:
    single = _take(TrainBatchSampler(RATIOS, 4, seed=11), 12)  # one process, global batch 4
    per_rank = [_take(TrainBatchSampler(RATIOS, 2, seed=11, num_replicas=2, rank=r), 12) for r in (0, 1)]
    for k in range(12):
        assert not set(per_rank[0][k]) & set(per_rank[1][k])
        assert per_rank[0][k] + per_rank[1][k] == single[k]
    resumed = _take(TrainBatchSampler(RATIOS, 2, seed=11, num_replicas=2, rank=1, start_iter=5), 7)
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
    ungrouped = _take(TrainBatchSampler(RATIOS, 3, seed=0, aspect_grouping=False), 8)
    assert any(len({RATIOS[i] >= 1.0 for i in b}) == 2 for b in ungrouped)
    tiny = _take(TrainBatchSampler([1.0, 0.5], 4, seed=0), 3)  # fewer images than a batch still works
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


# --------------------------------------------------------------------------------------------------- loaders


@pytest.fixture(scope="module")
def synth_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("pipeline")
    generate_synthetic(root, num_train=400, num_test=100, image_size=128, seed=0)  # the default tree
    return root


def _dataset(root: Path, **kw):  # noqa: ANN202
    return build_dataset("synthetic-test", root, train=True, min_size=(64, 96), max_size=128, **kw)


def test_collate_keeps_lists() -> None:
    images, targets = collate([(torch.zeros(3, 4, 5), {"a": 1}), (torch.zeros(3, 6, 5), {"a": 2})])
    assert [i.shape[1] for i in images] == [4, 6] and [t["a"] for t in targets] == [1, 2]


def test_train_loader_batches_follow_the_sampler_across_workers(synth_root: Path) -> None:
    ds = _dataset(synth_root)
    expected = _take(TrainBatchSampler(ds.aspect_ratios(), 3, seed=1, start_iter=2), 4)
    for workers in (0, 2):
        loader = build_train_loader(ds, batch_size=3, seed=1, num_workers=workers, start_iter=2)
        assert loader.persistent_workers == (workers > 0)
        got = list(itertools.islice(iter(loader), 4))
        assert [[t["index"] for t in targets] for _, targets in got] == expected
        for images, targets in got:
            assert all(im.dtype == torch.uint8 and tuple(im.shape[1:]) == t["size"] for im, t in zip(images, targets))
            assert all(t["boxes"].shape[1] == 4 and t["size"][0] in (64, 96) for t in targets)


def test_worker_numpy_seeds_are_reproducible(synth_root: Path) -> None:
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


def test_test_loader_shards_in_order(synth_root: Path) -> None:
    ds = build_dataset("synthetic-test", synth_root, train=False, min_size=128, max_size=128)
    seen = []
    for rank in (0, 1):
        for _, targets in build_test_loader(ds, batch_size=8, num_workers=0, num_replicas=2, rank=rank):
            seen += [t["index"] for t in targets]
    assert seen == list(range(len(ds)))


def test_corrupt_image_in_a_worker_names_the_file(synth_root: Path) -> None:
    ds = build_dataset("synthetic-test", synth_root, train=False, min_size=128, max_size=128)
    bad = ds.records[5].file
    original = bad.read_bytes()
    try:
        bad.write_bytes(b"not a jpeg at all")
        # The worker's exception reaches the main process as the same type, its message naming the file.
        with pytest.raises(DataError, match=rf"JPEGImages/{bad.stem}\.jpg"):
            list(build_test_loader(ds, batch_size=2, num_workers=1))
        # skip_bad at evaluation: every image keeps its one item; the bad one is black, flagged and counted.
        skipping = build_dataset("synthetic-test", synth_root, train=False, min_size=128, max_size=128,
                                 skip_bad=True)
        items = [(im, t) for images, targets in build_test_loader(skipping, batch_size=4, num_workers=0)
                 for im, t in zip(images, targets)]
        assert [t["image_id"] for _, t in items] == ds.image_ids and skipping.num_skipped == 1
        flagged = [(im, t) for im, t in items if t["skipped"]]
        assert len(flagged) == 1 and flagged[0][1]["image_id"] == bad.stem and flagged[0][0].max() == 0
        assert len(flagged[0][1]["boxes"]) == len(ds.get_ground_truth(5)["boxes"])
    finally:
        bad.write_bytes(original)
