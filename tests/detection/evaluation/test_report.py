"""detection.evaluation.report: hand-built ground truth and detections with known counts, confusion cells and AP
(against detection.evaluation.voc), the JSON / PNG writers, the COCO conversions, and tools/eval_det.py --report
on devkit files, COCO results files and a checkpoint."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from detection.data import SYNTHETIC_CLASSES, VOC_CLASSES, build_coco_dataset, build_dataset, generate_synthetic
from detection.data.coco import load_coco
from detection.data.transforms import DetectionTransform
from detection.evaluation import (
    COCOEvaluator,
    VOCEvaluator,
    build_report,
    evaluate_detections,
    report_from_evaluator,
    write_report,
)
from detection.evaluation.report import BACKGROUND, coco_ground_truth
from resbackbone.errors import DataError
from tests.helpers import near_hit_detections
from tools import eval_det

NAMES = ("a", "b", "c")
K = len(NAMES)
BG = K  # the background row / missed column of the confusion matrix
REPORT_PNGS = ("confusion_matrix.png", "pr_curves.png")


def _gt(boxes: list[list[float]], labels: list[int], difficult: list[bool] | None = None) -> dict[str, np.ndarray]:
    return {"boxes": np.asarray(boxes, np.float32).reshape(-1, 4), "labels": np.asarray(labels, np.int64),
            "difficult": np.asarray(difficult if difficult is not None else [False] * len(labels), bool)}


def _det(boxes: list[list[float]], scores: list[float], labels: list[int]) -> dict[str, np.ndarray]:
    return {"boxes": np.asarray(boxes, np.float64).reshape(-1, 4), "scores": np.asarray(scores, np.float64),
            "labels": np.asarray(labels, np.int64)}


def _no_nan_json(text: str) -> Any:
    def refuse(token: str) -> None:
        raise AssertionError(f"report.json contains {token}: not valid JSON")

    return json.loads(text, parse_constant=refuse)


def test_perfect_detector() -> None:
    gt = [_gt([[0, 0, 10, 10], [20, 20, 50, 40]], [0, 1]), _gt([[5, 5, 30, 30]], [2]),
          _gt([[0, 0, 20, 20], [30, 30, 60, 60]], [0, 0])]
    dets = [_det(g["boxes"].tolist(), [0.9] * len(g["labels"]), g["labels"].tolist()) for g in gt]
    r = build_report(gt, dets, NAMES)
    np.testing.assert_array_equal(r.ap, [1.0, 1.0, 1.0])
    np.testing.assert_array_equal(r.precision, [1.0, 1.0, 1.0])
    np.testing.assert_array_equal(r.recall, [1.0, 1.0, 1.0])
    np.testing.assert_array_equal(r.num_gt, [3, 1, 1])
    np.testing.assert_array_equal(r.tp, [3, 1, 1])
    assert r.fp.sum() == r.fn.sum() == r.ignored.sum() == 0
    assert r.mAP == 1.0
    np.testing.assert_array_equal(r.confusion, np.diag([3, 1, 1, 0]))


def test_class_swap_lands_off_diagonal() -> None:
    # A right box with the wrong class: row "a" (the truth), column "b" (the prediction); the box is matched (not
    # missed) and the detection is not a background false positive.
    r = build_report([_gt([[0, 0, 20, 20]], [0])], [_det([[0, 0, 20, 20]], [0.9], [1])], NAMES)
    expected = np.zeros((K + 1, K + 1), np.int64)
    expected[0, 1] = 1
    np.testing.assert_array_equal(r.confusion, expected)
    # The per-class (devkit, same-class) numbers: a missed "a", a false "b".
    assert (r.tp[0], r.fn[0], r.fp[1], r.num_dets[1]) == (0, 1, 1, 1)
    assert r.ap[0] == 0.0 and math.isnan(r.ap[1])  # "b" has no ground truth: no AP, as voc.py


def test_background_false_positives_and_missed_boxes() -> None:
    gt = [_gt([[0, 0, 10, 10], [50, 50, 70, 70]], [0, 1])]
    dets = [_det([[0, 0, 10, 10],  # hit on "a"
                  [100, 100, 120, 120],  # "c" on nothing -> background row
                  [1, 1, 10, 10]],  # a duplicate of the hit (IoU 0.81, box taken) -> background row too
                 [0.9, 0.8, 0.7], [0, 2, 0])]
    r = build_report(gt, dets, NAMES)
    expected = np.zeros((K + 1, K + 1), np.int64)
    expected[0, 0] = 1
    expected[BG, 2] = 1
    expected[BG, 0] = 1
    expected[1, BG] = 1  # "b" found by nothing -> missed column
    np.testing.assert_array_equal(r.confusion, expected)
    assert (r.tp[0], r.fp[0], r.fn[0]) == (1, 1, 0)  # the devkit also calls the duplicate a false positive
    assert (r.num_dets[1], r.fn[1], r.recall[1]) == (0, 1, 0.0) and math.isnan(r.precision[1])
    assert r.fp[2] == 1 and r.precision[2] == 0.0 and math.isnan(r.recall[2])


def test_confusion_matching_is_greedy_by_score_and_best_iou() -> None:
    # A confident "b" on the "a" box takes it before the better-placed but lower-scoring "a": the confusion is
    # what a user at this threshold would see; the "a" detection is then a background false positive.
    gt = [_gt([[0, 0, 20, 20]], [0])]
    dets = [_det([[0, 0, 20, 20], [0, 0, 20, 16]], [0.6, 0.9], [0, 1])]
    r = build_report(gt, dets, NAMES)
    assert (r.confusion[0, 1], r.confusion[BG, 0], r.confusion[0, 0]) == (1, 1, 0)
    assert r.tp[0] == 1  # the per-class (same-class, devkit) count is unaffected by the "b"
    # One detection over two boxes of other classes: the higher IoU wins, the other box is missed.
    gt = [_gt([[0, 0, 20, 20], [4, 0, 24, 20]], [1, 2])]  # IoU with the detection: 0.6 and 1
    r = build_report(gt, [_det([[4, 0, 24, 20]], [0.9], [0])], NAMES)
    assert (r.confusion[2, 0], r.confusion[1, BG], r.confusion[1, 0]) == (1, 1, 0)


def test_iou_exactly_at_the_threshold_is_not_a_match() -> None:
    # IoU = 100 / 200 = 0.5 exactly: "> 0.5" as the devkit, so a miss plus a background detection.
    gt, dets = [_gt([[0, 0, 10, 10]], [0])], [_det([[0, 0, 10, 20]], [0.9], [0])]
    r = build_report(gt, dets, NAMES)
    assert (r.confusion[0, BG], r.confusion[BG, 0], r.tp[0]) == (1, 1, 0)
    r = build_report(gt, dets, NAMES, iou_thresh=0.45)
    assert (r.confusion[0, 0], r.tp[0], r.fp[0]) == (1, 1, 0)


def test_difficult_boxes_are_neither_tp_nor_missed() -> None:
    gt = [_gt([[0, 0, 20, 20], [40, 40, 60, 60], [70, 0, 90, 20]], [0, 0, 0], [False, True, True])]
    dets = [_det([[0, 0, 20, 20], [40, 40, 60, 60]], [0.9, 0.8], [0, 0])]  # the 2nd on a difficult box
    r = build_report(gt, dets, NAMES)
    assert (r.num_gt[0], r.num_dets[0], r.tp[0], r.fp[0], r.fn[0], r.ignored[0]) == (1, 2, 1, 0, 0, 1)
    assert r.precision[0] == r.recall[0] == r.ap[0] == 1.0
    expected = np.zeros((K + 1, K + 1), np.int64)
    expected[0, 0] = 1  # the detection on the difficult box is nowhere; the undetected difficult box not missed
    np.testing.assert_array_equal(r.confusion, expected)
    # Only difficult boxes: no ground truth to count, AP undefined (None in JSON, left out of mAP).
    r = build_report([_gt([[0, 0, 20, 20]], [1], [True])], [_det([[0, 0, 20, 20]], [0.9], [1])], NAMES)
    assert r.num_gt[1] == 0 and math.isnan(r.ap[1]) and r.ignored[1] == 1 and not r.confusion.any()
    assert r.to_dict()["per_class"]["b"]["AP"] is None


def test_score_threshold_moves_the_operating_point() -> None:
    boxes = [[0, 0, 10, 10], [20, 0, 30, 10], [40, 0, 50, 10]]
    gt = [_gt(boxes, [0, 0, 0])]
    # scores: hit 0.9, background 0.7, hit 0.6, hit 0.3
    dets = [_det([boxes[0], [0, 60, 10, 70], boxes[1], boxes[2]], [0.9, 0.7, 0.6, 0.3], [0, 0, 0, 0])]
    # dets, TP, FP, FN; a score equal to the threshold counts (0.6)
    want = {0.5: (3, 2, 1, 1), 0.6: (3, 2, 1, 1), 0.65: (2, 1, 1, 2), 0.2: (4, 3, 1, 0), 0.95: (0, 0, 0, 3)}
    aps = []
    for thresh, (nd, tp, fp, fn) in want.items():
        r = build_report(gt, dets, ("a",), score_thresh=thresh)
        assert (r.num_dets[0], r.tp[0], r.fp[0], r.fn[0]) == (nd, tp, fp, fn), thresh
        assert r.recall[0] == pytest.approx(tp / 3)
        if nd:
            assert r.precision[0] == pytest.approx(tp / (tp + fp))
            # the operating point is a point of the PR curve
            assert r.curves["a"]["recall"][nd - 1] == pytest.approx(r.recall[0])
            assert r.curves["a"]["precision"][nd - 1] == pytest.approx(r.precision[0])
        else:
            assert math.isnan(r.precision[0])
        assert r.confusion[0, 0] == tp and r.confusion[1, 0] == fp and r.confusion[0, 1] == fn
        aps.append(r.ap[0])
    # AP uses every detection, whatever the threshold: precision 1, 1/2, 2/3, 3/4 at recall 1/3, 1/3, 2/3, 1
    # -> envelope 1 up to recall 1/3, then 3/4
    assert aps == pytest.approx([1 / 3 + 0.75 * 2 / 3] * len(want))


def _random_case(seed: int, num_images: int = 12, k: int = 4) -> tuple[list[dict], list[dict]]:
    """Random boxes; class k-1 never in the ground truth; detections = jittered boxes (some relabelled) + noise."""
    rng = np.random.default_rng(seed)
    gt, dets = [], []
    for _ in range(num_images):
        n = int(rng.integers(0, 6))
        xy = rng.uniform(0, 80, (n, 2))
        wh = rng.uniform(8, 40, (n, 2))
        boxes = np.concatenate([xy, xy + wh], axis=1)
        labels = rng.integers(0, k - 1, n)
        gt.append(_gt(boxes.tolist(), labels.tolist(), (rng.random(n) < 0.2).tolist()))
        jitter = boxes + rng.normal(0, 3, boxes.shape)
        d_labels = np.where(rng.random(n) < 0.2, rng.integers(0, k, n), labels)
        m = int(rng.integers(0, 4))
        noise_xy = rng.uniform(0, 80, (m, 2))
        noise = np.concatenate([noise_xy, noise_xy + rng.uniform(5, 30, (m, 2))], axis=1)
        dets.append(_det(np.concatenate([jitter, noise]).tolist(), rng.random(n + m).round(2).tolist(),
                         np.concatenate([d_labels, rng.integers(0, k, m)]).tolist()))
    return gt, dets


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ap_and_curves_are_voc_py(seed: int) -> None:
    gt, dets = _random_case(seed)
    names = ("w", "x", "y", "z")
    # rounded scores have ties: the order among them must be the same as voc.py's too
    ref = evaluate_detections(gt, dets, names, iou_thresh=0.5, return_curves=True)
    r = build_report(gt, dets, names)
    assert ref["per_class"]["z"] is None and math.isnan(r.ap[3])
    for c, name in enumerate(names):
        want = ref["per_class"][name]
        assert (math.isnan(r.ap[c]) if want is None else r.ap[c] == want), name
        np.testing.assert_array_equal(r.curves[name]["recall"], ref["curves"][name]["recall"])
        np.testing.assert_array_equal(r.curves[name]["precision"], ref["curves"][name]["precision"])
        assert r.num_gt[c] == ref["num_gt"][name]
    assert r.mAP == ref["mAP"]
    # Counting identities at the threshold, and every counted detection / box lands in exactly one cell.
    np.testing.assert_array_equal(r.tp + r.fp + r.ignored, r.num_dets)
    np.testing.assert_array_equal(r.tp + r.fn, r.num_gt)
    counted = sum(int((d["scores"] >= 0.5).sum()) for d in dets)
    assert r.confusion[:, :4].sum() <= counted  # some detections sit on difficult boxes only: in no cell
    np.testing.assert_array_equal(r.confusion[:4].sum(axis=1), r.num_gt)  # each box: matched once or missed
    plain = build_report([{**g, "difficult": np.zeros_like(g["difficult"])} for g in gt], dets, names)
    assert plain.confusion[:, :4].sum() == counted  # without difficult boxes every detection is in one cell
    # a different IoU threshold is voc.py's at that threshold too
    ref75 = evaluate_detections(gt, dets, names, iou_thresh=0.75)
    r75 = build_report(gt, dets, names, iou_thresh=0.75)
    assert r75.mAP == ref75["mAP"]


def test_bad_inputs_are_clear_errors() -> None:
    gt = [_gt([[0, 0, 10, 10]], [0])]
    with pytest.raises(DataError, match="label 3 outside"):
        build_report(gt, [_det([[0, 0, 10, 10]], [0.9], [3])], NAMES)
    with pytest.raises(ValueError, match="1 ground-truth images but 2"):
        build_report(gt, [_det([], [], [])] * 2, NAMES)
    with pytest.raises(ValueError, match="iou_thresh"):
        build_report(gt, [_det([], [], [])], NAMES, iou_thresh=1.0)


def test_writers_json_table_and_pngs(tmp_path: Path) -> None:
    gt, dets = _random_case(0)
    names = ("w", "x", "y", "z")
    r = build_report(gt, dets, names)
    paths = write_report(r, tmp_path / "rep")
    data = _no_nan_json(paths["report.json"].read_text())
    assert data["confusion_matrix"]["labels"] == [*names, BACKGROUND]
    assert data["confusion_matrix"]["matrix"] == r.confusion.tolist()
    assert data["per_class"]["x"]["TP"] == int(r.tp[1]) and data["per_class"]["z"]["AP"] is None
    assert data["mAP"] == pytest.approx(r.mAP) and data["total"]["TP"] == int(r.tp.sum())
    assert data["curves"]["w"]["recall"] == r.curves["w"]["recall"].tolist()
    text = paths["report.txt"].read_text()
    assert text.strip() == r.format_table()
    assert "gt \\ pred" in text and BACKGROUND in text and "prec %" in text
    for name in ("confusion_matrix.png", "pr_curves.png"):
        img = cv2.imread(str(paths[name]))
        assert img is not None, name
        assert img.shape[0] >= 300 and img.shape[1] >= 300 and img.std() > 5, (name, img.shape)  # not blank
    # Thinned curves keep the first and last points.
    n = len(r.curves["w"]["recall"])
    assert n > 5
    thin = r.to_dict(max_curve_points=5)["curves"]["w"]
    assert len(thin["recall"]) == 5 and thin["recall"][-1] == r.curves["w"]["recall"][-1]
    assert thin["scores"][0] == r.curves["w"]["scores"][0]


def _write_coco_gt(path: Path) -> None:
    images = [{"id": 7, "file_name": "7.jpg", "width": 64, "height": 48},
              {"id": 3, "file_name": "3.jpg", "width": 64, "height": 64}]
    anns = [{"id": 1, "image_id": 7, "category_id": 5, "bbox": [1.5, 2, 20, 10], "area": 200, "iscrowd": 0},
            {"id": 2, "image_id": 7, "category_id": 9, "bbox": [0, 0, 60, 40], "area": 2400, "iscrowd": 1},
            {"id": 3, "image_id": 3, "category_id": 9, "bbox": [10, 10, 0.5, 30], "area": 15, "iscrowd": 0},
            {"id": 4, "image_id": 3, "category_id": 9, "bbox": [30, 5, 20, 30], "area": 600, "iscrowd": 0}]
    cats = [{"id": 5, "name": "five"}, {"id": 9, "name": "nine"}]
    path.write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))


def test_coco_ground_truth_follows_the_loader(tmp_path: Path) -> None:
    """Rebuilt from the evaluator's COCO = the dataset's get_ground_truth: crowd -> difficult, sub-pixel dropped;
    and a detection on the crowd region is ignored, not a false positive, with or without the dataset."""
    ann = tmp_path / "gt.json"
    _write_coco_gt(ann)
    dataset = build_coco_dataset(ann, tmp_path, train=False)
    ev = COCOEvaluator.from_dataset(dataset)
    gt = coco_ground_truth(ev.coco_gt, ev.image_ids, ev.contiguous_to_category_id)
    assert [len(g["boxes"]) for g in gt] == [1, 2]  # image 3: the 0.5 px wide box is not ground truth
    for i, g in enumerate(gt):
        want = dataset.get_ground_truth(i)
        assert g["image_id"] == want["image_id"]
        for key in ("boxes", "labels", "difficult"):
            np.testing.assert_array_equal(g[key], want[key], err_msg=key)
    assert gt[1]["difficult"].tolist() == [False, True]  # image 7: the crowd region
    ev.add({"image_id": 7}, _det([[0, 0, 60, 40], [1.5, 2, 21.5, 12]], [0.9, 0.8], [1, 0]))
    for r in (report_from_evaluator(ev), report_from_evaluator(ev, dataset=dataset)):
        assert r.class_names == ("five", "nine")
        assert (r.num_gt.tolist(), r.tp.tolist(), r.fp.tolist(), r.ignored.tolist()) == ([1, 1], [1, 0], [0, 0],
                                                                                          [0, 1])
        assert r.confusion.tolist() == [[1, 0, 0], [0, 0, 1], [0, 0, 0]]  # "nine" of image 3 missed


@pytest.fixture
def small_synthetic(tmp_path: Path) -> Path:
    """A data root with a 6-image, 64 px synthetic test split (VOC XML + COCO JSON of the same boxes)."""
    generate_synthetic(tmp_path / "syn", num_train=1, num_test=6, image_size=64, seed=0)
    return tmp_path / "syn"  # the data root: build_dataset("synthetic-test", root) reads root/synthetic


def _near_hits(dataset: Any) -> list[dict[str, np.ndarray]]:
    """Each box shifted by 2 px, the first of each image relabelled (a confusion), one background box."""
    out = []
    for i in range(len(dataset)):
        g = dataset.get_ground_truth(i)
        labels = g["labels"].copy()
        if len(labels):
            labels[0] = (labels[0] + 1) % len(dataset.class_names)
        boxes = np.concatenate([g["boxes"] + 2.0, [[0.0, 0.0, 6.0, 6.0]]])
        scores = np.concatenate([np.linspace(0.9, 0.4, len(labels)), [0.8]])
        out.append(_det(boxes.tolist(), scores.tolist(), [*labels.tolist(), 0]))
    return out


def _report_fields(data: dict) -> tuple:
    return data["per_class"], data["confusion_matrix"]["matrix"], data["mAP"]


def test_eval_det_report_from_devkit_and_coco_results(voc07_test_root: Path, small_synthetic: Path, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    # 1. devkit files on the VOC2007 test tree: known counts (near-hits found, duplicates under the threshold,
    #    one confident "car" false positive per image, "cat"'s only box difficult).
    dataset = build_dataset("voc07-test", voc07_test_root, train=False,
                            transform=DetectionTransform.resize_only(64, 128))
    dets = near_hit_detections(dataset)
    ev = VOCEvaluator(dataset, VOC_CLASSES, use_07_metric=True)
    for i, d in enumerate(dets):
        ev.add({"index": i}, d)
    ev.write_devkit_results(tmp_path / "devkit")
    out = tmp_path / "rep"
    capsys.readouterr()
    rc = eval_det.main(["--dataset", "voc07-test", "--data-root", str(voc07_test_root), "--results",
                        str(tmp_path / "devkit"), "--report", str(out), "--score-thresh", "0.55"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "gt \\ pred" in printed and "mAP" in printed  # the report table and the usual metrics
    data = _no_nan_json((out / "report.json").read_text())
    pc = data["per_class"]
    assert (pc["car"]["TP"], pc["car"]["FP"], pc["car"]["FN"]) == (2, 4, 0)
    assert (pc["dog"]["TP"], pc["dog"]["FP"], pc["person"]["TP"]) == (2, 0, 1)
    assert pc["cat"]["num_gt"] == 0 and pc["cat"]["ignored"] == 1
    cm = np.asarray(data["confusion_matrix"]["matrix"])
    car, bg = VOC_CLASSES.index("car"), len(VOC_CLASSES)
    assert cm[bg, car] == 4 and cm[car, car] == 2 and cm[:, bg].sum() == 0
    assert np.trace(cm) == 5 and cm.sum() == 9
    # The report's AP is the area metric even when the tool's own metric is voc07; devkit files round AP inputs
    # (scores to 3 decimals, boxes to 0.1 px), which these values survive exactly.
    area = evaluate_detections([dataset.get_ground_truth(i) for i in range(len(dataset))], dets, VOC_CLASSES)
    assert data["mAP"] == pytest.approx(area["mAP"], abs=1e-12)
    for name in REPORT_PNGS:
        assert cv2.imread(str(out / name)) is not None

    # 2. a COCO results file on a COCO-format set, and the same file against its annotation file alone: the same
    #    report as the VOC path computes from the same detections.
    sd = build_dataset("synthetic-test", small_synthetic, train=False)
    sdets = _near_hits(sd)
    expected = build_report([sd.get_ground_truth(i) for i in range(len(sd))], sdets, SYNTHETIC_CLASSES).to_dict()
    coco_ev = COCOEvaluator.from_dataset(sd)
    for i, d in enumerate(sdets):
        coco_ev.add({"image_id": sd.image_ids[i]}, d)
    assert expected["confusion_matrix"]["matrix"] == report_from_evaluator(coco_ev).confusion.tolist()
    results = coco_ev.write_results(tmp_path / "dets.json")
    rc = eval_det.main(["--dataset", "synthetic-test", "--data-root", str(small_synthetic), "--metric", "coco",
                        "--results", str(results), "--report", str(tmp_path / "rep_coco")])
    assert rc == 0
    got = _no_nan_json((tmp_path / "rep_coco" / "report.json").read_text())
    off_diagonal = np.asarray(got["confusion_matrix"]["matrix"])[:3, :3]
    assert (off_diagonal - np.diag(np.diag(off_diagonal))).sum() == len(sd)  # one relabelled box per image
    # XYXY -> XYWH -> XYXY moves boxes by float rounding only: the same counts, hence the same numbers exactly
    assert _report_fields(got) == _report_fields(expected)
    ann = small_synthetic / "synthetic" / "annotations" / "instances_test.json"
    assert load_coco(ann).getCatIds() == [1, 2, 3]
    rc = eval_det.main(["--gt-json", str(ann), "--results", str(results), "--report", str(tmp_path / "rep_gt")])
    assert rc == 0
    got = _no_nan_json((tmp_path / "rep_gt" / "report.json").read_text())
    assert got["confusion_matrix"]["matrix"] == expected["confusion_matrix"]["matrix"]
    assert got["per_class"] == expected["per_class"]
    # a bad threshold is a usage error
    with pytest.raises(SystemExit):
        eval_det.main(["--gt-json", str(ann), "--results", str(results), "--report", "x", "--report-iou", "1.5"])


def test_eval_det_report_from_a_checkpoint(tiny_checkpoint: Path, small_synthetic: Path, tmp_path: Path,
                                           one_thread: None) -> None:
    """The model path: an untrained detector's numbers are whatever they are, but they add up."""
    out = tmp_path / "rep"
    rc = eval_det.main(["--checkpoint", str(tiny_checkpoint), "--dataset", "synthetic-test", "--data-root",
                        str(small_synthetic), "--cpu", "--num-workers", "0", "--no-progress", "--report",
                        str(out), "--score-thresh", "0.0"])
    assert rc == 0
    data = _no_nan_json((out / "report.json").read_text())
    sd = build_dataset("synthetic-test", small_synthetic, train=False)
    num_gt = sum(len(sd.get_ground_truth(i)["boxes"]) for i in range(len(sd)))
    assert data["num_images"] == len(sd) and data["total"]["num_gt"] == num_gt
    cm = np.asarray(data["confusion_matrix"]["matrix"])
    assert cm[:3].sum() == num_gt  # every box matched once or missed
    assert cm[:, :3].sum() == data["total"]["num_dets"]  # no difficult boxes: every detection is in a cell
    for name in REPORT_PNGS:
        assert cv2.imread(str(out / name)) is not None
