"""Bad annotations are refused with one line naming the file (or skipped and counted), never guessed: decoded size
vs annotation size (incl. an EXIF-rotated photo), COCO duplicate / unknown ids and malformed boxes, inverted VOC
boxes; errors met inside DataLoader workers read as one line."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from detection.data.base import DetectionDataset, Record
from detection.data.catalog import build_coco_dataset, build_dataset
from detection.data.transforms import DetectionTransform
from resbackbone.errors import DataError
from tests.helpers import noise_image, voc_xml, write_voc_year


def _record(path: Path, h: int, w: int) -> Record:
    return Record(path, "img", h, w, np.array([[2, 2, 20, 20]], np.float32), np.array([0]), np.zeros(1, bool))


def _dataset(records: list[Record], **kw: object) -> DetectionDataset:
    return DetectionDataset(records, ["thing"], family="voc", default_metric="voc", name="t", train=False,
                            transform=DetectionTransform.resize_only(32, 64), **kw)  # type: ignore[arg-type]


def _exif_rotated_jpeg(path: Path, h: int, w: int) -> None:
    """A JPEG stored as h x w with EXIF orientation 6 (rotate 90 degrees clockwise to view): shown as w x h."""
    ok, buf = cv2.imencode(".jpg", noise_image(h, w, 0))
    assert ok
    data = buf.tobytes()
    # APP1 Exif segment: little-endian TIFF with one IFD entry, Orientation (0x0112) = 6.
    tiff = b"II*\x00\x08\x00\x00\x00" + b"\x01\x00" + b"\x12\x01\x03\x00\x01\x00\x00\x00\x06\x00\x00\x00" + b"\x00" * 4
    app1 = b"Exif\x00\x00" + tiff
    segment = b"\xff\xe1" + (len(app1) + 2).to_bytes(2, "big") + app1
    path.write_bytes(data[:2] + segment + data[2:])


def test_size_mismatch_is_an_error_or_a_counted_skip(tmp_path: Path) -> None:
    good = tmp_path / "a.png"
    cv2.imwrite(str(good), noise_image(40, 60, 1))
    with pytest.raises(DataError, match=r"a\.png: decoded size 60x40 .* annotation's 80x50"):
        _dataset([_record(good, 50, 80)])[0]
    # skip_bad: counted, and the evaluation item is a black image of the annotated size (its objects are missed).
    ds = _dataset([_record(good, 50, 80)], skip_bad=True)
    image, target = ds[0]
    assert target["skipped"] and ds.num_skipped == 1 and int(image.max()) == 0
    assert _dataset([_record(good, 40, 60)])[0][1]["skipped"] is False


def test_exif_rotated_photo_is_decoded_upright_and_stored_pixel_annotations_are_refused(tmp_path: Path) -> None:
    photo = tmp_path / "rotated.jpg"
    _exif_rotated_jpeg(photo, 40, 64)  # stored 64 wide x 40 high; viewed 40 wide x 64 high
    from detection.data.transforms import decode_image

    assert decode_image(photo).shape[:2] == (64, 40)  # oriented, as viewers and annotation tools show it
    # Annotated on the oriented photo: fine.
    assert _dataset([_record(photo, 64, 40)])[0][0].shape[1:] != (0, 0)
    # Annotated on the stored pixels: refused, saying why.
    with pytest.raises(DataError, match="transposed: the photo carries an EXIF orientation"):
        _dataset([_record(photo, 40, 64)])[0]


def _coco(tmp_path: Path, images: list[dict], anns: list[dict], cats: list[dict] | None = None) -> Path:
    (tmp_path / "img").mkdir(exist_ok=True)
    for im in images:
        cv2.imwrite(str(tmp_path / "img" / im["file_name"]), noise_image(im["height"], im["width"], 0))
    path = tmp_path / "instances.json"
    path.write_text(json.dumps({"images": images, "annotations": anns,
                                "categories": cats if cats is not None else [{"id": 3, "name": "thing"}]}))
    return path


IM = [{"id": 42, "file_name": "a.png", "height": 32, "width": 48},
      {"id": 785, "file_name": "b.png", "height": 32, "width": 48}]


@pytest.mark.parametrize(("images", "anns", "message"), [
    ([IM[0], {**IM[1], "id": 42}], [], r"image id 42 is used by more than one image .*'a.png', 'b.png'"),
    (IM, [{"id": 1, "image_id": 42, "category_id": 3, "bbox": [1, 1, 5, 5]},
          {"id": 1, "image_id": 785, "category_id": 3, "bbox": [1, 1, 5, 5]}], "annotation id 1 is used by more"),
    (IM, [{"id": 7, "image_id": 42, "category_id": 12345, "bbox": [1, 1, 5, 5]}],
     r"annotation 7 has category_id 12345, which is not in 'categories' \(ids \[3\]\)"),
    (IM, [{"id": 7, "image_id": 9, "category_id": 3, "bbox": [1, 1, 5, 5]}], "refers to image id 9"),
    (IM, [{"id": 7, "image_id": 42, "category_id": 3, "bbox": [1, 1, 5]}], "bbox must be 4 finite numbers"),
    (IM, [{"id": 7, "image_id": 42, "category_id": 3, "bbox": [10, 1, -5, 5]}], "negative width or height"),
])
def test_coco_annotations_pycocotools_would_get_wrong_are_refused(tmp_path: Path, images: list, anns: list,
                                                                   message: str) -> None:
    ann = _coco(tmp_path, images, anns)
    with pytest.raises(DataError, match=message) as e:
        build_coco_dataset(ann, tmp_path / "img", train=False)
    assert "instances.json" in str(e.value) and "\n" not in str(e.value)


def test_inverted_voc_box_is_refused_and_skip_bad_counts_it(tmp_path: Path) -> None:
    write_voc_year(tmp_path, "2007", {"000001": (50, 50, [("cat", (1, 1, 30, 30), 0)]),
                                      "000002": (50, 50, [("dog", (3, 4, 20, 21), 0)])},
                   {"trainval": ["000001", "000002"], "test": ["000001", "000002"]})
    xml = tmp_path / "VOCdevkit" / "VOC2007" / "Annotations" / "000002.xml"
    xml.write_text(voc_xml("000002.jpg", 50, 50, [("dog", (30, 4, 20, 21), 0)]))  # xmin > xmax
    with pytest.raises(DataError, match=r"000002\.xml: object 1 \(dog\) has an inverted box xmin=30"):
        build_dataset("voc07-test", tmp_path, train=False)
    ds = build_dataset("voc07-test", tmp_path, train=False, skip_bad=True)
    assert len(ds) == 1 and ds.num_skipped == 1


class _Broken(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return 2

    def __getitem__(self, i: int) -> None:
        raise DataError("cannot decode image (corrupt or not an image): /data/x.jpg")


def test_error_inside_a_dataloader_worker_is_one_line() -> None:
    with pytest.raises(DataError) as e:
        next(iter(torch.utils.data.DataLoader(_Broken(), num_workers=1)))
    assert str(e.value) == "cannot decode image (corrupt or not an image): /data/x.jpg (in DataLoader worker process 0)"
