"""The embedded synthetic set: deterministic VOC tree + COCO JSON that agree, by-name loading, regeneration."""

from __future__ import annotations

import json
import multiprocessing as mp
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest

from detection.data import SYNTHETIC_CLASSES, build_dataset, catalog, generate_synthetic
from detection.data.synthetic import DEFAULT_NUM_TEST, DEFAULT_NUM_TRAIN, GENERATOR_VERSION, MARKER
from detection.data.transforms import DetectionTransform

SMALL = {"num_train": 6, "num_test": 3, "image_size": 128}


def _tree_bytes(tree: Path) -> dict[str, bytes]:
    return {str(p.relative_to(tree)): p.read_bytes() for p in sorted(tree.rglob("*")) if p.is_file()}


def test_same_seed_same_files_other_seed_other_files(tmp_path: Path) -> None:
    a = _tree_bytes(generate_synthetic(tmp_path / "a", seed=3, **SMALL))
    b = _tree_bytes(generate_synthetic(tmp_path / "b", seed=3, **SMALL))
    c = _tree_bytes(generate_synthetic(tmp_path / "c", seed=4, **SMALL))
    assert a == b
    assert a.keys() == c.keys() and a["JPEGImages/000000.jpg"] != c["JPEGImages/000000.jpg"]
    assert len([k for k in a if k.startswith("JPEGImages/")]) == 9
    assert a["ImageSets/Main/train.txt"].decode().split() == [f"{i:06d}" for i in range(6)]
    assert a["ImageSets/Main/test.txt"].decode().split() == [f"{i:06d}" for i in range(6, 9)]
    marker = json.loads(a[MARKER])
    assert marker == {"version": GENERATOR_VERSION, "seed": 3, **SMALL}


def test_voc_xml_and_coco_json_agree(tmp_path: Path) -> None:
    tree = generate_synthetic(tmp_path, seed=1, **SMALL)
    for split in ("train", "test"):
        coco = json.loads((tree / "annotations" / f"instances_{split}.json").read_text())
        assert [c["name"] for c in sorted(coco["categories"], key=lambda c: c["id"])] == list(SYNTHETIC_CLASSES)
        ids = (tree / "ImageSets" / "Main" / f"{split}.txt").read_text().split()
        assert sorted(im["id"] for im in coco["images"]) == [int(i) for i in ids]
        for image_id in ids:
            root = ET.parse(tree / "Annotations" / f"{image_id}.xml").getroot()
            voc = sorted(
                (SYNTHETIC_CLASSES.index(o.findtext("name")) + 1,
                 *(float(o.find("bndbox").findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax")))
                for o in root.iter("object")
            )
            # VOC 1-based inclusive (x1 + 1, y1 + 1, x2, y2) <-> COCO (x1, y1, w, h): the same boxes.
            from_coco = sorted(
                (a["category_id"], a["bbox"][0] + 1, a["bbox"][1] + 1, a["bbox"][0] + a["bbox"][2],
                 a["bbox"][1] + a["bbox"][3])
                for a in coco["annotations"] if a["image_id"] == int(image_id)
            )
            assert voc == from_coco and 1 <= len(voc) <= 5


@pytest.fixture(scope="module")
def default_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The default tree (400 + 500 images), generated once: build_dataset makes it on first use."""
    return tmp_path_factory.mktemp("synthetic_root")


def test_build_by_name_generates_and_exposes_both_formats(default_root: Path) -> None:
    train = build_dataset("synthetic-train", default_root, train=True,
                          transform=DetectionTransform(min_size=128, max_size=128, train=True))
    test = build_dataset("synthetic-test", default_root, train=False,
                         transform=DetectionTransform.resize_only(128, 128))
    assert len(test) == DEFAULT_NUM_TEST and 0 < len(train) <= DEFAULT_NUM_TRAIN  # all-occluded images are filtered
    assert test.family == "synthetic" and test.default_metric == "voc" and test.class_names == SYNTHETIC_CLASSES
    assert sorted(test.coco.getImgIds()) == [int(i) for i in test.image_ids]
    assert test.contiguous_to_category_id == {0: 1, 1: 2, 2: 3}
    for i in range(0, DEFAULT_NUM_TEST, 37):
        gt = test.get_ground_truth(i)
        anns = test.coco.loadAnns(test.coco.getAnnIds(imgIds=[int(gt["image_id"])]))
        coco_boxes = sorted([a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3]]
                            for a in anns)
        assert sorted(gt["boxes"].tolist()) == coco_boxes
        image, target = test[i]
        assert tuple(image.shape) == (3, 128, 128) and target["image_id"] == gt["image_id"]


def test_variation_matches_the_spec(default_root: Path) -> None:
    """Scales ~12-70 px, every class present, 1-5 objects, rectangles with aspect ratios far from 1."""
    ds = build_dataset("synthetic-train", default_root, train=False, filter_empty=False)
    boxes, labels, counts = [], [], []
    for i in range(len(ds)):
        gt = ds.get_ground_truth(i)
        boxes.append(gt["boxes"])
        labels.append(gt["labels"])
        counts.append(len(gt["boxes"]))
    b, lab = np.concatenate(boxes), np.concatenate(labels)
    w, h = b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]
    assert (b >= 0).all() and (b <= 128).all() and (w >= 1).all() and (h >= 1).all()
    side = np.sqrt(w * h)
    assert side.min() < 20 and 50 < side.max() <= 75
    assert np.bincount(lab, minlength=3).min() > 0.2 * len(lab)
    rect = lab == SYNTHETIC_CLASSES.index("rectangle")
    aspect = w[rect] / h[rect]
    assert aspect.min() < 0.7 and aspect.max() > 1.4
    assert max(counts) <= 5 and np.mean(counts) > 1.5
    # Occlusion: some images have overlapping annotated objects.
    assert any(_has_overlap(x) for x in boxes)


def _has_overlap(b: np.ndarray) -> bool:
    for i in range(len(b)):
        for j in range(i + 1, len(b)):
            if min(b[i, 2], b[j, 2]) > max(b[i, 0], b[j, 0]) and min(b[i, 3], b[j, 3]) > max(b[i, 1], b[j, 1]):
                return True
    return False


def test_stale_tree_is_regenerated(tmp_path: Path) -> None:
    tree = generate_synthetic(tmp_path, seed=0, **SMALL)
    first = _tree_bytes(tree)
    assert generate_synthetic(tmp_path, seed=0, **SMALL) == tree and _tree_bytes(tree) == first  # current: kept
    marker = json.loads((tree / MARKER).read_text())
    (tree / MARKER).write_text(json.dumps({**marker, "version": GENERATOR_VERSION - 1}))  # an older generator
    (tree / "JPEGImages" / "000000.jpg").write_bytes(b"garbage")
    generate_synthetic(tmp_path, seed=0, **SMALL)
    assert _tree_bytes(tree) == first
    generate_synthetic(tmp_path, seed=0, **{**SMALL, "num_train": 2})  # other parameters replace it
    assert (tree / "ImageSets/Main/train.txt").read_text().split() == ["000000", "000001"]
    assert [p.name for p in tmp_path.iterdir()] == ["synthetic"]  # no temp dirs left behind


def test_by_name_uses_a_current_custom_tree_and_regenerates_an_old_one(tmp_path: Path) -> None:
    tree = generate_synthetic(tmp_path, seed=2, **SMALL)
    first = _tree_bytes(tree)
    ds = build_dataset("synthetic-train", tmp_path, train=False)
    assert len(ds) == 6 and _tree_bytes(tree) == first  # a smaller current tree is not overwritten
    marker = json.loads((tree / MARKER).read_text())
    (tree / MARKER).write_text(json.dumps({**marker, "version": GENERATOR_VERSION - 1}))
    (tree / "JPEGImages" / "000000.jpg").write_bytes(b"old drawing")
    assert len(build_dataset("synthetic-test", tmp_path, train=False)) == 3  # regenerated, same parameters
    assert _tree_bytes(tree) == first


def test_a_tree_of_an_earlier_default_is_replaced_by_the_current_default(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    generate_synthetic(tmp_path, seed=0, **SMALL)
    calls = []
    monkeypatch.setattr(catalog, "SUPERSEDED_DEFAULTS", ({**SMALL, "seed": 0},))
    monkeypatch.setattr(catalog, "generate_synthetic", lambda root, **kw: calls.append(kw) or root / "synthetic")
    catalog.ensure_synthetic(tmp_path)
    assert calls == [{}]  # the current defaults, not the old tree's parameters
    monkeypatch.setattr(catalog, "SUPERSEDED_DEFAULTS", ())
    catalog.ensure_synthetic(tmp_path)
    assert calls == [{}]  # a current custom tree is kept


def _generate(root: str) -> str:
    return str(generate_synthetic(Path(root), seed=5, **SMALL))


def test_racing_processes_both_get_a_complete_tree(tmp_path: Path) -> None:
    with mp.get_context("fork").Pool(2) as pool:
        paths = pool.map(_generate, [str(tmp_path)] * 2)
    assert paths == [str(tmp_path / "synthetic")] * 2
    assert _tree_bytes(tmp_path / "synthetic") == _tree_bytes(generate_synthetic(tmp_path / "ref", seed=5, **SMALL))
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
