"""--tile on tools/infer.py and tools/eval_det.py through their main(argv), on the shared tiny ResNet-18 C4 detector
checkpoint: the JSON is the TiledPredictor's output, the tiles per image are reported, bad values are one line."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from detection.predictor import Predictor
from detection.tiling import TiledPredictor, TileOptions
from tests.helpers import assert_same_detections, noise_image
from tools import eval_det, infer


def test_infer_tiles_an_image_and_reports_the_tiles(tmp_path: Path, tiny_checkpoint: Path, one_thread: None) -> None:
    image = noise_image(150, 200, 7)
    cv2.imwrite(str(tmp_path / "big.png"), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    out = tmp_path / "out"
    assert infer.main(["--checkpoint", str(tiny_checkpoint), "--input", str(tmp_path / "big.png"), "--output",
                       str(out), "--tile", "64", "--tile-overlap", "0.5", "--batch-size", "8", "--score-thresh",
                       "0.2", "--cpu"]) == 0
    data = json.loads((out / "detections.json").read_text())
    # 200 x 150 in 64 px tiles, stride 32: x at 0, 32, ..., 128, 136 (6), y at 0, 32, 64, 86 (4)
    assert data["images"]["big.png"]["tiles"] == 24
    assert data["tiling"] == {"size": 64, "overlap": 0.5, "whole": False, "stride": 32, "tiles": 24}
    predictor = Predictor.from_checkpoint(tiny_checkpoint, device="cpu", score_thresh=0.2)
    ref = TiledPredictor(predictor, TileOptions(64, 0.5), batch_size=8)([image])[0]
    dets = data["images"]["big.png"]["detections"]
    assert dets, "the random detector finds something >= 0.2"
    got = {"boxes": np.array([d["box"] for d in dets]), "scores": np.array([d["score"] for d in dets]),
           "labels": np.array([d["label"] for d in dets])}
    assert_same_detections(got, ref, "infer --tile", box_tol=1e-3, score_tol=1e-5)
    assert (cv2.imread(str(out / "big.png")) is not None)


def test_eval_det_and_infer_score_tiled_inference(tmp_path: Path, tiny_checkpoint: Path, one_thread: None) -> None:
    from detection.data import generate_synthetic

    generate_synthetic(tmp_path / "data", num_train=2, num_test=3, image_size=128)
    out = tmp_path / "m.json"
    assert eval_det.main(["--checkpoint", str(tiny_checkpoint), "--dataset", "synthetic-test", "--data-root",
                          str(tmp_path / "data"), "--cpu", "--no-progress", "--tile", "64", "--batch-size", "9",
                          "--output", str(out)]) == 0
    metrics = json.loads(out.read_text())
    # 128 px images in 64 px tiles, stride 48: starts 0, 48, 64 on each side -> 9 tiles
    assert metrics["num_images"] == 3 and 0.0 <= metrics["mAP"] <= 1.0
    assert metrics["tiling"] == {"size": 64, "overlap": 0.25, "whole": False, "stride": 48, "tiles": 27,
                                 "tiles_per_image": 9.0}
    # infer --eval-dataset scores the same tiled predictions (same batches: the same numbers).
    assert infer.main(["--checkpoint", str(tiny_checkpoint), "--eval-dataset", "synthetic-test", "--data-root",
                       str(tmp_path / "data"), "--output", str(tmp_path / "e"), "--tile", "64", "--batch-size", "9",
                       "--cpu"]) == 0
    again = json.loads((tmp_path / "e" / "metrics.json").read_text())
    assert again["tiling"] == metrics["tiling"] and again["mAP"] == pytest.approx(metrics["mAP"], abs=1e-6)


@pytest.mark.parametrize(("argv", "what"), [
    (["--tile", "16"], "--tile 16"),
    (["--tile", "64", "--tile-overlap", "1.0"], "--tile-overlap 1.0"),
    (["--tile-overlap", "0.3"], "need --tile"),
])
def test_bad_tile_values_are_one_line(tmp_path: Path, tiny_checkpoint: Path, argv: list[str], what: str,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    cv2.imwrite(str(tmp_path / "a.png"), noise_image(32, 32, 0))
    assert infer.main(["--checkpoint", str(tiny_checkpoint), "--input", str(tmp_path / "a.png"), "--output",
                       str(tmp_path / "o"), *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("infer: error: ") and what in err and err.count("\n") == 1, err
    assert eval_det.main(["--checkpoint", str(tiny_checkpoint), "--dataset", "synthetic-test", *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("eval_det: error: ") and what in err and err.count("\n") == 1, err
