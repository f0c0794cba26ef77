"""What the tools do with bad input and broken surroundings, asserted exactly: one line naming the file, a counted
skip, or a refusal; and nothing lost (the previous file intact, final weights written before a failing evaluation).
"""

from __future__ import annotations

import errno
import json
import math
from pathlib import Path

import cv2
import pytest
import torch

from detection.evaluation import build_evaluator, score_predictions
from detection.evaluation.inference import ModelOutputError
from resbackbone import serialization
from resbackbone.errors import OutputError
from tests.helpers import TINY_TRAINING, noise_image, write_voc_year
from tools import eval_det, infer, train_det

pytestmark = pytest.mark.usefixtures("one_thread")


def _one_line(err: str, *needles: str) -> None:
    err = err.strip()
    assert err and "\n" not in err and "Traceback" not in err, err
    for n in needles:
        assert n in err, (n, err)


def test_bad_image_at_the_final_evaluation_in_a_worker_is_one_line_and_the_model_is_kept(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "data"
    write_voc_year(root, "2007", {"000001": (64, 48, [("dog", (5, 5, 40, 40), 0)]),
                                  "000002": (64, 48, [("cat", (3, 3, 30, 44), 0)]),
                                  "000003": (64, 48, [("car", (2, 2, 50, 30), 0)])},
                   {"trainval": ["000001", "000002"], "test": ["000003"]})
    bad = root / "VOCdevkit" / "VOC2007" / "JPEGImages" / "000003.jpg"
    bad.write_bytes(bad.read_bytes()[:100])  # truncated
    out = tmp_path / "out"
    rc = train_det.main(["--dataset", "voc07-trainval", "--test-dataset", "voc07-test", "--backbone", "resnet18",
                         "--backbone-weights", "none", "--data-root", str(root), "--output-dir", str(out),
                         "--max-iter", "2", "--no-progress", "--cpu", *TINY_TRAINING, "data.num_workers=1"])
    assert rc == 2
    _one_line(capsys.readouterr().err, str(bad), "(in DataLoader worker process 0)")
    assert (out / "model_final.pth").is_file()  # written before the evaluation: hours of training are not lost
    last = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    assert last["boxes_dropped"] == 0 and last["images_skipped"] == 0  # shown in the metrics


def test_infer_skips_and_reports_an_undecodable_file(tmp_path: Path, tiny_checkpoint: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    inputs = tmp_path / "in"
    inputs.mkdir()
    for name in ("a.png", "c.png"):
        cv2.imwrite(str(inputs / name), noise_image(64, 80, 0))
    (inputs / "b.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    out = tmp_path / "out"
    assert infer.main(["--checkpoint", str(tiny_checkpoint), "--input", str(inputs), "--output", str(out),
                       "--cpu", "--no-draw"]) == 0
    report = json.loads((out / "detections.json").read_text())
    assert sorted(report["images"]) == ["a.png", "c.png"]
    assert list(report["skipped"]) == ["b.jpg"] and "cannot decode" in report["skipped"]["b.jpg"]
    _one_line(capsys.readouterr().err.splitlines()[-1], "infer: skipped: cannot decode image", "b.jpg")
    (inputs / "a.png").write_bytes(b"")
    (inputs / "c.png").write_bytes(b"")
    assert infer.main(["--checkpoint", str(tiny_checkpoint), "--input", str(inputs), "--output", str(out),
                       "--cpu"]) == 2
    assert "infer: error: none of the 3 file" in capsys.readouterr().err


@pytest.mark.parametrize(("entry", "message"), [
    ({"image_id": 1, "category_id": 1, "bbox": [1, 1, 5, 5], "score": math.nan}, "score that is not a finite"),
    ({"image_id": 1, "category_id": 1, "bbox": [1, 1, 5, 5], "score": "0.9"}, "score that is not a finite"),
    ({"image_id": "1", "category_id": 1, "bbox": [1, 1, 5, 5], "score": 0.9}, "non-integer image_id"),
    ({"image_id": 1, "category_id": 1, "bbox": [1, 1, 5], "score": 0.9}, "bbox that is not 4 finite numbers"),
])
def test_malformed_or_nan_results_are_refused(tmp_path: Path, entry: dict, message: str,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    gt = tmp_path / "gt.json"
    gt.write_text(json.dumps({"images": [{"id": 1, "file_name": "a.png", "height": 32, "width": 32}],
                              "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 1, 5, 5],
                                               "area": 25, "iscrowd": 0}],
                              "categories": [{"id": 1, "name": "thing"}]}))
    results = tmp_path / "res.json"
    ok = {"image_id": 1, "category_id": 1, "bbox": [1, 1, 5, 5], "score": 0.5}
    results.write_text(json.dumps([ok, entry]))  # NaN is written as JSON NaN
    assert eval_det.main(["--results", str(results), "--gt-json", str(gt)]) == 2
    _one_line(capsys.readouterr().err, "res.json: entry 1", message)


def test_nan_in_devkit_results_is_refused(voc07_test_root: Path, tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "comp4_det_test_dog.txt").write_text("000001 0.9 10 12 50 60\n000004 nan 5 5 40 40\n")
    assert eval_det.main(["--dataset", "voc07-test", "--data-root", str(voc07_test_root), "--results",
                          str(tmp_path / "d")]) == 2
    _one_line(capsys.readouterr().err, "comp4_det_test_dog.txt:2", "not finite")


def test_non_finite_model_outputs_are_not_scored(voc07_test_root: Path) -> None:
    from detection.data import build_dataset

    ds = build_dataset("voc07-test", voc07_test_root, train=False)
    det = {"boxes": torch.tensor([[1.0, 1.0, 5.0, 5.0]]), "scores": torch.tensor([math.nan]),
           "labels": torch.tensor([0])}
    with pytest.raises(ModelOutputError, match="non-finite scores for image '000001'"):
        score_predictions([({"index": 0, "image_id": "000001"}, det)], build_evaluator(ds))


def test_full_disk_and_read_only_folder_are_one_line_and_keep_the_previous_file(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "model_0000100.pth"
    serialization.atomic_torch_save({"w": torch.ones(2)}, target)
    before = target.read_bytes()

    def full_disk(obj: object, f: object) -> None:  # what torch raises when the disk fills mid-write
        raise RuntimeError("[enforce fail at inline_container.cc:664] . PytorchStreamWriter failed writing file "
                           "data/3: file write failed")

    monkeypatch.setattr(serialization.torch, "save", full_disk)
    monkeypatch.setattr(serialization.shutil, "disk_usage", lambda p: type("U", (), {"free": 2**20})())
    with pytest.raises(OutputError, match=r"model_0000100\.pth: no space left on the device \(1\.0 MiB free\)"):
        serialization.atomic_torch_save({"w": torch.zeros(2)}, target)
    assert target.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == [target.name]
    monkeypatch.undo()

    def read_only(*args: object, **kwargs: object) -> None:
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(serialization.tempfile, "mkstemp", read_only)
    with pytest.raises(OutputError, match="cannot write .*model_0000100.pth: Read-only file system"):
        serialization.atomic_torch_save({"w": torch.zeros(2)}, target)
    assert target.read_bytes() == before
