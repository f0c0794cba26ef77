"""tools/eval_det.py through its main(argv): devkit results files, one-line errors, a checkpoint of a tiny real
detector, COCO results files (when the real COCO val2014 sample is present)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from detection.data import VOC_CLASSES, build_dataset
from detection.data.transforms import DetectionTransform
from detection.evaluation import VOCEvaluator, evaluate_detections
from tests.helpers import COCO_REFERENCE, REPO, SHARED_DATA, near_hit_detections
from tools import eval_det


def test_devkit_results_through_the_tool(voc07_test_root: Path, tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    dataset = build_dataset("voc07-test", voc07_test_root, train=False,
                            transform=DetectionTransform.resize_only(64, 128))
    assert dataset.default_metric == "voc07"
    dets = near_hit_detections(dataset)
    expected = evaluate_detections([dataset.get_ground_truth(i) for i in range(len(dataset))], dets,
                                   VOC_CLASSES, use_07_metric=True)
    # cat has only a difficult box -> no AP; dog/person/car found, car with a confident false positive first
    assert expected["per_class"]["cat"] is None and expected["per_class"]["dog"] == pytest.approx(1.0)
    assert 0 < expected["per_class"]["car"] < 1
    ev = VOCEvaluator(dataset, VOC_CLASSES, use_07_metric=True)
    for i, d in enumerate(dets):
        ev.add({"index": i, "image_id": dataset.image_ids[i]}, d)
    ev.write_devkit_results(tmp_path / "devkit")

    out_json = tmp_path / "metrics.json"
    rc = eval_det.main(["--dataset", "voc07-test", "--data-root", str(voc07_test_root), "--results",
                        str(tmp_path / "devkit"), "--output", str(out_json), "--pr-curves",
                        str(tmp_path / "pr.png"), "--write-devkit", str(tmp_path / "devkit2")])
    assert rc == 0
    metrics = json.loads(out_json.read_text())
    assert metrics["metric"] == "voc07"
    assert metrics["mAP"] == pytest.approx(expected["mAP"], abs=1e-9)
    assert metrics["per_class"] == pytest.approx(expected["per_class"])
    printed = capsys.readouterr().out
    assert "mAP" in printed and "dog" in printed and "no ground truth" in printed
    assert (tmp_path / "pr.png").stat().st_size > 1000
    assert ((tmp_path / "devkit2" / "comp4_det_test_dog.txt").read_text()
            == (tmp_path / "devkit" / "comp4_det_test_dog.txt").read_text())
    # the area metric on request differs from the 11-point one
    rc = eval_det.main(["--dataset", "voc07-test", "--data-root", str(voc07_test_root), "--results",
                        str(tmp_path / "devkit"), "--metric", "voc", "--output", str(out_json)])
    assert rc == 0
    area = evaluate_detections([dataset.get_ground_truth(i) for i in range(len(dataset))], dets, VOC_CLASSES)
    assert json.loads(out_json.read_text())["mAP"] == pytest.approx(area["mAP"], abs=1e-9)


def test_tool_errors_are_one_line(voc07_test_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc = eval_det.main(["--dataset", "voc07-test", "--data-root", str(voc07_test_root), "--results",
                        str(tmp_path / "none")])
    assert rc == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "none" in err
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "comp4_det_test_dog.txt").write_text("000001 0.9 1 2 3\n")
    rc = eval_det.main(["--dataset", "voc07-test", "--data-root", str(voc07_test_root), "--results",
                        str(tmp_path / "d")])
    assert rc == 2 and "comp4_det_test_dog.txt:1" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        eval_det.main(["--results", str(tmp_path / "d")])  # neither --dataset nor --gt-json


@pytest.mark.parametrize("config", ["synthetic_r18_c4.yaml", "synthetic_r18_fpn.yaml"])
def test_checkpoint_path_with_a_tiny_real_detector(voc07_test_root: Path, tmp_path: Path, config: str,
                                                   caplog: pytest.LogCaptureFixture,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    from detection.checkpoint import detector_payload
    from detection.config import load_detection_config
    from detection.faster_rcnn import build_faster_rcnn

    cfg = load_detection_config(REPO / "configs" / "det" / config, ["model.num_classes=20"])
    torch.manual_seed(0)
    model = build_faster_rcnn(cfg.model, class_names=VOC_CLASSES).eval()
    torch.save(detector_payload(model, cfg, VOC_CLASSES), tmp_path / "model.pth")
    out = tmp_path / "m.json"
    rc = eval_det.main(["--checkpoint", str(tmp_path / "model.pth"), "--dataset", "voc07-test", "--data-root",
                        str(voc07_test_root), "--cpu", "--num-workers", "0", "--batch-size", "2", "--no-progress",
                        "--output", str(out), "--write-devkit", str(tmp_path / "dk")])
    assert rc == 0
    metrics = json.loads(out.read_text())
    # an untrained detector: the numbers are whatever it scores, but every piece of the report must be there
    assert metrics["num_images"] == 4 and metrics["metric"] == "voc07"
    assert set(metrics["per_class"]) == set(VOC_CLASSES) and 0.0 <= metrics["mAP"] <= 1.0
    assert len(list((tmp_path / "dk").glob("comp4_det_test_*.txt"))) == 20
    # Another test size from the command line: said in the log, and an impossible one is one line.
    with caplog.at_level("INFO"):
        assert eval_det.main(["--checkpoint", str(tmp_path / "model.pth"), "--dataset", "voc07-test", "--data-root",
                              str(voc07_test_root), "--cpu", "--num-workers", "0", "--no-progress",
                              "--min-size", "64", "--max-size", "96"]) == 0
    assert "at test size 64/96" in caplog.text
    capsys.readouterr()
    assert eval_det.main(["--checkpoint", str(tmp_path / "model.pth"), "--dataset", "voc07-test", "--data-root",
                          str(voc07_test_root), "--cpu", "--min-size", "200", "--max-size", "100"]) == 2
    assert "--min-size 200 --max-size 100" in capsys.readouterr().err


@pytest.mark.skipif(not (SHARED_DATA / "coco").is_dir(), reason="../shared/data not present")
def test_real_coco_sample_through_the_tool(tmp_path: Path) -> None:
    out = tmp_path / "coco.json"
    rc = eval_det.main(["--gt-json", str(SHARED_DATA / "coco" / "val2014-first100-gt" / "sampled_gts_bbox_area.json"),
                        "--results", str(SHARED_DATA / "coco" / "val2014-first100-fake-results.json"),
                        "--output", str(out)])
    assert rc == 0
    metrics = json.loads(out.read_text())
    for name, value in COCO_REFERENCE.items():
        assert metrics[name] == pytest.approx(value, abs=1e-6), name
    assert metrics["mAP"] == metrics["AP"] and len(metrics["per_class"]) == 80


@pytest.mark.skipif(not (SHARED_DATA / "coco").is_dir(), reason="../shared/data not present")
def test_coco_results_against_a_dataset_by_name(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A COCO results file scored through the dataset catalog (coco2017-val layout) equals the reference numbers,
    and is re-written unchanged in content by --write-coco-json."""
    ann = tmp_path / "data" / "coco" / "annotations"
    ann.mkdir(parents=True)
    (ann / "instances_val2017.json").symlink_to(
        (SHARED_DATA / "coco" / "val2014-first100-gt" / "sampled_gts_bbox_area.json").resolve())
    fake = SHARED_DATA / "coco" / "val2014-first100-fake-results.json"
    out, rewritten = tmp_path / "m.json", tmp_path / "re.json"
    rc = eval_det.main(["--dataset", "coco2017-val", "--data-root", str(tmp_path / "data"), "--results", str(fake),
                        "--output", str(out), "--write-coco-json", str(rewritten)])
    assert rc == 0
    metrics = json.loads(out.read_text())
    for name, value in COCO_REFERENCE.items():
        assert metrics[name] == pytest.approx(value, abs=1e-6), name
    key = (lambda r: (r["image_id"], r["category_id"], r["score"], *r["bbox"]))  # noqa: E731
    assert sorted(map(key, json.loads(rewritten.read_text()))) == sorted(map(key, json.loads(fake.read_text())))
    rc = eval_det.main(["--dataset", "coco2017-val", "--data-root", str(tmp_path / "data"), "--results", str(fake),
                        "--write-devkit", str(tmp_path / "dk")])
    assert rc == 2 and "--write-devkit" in capsys.readouterr().err


def test_coco_no_such_objects_prints_as_n_a() -> None:
    """pycocotools' -1 ("no objects of this size in the ground truth") is not a score of -100 %."""
    from detection.evaluation import format_metrics

    text = format_metrics({"mAP": 0.5, "AP": 0.5, "AP50": 0.7, "APs": -1.0, "APm": 0.25})
    assert "APs: n/a (no such objects)" in text and "-100" not in text and "APm: 25.00" in text
