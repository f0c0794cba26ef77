"""tools/infer.py through its main(argv), on the shared tiny ResNet-18 C4 detector checkpoint: drawn images and JSON
files, one-line errors, scoring a test set with TTA."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from detection.predictor import Predictor, list_images
from tests.helpers import TINY_CLASSES, noise_image
from tools import infer


def test_infer_tool_writes_drawn_images_and_json(tmp_path: Path, tiny_checkpoint: Path) -> None:
    inputs = tmp_path / "images"
    inputs.mkdir()
    shapes = {"a.png": (80, 120), "b.jpg": (96, 64), "c.png": (64, 64)}
    for i, (name, (h, w)) in enumerate(shapes.items()):
        cv2.imwrite(str(inputs / name), cv2.cvtColor(noise_image(h, w, i), cv2.COLOR_RGB2BGR))
    (inputs / "notes.txt").write_text("not an image")
    out = tmp_path / "out"
    assert infer.main(["--checkpoint", str(tiny_checkpoint), "--input", str(inputs), "--output", str(out),
                       "--score-thresh", "0.2", "--batch-size", "2", "--cpu"]) == 0

    data = json.loads((out / "detections.json").read_text())
    assert data["class_names"] == TINY_CLASSES
    assert sorted(data["images"]) == sorted(shapes)
    predictor = Predictor.from_checkpoint(tiny_checkpoint, device="cpu", score_thresh=0.2)
    # Same batches as the tool (padding a batch changes which anchors exist, so batch composition matters).
    reference = {p.name: d for p, _, d in predictor.predict_files(list_images(inputs), batch_size=2)}
    total = 0
    for name, (h, w) in shapes.items():
        entry = data["images"][name]
        assert (entry["height"], entry["width"]) == (h, w)
        dets = entry["detections"]
        assert dets, f"{name}: the random detector should give some detection >= 0.2 (3 classes + background)"
        total += len(dets)
        boxes = np.array([d["box"] for d in dets])
        assert (boxes[:, [0, 2]] >= 0).all() and (boxes[:, [0, 2]] <= w).all()
        assert (boxes[:, [1, 3]] >= 0).all() and (boxes[:, [1, 3]] <= h).all()
        assert all(d["score"] >= 0.2 and d["class_name"] == TINY_CLASSES[d["label"]] for d in dets)
        # The JSON is the Predictor's output for that file, rounded.
        ref = reference[name]
        np.testing.assert_allclose(boxes, ref["boxes"].numpy(), atol=0.01)
        assert [d["label"] for d in dets] == ref["labels"].tolist()
        # A drawn copy of the right size that is not the input any more.
        drawn = cv2.imread(str(out / name))
        assert drawn is not None and drawn.shape == (h, w, 3)
        if name.endswith(".png"):
            assert not np.array_equal(drawn, cv2.imread(str(inputs / name)))
    coco = json.loads((out / "coco_results.json").read_text())
    assert len(coco) == total
    first = next(d for d in coco if d["image_id"] == 0)  # a.png, first in sorted order
    x1, y1, x2, y2 = data["images"]["a.png"]["detections"][0]["box"]
    assert first["bbox"] == pytest.approx([x1, y1, x2 - x1, y2 - y1], abs=0.011)
    assert first["category_id"] == data["images"]["a.png"]["detections"][0]["label"] + 1


def test_infer_tool_errors(tmp_path: Path, tiny_checkpoint: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Bad input: one line ``infer: error: ...`` and exit status 2, as every tool (and argparse) does."""
    (tmp_path / "empty").mkdir()
    for argv, what in (([str(tmp_path / "missing.jpg")], "no such file"), ([str(tmp_path / "empty")], "no image files"),
                       ([str(tmp_path), "--tta", "flip,mirror"], "unknown --tta")):
        assert infer.main(["--checkpoint", str(tiny_checkpoint), "--input", *argv]) == 2
        err = capsys.readouterr().err
        assert err.startswith("infer: error: ") and what in err and err.count("\n") == 1, err


def test_infer_tool_scores_a_test_set_with_tta(tmp_path: Path, tiny_checkpoint: Path) -> None:
    from detection.data import SYNTHETIC_CLASSES, generate_synthetic

    assert list(SYNTHETIC_CLASSES) == TINY_CLASSES
    generate_synthetic(tmp_path / "data", num_train=2, num_test=3, image_size=64)
    out = tmp_path / "eval"
    for tta in ("", "flip"):
        assert infer.main(["--checkpoint", str(tiny_checkpoint), "--eval-dataset", "synthetic-test", "--data-root",
                           str(tmp_path / "data"), "--output", str(out), "--tta", tta, "--cpu"]) == 0
        metrics = json.loads((out / "metrics.json").read_text())
        assert metrics["num_images"] == 3 and metrics["tta"] == (tta or "off")
        assert 0.0 <= metrics["mAP"] <= 1.0 and set(metrics["per_class"]) <= set(TINY_CLASSES)


def test_recursive_and_glob_inputs_list_the_files_passed_over(tmp_path: Path, tiny_checkpoint: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    """--recursive takes sub-folders (names relative to the folder, the drawn images mirror it); a pattern spans
    folders with **; files that are not images it reads (.avif) are listed on stderr and in detections.json."""
    root = tmp_path / "shots"
    (root / "day").mkdir(parents=True)
    (root / "night").mkdir()
    for i, name in enumerate(("a.png", "day/a.png", "night/b.jpg")):
        cv2.imwrite(str(root / name), cv2.cvtColor(noise_image(64, 80, i), cv2.COLOR_RGB2BGR))
    (root / "day" / "c.avif").write_bytes(b"\x00\x00\x00\x1cftypavif")
    out = tmp_path / "out"
    assert infer.main(["--checkpoint", str(tiny_checkpoint), "--input", str(root), "--recursive", "--output",
                       str(out), "--cpu", "--score-thresh", "0.0"]) == 0
    data = json.loads((out / "detections.json").read_text())
    assert sorted(data["images"]) == ["a.png", "day/a.png", "night/b.jpg"]
    assert data["passed_over"] == ["day/c.avif"]
    assert "passed over 1 file(s) that are not images it reads (.avif: 1): day/c.avif" in capsys.readouterr().err
    assert (out / "day" / "a.png").is_file() and (out / "night" / "b.jpg").is_file()
    coco = json.loads((out / "coco_results.json").read_text())
    assert coco and all(isinstance(r["image_id"], int) for r in coco)

    files, passed = infer.collect_inputs([f"{root}/**/*.png", str(root / "night" / "b.jpg")])
    assert sorted(files.values()) == ["a.png", "b.jpg", "day/a.png"] and not passed
    assert sorted(infer.collect_inputs([str(root)])[0].values()) == ["a.png"]  # not recursive: the folder only
    with pytest.raises(Exception, match="no file matches"):
        infer.collect_inputs([f"{root}/*.tiff"])


def test_coco_results_image_ids_are_integers() -> None:
    """The dataset's ids where they are integers; a string id (VOC "000001") or an unknown file gets the next
    free integer after the largest known one, so ids never mix types or clash."""
    names = {Path(n): n for n in ("a.jpg", "b.jpg", "c.jpg", "d.jpg")}
    ids = infer.integer_image_ids(names, {"a.jpg": 7, "b.jpg": "000002", "d.jpg": 3})
    assert ids == {Path("a.jpg"): 7, Path("b.jpg"): 9, Path("c.jpg"): 10, Path("d.jpg"): 3}
    assert list(infer.integer_image_ids(names, {}).values()) == [0, 1, 2, 3]
