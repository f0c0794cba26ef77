"""Training on a user's export: the leakage warning and the decode check run before the first step;
an undecodable image stops the run there in one line naming it and data.skip_bad=true, a truncated JPEG is
recovered with a warning and trained on."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from tests.detection.data.export_helpers import truncated_jpeg, write_labelimg
from tests.helpers import TINY_TRAINING
from tools import train_det


def _train(data: str, run: Path, *extra: str) -> int:
    return train_det.main(["--dataset", data, "--test-dataset", data, "--backbone", "resnet18",
                           "--backbone-weights", "none", "--max-iter", "1", "--output-dir", str(run),
                           "--no-progress", "--cpu", *TINY_TRAINING, "data.num_workers=0",
                           "model.anchors.sizes=[16,32,64,128,256]", "solver.ims_per_batch=2", *extra])


def test_training_checks_images_and_leakage_before_the_first_step(
        tmp_path: Path, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str],
        one_thread: None) -> None:
    root = write_labelimg(tmp_path / "labelimg")
    truncated_jpeg(root / "images" / "img_1.jpg", 64, 48, seed=1)
    (root / "images" / "img_2.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    assert _train(str(root), tmp_path / "run") == 2
    err = capsys.readouterr().err
    assert "img_2.jpg" in err and "data.skip_bad=true skips such files" in err
    assert not list((tmp_path / "run").glob("model_*.pth"))

    (root / "images" / "img_2.jpg").unlink()
    (root / "annotations" / "img_2.xml").unlink()
    with caplog.at_level(logging.WARNING, logger="detection.data"):
        assert _train(str(root), tmp_path / "run", "--overwrite") == 0
    assert "3 of the 3 test images" in caplog.text  # the same folder given for both
    assert "img_1.jpg: truncated or damaged image data" in caplog.text
    cache = json.loads((tmp_path / "run" / "image_check.json").read_text())
    assert sum(e.get("recovered", False) for e in cache.values()) == 1
