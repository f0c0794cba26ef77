"""tools/eval_det.py and the inference loop end to end on generated VOC trees, a tiny real detector, and (when
present) the real COCO val2014 sample."""

from __future__ import annotations

import json
from pathlib import Path
from types import ModuleType
from typing import Any

import cv2
import numpy as np
import pytest
import torch
from conftest import load_script
from torch import nn

from detection.data import VOC_CLASSES, build_dataset, build_test_loader
from detection.evaluation import VOCEvaluator, build_evaluator, evaluate_detections, run_inference

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO / ".." / "shared" / "data"
COCO_REFERENCE = dict(AP=0.503647, AP50=0.696973, AP75=0.571667, APs=0.593252, APm=0.557991, APl=0.489363,
                      AR1=0.386813, AR10=0.593680, AR100=0.595353, ARs=0.654764, ARm=0.603130, ARl=0.553744)


def _tool() -> ModuleType:
    return load_script("tools/eval_det.py")


# (image id, width, height, [(class, xmin, ymin, xmax, ymax) 1-based inclusive, difficult])
VOC_IMAGES = [
    ("000001", 96, 80, [("dog", 10, 12, 50, 60, False), ("person", 55, 5, 90, 75, False)]),
    ("000004", 64, 64, [("dog", 5, 5, 40, 40, False), ("cat", 30, 30, 60, 60, True)]),
    ("000007", 80, 72, [("car", 1, 1, 30, 20, False), ("car", 40, 40, 79, 70, False)]),
    ("000010", 72, 72, []),
]


def write_voc_tree(root: Path) -> Path:
    """A VOC2007 test split in the official devkit layout (JPEGImages, Annotations, ImageSets/Main)."""
    year = root / "VOCdevkit" / "VOC2007"
    for sub in ("JPEGImages", "Annotations", "ImageSets/Main"):
        (year / sub).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for image_id, w, h, objects in VOC_IMAGES:
        cv2.imwrite(str(year / "JPEGImages" / f"{image_id}.jpg"), rng.integers(0, 255, (h, w, 3), dtype=np.uint8))
        objs = "".join(
            f"<object><name>{c}</name><pose>Unspecified</pose><truncated>0</truncated>"
            f"<difficult>{int(d)}</difficult><bndbox><xmin>{x1}</xmin><ymin>{y1}</ymin><xmax>{x2}</xmax>"
            f"<ymax>{y2}</ymax></bndbox></object>"
            for c, x1, y1, x2, y2, d in objects
        )
        (year / "Annotations" / f"{image_id}.xml").write_text(
            f"<annotation><folder>VOC2007</folder><filename>{image_id}.jpg</filename><size><width>{w}</width>"
            f"<height>{h}</height><depth>3</depth></size><segmented>0</segmented>{objs}</annotation>"
        )
    (year / "ImageSets" / "Main" / "test.txt").write_text("".join(f"{i[0]}\n" for i in VOC_IMAGES))
    return root


def _detections_for(dataset: Any) -> list[dict[str, np.ndarray]]:
    """Per image: each GT box shifted a little (a near-hit), its copy as a lower-scoring duplicate, and a miss."""
    out = []
    for i in range(len(dataset)):
        g = dataset.get_ground_truth(i)
        boxes = np.concatenate([g["boxes"] + 2.0, g["boxes"] + 1.0, np.array([[0.0, 0.0, 8.0, 8.0]])])
        n = len(g["boxes"])
        scores = np.concatenate([np.linspace(0.9, 0.6, n), np.linspace(0.5, 0.3, n), [0.95]])
        labels = np.concatenate([g["labels"], g["labels"], [VOC_CLASSES.index("car")]])
        out.append({"boxes": boxes, "scores": scores, "labels": labels.astype(np.int64)})
    return out


@pytest.fixture()
def voc_root(tmp_path: Path) -> Path:
    return write_voc_tree(tmp_path / "data")


def test_devkit_results_through_the_tool(voc_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    dataset = build_dataset("voc07-test", voc_root, train=False, min_size=64, max_size=128)
    assert dataset.default_metric == "voc07"
    dets = _detections_for(dataset)
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
    rc = _tool().main(["--dataset", "voc07-test", "--data-root", str(voc_root), "--results", str(tmp_path / "devkit"),
                       "--output", str(out_json), "--pr-curves", str(tmp_path / "pr.png"),
                       "--write-devkit", str(tmp_path / "devkit2")])
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
    rc = _tool().main(["--dataset", "voc07-test", "--data-root", str(voc_root), "--results", str(tmp_path / "devkit"),
                       "--metric", "voc", "--output", str(out_json)])
    assert rc == 0
    area = evaluate_detections([dataset.get_ground_truth(i) for i in range(len(dataset))], dets, VOC_CLASSES)
    assert json.loads(out_json.read_text())["mAP"] == pytest.approx(area["mAP"], abs=1e-9)


def test_tool_errors_are_one_line(voc_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc = _tool().main(["--dataset", "voc07-test", "--data-root", str(voc_root), "--results", str(tmp_path / "none")])
    assert rc == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "none" in err
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "comp4_det_test_dog.txt").write_text("000001 0.9 1 2 3\n")
    rc = _tool().main(["--dataset", "voc07-test", "--data-root", str(voc_root), "--results", str(tmp_path / "d")])
    assert rc == 2 and "comp4_det_test_dog.txt:1" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        _tool().main(["--results", str(tmp_path / "d")])  # neither --dataset nor --gt-json


class _FixedDetector(nn.Module):
    """Returns the given detections per image (keyed by original size, unique in VOC_IMAGES), like a detector."""

    def __init__(self, by_size: dict[tuple[int, int], dict[str, np.ndarray]]) -> None:
        super().__init__()
        self.anchor = nn.Parameter(torch.zeros(1))  # gives the loop a device to read
        self.by_size = by_size
        self.calls = 0

    def forward(self, images: list[torch.Tensor], targets: Any = None, *,
                orig_sizes: list[tuple[int, int]]) -> list[dict[str, torch.Tensor]]:
        assert not self.training and torch.is_inference_mode_enabled()
        self.calls += 1
        return [{"boxes": torch.as_tensor(self.by_size[s]["boxes"], dtype=torch.float32),
                 "scores": torch.as_tensor(self.by_size[s]["scores"], dtype=torch.float32),
                 "labels": torch.as_tensor(self.by_size[s]["labels"])} for s in orig_sizes]


def test_run_inference_single_and_sharded(voc_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    dataset = build_dataset("voc07-test", voc_root, train=False, min_size=64, max_size=128)
    dets = _detections_for(dataset)
    by_size = {(dataset.get_ground_truth(i)["height"], dataset.get_ground_truth(i)["width"]): d
               for i, d in enumerate(dets)}
    expected = evaluate_detections([dataset.get_ground_truth(i) for i in range(len(dataset))], dets,
                                   VOC_CLASSES, use_07_metric=True)
    model = _FixedDetector(by_size).train()
    metrics = run_inference(model, build_test_loader(dataset, batch_size=2, num_workers=0), build_evaluator(dataset),
                            progress=False)
    assert model.training  # restored
    assert metrics["mAP"] == pytest.approx(expected["mAP"], abs=1e-9)
    assert metrics["num_images"] == 4 and metrics["ms_per_image"] > 0

    # Two processes, each with its shard (3 of 4 images would pad): gather the states, score on the main one only.
    class _Acc:
        num_processes = 2

        def __init__(self, rank: int) -> None:
            self.process_index = rank
            self.is_main_process = rank == 0

    states: list[Any] = []

    def fake_gather(obj: list[Any]) -> list[Any]:
        states.extend(obj)
        return list(states)

    import accelerate.utils

    monkeypatch.setattr(accelerate.utils, "gather_object", fake_gather)
    results = []
    for rank in (1, 0):  # the main process gathers last, so it sees both states
        loader = build_test_loader(dataset, batch_size=1, num_workers=0, num_replicas=2, rank=rank)
        results.append(run_inference(model, loader, build_evaluator(dataset), accelerator=_Acc(rank), progress=False))
    assert results[0] == {}
    assert results[1]["mAP"] == pytest.approx(expected["mAP"], abs=1e-9) and results[1]["num_images"] == 4


def test_checkpoint_path_with_a_tiny_real_detector(voc_root: Path, tmp_path: Path) -> None:
    from detection.checkpoint import detector_payload
    from detection.config import load_detection_config
    from detection.faster_rcnn import build_faster_rcnn

    cfg = load_detection_config(REPO / "configs" / "det" / "synthetic_r18_c4.yaml", ["model.num_classes=20"])
    torch.manual_seed(0)
    model = build_faster_rcnn(cfg.model, class_names=VOC_CLASSES).eval()
    torch.save(detector_payload(model, cfg, VOC_CLASSES), tmp_path / "model.pth")
    out = tmp_path / "m.json"
    rc = _tool().main(["--checkpoint", str(tmp_path / "model.pth"), "--dataset", "voc07-test", "--data-root",
                       str(voc_root), "--cpu", "--num-workers", "0", "--batch-size", "2", "--no-progress",
                       "--output", str(out), "--write-devkit", str(tmp_path / "dk")])
    assert rc == 0
    metrics = json.loads(out.read_text())
    # an untrained detector: the numbers are whatever it scores, but every piece of the report must be there
    assert metrics["num_images"] == 4 and metrics["metric"] == "voc07"
    assert set(metrics["per_class"]) == set(VOC_CLASSES) and 0.0 <= metrics["mAP"] <= 1.0
    assert len(list((tmp_path / "dk").glob("comp4_det_test_*.txt"))) == 20


@pytest.mark.skipif(not (SHARED / "coco").is_dir(), reason="../shared/data not present")
def test_real_coco_sample_through_the_tool(tmp_path: Path) -> None:
    out = tmp_path / "coco.json"
    rc = _tool().main(["--gt-json", str(SHARED / "coco" / "val2014-first100-gt" / "sampled_gts_bbox_area.json"),
                       "--results", str(SHARED / "coco" / "val2014-first100-fake-results.json"),
                       "--output", str(out)])
    assert rc == 0
    metrics = json.loads(out.read_text())
    for name, value in COCO_REFERENCE.items():
        assert metrics[name] == pytest.approx(value, abs=1e-6), name
    assert metrics["mAP"] == metrics["AP"] and len(metrics["per_class"]) == 80


@pytest.mark.skipif(not (SHARED / "voc").is_dir(), reason="../shared/data not present")
def test_real_voc2007_sample_ground_truth_scores_perfectly(tmp_path: Path) -> None:
    """Real devkit XML through the loader: its own (non-difficult) boxes as detections give AP 1 per class."""
    dataset = build_dataset("voc07-test", SHARED / "voc", train=False)
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


@pytest.mark.skipif(not (SHARED / "coco").is_dir(), reason="../shared/data not present")
def test_coco_results_against_a_dataset_by_name(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A COCO results file scored through the dataset catalog (coco2017-val layout) equals the reference numbers,
    and is re-written unchanged in content by --write-coco-json."""
    ann = tmp_path / "data" / "coco" / "annotations"
    ann.mkdir(parents=True)
    (ann / "instances_val2017.json").symlink_to(
        (SHARED / "coco" / "val2014-first100-gt" / "sampled_gts_bbox_area.json").resolve())
    fake = SHARED / "coco" / "val2014-first100-fake-results.json"
    out, rewritten = tmp_path / "m.json", tmp_path / "re.json"
    rc = _tool().main(["--dataset", "coco2017-val", "--data-root", str(tmp_path / "data"), "--results", str(fake),
                       "--output", str(out), "--write-coco-json", str(rewritten)])
    assert rc == 0
    metrics = json.loads(out.read_text())
    for name, value in COCO_REFERENCE.items():
        assert metrics[name] == pytest.approx(value, abs=1e-6), name
    key = (lambda r: (r["image_id"], r["category_id"], r["score"], *r["bbox"]))  # noqa: E731
    assert sorted(map(key, json.loads(rewritten.read_text()))) == sorted(map(key, json.loads(fake.read_text())))
    rc = _tool().main(["--dataset", "coco2017-val", "--data-root", str(tmp_path / "data"), "--results", str(fake),
                       "--write-devkit", str(tmp_path / "dk")])
    assert rc == 2 and "--write-devkit" in capsys.readouterr().err


def test_draw_detections() -> None:
    from detection.visualize import class_color, draw_detections

    image = np.zeros((64, 80, 3), np.uint8)
    drawn = draw_detections(image, torch.tensor([[10.0, 20.0, 50.0, 60.0], [0.0, 0.0, 8.0, 8.0]]),
                            torch.tensor([3, 5]), torch.tensor([0.93, 0.2]), VOC_CLASSES, score_thresh=0.5)
    assert drawn.shape == image.shape and drawn.dtype == np.uint8 and not image.any()  # input untouched
    assert tuple(drawn[40, 10]) == class_color(3)  # left edge of the kept box, in its class colour
    assert not drawn[4, 4].any()  # the 0.2 detection is below the threshold
    assert class_color(3) != class_color(4)
    with pytest.raises(ValueError, match="uint8 RGB"):
        draw_detections(image[..., 0], [], [], [], VOC_CLASSES)
