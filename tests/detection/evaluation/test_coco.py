"""COCO evaluation: our evaluator against a direct pycocotools run on a generated COCO tree, and the real sample."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from detection.evaluation.coco import COCO_STAT_NAMES, COCOEvaluator, evaluate_coco_results
from tests.helpers import COCO_REFERENCE, SHARED_DATA

SHARED = SHARED_DATA / "coco"
REFERENCE = COCO_REFERENCE
CATEGORIES = [{"id": 3, "name": "car"}, {"id": 7, "name": "train"}, {"id": 11, "name": "hydrant"}]
CONTIGUOUS = {0: 3, 1: 7, 2: 11}


def _write_gt(path: Path, seed: int = 0) -> dict:
    """Six images with small / medium / large boxes of three non-contiguous category ids (one crowd box)."""
    rng = np.random.default_rng(seed)
    images, anns = [], []
    for img_id in range(1, 7):
        w, h = 640, 480
        images.append({"id": img_id * 10, "file_name": f"{img_id:012d}.jpg", "width": w, "height": h})
        for _ in range(int(rng.integers(1, 6))):
            side = float(rng.choice([20.0, 60.0, 150.0])) * rng.uniform(0.8, 1.2)  # all three area ranges
            x, y = rng.uniform(0, w - side), rng.uniform(0, h - side)
            bw, bh = side, side * rng.uniform(0.7, 1.3)
            anns.append({"id": len(anns) + 1, "image_id": img_id * 10, "category_id": int(rng.choice([3, 7])),
                         "bbox": [x, y, bw, bh], "area": bw * bh, "iscrowd": int(len(anns) == 4)})
    gt = {"images": images, "annotations": anns, "categories": CATEGORIES}
    path.write_text(json.dumps(gt))
    return gt


def _detections(gt: dict, seed: int = 1) -> dict[int, dict[str, torch.Tensor]]:
    """Per image: jittered copies of the GT (some with the wrong class), plus random false positives."""
    rng = np.random.default_rng(seed)
    label_of = {v: k for k, v in CONTIGUOUS.items()}
    out = {}
    for im in gt["images"]:
        boxes, scores, labels = [], [], []
        for a in gt["annotations"]:
            if a["image_id"] != im["id"]:
                continue
            x, y, w, h = a["bbox"]
            for _ in range(int(rng.integers(0, 3))):
                j = rng.normal(0, 0.08 * max(w, h), 4)
                boxes.append([x + j[0], y + j[1], x + w + j[2], y + h + j[3]])
                scores.append(rng.random())
                labels.append(label_of[a["category_id"]] if rng.random() < 0.85 else 2)
        for _ in range(2):
            x, y = rng.uniform(0, 500, 2)
            boxes.append([x, y, x + 40, y + 50])
            scores.append(rng.random() * 0.5)
            labels.append(int(rng.integers(0, 3)))
        out[im["id"]] = {"boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
                         "scores": torch.tensor(scores, dtype=torch.float32), "labels": torch.tensor(labels)}
    return out


def _direct_pycocotools(gt_path: Path, results: list[dict]) -> np.ndarray:
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(gt_path))
        ev = COCOeval(gt, gt.loadRes(results), "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return ev.stats


def _load(path: Path):  # noqa: ANN202 - pycocotools COCO
    from pycocotools.coco import COCO

    with contextlib.redirect_stdout(io.StringIO()):
        return COCO(str(path))


def test_matches_direct_pycocotools(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    gt = _write_gt(tmp_path / "gt.json")
    ev = COCOEvaluator(_load(tmp_path / "gt.json"), CONTIGUOUS)
    dets = _detections(gt)
    for image_id, d in dets.items():
        ev.add({"image_id": image_id, "index": 0}, d)
    results = ev.to_results()
    assert {r["category_id"] for r in results} <= {3, 7, 11}
    # XYXY -> XYWH in original pixels
    first = dets[10]["boxes"][0].double().tolist()
    assert results[0]["image_id"] == 10
    assert results[0]["bbox"] == pytest.approx([first[0], first[1], first[2] - first[0], first[3] - first[1]])
    out = ev.evaluate()
    assert capsys.readouterr().out == ""  # pycocotools' prints are captured ...
    assert "Average Precision" in out["log"]  # ... and handed back
    ref = _direct_pycocotools(tmp_path / "gt.json", results)
    assert [out[n] for n in COCO_STAT_NAMES] == pytest.approx(ref.tolist(), abs=1e-12)
    assert 0.1 < out["AP"] < 0.95 and out["mAP"] == out["AP"]
    # class without GT ("hydrant") -> None; the others are the per-category means of COCOeval's precision
    assert out["per_class"]["hydrant"] is None
    assert set(out["per_class"]) == {"car", "train", "hydrant"}
    assert np.mean([out["per_class"]["car"], out["per_class"]["train"]]) == pytest.approx(out["AP"], abs=1e-12)
    # the same through the files
    res_path = ev.write_results(tmp_path / "out" / "results.json")
    from_files = evaluate_coco_results(tmp_path / "gt.json", res_path)
    assert [from_files[n] for n in COCO_STAT_NAMES] == pytest.approx(ref.tolist(), abs=1e-12)


def test_image_subset_and_class_names(tmp_path: Path) -> None:
    gt = _write_gt(tmp_path / "gt.json")
    dets = _detections(gt)
    subset = [10, 20, 30]
    ev = COCOEvaluator(_load(tmp_path / "gt.json"), CONTIGUOUS, image_ids=subset, class_names=["a", "b", "c"])
    for image_id in subset:
        ev.add({"image_id": image_id}, dets[image_id])
    out = ev.evaluate()
    from pycocotools.cocoeval import COCOeval

    coco = _load(tmp_path / "gt.json")
    with contextlib.redirect_stdout(io.StringIO()):
        ref = COCOeval(coco, coco.loadRes(ev.to_results()), "bbox")
        ref.params.imgIds = subset
        ref.evaluate()
        ref.accumulate()
        ref.summarize()
    assert [out[n] for n in COCO_STAT_NAMES] == pytest.approx(ref.stats.tolist(), abs=1e-12)
    assert set(out["per_class"]) == {"a", "b", "c"}


def test_empty_results_are_zeros_not_a_crash(tmp_path: Path) -> None:
    _write_gt(tmp_path / "gt.json")
    ev = COCOEvaluator(_load(tmp_path / "gt.json"), CONTIGUOUS)
    ev.add({"image_id": 10}, {"boxes": torch.zeros(0, 4), "scores": torch.zeros(0), "labels": torch.zeros(0)})
    out = ev.evaluate()
    assert all(out[n] == 0.0 for n in COCO_STAT_NAMES) and out["mAP"] == 0.0
    assert out["per_class"] == {"car": 0.0, "train": 0.0, "hydrant": 0.0}


def test_bad_results_are_clear_errors(tmp_path: Path) -> None:
    _write_gt(tmp_path / "gt.json")
    bad = tmp_path / "bad.json"
    bad.write_text('{"not": "a list"}')
    with pytest.raises(ValueError, match="bad.json.*JSON list"):
        evaluate_coco_results(tmp_path / "gt.json", bad)
    bad.write_text(json.dumps([{"image_id": 999, "category_id": 3, "bbox": [0, 0, 5, 5], "score": 0.5}]))
    with pytest.raises(ValueError, match="bad.json.*image id.*999"):
        evaluate_coco_results(tmp_path / "gt.json", bad)
    with pytest.raises(FileNotFoundError, match="missing.json"):
        evaluate_coco_results(tmp_path / "gt.json", tmp_path / "missing.json")
    ev = COCOEvaluator(_load(tmp_path / "gt.json"), CONTIGUOUS)
    with pytest.raises(ValueError, match="label 5 has no COCO category"):
        ev.add({"image_id": 10}, {"boxes": torch.zeros(1, 4), "scores": torch.ones(1), "labels": torch.tensor([5])})


@pytest.mark.skipif(not SHARED.is_dir(), reason="../shared/data not present")
def test_real_val2014_sample_reference_numbers() -> None:
    out = evaluate_coco_results(SHARED / "val2014-first100-gt" / "sampled_gts_bbox_area.json",
                                SHARED / "val2014-first100-fake-results.json")
    for name, value in REFERENCE.items():
        assert out[name] == pytest.approx(value, abs=1e-6), name
