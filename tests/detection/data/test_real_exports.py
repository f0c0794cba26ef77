"""Datasets as real labeling tools write them: a LabelImg VOC folder (``annotations/`` + ``images/``,
``annots/``, XML beside the images, any letter case, <filename> not the XML's stem), a Roboflow COCO export
(``<split>/_annotations.coco.json`` with the images beside it or in ``images/``, an empty parent category), a
CVAT / hand-written COCO file without image sizes, a Label Studio YOLO export (absolute ``path:``, .webp / .png)
and a truncated JPEG; the train / test leakage warning, the decode check before training, ``check_dataset.py
--split val`` and ``--draw``, and a description mapping in a YAML file."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from detection.data import build_dataset, decode_image, shared_images, verify_images, warn_shared_images
from detection.data.catalog import canonical_spec, default_test_spec, parse_dataset_spec
from detection.data.check import IMAGE_CHECK_FILE
from detection.data.transforms import DetectionTransform
from resbackbone.errors import DataError
from tests.detection.data.export_helpers import (
    EXPECTED,
    IMAGES,
    NAMES,
    truncated_jpeg,
    write_coco_export,
    write_image,
    write_labelimg,
)
from tools import check_dataset


def _boxes(ds) -> dict[str, list]:  # noqa: ANN001
    """{image file name: sorted [(class, x1, y1, x2, y2)]} of a dataset."""
    return {r.file.name: sorted((ds.class_names[c], *np.round(b, 3).tolist()) for b, c in zip(r.boxes, r.labels))
            for r in ds.records}


# ------------------------------------------------------------------------------ item 1: train / test leakage


def test_voc_folder_with_lists_trains_on_train_and_tests_on_val(tmp_path: Path,
                                                                caplog: pytest.LogCaptureFixture) -> None:
    root = write_labelimg(tmp_path / "voc", "Annotations", "JPEGImages")
    (root / "ImageSets" / "Main").mkdir(parents=True)
    (root / "ImageSets" / "Main" / "train.txt").write_text("img_0\nimg_1\nimg_2\n")
    (root / "ImageSets" / "Main" / "val.txt").write_text("img_3\n")
    train = build_dataset(str(root), train=True)
    test = build_dataset(default_test_spec(str(root)), train=False, classes=train.class_names)
    assert [r.image_id for r in train.records] == ["img_0", "img_1", "img_2"]
    assert [r.image_id for r in test.records] == ["img_3"]
    with caplog.at_level(logging.WARNING, logger="detection.data"):
        assert warn_shared_images(train, test) == 0
    assert not caplog.records
    # Only trainval: training uses it, and the test side its test list (val is inside trainval).
    (root / "ImageSets" / "Main" / "train.txt").rename(root / "ImageSets" / "Main" / "trainval.txt")
    (root / "ImageSets" / "Main" / "test.txt").write_text("img_3\n")
    assert len(build_dataset(str(root), train=True)) == 3
    assert default_test_spec(str(root))["split"] == "test"


def test_shared_images_by_file_or_content_warn_in_one_line(tmp_path: Path,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    root = write_labelimg(tmp_path / "a")
    copy = tmp_path / "b"
    shutil.copytree(root, copy)
    # A different image under the copied name: same path stem, other bytes (not shared).
    write_image(copy / "images" / "img_2.jpg", 40, 56, seed=99)
    train = build_dataset(str(root), train=True)
    test = build_dataset(str(copy), train=False)
    assert shared_images(train, test) == 3  # copies: other files, same bytes
    assert shared_images(train, train) == 4  # the same files
    with caplog.at_level(logging.WARNING, logger="detection.data"):
        assert warn_shared_images(train, test) == 3
    (message,) = [r.getMessage() for r in caplog.records]
    assert "3 of the 4 test images" in message and "inflated" in message and "\n" not in message


def test_label_studio_yolo_with_webp_png_and_val_equal_to_train_loads_and_warns(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = tmp_path / "ls"
    for i, (stem, h, w, objects) in enumerate(IMAGES):
        write_image(root / "images" / f"{stem}.{'webp' if i % 2 else 'png'}", h, w, i)
        (root / "labels").mkdir(parents=True, exist_ok=True)
        (root / "labels" / f"{stem}.txt").write_text("".join(
            f"{NAMES.index(n)} {(x1 + x2) / 2 / w} {(y1 + y2) / 2 / h} {(x2 - x1) / w} {(y2 - y1) / h}\n"
            for n, x1, y1, x2, y2 in objects))
    data = root / "data.yaml"
    data.write_text(f"path: {root.resolve()}\ntrain: images\nval: images\nnames:\n  0: cat\n  1: dog\n")
    train = build_dataset(str(data), train=True)
    test = build_dataset(default_test_spec(str(data)), train=False)
    got = {Path(k).stem: [(n, *(pytest.approx(v, abs=1e-3) for v in b)) for n, *b in boxes]
           for k, boxes in _boxes(train).items()}
    assert got == EXPECTED
    assert train[0][0].shape[0] == 3 and {r.file.suffix for r in train.records} == {".png", ".webp"}
    with caplog.at_level(logging.WARNING, logger="detection.data"):
        assert warn_shared_images(train, test) == 4
    assert "4 of the 4 test images" in caplog.text
    assert check_dataset.main([str(data), "--split", "test"]) == 0  # no test split: its val side


# ------------------------------------------------------------------------------ item 3: COCO without sizes


@pytest.mark.parametrize("aspect", [True, False])
def test_cvat_coco_without_sizes_reads_them_from_the_images(tmp_path: Path, aspect: bool) -> None:
    from detection.data import build_train_loader

    ann = write_coco_export(tmp_path / "annotations" / "instances_default.json", tmp_path / "images",
                            sizes=False, parent=False)
    ds = build_dataset(f"coco:{ann}:{tmp_path / 'images'}", train=True,
                       transform=DetectionTransform(min_size=32, max_size=64, train=True))
    assert [(r.height, r.width) for r in ds.records] == [(h, w) for _, h, w, _ in IMAGES]
    assert ds.coco.imgs[1]["height"] == 64 and ds.coco.imgs[1]["width"] == 48
    assert ds.aspect_ratios()[1] == pytest.approx(48 / 64)
    loader = build_train_loader(ds, batch_size=2, seed=0, num_workers=0, aspect_grouping=aspect)
    images, targets = next(iter(loader))
    assert len(images) == 2 and all(len(t["boxes"]) for t in targets)
    assert check_dataset.main([f"coco:{ann}:{tmp_path / 'images'}"]) == 0


# ----------------------------------------------------------------------------- item 6: a truncated JPEG


def test_truncated_jpeg_is_decoded_as_viewers_do_with_a_warning(tmp_path: Path,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    path = truncated_jpeg(tmp_path / "cut.jpg")
    assert cv2.imdecode(np.fromfile(str(path), np.uint8), cv2.IMREAD_COLOR) is None  # what failed the run
    with caplog.at_level(logging.WARNING, logger="detection.data"):
        image = decode_image(path)
        decode_image(path)
    assert image.shape == (48, 64, 3)
    assert [r.getMessage() for r in caplog.records] == [
        f"{path}: truncated or damaged image data, decoded as far as it goes (as image viewers do)"]


def test_training_set_is_decode_checked_once_before_training(tmp_path: Path, caplog: pytest.LogCaptureFixture,
                                                             capsys: pytest.CaptureFixture[str],
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    import detection.data.check as check

    root = write_labelimg(tmp_path / "voc")
    truncated_jpeg(root / "images" / "img_1.jpg", 64, 48, seed=1)
    ds = build_dataset(str(root), train=True)
    with caplog.at_level(logging.WARNING, logger="detection.data"):
        assert verify_images(ds, tmp_path / "run") == []
    assert "img_1.jpg: truncated or damaged image data" in caplog.text
    assert check_dataset.main([str(root)]) == 0  # check_dataset names it among the warnings
    assert "recovered_image: " in capsys.readouterr().out
    cache = json.loads((tmp_path / "run" / IMAGE_CHECK_FILE).read_text())
    assert len(cache) == 4 and sum(e.get("recovered", False) for e in cache.values()) == 1

    # An undecodable file: one line naming it and data.skip_bad=true; the cache answers for the others.
    (root / "images" / "img_2.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    decoded: list[Path] = []
    real = check._check_one
    monkeypatch.setattr(check, "_check_one", lambda p: decoded.append(p) or real(p))
    with pytest.raises(DataError, match=r"img_2\.jpg.*data\.skip_bad=true skips such files") as e:
        verify_images(ds, tmp_path / "run")
    assert "\n" not in str(e.value) and [p.name for p in decoded] == ["img_2.jpg"]
    skipping = build_dataset(str(root), train=True, skip_bad=True)
    assert len(verify_images(skipping, tmp_path / "run")) == 1 and len(decoded) == 1


# ------------------------------------------------------------------------ item 7: LabelImg VOC folders


@pytest.mark.parametrize(("ann_dir", "image_dir", "renamed"), [
    ("annotations", "images", False),
    ("annots", "images", False),
    ("ANNOTATIONS", "Images", False),
    ("images", "images", False),  # XML beside the images
    ("annotations", "images", True),  # image found through <filename>
    ("Annotations", "JPEGImages", False),  # the devkit's names
])
def test_labelimg_folders_load_as_written(tmp_path: Path, ann_dir: str, image_dir: str, renamed: bool) -> None:
    root = write_labelimg(tmp_path / "labelimg", ann_dir, image_dir, renamed=renamed)
    ds = build_dataset(str(root), train=False, transform=DetectionTransform.resize_only(48, 64))
    assert ds.class_names == NAMES and [r.image_id for r in ds.records] == [s for s, *_ in IMAGES]
    got = _boxes(ds)
    for i, (stem, *_rest) in enumerate(IMAGES):
        assert got[f"photo {i}.jpg" if renamed else f"{stem}.jpg"] == EXPECTED[stem]
    assert ds[0][0].shape[1:] == (48, 64)


def test_voc_folders_settable_in_a_description(tmp_path: Path) -> None:
    root = write_labelimg(tmp_path / "data", "xml_files", "pics")
    spec = {"format": "voc", "root": str(root), "ann_dir": "xml_files", "image_dir": "pics"}
    assert len(build_dataset(spec, train=False)) == 4
    recorded = canonical_spec(spec)
    assert recorded["ann_dir"] == str(root / "xml_files") and len(build_dataset(recorded, train=False)) == 4
    with pytest.raises(DataError, match=r"no annotation folder with XML .*name it with ann_dir"):
        build_dataset({"format": "voc", "root": str(root)}, train=False)


# --------------------------------------------------------------------------- item 8: Roboflow COCO exports


def test_roboflow_coco_export_bare_json_and_images_folder(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    rf = tmp_path / "rf"
    beside = write_coco_export(rf / "train" / "_annotations.coco.json", rf / "train")
    below = write_coco_export(rf / "valid" / "_annotations.coco.json", rf / "valid" / "images")
    with caplog.at_level(logging.INFO, logger="detection.data"):
        train = build_dataset(str(beside), train=True)  # a bare .json path
    test = build_dataset(f"coco:{below}", train=False)  # images in its images/ sub-folder
    assert "['objects'] without annotations, the parent of the others, is not a class" in caplog.text
    for ds in (train, test):
        assert ds.class_names == NAMES and ds.contiguous_to_category_id == {0: 1, 1: 2}
        assert {Path(k).name.split("_jpg")[0]: v for k, v in _boxes(ds).items()} == EXPECTED
    assert test.records[0].file.parent == below.parent / "images"
    assert canonical_spec(f"coco:{below}") == f"coco:{below.resolve()}"

    # Every image missing, but one folder down holds them: said in the error.
    other = write_coco_export(tmp_path / "x" / "ann.json", tmp_path / "x" / "photos" / "all")
    with pytest.raises(DataError, match=r"none of its 4 images is in .*one folder down: use coco:.*photos/all"):
        build_dataset(f"coco:{other}:{tmp_path / 'x' / 'photos'}", train=False)


# ------------------------------------------------------- item 9: --split val, a description mapping in a file


def test_check_dataset_split_val_and_a_yaml_description_file(tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    root = write_labelimg(tmp_path / "voc")
    (root / "ImageSets" / "Main").mkdir(parents=True)
    (root / "ImageSets" / "Main" / "train.txt").write_text("img_0\nimg_1\nimg_2\n")
    (root / "ImageSets" / "Main" / "val.txt").write_text("img_3\n")
    assert check_dataset.main([str(root), "--split", "val"]) == 0
    assert "voc:" in (out := capsys.readouterr().out) and ": 1 images" in out
    assert check_dataset.main([str(root)]) == 0 and ": 3 images" in capsys.readouterr().out

    write_coco_export(tmp_path / "coco" / "ann.json", tmp_path / "coco" / "imgs")
    desc = tmp_path / "coco" / "dataset.yaml"
    desc.write_text("format: coco\nann_file: ann.json\nimage_dir: imgs\n")  # relative to the file's folder
    (source,) = parse_dataset_spec(str(desc))
    assert source.format == "coco" and Path(source.image_dir) == tmp_path / "coco" / "imgs"
    assert check_dataset.main([str(desc), "--split", "val"]) == 0
    assert ": 4 images, 2 classes" in capsys.readouterr().out


# ---------------------------------------------------------------------- item 10: drawing the ground truth


def test_check_dataset_draws_ground_truth(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from detection.visualize import class_color

    root = write_labelimg(tmp_path / "voc")
    for stem, h, w, _ in IMAGES:  # flat grey images: the drawn boxes are the only colour
        cv2.imwrite(str(root / "images" / f"{stem}.jpg"), np.full((h, w, 3), 128, np.uint8))
    out = tmp_path / "drawn"
    assert check_dataset.main([str(root), "--draw", "2", "--output", str(out)]) == 0
    files = sorted(out.glob("*.jpg"))
    assert len(files) == 2 and "2 image(s) with their ground truth drawn" in capsys.readouterr().err
    image = cv2.cvtColor(cv2.imread(str(files[0])), cv2.COLOR_BGR2RGB)
    scale = image.shape[1] // 64  # small images are enlarged for readable captions
    assert scale >= 2 and image.shape[:2] == (48 * scale, 64 * scale)
    _, x1, y1, x2, y2 = EXPECTED["img_0"][0]
    edge = image[int((y1 + y2) / 2 * scale), int(x1 * scale)]  # the cat box's left edge, half-way down
    assert np.abs(edge.astype(int) - class_color(NAMES.index("cat"))).max() < 40
    with pytest.raises(SystemExit):
        check_dataset.main([str(root), "--draw", "2"])  # --draw needs --output
