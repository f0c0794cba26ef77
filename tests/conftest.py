"""Fixtures shared by the test modules (plain helpers are in tests/helpers.py): one intra-op thread, the tiny
ResNet-18 C4 detector and its checkpoint, the default synthetic set, generated VOC trees, an MSRA-layout pickle."""

from __future__ import annotations

import pickle
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from detection.checkpoint import detector_payload
from detection.config import DetectionConfig, load_detection_config
from detection.data import generate_synthetic
from detection.faster_rcnn import FasterRCNN, build_faster_rcnn
from tests.helpers import TINY_CLASSES, TINY_DETECTOR, TINY_FPN_DETECTOR, msra_blobs, write_voc_tree, write_voc_year


@pytest.fixture
def one_thread() -> Iterator[None]:
    """One intra-op thread: on 2 shared CI cores two threads oversubscribe, and small models run faster on one
    (a ResNet-50 forward at 64 px took 3 s with two threads under load, 0.1 s with one)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# ------------------------------------------------------------------------------------- the tiny C4 detector


@pytest.fixture(scope="session")
def tiny_detector_cfg() -> DetectionConfig:
    """The default detection config with the :data:`tests.helpers.TINY_DETECTOR` overrides (64 x 96 test size)."""
    return load_detection_config(None, TINY_DETECTOR)


@pytest.fixture(scope="session")
def tiny_detector(tiny_detector_cfg: DetectionConfig) -> FasterRCNN:
    """A random (seed 0) ResNet-18 C4 detector of the 3 synthetic classes, in eval mode. Shared: do not modify it."""
    torch.manual_seed(0)
    return build_faster_rcnn(tiny_detector_cfg.model, class_names=TINY_CLASSES).eval()


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory, tiny_detector: FasterRCNN,
                    tiny_detector_cfg: DetectionConfig) -> Path:
    """``model_final.pth`` of :func:`tiny_detector`, as training writes it."""
    path = tmp_path_factory.mktemp("ckpt") / "model_final.pth"
    torch.save(detector_payload(tiny_detector, tiny_detector_cfg, TINY_CLASSES), path)
    return path


@pytest.fixture(scope="session")
def tiny_fpn_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``model_final.pth`` of a random (seed 0) ResNet-18 FPN detector (:data:`tests.helpers.TINY_FPN_DETECTOR`)
    with non-trivial BN statistics."""
    from tests.helpers import randomize_bn_statistics

    cfg = load_detection_config(None, TINY_FPN_DETECTOR)
    torch.manual_seed(0)
    model = build_faster_rcnn(cfg.model, class_names=TINY_CLASSES).eval()
    randomize_bn_statistics(model)
    path = tmp_path_factory.mktemp("fpn") / "model_final.pth"
    torch.save(detector_payload(model, cfg, TINY_CLASSES), path)
    return path


# ----------------------------------------------------------------------------------------------------- data


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data root holding the default synthetic tree (400 + 100 images of 128 px), generated once per session:
    the tree build_dataset("synthetic-*") expects (a few seconds). Tests that alter a file restore it."""
    root = tmp_path_factory.mktemp("data")
    generate_synthetic(root, num_train=400, num_test=100, image_size=128, seed=0)  # the default tree
    return root


@pytest.fixture
def voc_root(tmp_path: Path) -> Path:
    """VOC2007 (3 trainval + 2 test) and VOC2012 (2 trainval) trees; image sizes 40-64 px."""
    write_voc_year(
        tmp_path, "2007",
        {
            "000005": (64, 48, [("chair", (1, 1, 10, 20), 0), ("person", (5, 6, 30, 40), 1)]),
            "000007": (48, 64, [("car", (10, 12, 40, 60), 0)]),
            "000009": (60, 40, [("dog", (2, 3, 50, 30), 1)]),  # only a difficult box
            "000001": (50, 50, [("cat", (1, 1, 50, 50), 0)]),
            "000002": (40, 60, [("train", (3, 4, 20, 21), 0)]),
        },
        {"trainval": ["000005", "000007", "000009"], "train": ["000005", "000007"], "val": ["000009"],
         "test": ["000001", "000002"]},
        # Lies like the real VOC2012 copies of VOC2007 images: loaders must go by id, not by <filename>.
        filename_for={"000005": "2007_000005.jpg", "000007": "does_not_exist.jpg"},
    )
    write_voc_year(
        tmp_path, "2012",
        {
            "2008_000001": (64, 64, [("bird", (10, 10, 20, 20), 0)]),
            "2008_000002": (56, 44, [("boat", (1, 2, 56, 44), 0), ("bottle", (3, 3, 9, 9), 0)]),
        },
        {"trainval": ["2008_000001", "2008_000002"], "train": ["2008_000001"], "val": ["2008_000002"]},
    )
    return tmp_path


@pytest.fixture
def voc07_test_root(tmp_path: Path) -> Path:
    """A data root with the VOC2007 test split of :data:`tests.helpers.VOC_IMAGES` (4 images, one without objects)."""
    return write_voc_tree(tmp_path / "data")


# ------------------------------------------------------------------------------------------------- weights


@pytest.fixture(scope="module")
def msra_r50(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, np.ndarray]]:
    """R-50.pkl in Detectron's layout (protocol 2, {"blobs": ...}) and the arrays it holds, by our key."""
    blobs, expect = msra_blobs(50)
    path = tmp_path_factory.mktemp("msra") / "R-50.pkl"
    with path.open("wb") as f:
        pickle.dump({"blobs": blobs}, f, protocol=2)
    return path, expect
