"""detection.data.voc: PASCAL VOC loading on generated trees in the official devkit layout, and on the real VOC2007
sample."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from detection.data import VOC_CLASSES, DataError, build_dataset
from detection.data.transforms import DetectionTransform
from tests.helpers import SHARED_DATA, voc_xml

REAL_VOC = SHARED_DATA / "voc"


def test_one_based_inclusive_becomes_continuous_xyxy(voc_root: Path) -> None:
    ds = build_dataset("voc07-test", voc_root, train=False)
    gt = ds.get_ground_truth(ds.image_ids.index("000001"))
    np.testing.assert_array_equal(gt["boxes"], np.array([[0, 0, 50, 50]], np.float32))  # full 50x50 image
    assert gt["boxes"].dtype == np.float32 and gt["labels"].dtype == np.int64
    assert gt["labels"].tolist() == [VOC_CLASSES.index("cat")]
    gt2 = ds.get_ground_truth(ds.image_ids.index("000002"))
    np.testing.assert_array_equal(gt2["boxes"], np.array([[2, 3, 20, 21]], np.float32))
    assert ds.default_metric == "voc07" and ds.family == "voc" and ds.class_names == VOC_CLASSES


def test_item_format_and_resized_boxes(voc_root: Path) -> None:
    ds = build_dataset("voc07-test", voc_root, train=False, transform=DetectionTransform.resize_only(100, 1000))
    i = ds.image_ids.index("000002")  # 40 wide x 60 high -> 100 x 150
    image, target = ds[i]
    assert image.dtype == torch.uint8 and image.shape == (3, 150, 100)
    assert target["orig_size"] == (60, 40) and target["size"] == (150, 100)
    assert target["image_id"] == "000002" and target["index"] == i
    torch.testing.assert_close(target["boxes"], torch.tensor([[5.0, 7.5, 50.0, 52.5]]))
    assert target["boxes"].dtype == torch.float32 and target["labels"].dtype == torch.int64
    assert target["difficult"].dtype == torch.bool


def test_image_found_by_id_not_by_lying_filename(voc_root: Path) -> None:
    ds = build_dataset("voc07-train", voc_root, train=False)
    for i in range(len(ds)):  # <filename> of both images is wrong; decoding would fail if it were used
        image, target = ds[i]
        assert image.shape[1:] == target["size"]
    assert ds.image_ids == ["000005", "000007"]


def test_difficult_flagged_and_dropped_only_from_training_targets(voc_root: Path) -> None:
    test_like = build_dataset("voc07-trainval", voc_root, train=False)
    i = test_like.image_ids.index("000005")
    gt = test_like.get_ground_truth(i)
    assert gt["difficult"].tolist() == [False, True]
    assert test_like[i][1]["difficult"].tolist() == [False, True]  # evaluation items keep them, flagged

    train = build_dataset("voc07-trainval", voc_root, train=True,
                          transform=DetectionTransform(min_size=600, max_size=1000, train=True, flip_prob=0.0))
    # 000009 has only a difficult box: without use_difficult it has no target and is filtered out of training.
    assert train.image_ids == ["000005", "000007"]
    _, target = train[0]
    assert target["labels"].tolist() == [VOC_CLASSES.index("chair")]
    # The evaluator's view is unchanged by use_difficult / training.
    assert train.get_ground_truth(0)["difficult"].tolist() == [False, True]

    with_difficult = build_dataset("voc07-trainval", voc_root, train=True, use_difficult=True,
                                   transform=DetectionTransform(min_size=600, max_size=1000, train=True, flip_prob=0.0))
    assert with_difficult.image_ids == ["000005", "000007", "000009"]
    assert with_difficult[0][1]["labels"].tolist() == [VOC_CLASSES.index(c) for c in ("chair", "person")]
    keep_empty = build_dataset("voc07-trainval", voc_root, train=True, filter_empty=False)
    assert len(keep_empty) == 3 and len(keep_empty[2][1]["boxes"]) == 0


def test_concatenations_07_plus_12(voc_root: Path) -> None:
    plus = build_dataset("voc07+12", voc_root, train=False)
    assert plus.image_ids == ["000005", "000007", "000009", "2008_000001", "2008_000002"]
    plusplus = build_dataset("voc07++12", voc_root, train=False)
    assert plusplus.image_ids == ["000005", "000007", "000009", "000001", "000002", "2008_000001", "2008_000002"]
    assert plusplus.default_metric == "voc" and plus.family == "voc"
    # The same API across the parts: 2012 items come from the 2012 tree with their own sizes.
    i = plusplus.image_ids.index("2008_000002")
    _, target = plusplus[i]
    assert target["orig_size"] == (44, 56)
    np.testing.assert_array_equal(plusplus.get_ground_truth(i)["boxes"][0], [0, 1, 56, 44])
    np.testing.assert_allclose(plusplus.aspect_ratios(), [64 / 48, 48 / 64, 60 / 40, 50 / 50, 40 / 60, 1.0, 56 / 44])
    assert build_dataset("voc12-val", voc_root, train=False).image_ids == ["2008_000002"]
    assert build_dataset("voc12-trainval", voc_root, train=False).default_metric == "voc"


def test_missing_tree_and_split_name_the_path(tmp_path: Path, voc_root: Path) -> None:
    with pytest.raises(DataError, match="README") as e:
        build_dataset("voc07-test", tmp_path / "nowhere", train=False)
    assert str(tmp_path / "nowhere" / "VOCdevkit" / "VOC2007") in str(e.value)
    (voc_root / "VOCdevkit/VOC2007/ImageSets/Main/test.txt").unlink()
    with pytest.raises(DataError, match=r"ImageSets/Main/test\.txt"):
        build_dataset("voc07-test", voc_root, train=False)


def test_malformed_xml_and_unknown_class_name_the_file(voc_root: Path) -> None:
    ann = voc_root / "VOCdevkit/VOC2007/Annotations"
    (ann / "000001.xml").write_text("<annotation><size><width>50</width>")  # truncated
    with pytest.raises(DataError, match=r"000001\.xml"):
        build_dataset("voc07-test", voc_root, train=False)
    (ann / "000001.xml").write_text(voc_xml("000001.jpg", 50, 50, [("unicorn", (1, 1, 5, 5), 0)]))
    with pytest.raises(DataError, match=r"000001\.xml.*unicorn"):
        build_dataset("voc07-test", voc_root, train=False)
    (ann / "000001.xml").write_text(voc_xml("000001.jpg", 50, 50, [("cat", (1, 1, 5, 5), 0)]).replace(
        "<xmax>5</xmax>", "<xmax>five</xmax>"))
    with pytest.raises(DataError, match=r"000001\.xml"):
        build_dataset("voc07-test", voc_root, train=False)
    # skip_bad: warn, skip and count instead.
    ds = build_dataset("voc07-test", voc_root, train=False, skip_bad=True)
    assert ds.image_ids == ["000002"] and ds.num_skipped == 1


def test_corrupt_image_names_the_file_or_is_skipped(voc_root: Path) -> None:
    (voc_root / "VOCdevkit/VOC2007/JPEGImages/000001.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    ds = build_dataset("voc07-test", voc_root, train=False)
    with pytest.raises(DataError, match=r"JPEGImages/000001\.jpg"):
        ds[0]
    skipping = build_dataset("voc07-trainval", voc_root, train=True, skip_bad=True, use_difficult=True)
    (voc_root / "VOCdevkit/VOC2007/JPEGImages/000005.jpg").write_bytes(b"")
    _, target = skipping[0]  # training: replaced by a seeded substitute, and counted
    assert target["image_id"] in ("000007", "000009") and skipping.num_skipped == 1
    evaluation = build_dataset("voc07-test", voc_root, train=False, skip_bad=True)
    image, target = evaluation[0]  # evaluation: the same image id, a black image, flagged
    assert target["image_id"] == "000001" and target["skipped"] and image.max() == 0
    assert evaluation.num_skipped == 1 and not evaluation[1][1]["skipped"]


@pytest.mark.skipif(not REAL_VOC.is_dir(), reason="../shared/data/voc (real VOC2007 sample) not present")
def test_real_voc2007_sample() -> None:
    test = build_dataset("voc07-test", REAL_VOC, train=False)
    trainval = build_dataset("voc07-trainval", REAL_VOC, train=False)
    assert len(test) == 43 and len(trainval) == 67
    labels = set()
    num_difficult = 0
    for ds in (test, trainval):
        for i in range(len(ds)):
            gt = ds.get_ground_truth(i)
            labels |= set(gt["labels"].tolist())
            num_difficult += int(gt["difficult"].sum())
            assert (gt["boxes"][:, 2:] > gt["boxes"][:, :2]).all()
    assert labels == set(range(20)) and num_difficult > 0
    test_labels = {int(c) for i in range(len(test)) for c in test.get_ground_truth(i)["labels"]}
    assert VOC_CLASSES.index("cat") not in test_labels  # as the sample's README says
    # Every image decodes (found by id although most <filename>s say 2007_XXXXXX.jpg) at its annotated size.
    for ds in (test, trainval):
        for i in range(len(ds)):
            rec = ds.records[i]
            image = cv2.imread(str(rec.file))
            assert image is not None and image.shape[:2] == (rec.height, rec.width)
    image, target = test[0]
    assert image.shape[0] == 3 and (min(target["size"]) == 600 or max(target["size"]) == 1000)
