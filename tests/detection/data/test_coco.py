"""COCO loading through pycocotools on generated trees in the official layout, and on the real val2014 sample."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from detection.data import DataError, build_coco_dataset, build_dataset
from detection.data.transforms import DetectionTransform
from tests.helpers import SHARED_DATA

REAL_COCO = SHARED_DATA / "coco" / "val2014-2images"

# Category ids with gaps, listed out of order: contiguous labels must follow the sorted ids.
CATEGORIES = [{"id": 90, "name": "toothbrush"}, {"id": 1, "name": "person"}, {"id": 3, "name": "car"}]


def write_coco(root: Path, folder: str, ann_name: str, *, prefix: str = "") -> Path:
    """``<root>/coco/{<folder>/<files>, annotations/<ann_name>}`` with 4 images:
    1: two plain boxes + one crowd box, 2: no annotations, 3: only a crowd box, 4: one car."""
    img_dir = root / "coco" / folder
    (root / "coco" / "annotations").mkdir(parents=True, exist_ok=True)
    img_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    images = []
    for img_id, (w, h) in {1: (64, 48), 2: (40, 40), 3: (48, 64), 4: (50, 30)}.items():
        name = f"{prefix}{img_id:012d}.jpg"
        cv2.imwrite(str(img_dir / name), rng.integers(0, 256, (h, w, 3), np.uint8))
        images.append({"id": img_id, "file_name": name, "width": w, "height": h})
    anns = [
        {"id": 11, "image_id": 1, "category_id": 1, "bbox": [2.5, 3.0, 20.0, 30.25], "iscrowd": 0, "area": 1.0},
        {"id": 12, "image_id": 1, "category_id": 90, "bbox": [30.0, 10.0, 10.0, 5.0], "iscrowd": 0, "area": 1.0},
        {"id": 13, "image_id": 1, "category_id": 3, "bbox": [0.0, 0.0, 64.0, 48.0], "iscrowd": 1, "area": 1.0},
        {"id": 31, "image_id": 3, "category_id": 1, "bbox": [1.0, 1.0, 10.0, 10.0], "iscrowd": 1, "area": 1.0},
        {"id": 41, "image_id": 4, "category_id": 3, "bbox": [5.0, 5.0, 40.0, 20.0], "iscrowd": 0, "area": 1.0},
    ]
    path = root / "coco" / "annotations" / ann_name
    path.write_text(json.dumps({"images": images, "annotations": anns, "categories": CATEGORIES}))
    return path


def test_contiguous_labels_xywh_to_xyxy_and_crowd(tmp_path: Path) -> None:
    write_coco(tmp_path, "val2017", "instances_val2017.json")
    ds = build_dataset("coco2017-val", tmp_path, train=False)
    assert ds.family == "coco" and ds.default_metric == "coco"
    assert ds.class_names == ("person", "car", "toothbrush")  # sorted by category id 1, 3, 90
    assert ds.contiguous_to_category_id == {0: 1, 1: 3, 2: 90}
    assert len(ds) == 4 and ds.image_ids == [1, 2, 3, 4]  # evaluation keeps images without annotations
    gt = ds.get_ground_truth(0)
    assert gt["image_id"] == 1
    np.testing.assert_array_equal(gt["boxes"], np.array([[2.5, 3.0, 22.5, 33.25], [30, 10, 40, 15], [0, 0, 64, 48]],
                                                        np.float32))
    # The crowd region is ground truth to ignore (as difficult boxes are in VOC scoring), never a target.
    assert gt["labels"].tolist() == [0, 2, 1] and gt["difficult"].tolist() == [False, False, True]
    assert ds[0][1]["labels"].tolist() == [0, 2]
    assert ds.get_ground_truth(1)["boxes"].shape == (0, 4)
    assert sorted(ds.coco.getImgIds()) == [1, 2, 3, 4] and len(ds.coco.getAnnIds(iscrowd=None)) == 5
    image, target = ds[3]
    assert image.dtype == torch.uint8 and target["image_id"] == 4 and target["orig_size"] == (30, 50)
    # 50 x 30 -> shorter side 600 would make the long side 1000 exactly: scale 20.
    assert target["size"] == (600, 1000)
    torch.testing.assert_close(target["boxes"], torch.tensor([[100.0, 100.0, 900.0, 500.0]]))
    assert target["labels"].tolist() == [1]


def test_training_filters_images_without_usable_boxes(tmp_path: Path) -> None:
    write_coco(tmp_path, "train2017", "instances_train2017.json")
    train = build_dataset("coco2017-train", tmp_path, train=True)
    assert train.image_ids == [1, 4]  # 2 has nothing, 3 only a crowd box
    assert build_dataset("coco2017-train", tmp_path, train=True, filter_empty=False).image_ids == [1, 2, 3, 4]
    np.testing.assert_allclose(train.aspect_ratios(), [64 / 48, 50 / 30])


@pytest.mark.parametrize(
    ("name", "folder", "ann"),
    [
        ("coco2014-train", "train2014", "instances_train2014.json"),
        ("coco2014-val", "val2014", "instances_val2014.json"),
        ("coco2014-minival", "val2014", "instances_minival2014.json"),
        ("coco2014-valminusminival", "val2014", "instances_valminusminival2014.json"),
    ],
)
def test_2014_names_use_the_official_files(tmp_path: Path, name: str, folder: str, ann: str) -> None:
    write_coco(tmp_path, folder, ann, prefix=f"COCO_{folder}_")
    ds = build_dataset(name, tmp_path, train=False)
    assert len(ds) == 4 and ds[0][1]["image_id"] == 1


def test_missing_or_broken_annotation_json_names_the_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"annotations/instances_val2017\.json.*README"):
        build_dataset("coco2017-val", tmp_path, train=False)
    path = write_coco(tmp_path, "val2017", "instances_val2017.json")
    path.write_text('{"images": [')
    with pytest.raises(DataError, match=r"instances_val2017\.json"):
        build_dataset("coco2017-val", tmp_path, train=False)


def test_missing_image_names_the_file(tmp_path: Path) -> None:
    write_coco(tmp_path, "val2017", "instances_val2017.json")
    (tmp_path / "coco/val2017/000000000004.jpg").unlink()
    ds = build_dataset("coco2017-val", tmp_path, train=False)
    with pytest.raises(DataError, match=r"val2017/000000000004\.jpg"):
        ds[3]


@pytest.mark.skipif(not REAL_COCO.is_dir(), reason="../shared/data/coco/val2014-2images not present")
def test_real_val2014_two_images_end_to_end() -> None:
    ann = REAL_COCO / "instances_val2014_subset_42_785.json"
    ds = build_coco_dataset(ann, REAL_COCO / "images", train=False,
                            transform=DetectionTransform.resize_only(600, 1000))
    raw = json.loads(ann.read_text())
    assert len(ds) == 2 and sorted(ds.image_ids) == sorted(i["id"] for i in raw["images"])
    assert len(ds.class_names) == len(raw["categories"])
    for i in range(len(ds)):
        image, target = ds[i]
        assert image.shape[0] == 3 and tuple(image.shape[1:]) == target["size"]
        assert min(target["size"]) == 600 or max(target["size"]) == 1000
        anns = [a for a in raw["annotations"] if a["image_id"] == target["image_id"] and not a.get("iscrowd", 0)]
        assert len(target["boxes"]) == len(anns) > 0
        # Boxes in original pixels = the JSON's XYWH as XYXY; labels map back to the original category ids.
        gt = ds.get_ground_truth(i)
        expected = np.array([[a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3]]
                             for a in anns], np.float32)
        np.testing.assert_allclose(gt["boxes"], expected, rtol=1e-6)
        assert [ds.contiguous_to_category_id[int(c)] for c in gt["labels"]] == [a["category_id"] for a in anns]
    train = build_coco_dataset(ann, REAL_COCO / "images", train=True,
                               transform=DetectionTransform(min_size=(64, 96), max_size=160, train=True))
    image, target = train[0]
    assert max(target["size"]) <= 160 and len(target["boxes"]) > 0
