"""detection.data.transforms: the paper's resize rule, flip, seeded multi-scale and photometric augmentation,
degenerate boxes, decode errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from detection.data import DataError, DetectionTransform, decode_image, resize_scale


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
