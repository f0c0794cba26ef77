"""detection.evaluation.voc: VOC AP on hand-computed cases, against the devkit-literal reference loop
(voc_reference.py here), results-file round trip, evaluator plumbing, the real VOC2007 sample."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torchvision.ops import box_iou

from detection.data import build_dataset
from detection.evaluation import build_evaluator
from detection.evaluation.voc import (
    VOCEvaluator,
    evaluate_detections,
    read_devkit_results,
    to_devkit_boxes,
    voc_ap,
)
from tests.detection.evaluation.voc_reference import reference_voc_eval
from tests.helpers import SHARED_DATA


def _gt(boxes: list, labels: list, difficult: list | None = None) -> dict:
    return {"boxes": np.asarray(boxes, float).reshape(-1, 4), "labels": np.asarray(labels, np.int64),
            "difficult": np.asarray(difficult if difficult is not None else [False] * len(labels), bool)}


def _det(boxes: list, scores: list, labels: list) -> dict:
    return {"boxes": np.asarray(boxes, float).reshape(-1, 4), "scores": np.asarray(scores, float),
            "labels": np.asarray(labels, np.int64)}


# Two ground truth boxes of class 0; detections: hit g1 (0.9), duplicate of g1 (0.8), hit g2 (0.7).
# tp = [1, 0, 1], rec = [.5, .5, 1], prec = [1, .5, 2/3].
G1, G2 = [10, 10, 50, 50], [100, 100, 150, 160]
DUP_CASE_GT = [_gt([G1, G2], [0, 0])]
DUP_CASE_DET = [_det([G1, [11, 10, 50, 51], G2], [0.9, 0.8, 0.7], [0, 0, 0])]


def test_duplicates_are_false_positives_both_metrics() -> None:
    names = ["a"]
    area = evaluate_detections(DUP_CASE_GT, DUP_CASE_DET, names)
    # envelope: precision 1 up to recall .5, 2/3 from .5 to 1
    assert area["mAP"] == pytest.approx(0.5 * 1 + 0.5 * 2 / 3)
    v07 = evaluate_detections(DUP_CASE_GT, DUP_CASE_DET, names, use_07_metric=True)
    # 11 points: t = 0, .1, ..., .5 -> 1; t = .6, ..., 1 -> 2/3
    assert v07["mAP"] == pytest.approx((6 * 1 + 5 * 2 / 3) / 11)
    assert v07["metric"] == "voc07" and area["metric"] == "voc"


def test_difficult_ground_truth_is_neither_tp_nor_fp() -> None:
    difficult_box = [300, 300, 340, 340]
    gt = [_gt([G1, G2, difficult_box], [0, 0, 0], [False, False, True])]
    # A confident detection on the difficult box changes nothing; npos stays 2.
    det = [_det([difficult_box, G1, [11, 10, 50, 51], G2], [0.95, 0.9, 0.8, 0.7], [0, 0, 0, 0])]
    out = evaluate_detections(gt, det, ["a"])
    assert out["mAP"] == pytest.approx(0.5 * 1 + 0.5 * 2 / 3)
    assert out["num_gt"] == {"a": 2}
    # Marking the box non-difficult makes that detection a TP and npos 3: rec [1/3, 2/3, 2/3, 1], prec 1, 1, 2/3, 3/4.
    gt[0]["difficult"][:] = False
    out = evaluate_detections(gt, det, ["a"])
    assert out["mAP"] == pytest.approx(2 / 3 * 1 + 1 / 3 * 3 / 4)


def test_false_positive_first_and_strict_iou_threshold() -> None:
    # Devkit boxes (1,1,10,10) and (1,1,10,20): inter 100, union 200 -> IoU exactly 0.5, which is NOT > 0.5.
    gt = [_gt([[0, 0, 10, 10]], [0])]
    assert evaluate_detections(gt, [_det([[0, 0, 10, 20]], [0.9], [0])], ["a"])["mAP"] == 0.0
    assert evaluate_detections(gt, [_det([[0, 0, 10, 19]], [0.9], [0])], ["a"])["mAP"] == 1.0
    # A false positive above both hits: rec [0, .5, .5, 1], prec [0, .5, 1/3, .5] -> envelope .5 everywhere.
    det = [_det([[500, 500, 520, 520], G1, [11, 10, 50, 51], G2], [0.99, 0.9, 0.8, 0.7], [0, 0, 0, 0])]
    for use07 in (False, True):
        assert evaluate_detections(DUP_CASE_GT, det, ["a"], use_07_metric=use07)["mAP"] == pytest.approx(0.5)


def test_class_without_ground_truth_and_class_without_detections() -> None:
    gt = [_gt([G1, G2], [0, 1])]
    det = [_det([G1, [200, 200, 220, 220]], [0.9, 0.8], [0, 2])]  # class 1: no detections; class 2: no GT
    out = evaluate_detections(gt, det, ["a", "b", "c"], all_thresholds=True)
    assert out["per_class"] == {"a": 1.0, "b": 0.0, "c": None}
    assert out["mAP"] == pytest.approx(0.5)  # mean over the classes that have ground truth
    assert out["AP50"] == pytest.approx(0.5)
    # Nothing anywhere: mean of nothing is NaN, not a crash.
    empty = evaluate_detections([_gt([], [])], [_det([], [], [])], ["a"])
    assert empty["per_class"] == {"a": None} and np.isnan(empty["mAP"])


def test_all_thresholds_average() -> None:
    # One GT, one detection with IoU 0.8 (ours 40x40 vs 40x50 sharing a corner: 1600/2000): TP up to 0.75 only.
    gt = [_gt([[0, 0, 40, 40]], [0])]
    det = [_det([[0, 0, 40, 50]], [0.9], [0])]
    out = evaluate_detections(gt, det, ["a"], all_thresholds=True)
    assert out["AP50"] == 1.0 and out["AP75"] == 1.0
    assert out["AP"] == pytest.approx(6 / 10)  # thresholds .50 .55 .60 .65 .70 .75 pass; .80 needs > .8


def test_devkit_arithmetic_equals_continuous_iou() -> None:
    """(x1 + 1, y1 + 1, x2, y2) with the devkit's +1 areas is exactly the continuous IoU of our boxes."""
    g = torch.Generator().manual_seed(0)
    xy = torch.rand(50, 2, generator=g) * 100
    a = torch.cat([xy, xy + 1 + torch.rand(50, 2, generator=g) * 60], 1).double()
    xy = torch.rand(40, 2, generator=g) * 100
    b = torch.cat([xy, xy + 1 + torch.rand(40, 2, generator=g) * 60], 1).double()
    from detection.evaluation.voc import _devkit_iou

    da, db = to_devkit_boxes(a), to_devkit_boxes(b)
    ours = _devkit_iou(da, np.broadcast_to(db, (len(da), *db.shape)))
    np.testing.assert_allclose(ours, box_iou(a, b).numpy(), rtol=0, atol=1e-12)


def _random_problem(rng: np.random.Generator, num_images: int, k: int) -> tuple[list[dict], list[dict]]:
    gt, det = [], []
    for _ in range(num_images):
        n = int(rng.integers(0, 5))
        xy = rng.uniform(0, 100, (n, 2)).round()
        boxes = np.concatenate([xy, xy + rng.uniform(5, 60, (n, 2)).round()], 1)
        labels = rng.integers(0, k, n)
        gt.append(_gt(boxes, labels, rng.random(n) < 0.25))
        m = int(rng.integers(0, 12))
        if n:
            j = rng.integers(0, n, m)  # several detections per GT -> duplicates
            dboxes = boxes[j] + rng.normal(0, 4, (m, 4))
            dlabels = np.where(rng.random(m) < 0.8, labels[j], rng.integers(0, k, m))
        else:
            xy = rng.uniform(0, 100, (m, 2))
            dboxes = np.concatenate([xy, xy + rng.uniform(5, 60, (m, 2))], 1)
            dlabels = rng.integers(0, k, m)
        det.append(_det(dboxes, rng.random(m).round(2), dlabels))  # 2 decimals -> score ties
    return gt, det


@pytest.mark.parametrize("seed", range(6))
def test_vectorized_equals_reference_loop(seed: int) -> None:
    rng = np.random.default_rng(seed)
    k = 4
    gt, det = _random_problem(rng, 30, k)
    for use07 in (False, True):
        for thresh in (0.3, 0.5, 0.7):
            ours = evaluate_detections(gt, det, [str(c) for c in range(k)], use_07_metric=use07, iou_thresh=thresh)
            for c in range(k):
                ref = reference_voc_eval(gt, det, c, thresh, use07)
                got = ours["per_class"][str(c)]
                if np.isnan(ref) or (got is None):
                    # No non-difficult GT: the devkit's rec is 0/0 (NaN); we report None.
                    assert got is None and ours["num_gt"][str(c)] == 0
                else:
                    assert got == pytest.approx(ref, abs=1e-12), (use07, thresh, c)


def test_tensor_inputs_accepted() -> None:
    gt = [{k: torch.as_tensor(v) for k, v in g.items()} for g in DUP_CASE_GT]
    det = [{k: torch.as_tensor(v, dtype=torch.float32 if k != "labels" else torch.int64) for k, v in d.items()}
           for d in DUP_CASE_DET]
    assert evaluate_detections(gt, det, ["a"])["mAP"] == pytest.approx(0.5 + 0.5 * 2 / 3)


def test_bad_input_is_one_clear_error() -> None:
    with pytest.raises(ValueError, match="1 ground-truth images but 2"):
        evaluate_detections(DUP_CASE_GT, DUP_CASE_DET * 2, ["a"])
    with pytest.raises(ValueError, match="label 3 outside"):
        evaluate_detections(DUP_CASE_GT, [_det([G1], [0.5], [3])], ["a"])


def test_voc_ap_monotone_envelope() -> None:
    rec = np.array([0.25, 0.5, 0.5, 0.75])
    prec = np.array([0.5, 0.4, 0.6, 0.3])
    # envelope over recall: .6 up to .5, then .3 up to .75, 0 beyond
    assert voc_ap(rec, prec) == pytest.approx(0.5 * 0.6 + 0.25 * 0.3)


def test_devkit_results_round_trip(tmp_path) -> None:  # noqa: ANN001 - pytest fixture
    rng = np.random.default_rng(3)
    k = 3
    gt, det = _random_problem(rng, 12, k)
    for i, g in enumerate(gt):
        g["image_id"] = f"{i:06d}"
    for d in det:  # what the files can hold exactly: 1 decimal boxes, 3 decimal scores
        d["boxes"] = d["boxes"].round(1)
        d["scores"] = d["scores"].round(3)
    names = ["cat", "dog", "bird"]
    ev = VOCEvaluator(gt, names, use_07_metric=True)
    for i, d in enumerate(det):
        ev.add({"index": i, "image_id": gt[i]["image_id"]}, d)
    before = ev.evaluate()
    paths = ev.write_devkit_results(tmp_path / "res")
    assert [p.name for p in paths] == [f"comp4_det_test_{n}.txt" for n in names]
    first = next(line for p in paths for line in p.read_text().splitlines())
    iid, score, *coords = first.split()
    assert len(iid) == 6 and len(score.split(".")[1]) == 3 and all(len(c.split(".")[1]) == 1 for c in coords)
    # 1-based: the written x1 is ours + 1
    back = read_devkit_results(tmp_path / "res", names, ev.image_ids)
    for d, b in zip(det, back):
        order_a = np.lexsort((d["scores"], d["labels"]))
        order_b = np.lexsort((b["scores"], b["labels"]))
        np.testing.assert_allclose(np.sort(d["boxes"][order_a], 0), np.sort(b["boxes"][order_b], 0), atol=1e-9)
    ev2 = VOCEvaluator(gt, names, use_07_metric=True)
    ev2.read_devkit_results(tmp_path / "res")
    after = ev2.evaluate()
    assert after["mAP"] == pytest.approx(before["mAP"], abs=1e-12)
    assert after["per_class"] == pytest.approx(before["per_class"])


def test_read_devkit_errors_name_the_file(tmp_path) -> None:  # noqa: ANN001 - pytest fixture
    with pytest.raises(FileNotFoundError, match="no comp4_det_test_"):
        read_devkit_results(tmp_path, ["a"], ["000001"])
    (tmp_path / "comp4_det_test_a.txt").write_text("000001 0.9 1 1 10\n")
    with pytest.raises(ValueError, match=r"comp4_det_test_a.txt:1: expected"):
        read_devkit_results(tmp_path, ["a"], ["000001"])
    (tmp_path / "comp4_det_test_a.txt").write_text("000009 0.9 1 1 10 10\n")
    with pytest.raises(ValueError, match=r"comp4_det_test_a.txt:1: image id '000009'"):
        read_devkit_results(tmp_path, ["a"], ["000001"])


def test_evaluator_from_dataset_like_and_pr_curves() -> None:
    class _DS:
        class_names = ("a",)

        def __len__(self) -> int:
            return 1

        def get_ground_truth(self, i: int) -> dict:
            return {"image_id": "000001", **DUP_CASE_GT[0]}

    ev = VOCEvaluator(_DS(), _DS.class_names, use_07_metric=False)
    ev.add({"index": 0, "image_id": "000001"}, DUP_CASE_DET[0])
    out = ev.evaluate()
    assert out["mAP"] == pytest.approx(0.5 + 0.5 * 2 / 3)
    assert {"AP", "AP50", "AP75", "per_class"} <= out.keys()
    curves = ev.pr_curves()
    assert curves["a"]["recall"] == pytest.approx([0.5, 0.5, 1.0])
    assert curves["a"]["precision"] == pytest.approx([1.0, 0.5, 2 / 3])
    with pytest.raises(IndexError, match="image index 5"):
        ev.add({"index": 5}, DUP_CASE_DET[0])


@pytest.mark.skipif(not (SHARED_DATA / "voc").is_dir(), reason="../shared/data not present")
def test_real_voc2007_sample_ground_truth_scores_perfectly(tmp_path: Path) -> None:
    """Real devkit XML through the loader: its own (non-difficult) boxes as detections give AP 1 per class."""
    dataset = build_dataset("voc07-test", SHARED_DATA / "voc", train=False)
    ev = build_evaluator(dataset)
    for i in range(len(dataset)):
        g = dataset.get_ground_truth(i)
        keep = ~g["difficult"]
        ev.add({"index": i, "image_id": g["image_id"]},
               {"boxes": g["boxes"][keep], "scores": np.linspace(1, 0.5, int(keep.sum())), "labels": g["labels"][keep]})
    metrics = ev.evaluate()
    present = {k: v for k, v in metrics["per_class"].items() if v is not None}
    assert metrics["per_class"]["cat"] is None  # no cat in these test images (see shared/data/README.md)
    assert present and all(v == pytest.approx(1.0) for v in present.values())
