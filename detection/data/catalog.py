"""Dataset names a user types -> datasets, and the data root.

Data root: ``--data-root`` > ``$RESDET_DATA_ROOT`` > the repository's ``datasets/`` folder (see datasets/README.md
for every layout). Official layouts are used unchanged.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from resbackbone.engine.paths import data_root
from resbackbone.errors import DataError

from ..config import DataConfig
from .base import DetectionDataset
from .coco import load_coco_records
from .synthetic import GENERATOR_VERSION, MARKER, SYNTHETIC_CLASSES, generate_synthetic
from .voc import VOC_CLASSES, load_voc_records

# name -> [(VOC year, split)]
VOC_SETS: dict[str, list[tuple[str, str]]] = {
    "voc07-trainval": [("2007", "trainval")],
    "voc07-train": [("2007", "train")],
    "voc07-val": [("2007", "val")],
    "voc07-test": [("2007", "test")],
    "voc12-trainval": [("2012", "trainval")],
    "voc12-train": [("2012", "train")],
    "voc12-val": [("2012", "val")],
    # The paper's VOC 2007 training set (07 trainval + 12 trainval) and VOC 2012 training set (07++12).
    "voc07+12": [("2007", "trainval"), ("2012", "trainval")],
    "voc07++12": [("2007", "trainval"), ("2007", "test"), ("2012", "trainval")],
}
# name -> (image folder, annotation file) under <root>/coco
COCO_SETS: dict[str, tuple[str, str]] = {
    "coco2017-train": ("train2017", "instances_train2017.json"),
    "coco2017-val": ("val2017", "instances_val2017.json"),
    "coco2014-train": ("train2014", "instances_train2014.json"),
    "coco2014-val": ("val2014", "instances_val2014.json"),
    "coco2014-minival": ("val2014", "instances_minival2014.json"),
    "coco2014-valminusminival": ("val2014", "instances_valminusminival2014.json"),
}
SYNTHETIC_SETS = ("synthetic-train", "synthetic-test")
DATASET_NAMES: tuple[str, ...] = (*VOC_SETS, *COCO_SETS, *SYNTHETIC_SETS)


def get_data_root(root: str | Path | None = None) -> Path:
    """Explicit argument > ``$RESDET_DATA_ROOT`` > the repository's ``datasets/`` (``./datasets`` when installed)."""
    return data_root(root)


def ensure_synthetic(root: Path) -> Path:
    """The synthetic tree under ``root``, generated when missing or written by an older generator version.

    A current tree made with non-default parameters (e.g. a smaller one for tests, via :func:`generate_synthetic`)
    is used as it is, and an outdated one is regenerated with its own parameters: only the drawing code changed.
    """
    params: dict[str, Any] = {}
    try:
        marker = json.loads((root / "synthetic" / MARKER).read_text())
        params = {k: int(marker[k]) for k in ("num_train", "num_test", "image_size", "seed")}
        if marker.get("version") == GENERATOR_VERSION:
            return root / "synthetic"
    except (OSError, ValueError, KeyError, TypeError):
        params = {}  # missing or unreadable marker: the default tree
    return generate_synthetic(root, **params)


def build_dataset(
    name: str,
    root: str | Path | None = None,
    *,
    train: bool,
    min_size: int | Sequence[int] = 600,
    max_size: int = 1000,
    flip_prob: float = 0.5,
    photometric: bool = False,
    use_difficult: bool = False,
    filter_empty: bool | None = None,
    skip_bad: bool = False,
) -> DetectionDataset:
    """A dataset by the name a user types (see :data:`DATASET_NAMES` and datasets/README.md)."""
    data_root = get_data_root(root)
    kwargs: dict[str, Any] = dict(
        name=name, train=train, min_size=min_size, max_size=max_size, flip_prob=flip_prob,
        photometric=photometric, use_difficult=use_difficult, filter_empty=filter_empty, skip_bad=skip_bad,
    )
    if name in VOC_SETS:
        parts = []
        for year, split in VOC_SETS[name]:
            year_dir = data_root / "VOCdevkit" / f"VOC{year}"
            if not year_dir.is_dir():
                raise DataError(f"{name}: VOC{year} not found at {year_dir} (see datasets/README.md)")
            parts.append((year_dir, split))
        records, skipped = load_voc_records(parts, VOC_CLASSES, skip_bad=skip_bad)
        # VOC2007 test is scored with the devkit's 11-point metric, everything else with the area under the curve.
        metric = "voc07" if VOC_SETS[name] == [("2007", "test")] else "voc"
        return DetectionDataset(records, VOC_CLASSES, family="voc", default_metric=metric, num_skipped=skipped,
                                **kwargs)
    if name in COCO_SETS:
        folder, ann = COCO_SETS[name]
        coco_root = data_root / "coco"
        return build_coco_dataset(coco_root / "annotations" / ann, coco_root / folder, **kwargs)
    if name in SYNTHETIC_SETS:
        split = name.split("-", 1)[1]
        tree = ensure_synthetic(data_root)
        records, skipped = load_voc_records([(tree, split)], SYNTHETIC_CLASSES, skip_bad=skip_bad)
        # The same images as a COCO-format set, so the COCO metric works on the synthetic data too.
        from .coco import load_coco

        return DetectionDataset(
            records, SYNTHETIC_CLASSES, family="synthetic", default_metric="voc", num_skipped=skipped,
            coco=load_coco(tree / "annotations" / f"instances_{split}.json"),
            contiguous_to_category_id={i: i + 1 for i in range(len(SYNTHETIC_CLASSES))}, **kwargs,
        )
    raise DataError(f"unknown dataset name {name!r}; valid names: {', '.join(DATASET_NAMES)}")


def build_coco_dataset(
    ann_file: str | Path,
    image_dir: str | Path,
    *,
    name: str | None = None,
    train: bool,
    **kwargs: Any,
) -> DetectionDataset:
    """A COCO-format dataset from any instances JSON + image folder (the named COCO sets use this; so can a
    custom subset). ``kwargs``: the transform / filtering options of :func:`build_dataset`."""
    records, class_names, contiguous, coco = load_coco_records(Path(ann_file), Path(image_dir))
    return DetectionDataset(records, class_names, family="coco", default_metric="coco", name=name or str(ann_file),
                            train=train, coco=coco, contiguous_to_category_id=contiguous, **kwargs)


def build_train_dataset(cfg: DataConfig) -> DetectionDataset:
    """The training set ``cfg.train`` with the training transform; an error when no image is usable."""
    dataset = build_dataset(
        cfg.train,
        cfg.root,
        train=True,
        min_size=cfg.min_size_train,
        max_size=cfg.max_size_train,
        flip_prob=cfg.flip_prob,
        photometric=cfg.photometric,
        use_difficult=cfg.use_difficult,
        filter_empty=cfg.filter_empty,
        skip_bad=cfg.skip_bad,
    )
    if len(dataset) == 0:
        raise DataError(f"training dataset {cfg.train!r} yields no trainable image (after filtering empty images)")
    return dataset


def build_test_dataset(cfg: DataConfig, name: str | None = None) -> DetectionDataset:
    """The evaluation set ``name`` (default ``cfg.test``) at the test size of ``cfg``."""
    return build_dataset(name or cfg.test, cfg.root, train=False, min_size=cfg.min_size_test,
                         max_size=cfg.max_size_test, skip_bad=cfg.skip_bad)
