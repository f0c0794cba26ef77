"""Large-scale jitter and a config-written albumentations pipeline move boxes with the pixels, drop and count
the boxes that leave the image, and refuse unknown transforms / arguments in one line."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from detection.config import load_detection_config
from detection.data.transforms import LSJ_PAD_VALUE, DetectionTransform
from resbackbone.engine.sampling import sample_seed
from resbackbone.errors import ConfigError


def _painted(h: int, w: int, boxes: np.ndarray) -> np.ndarray:
    """A black (H, W, 3) image with each box's pixels white."""
    image = np.zeros((h, w, 3), np.uint8)
    for x1, y1, x2, y2 in boxes.astype(int):
        image[y1:y2, x1:x2] = 255
    return image


def _assert_boxes_on_white(image: np.ndarray, boxes: np.ndarray) -> None:
    """Each box's interior is the painted white and the band just outside it is not (where it lies inside)."""
    for x1, y1, x2, y2 in boxes:
        inner = image[int(np.ceil(y1)) + 1:int(y2) - 1, int(np.ceil(x1)) + 1:int(x2) - 1]
        assert inner.size and inner.mean() > 220, (x1, y1, x2, y2, inner.mean())
        ring = [image[max(int(y1) - 3, 0):max(int(y1) - 1, 0), int(x1) + 2:int(x2) - 2],  # above
                image[int(np.ceil(y2)) + 1:int(np.ceil(y2)) + 3, int(x1) + 2:int(x2) - 2]]  # below
        for band in ring:
            if band.size:
                assert band.mean() < 60 or band.mean() == LSJ_PAD_VALUE, (x1, y1, x2, y2, band.mean())


BOXES = np.array([[20, 30, 80, 70], [100, 10, 150, 90], [60, 100, 140, 150]], np.float32)


@pytest.mark.parametrize("seed", range(6))
def test_large_scale_jitter_moves_boxes_with_pixels(seed: int) -> None:
    image = _painted(160, 200, BOXES)
    t = DetectionTransform(min_size=128, max_size=256, train=True, flip_prob=0.5, lsj_size=128, lsj_scale=(0.3, 2.0))
    out = t(image, BOXES, np.arange(3), np.zeros(3, bool), seed=seed)
    assert out.image.shape == (128, 128, 3)
    assert len(out.boxes) + out.num_dropped == 3
    _assert_boxes_on_white(out.image, out.boxes)
    again = t(image, BOXES, np.arange(3), np.zeros(3, bool), seed=seed)  # a function of the seed alone
    assert np.array_equal(again.image, out.image) and np.array_equal(again.boxes, out.boxes)


def test_large_scale_jitter_draws_the_scale_range() -> None:
    t = DetectionTransform(min_size=128, max_size=256, train=True, flip_prob=0.0, lsj_size=100, lsj_scale=(0.5, 2.0))
    image = _painted(100, 100, np.array([[0, 0, 100, 100]], np.float32))  # all white: the content's extent shows
    extents = []
    for seed in range(40):
        out = t(image, np.array([[0, 0, 100, 100]], np.float32), np.zeros(1, np.int64), np.zeros(1, bool), seed=seed)
        extent = int((out.image[:, 0, 0] == 255).sum())
        extents.append(extent)
        if extent < 99:  # shrunk: the rest of the canvas is the grey padding, and the box is the content
            assert out.image[-1, -1, 0] == LSJ_PAD_VALUE
            np.testing.assert_allclose(out.boxes[0, 2:], [extent, extent], atol=1.0)
    assert min(extents) < 60 and max(extents) == 100  # shrunk and padded; enlarged and cropped


def test_yaml_albumentations_pipeline_moves_boxes_and_counts_the_lost(tmp_path: Path) -> None:
    (tmp_path / "aug.yaml").write_text(
        "data:\n"
        "  augment:\n"
        "    - {name: Affine, translate_px: {x: 15, y: -8}, scale: 1.0, p: 1.0}\n"
        "    - {name: RandomBrightnessContrast, brightness_limit: 0.0, contrast_limit: 0.0, p: 1.0}\n"
        "  flip_prob: 0.0\n")
    cfg = load_detection_config(tmp_path / "aug.yaml")
    t = DetectionTransform.from_config(cfg.data, train=True)
    boxes = np.array([[20, 30, 80, 70], [40, 0, 60, 6]], np.float32)  # the second leaves through the top
    image = _painted(128, 128, boxes)
    t.min_sizes, t.max_size = (128,), 128  # keep the image at its size: the shift is then exact
    out = t(image, boxes, np.array([0, 1]), np.zeros(2, bool), seed=3)
    assert out.num_dropped == 1 and out.labels.tolist() == [0]
    np.testing.assert_allclose(out.boxes[0], [35, 22, 95, 62], atol=1.0)
    _assert_boxes_on_white(out.image, out.boxes)
    # Evaluation never augments.
    assert DetectionTransform.from_config(cfg.data, train=False).augment is None


@pytest.mark.parametrize(("augment", "message"), [
    ([{"name": "NoSuchTransform"}], r"data\.augment\[0\]: unknown albumentations transform 'NoSuchTransform'"),
    ([{"name": "HorizontalFlip", "prob": 0.5}], r"data\.augment\[0\]: .*'prob'"),
    ([{"name": "RandomBrightnessContrast", "p": "often"}], r"data\.augment\[0\]: RandomBrightnessContrast"),
    (["Blur"], r"data\.augment\[0\]: expected a mapping with a 'name'"),
])
def test_bad_pipeline_is_one_error_naming_it(augment: list, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        DetectionTransform(min_size=64, max_size=64, train=True, augment=augment)


def test_augmented_samples_are_written_with_their_boxes(synthetic_root: Path, tmp_path: Path) -> None:
    import cv2

    from detection.data import build_dataset
    from detection.visualize import class_color, write_augmented_samples

    ds = build_dataset("synthetic-train", synthetic_root, train=True,
                       transform=DetectionTransform(min_size=96, max_size=128, train=True, lsj_size=96))
    paths = write_augmented_samples(ds, 3, tmp_path / "seen", seed=5)
    assert len(paths) == 3 and all(p.is_file() for p in paths)
    image = cv2.cvtColor(cv2.imread(str(paths[0])), cv2.COLOR_BGR2RGB)
    assert image.shape == (96, 96, 3)  # the LSJ canvas, as the model receives it
    # A box outline in its class colour (JPEG: approximately).
    _, target = ds.get_item_seeded(0, sample_seed(5, 0, 0))
    x1, y1, _, _ = target["boxes"][0].round().int().tolist()
    colour = np.array(class_color(int(target["labels"][0])))
    assert np.abs(image[y1, x1 + 2].astype(int) - colour).max() < 60


def test_check_dataset_shows_augmented_images_with_config_overrides(synthetic_root: Path, tmp_path: Path) -> None:
    import cv2

    from tools import check_dataset

    out = tmp_path / "seen"
    rc = check_dataset.main(["synthetic-train", "--data-root", str(synthetic_root), "--no-decode", "--json",
                             "--show-augmented", "3", "--output", str(out), "data.lsj_size=96"])
    assert rc == 0
    written = sorted(out.glob("augmented_*.jpg"))
    assert len(written) == 3 and cv2.imread(str(written[0])).shape == (96, 96, 3)  # the LSJ canvas
    assert check_dataset.main(["synthetic-train", "--data-root", str(synthetic_root), "--no-decode", "--json",
                               "--show-augmented", "2", "--output", str(out),
                               "data.augment=[{name: NoSuchTransform}]"]) == 2
