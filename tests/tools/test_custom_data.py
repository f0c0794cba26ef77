"""A user's own data from the command line, for each of COCO JSON / VOC-style folder / YOLO: check, a few
training iterations, evaluation and inference, with the user's own class names, category ids and image ids
(the COCO results file scores against the user's JSON through pycocotools without any remapping)."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import pytest

from tests.detection.data.custom_helpers import CLASSES, COCO_IDS, samples, write_coco, write_voc_folder, write_yolo
from tests.helpers import TINY_TRAINING
from tools import check_dataset, eval_det, infer, train_det


@pytest.fixture(scope="module")
def sets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    root = tmp_path_factory.mktemp("user_cli")
    items = samples(12)
    train, val = items[:8], items[8:]
    ann, ann_val = write_coco(root / "coco", train, "train"), write_coco(root / "coco", val, "val")
    write_voc_folder(root / "voc", {"train": train, "val": val})
    data = write_yolo(root / "yolo", {"train": train, "val": val})
    images = root / "coco" / "images"
    return {"root": root, "val_json": ann_val, "val_dir": images / "val" / "sub",
            "coco": (["--dataset", f"coco:{ann}:{images}", "--test-dataset", f"coco:{ann_val}:{images}"], "coco"),
            # The VOC-style folder's val list is found by itself, as is the YOLO set's val split.
            "voc": (["--dataset", f"voc:{root / 'voc'}:train", "--classes", ",".join(CLASSES)], "voc"),
            "yolo": (["--dataset", f"yolo:{data}"], "yolo")}


@pytest.mark.parametrize("fmt", ["coco", "voc", "yolo"])
def test_check_train_eval_infer(sets: dict, fmt: str, tmp_path: Path, one_thread: None) -> None:
    args, _ = sets[fmt]
    spec = args[1]
    check_args = [spec] + (["--classes", ",".join(CLASSES)] if fmt == "voc" else [])
    with contextlib.redirect_stdout(io.StringIO()) as out:
        assert check_dataset.main(check_args) == 0
    assert "8 images, 3 classes" in out.getvalue() and "errors: 0" in out.getvalue()

    run = tmp_path / "run"
    assert train_det.main([*args, "--backbone", "resnet18", "--backbone-weights", "none", "--max-iter", "2",
                           "--output-dir", str(run), "--no-progress", "--cpu", *TINY_TRAINING,
                           "data.num_workers=0", "model.anchors.sizes=[16,32,64,128,256]",  # FPN: one per level
                           "model.roi_heads.score_thresh=0"]) == 0  # a 2-step model: keep its low scores
    model = run / "model_final.pth"
    meta = __import__("torch").load(model, weights_only=True)
    expected_names = ["car", "chair", "person"] if fmt == "coco" else list(CLASSES)
    assert meta["class_names"] == expected_names
    if fmt == "coco":
        assert meta["dataset"]["category_ids"] == [COCO_IDS[n] for n in expected_names]

    # Evaluation on its own test set (recorded in the file), COCO results in the user's ids.
    results = tmp_path / "eval.json"
    extra = ["--write-coco-json", str(results)] if fmt == "coco" else []
    assert eval_det.main(["--checkpoint", str(model), "--cpu", "--no-progress", "--output",
                          str(tmp_path / "metrics.json"), *extra]) == 0
    assert "mAP" in json.loads((tmp_path / "metrics.json").read_text())

    # Inference on the user's image folder.
    folder = sets["val_dir"] if fmt == "coco" else sets["root"] / ("voc/JPEGImages" if fmt == "voc" else
                                                                 "yolo/images/val")
    assert infer.main(["--checkpoint", str(model), "--input", str(folder), "--output", str(tmp_path / "inf"),
                       "--score-thresh", "0", "--no-draw", "--cpu"]) == 0
    dets = json.loads((tmp_path / "inf" / "detections.json").read_text())
    assert dets["class_names"] == expected_names
    found = [d for v in dets["images"].values() for d in v["detections"]]
    assert found and all(d["class_name"] == expected_names[d["label"]] for d in found)
    if fmt != "coco":
        return
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    gt_json = json.loads(Path(sets["val_json"]).read_text())
    user_image_ids = {im["id"] for im in gt_json["images"]}
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(sets["val_json"]))
        for path in (results, tmp_path / "inf" / "coco_results.json"):
            entries = json.loads(path.read_text())
            assert entries and {e["image_id"] for e in entries} <= user_image_ids, path
            assert {e["category_id"] for e in entries} <= set(COCO_IDS.values()), path
            ev = COCOeval(gt, gt.loadRes(entries), "bbox")  # the user's own JSON, no remapping
            ev.evaluate()
            ev.accumulate()
            ev.summarize()
            assert len(ev.stats) == 12
