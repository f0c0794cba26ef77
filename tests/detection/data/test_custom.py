"""A user's own datasets: the same images and boxes as COCO JSON (0-based gapped ids, sub-folder file names, a
Roboflow parent category), a VOC-style folder (PNG, three chosen classes) and a YOLO layout load to the same
records, check_dataset counts them, bad inputs are one line each, and EXIF-rotated photos keep their boxes on
the object."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest

from detection.data import DetectionTransform, build_dataset
from detection.data.catalog import canonical_spec, parse_dataset_spec
from resbackbone.errors import ConfigError, DataError
from tests.detection.data.custom_helpers import CLASSES, COCO_IDS, samples, write_coco, write_voc_folder, write_yolo
from tools import check_dataset


@pytest.fixture(scope="module")
def user_sets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    root = tmp_path_factory.mktemp("user")
    items = samples(16)
    train, val = items[:12], items[12:]
    ann = write_coco(root / "coco", train, "train")
    ann_val = write_coco(root / "coco", val, "val")
    write_voc_folder(root / "voc", {"train": train, "val": val})
    data = write_yolo(root / "yolo", {"train": train, "val": val})
    images = root / "coco" / "images"
    return {
        "items": items, "root": root,
        "coco": f"coco:{ann}:{images}", "coco_val": f"coco:{ann_val}:{images}", "coco_json_val": ann_val,
        "voc": f"voc:{root / 'voc'}:train", "voc_val": f"voc:{root / 'voc'}:val",
        "yolo": f"yolo:{data}", "yolo_val": f"yolo:{data}:val",
    }


def _by_stem(ds) -> dict[str, tuple[np.ndarray, list[str]]]:  # noqa: ANN001
    return {r.file.stem: (r.boxes, [ds.class_names[i] for i in r.labels]) for r in ds.records}


def test_three_formats_give_the_same_images_boxes_and_classes(user_sets: dict) -> None:
    coco = build_dataset(user_sets["coco"], train=False)
    voc = build_dataset(user_sets["voc"], train=False, classes=CLASSES)
    yolo = build_dataset(user_sets["yolo"], train=True, filter_empty=False)  # no split given: train
    # COCO's classes in category-id order without the empty parent "objects"; the VOC list as given; YOLO's names.
    assert coco.class_names == ("car", "chair", "person") and voc.class_names == CLASSES == yolo.class_names
    assert coco.contiguous_to_category_id == {0: COCO_IDS["car"], 1: COCO_IDS["chair"], 2: COCO_IDS["person"]}
    assert coco.image_ids[:2] == [100, 103] and voc.image_ids[0] == user_sets["items"][0].stem
    assert coco.records[0].file.parent.name == "sub" and voc.records[0].file.suffix == ".png"
    expected = {s.stem: (np.asarray(s.boxes, np.float32), s.names) for s in user_sets["items"][:12]}
    for ds in (coco, voc, yolo):
        got = _by_stem(ds)
        assert got.keys() == expected.keys()
        for stem, (boxes, names) in expected.items():
            np.testing.assert_allclose(got[stem][0], boxes, atol=1e-3, err_msg=f"{ds.name} {stem}")
            assert got[stem][1] == names


@pytest.mark.parametrize("fmt", ["coco", "voc", "yolo"])
def test_check_dataset_counts(user_sets: dict, fmt: str, capsys: pytest.CaptureFixture[str]) -> None:
    extra = ["--classes", ",".join(CLASSES)] if fmt == "voc" else []
    assert check_dataset.main([user_sets[fmt], "--json", *extra]) == 0
    report = json.loads(capsys.readouterr().out)
    items = user_sets["items"][:12]
    assert report["images"] == 12 and report["images_without_boxes"] == 0 and report["errors"] == {}
    for c in CLASSES:
        assert report["per_class"][c]["instances"] == sum(s.names.count(c) for s in items)
        assert report["per_class"][c]["images"] == sum(c in s.names for s in items)


def test_concatenated_sets_merge_classes_by_name(user_sets: dict) -> None:
    ds = build_dataset([user_sets["coco"], user_sets["yolo_val"]], train=True)
    assert ds.class_names == ("car", "chair", "person") and len(ds) == 16  # the first set's order
    stem = user_sets["items"][12].stem
    (boxes, names), = [v for k, v in _by_stem(ds).items() if k == stem]
    assert names == user_sets["items"][12].names  # YOLO labels were remapped by name
    assert ds.contiguous_to_category_id == {0: 2, 1: 5, 2: 9}
    assert parse_dataset_spec({"format": "voc", "root": "x", "split": "val", "classes": ["a", "b"]})[0].classes == (
        "a", "b")
    assert canonical_spec("voc07-test") == "voc07-test"


@pytest.mark.parametrize(("spec", "match"), [
    ("coco::images", r"expected coco:ANNOTATIONS.json\[:IMAGE_DIR\]"),
    ("coco:a.json:", r"expected coco:ANNOTATIONS.json\[:IMAGE_DIR\]"),
    ("nosuchset", "unknown dataset 'nosuchset'"),
    ({"format": "coco", "image_dir": "images"}, r"needs \['ann_file'\]"),
    ({"format": "yolo", "data": "d.yaml", "extra": 1}, r"unknown key\(s\) \['extra'\]"),
])
def test_bad_descriptions_are_one_line(spec: object, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        parse_dataset_spec(spec)


def _copy_tree(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst)
    return dst


def test_bad_yolo_and_voc_inputs_are_reported_and_stop_training(user_sets: dict, tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    yolo = _copy_tree(user_sets["root"] / "yolo", tmp_path / "yolo")
    (yolo / "data.yaml").write_text((yolo / "data.yaml").read_text().replace(str(user_sets["root"] / "yolo"),
                                                                            str(yolo)))
    labels = sorted((yolo / "labels" / "train").glob("*.txt"))
    labels[0].write_text("7 0.5 0.5 0.2 0.2\n")  # class index outside the 3 names
    labels[1].write_text("0 0.5 0.5\n")  # malformed
    (yolo / "images" / "train" / f"{labels[2].stem}.jpg").write_bytes(b"")  # unreadable image
    assert check_dataset.main([f"yolo:{yolo / 'data.yaml'}"]) == 1
    out = capsys.readouterr().out
    assert f"unknown_class: {labels[0]}:1: class index 7 outside the 3 names" in out
    assert f"bad_annotation: {labels[1]}:1: expected 'class cx cy w h'" in out
    assert "unreadable_image: cannot read image" in out and "errors: 3" in out
    # Loading for training stops with all of them counted in one line (or skips them with skip_bad).
    with pytest.raises(DataError, match=r"3 problem\(s\) \(.*unknown_class.*\); first: ") as e:
        build_dataset(f"yolo:{yolo / 'data.yaml'}", train=True)
    assert "\n" not in str(e.value)
    assert len(build_dataset(f"yolo:{yolo / 'data.yaml'}", train=True, skip_bad=True)) == 9

    voc = _copy_tree(user_sets["root"] / "voc", tmp_path / "voc")
    first = sorted((voc / "Annotations").glob("*.xml"))[0]
    first.write_text(first.read_text().replace("<name>car</name>", "<name>truck</name>", 1)
                     .replace("<name>person</name>", "<name>truck</name>", 1))
    (voc / "JPEGImages" / f"{sorted((voc / 'Annotations').glob('*.xml'))[1].stem}.png").unlink()
    assert check_dataset.main([f"voc:{voc}:train", "--classes", "person,car,chair"]) == 1
    out = capsys.readouterr().out
    assert f"unknown_class: {first}: unknown class name 'truck'" in out and "missing_image: " in out


def test_coco_crowd_parent_category_and_bad_annotations(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import cv2

    (tmp_path / "img").mkdir()
    cv2.imwrite(str(tmp_path / "img" / "a.jpg"), np.zeros((40, 50, 3), np.uint8))
    data = {"images": [{"id": 0, "file_name": "a.jpg", "height": 40, "width": 50}],
            "categories": [{"id": 0, "name": "things", "supercategory": "none"},
                           {"id": 3, "name": "cat", "supercategory": "things"}],
            "annotations": [{"id": 1, "image_id": 0, "category_id": 3, "bbox": [1, 2, 10, 10], "iscrowd": 0},
                            {"id": 2, "image_id": 0, "category_id": 3, "bbox": [20, 5, 20, 20], "iscrowd": 1},
                            {"id": 3, "image_id": 0, "category_id": 3, "bbox": [5, 5, -3, 4], "iscrowd": 0}]}
    ann = tmp_path / "ann.json"
    ann.write_text(json.dumps(data))
    assert check_dataset.main([f"coco:{ann}:{tmp_path / 'img'}", "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["classes"] == ["cat"] and report["per_class"]["cat"] == {"instances": 1, "images": 1, "crowd": 1,
                                                                             "difficult": 0}
    assert report["errors"] == {"bad_annotation": 1}
    assert "annotation 3: bbox [5, 5, -3, 4] has a negative width or height" in report["error_messages"][0]
    ds = build_dataset(f"coco:{ann}:{tmp_path / 'img'}", train=True, skip_bad=True)
    assert ds[0][1]["labels"].tolist() == [0]  # the crowd region is no target
    assert ds.get_ground_truth(0)["difficult"].tolist() == [False, True]  # but ignored in scoring


def _exif_rotated_jpeg(path: Path) -> None:
    """Stored pixels 60 wide x 40 high, a red block at x 5..20, y 10..30; EXIF orientation 6 (display rotated 90
    degrees clockwise: 40 wide x 60 high, the block at x 10..30, y 5..20)."""
    from PIL import Image

    stored = np.full((40, 60, 3), 30, np.uint8)
    stored[10:30, 5:20] = (255, 0, 0)
    im = Image.fromarray(stored)
    exif = im.getexif()
    exif[0x0112] = 6
    buf = io.BytesIO()
    im.save(buf, format="JPEG", exif=exif.tobytes(), quality=98)
    path.write_bytes(buf.getvalue())


def test_exif_rotated_photo_boxes_land_on_the_object(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "img").mkdir()
    _exif_rotated_jpeg(tmp_path / "img" / "photo.jpg")
    # Annotated as an annotation tool shows the photo (oriented): 40 x 60, block at x 10..30, y 5..20.
    oriented = {"images": [{"id": 7, "file_name": "photo.jpg", "height": 60, "width": 40}],
                "categories": [{"id": 1, "name": "block"}],
                "annotations": [{"id": 1, "image_id": 7, "category_id": 1, "bbox": [10, 5, 20, 15], "iscrowd": 0}]}
    ann = tmp_path / "oriented.json"
    ann.write_text(json.dumps(oriented))
    ds = build_dataset(f"coco:{ann}:{tmp_path / 'img'}", train=False,
                       transform=DetectionTransform.resize_only(60, 100))
    image, target = ds[0]
    assert target["orig_size"] == (60, 40)
    x1, y1, x2, y2 = (int(round(v)) for v in target["boxes"][0].tolist())
    inside = image[:, y1 + 2:y2 - 2, x1 + 2:x2 - 2].float().mean(dim=(1, 2))
    assert inside[0] > 200 and inside[1] < 60, "the box must cover the red block of the oriented photo"
    # The same photo through YOLO's header-read size (PIL, orientation applied) agrees.
    from detection.data.custom import image_size

    assert image_size(tmp_path / "img" / "photo.jpg") == (60, 40)
    # Annotated on the stored pixels (60 x 40): an error naming the file and the likely cause, not a stretched box.
    stored = json.loads(json.dumps(oriented))
    stored["images"][0].update(height=40, width=60)
    ann2 = tmp_path / "stored.json"
    ann2.write_text(json.dumps(stored))
    assert check_dataset.main([f"coco:{ann2}:{tmp_path / 'img'}"]) == 1
    out = capsys.readouterr().out
    assert "size_mismatch" in out and "photo.jpg: decoded size 40x60" in out and "EXIF orientation" in out
    with pytest.raises(DataError, match="EXIF orientation"):
        build_dataset(f"coco:{ann2}:{tmp_path / 'img'}", train=False)[0]


def test_default_test_set_of_a_user_training_set(user_sets: dict) -> None:
    from detection.data.catalog import default_test_spec

    assert default_test_spec(user_sets["yolo"])["split"] == "val"
    assert default_test_spec(user_sets["voc"])["split"] == "val"
    with pytest.raises(ConfigError, match="pass --test-dataset"):
        default_test_spec(user_sets["coco"])
