"""Dataset names a user types -> datasets, and the data root.

Data root: ``--data-root`` > ``$RESDET_DATA_ROOT`` > the repository's ``datasets/`` folder (see datasets/README.md
for every layout). Official layouts are used unchanged.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np

from resbackbone.engine.paths import data_root
from resbackbone.errors import ConfigError, DataError

from ..config import DataConfig
from .base import DetectionDataset, Record
from .coco import load_coco, load_coco_records
from .custom import (
    Problems,
    collect_voc_classes,
    collecting,
    default_voc_split,
    find_voc_layout,
    image_size,
    is_voc_folder,
    load_voc_folder,
    load_yolo,
    read_yolo_yaml,
    voc_folder_ids,
)
from .synthetic import GENERATOR_VERSION, MARKER, SUPERSEDED_DEFAULTS, SYNTHETIC_CLASSES, generate_synthetic
from .transforms import DetectionTransform
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
logger = logging.getLogger("detection.data")
# Keys of a description mapping that hold paths (made relative to a description file's folder).
PATH_KEYS = ("ann_file", "image_dir", "root", "data", "ann_dir")
# How many of a COCO set's file names are looked up to find its image folder.
COCO_PROBE = 20


def get_data_root(root: str | Path | None = None) -> Path:
    """Explicit argument > ``$RESDET_DATA_ROOT`` > the repository's ``datasets/`` (``./datasets`` when installed)."""
    return data_root(root)


def ensure_synthetic(root: Path) -> Path:
    """The synthetic tree under ``root``, generated when missing or written by an older generator version.

    A current tree made with non-default parameters (e.g. a smaller one for tests, via :func:`generate_synthetic`)
    is used as it is, and an outdated one is regenerated with its own parameters: only the drawing code changed.
    A tree made with an earlier version's default parameters is replaced by the current default tree.
    """
    params: dict[str, Any] = {}
    try:
        marker = json.loads((root / "synthetic" / MARKER).read_text())
        params = {k: int(marker[k]) for k in ("num_train", "num_test", "image_size", "seed")}
        if params in SUPERSEDED_DEFAULTS:
            params = {}
        elif marker.get("version") == GENERATOR_VERSION:
            return root / "synthetic"
    except (OSError, ValueError, KeyError, TypeError):
        params = {}  # missing or unreadable marker: the default tree
    return generate_synthetic(root, **params)


@dataclass(frozen=True)
class DatasetSource:
    """One dataset description: a catalog ``name``, or a user's COCO JSON + images, VOC-style folder or YOLO
    ``data.yaml`` (see :func:`parse_dataset_spec`)."""

    format: Literal["name", "coco", "voc", "yolo"]
    path: str  # the name, the COCO JSON, the VOC-style root, or the YOLO data.yaml
    # COCO: the folder file_name is relative to ("": beside the JSON, else its images/ sub-folder);
    # VOC-style: the image folder ("": JPEGImages/ or a name other tools use, see custom.find_voc_layout).
    image_dir: str = ""
    # VOC-style: ImageSets/Main/<split>.txt (None: train / trainval for training, val / test for evaluation when
    # those lists exist, else every XML); YOLO: train / val / test (None: train, or val for evaluation).
    split: str | None = None
    classes: tuple[str, ...] = ()  # VOC-style: the class list (empty: collected from the XML)
    ann_dir: str = ""  # VOC-style: the XML folder ("": Annotations/ or a name other tools use)

    def as_config(self) -> str | dict[str, Any]:
        """The description with absolute paths, as config.yaml records it."""
        if self.format == "name":
            return self.path
        if self.format == "coco":
            images = f":{Path(self.image_dir).resolve()}" if self.image_dir else ""
            return f"coco:{Path(self.path).resolve()}{images}"
        if self.format == "voc" and (self.classes or self.ann_dir or self.image_dir):
            root = Path(self.path).resolve()
            return {"format": "voc", "root": str(root), "split": self.split, "classes": list(self.classes),
                    "ann_dir": str((root / self.ann_dir).resolve()) if self.ann_dir else "",
                    "image_dir": str((root / self.image_dir).resolve()) if self.image_dir else ""}
        return f"{self.format}:{Path(self.path).resolve()}" + (f":{self.split}" if self.split else "")


SPEC_HELP = ("a dataset name, coco:ANNOTATIONS.json[:IMAGE_DIR], an annotations .json, voc:FOLDER[:SPLIT], "
             "yolo:DATA.yaml[:SPLIT], a VOC-style folder, a YOLO data.yaml, or a YAML mapping {format, ...} "
             "(inline or in a .yaml file)")


def parse_dataset_spec(spec: Any, key: str = "dataset") -> list[DatasetSource]:
    """The sources of a dataset description; several (a list) are concatenated.

    Strings: a catalog name (:data:`DATASET_NAMES`), ``coco:ANN.json[:IMAGE_DIR]``, ``voc:ROOT[:SPLIT]``,
    ``yolo:DATA.yaml[:SPLIT]``, or a bare path (a ``.json`` file is COCO, a folder with an annotation folder of
    XML or with XML beside its images is VOC-style, a ``.yaml`` file is a description mapping when it has a
    ``format`` key, else a YOLO data.yaml). Mappings: ``{format: coco, ann_file, image_dir}``, ``{format: voc,
    root, split, classes, ann_dir, image_dir}``, ``{format: yolo, data, split}``. Relative paths are relative to
    the current directory, or in a description file to that file's folder.
    """
    if isinstance(spec, list | tuple):
        if not spec:
            raise ConfigError(f"{key}: an empty list of datasets")
        return [s for i, item in enumerate(spec) for s in parse_dataset_spec(item, f"{key}[{i}]")]
    if isinstance(spec, Mapping):
        return [_source_from_mapping(spec, key)]
    if not isinstance(spec, str) or not spec.strip():
        raise ConfigError(f"{key}: expected {SPEC_HELP}; got {spec!r}")
    spec = spec.strip()
    if spec in DATASET_NAMES:
        return [DatasetSource("name", spec)]
    kind, _, rest = spec.partition(":")
    if kind == "coco" and rest:
        ann, sep, images = rest.rpartition(":")
        if not sep:  # coco:ANN.json: the images beside it or in its images/ folder
            ann, images = rest, ""
        if not ann or (sep and not images):
            raise ConfigError(f"{key}: {spec!r}: expected coco:ANNOTATIONS.json[:IMAGE_DIR]")
        return [DatasetSource("coco", ann, image_dir=images)]
    if kind in ("voc", "yolo") and rest:
        path, split = rest, None
        head, sep, tail = rest.rpartition(":")
        if sep and head and "/" not in tail and not Path(rest).exists():
            path, split = head, tail
        return [DatasetSource(kind, path, split=split)]  # type: ignore[arg-type]
    path = Path(spec)
    if path.suffix.lower() == ".json" and path.is_file():
        return [DatasetSource("coco", spec)]
    if is_voc_folder(path):
        return [DatasetSource("voc", spec)]
    if path.suffix in (".yaml", ".yml") and path.is_file():
        described = _description_file(path, key)
        return described if described is not None else [DatasetSource("yolo", spec)]
    raise ConfigError(f"{key}: unknown dataset {spec!r}: expected {SPEC_HELP} (valid names: "
                      f"{', '.join(DATASET_NAMES)})")


def _description_file(path: Path, key: str) -> list[DatasetSource] | None:
    """The sources of a YAML file holding a description mapping (or a list of them), paths relative to the file's
    folder; None for any other YAML (a YOLO data.yaml: it has no ``format`` key)."""
    import yaml

    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise ConfigError(f"{key}: cannot read {path}: {e}") from e
    items = data if isinstance(data, list) else [data]
    if not items or not all(isinstance(d, Mapping) and "format" in d for d in items):
        return None
    base = path.parent
    out = []
    for i, item in enumerate(items):
        where = f"{key} ({path}{f'[{i}]' if isinstance(data, list) else ''})"
        item = {k: (str(base / v) if k in PATH_KEYS and isinstance(v, str) and v else v) for k, v in item.items()}
        out.append(_source_from_mapping(item, where))
    return out


def _source_from_mapping(spec: Mapping[str, Any], key: str) -> DatasetSource:
    fields = {"coco": ("ann_file",), "voc": ("root",), "yolo": ("data",)}
    optional = {"coco": ("image_dir",), "voc": ("split", "classes", "ann_dir", "image_dir"), "yolo": ("split",)}
    fmt = spec.get("format")
    if fmt not in fields:
        raise ConfigError(f"{key}.format: expected one of {sorted(fields)}, got {fmt!r}")
    allowed = {"format", "name", *fields[fmt], *optional[fmt]}
    if unknown := sorted(set(spec) - allowed):
        raise ConfigError(f"{key}: unknown key(s) {unknown} for format {fmt} (valid: {sorted(allowed)})")
    if missing := [f for f in fields[fmt] if not spec.get(f)]:
        raise ConfigError(f"{key}: format {fmt} needs {missing}")
    split = spec.get("split")
    if fmt == "coco":
        return DatasetSource("coco", str(spec["ann_file"]), image_dir=str(spec.get("image_dir") or ""))
    if fmt == "yolo":
        return DatasetSource("yolo", str(spec["data"]), split=str(split) if split else None)
    classes = spec.get("classes") or ()
    if isinstance(classes, str):
        classes = read_class_list(classes)
    if not isinstance(classes, list | tuple) or not all(isinstance(c, str) for c in classes):
        raise ConfigError(f"{key}.classes: expected a list of class names or a file of them, got {classes!r}")
    return DatasetSource("voc", str(spec["root"]), split=str(split) if split else None, classes=tuple(classes),
                         ann_dir=str(spec.get("ann_dir") or ""), image_dir=str(spec.get("image_dir") or ""))


def read_class_list(value: str) -> tuple[str, ...]:
    """Class names from a file (one per line, ``#`` comments) or a comma-separated list."""
    path = Path(value)
    if path.is_file():
        lines = [ln.split("#", 1)[0].strip() for ln in path.read_text().splitlines()]
        names = tuple(ln for ln in lines if ln)
    elif "," in value or not path.suffix:
        names = tuple(n.strip() for n in value.split(",") if n.strip())
    else:
        raise ConfigError(f"class list file not found: {path}")
    if not names:
        raise ConfigError(f"class list {value!r} is empty")
    if len(set(names)) != len(names):
        raise ConfigError(f"class list {value!r} names a class twice")
    return names


def describe_spec(spec: Any) -> str:
    """A short name for logs and metrics: the catalog name, or the description's paths."""
    return " + ".join(s.path if s.format == "name" else f"{s.format}:{s.path}" for s in parse_dataset_spec(spec))


def canonical_spec(spec: Any, key: str = "dataset") -> Any:
    """``spec`` with absolute paths (what config.yaml records, so a resume from elsewhere finds the data)."""
    sources = parse_dataset_spec(spec, key)
    out = [s.as_config() for s in sources]
    return out[0] if len(out) == 1 else out


def default_test_spec(train_spec: Any) -> Any:
    """The evaluation set that goes with a user's training set: a YOLO set's ``val`` split, a VOC-style folder's
    ``val`` or ``test`` split list (``test`` first when training uses ``trainval``, which holds ``val``);
    otherwise a ConfigError asking for ``--test-dataset``."""
    sources = parse_dataset_spec(train_spec, "--dataset")
    if len(sources) == 1:
        s = sources[0]
        if s.format == "yolo":
            return {"format": "yolo", "data": s.path, "split": "val"}
        if s.format == "voc":
            layout = find_voc_layout(Path(s.path), s.ann_dir, s.image_dir)
            train_split = s.split or default_voc_split(layout, "train")
            for split in ("test", "val") if train_split == "trainval" else ("val", "test"):
                if split != train_split and layout.split_file(split).is_file():
                    return {"format": "voc", "root": s.path, "split": split, "classes": list(s.classes),
                            "ann_dir": s.ann_dir, "image_dir": s.image_dir}
    raise ConfigError(f"no evaluation set goes with --dataset {train_spec!r} by itself; pass --test-dataset "
                      f"(e.g. coco:val.json:images/ or voc:FOLDER:val)")


@dataclass
class _Part:
    records: list[Record]
    class_names: list[str]
    family: str
    metric: str
    skipped: int = 0
    coco: Any = None
    category_ids: dict[int, int] | None = None


def build_dataset(
    spec: Any,
    root: str | Path | None = None,
    *,
    train: bool,
    transform: DetectionTransform | None = None,
    use_difficult: bool = False,
    filter_empty: bool | None = None,
    skip_bad: bool = False,
    classes: Sequence[str] | None = None,
    problems: Problems | None = None,
    side: Literal["train", "val", "test"] | None = None,
) -> DetectionDataset:
    """A dataset from a description (see :func:`parse_dataset_spec` and datasets/README.md); a list concatenates.

    ``transform``: the resize / augmentation of each item (default: the paper's 600 / 1000 resize, flipped in
    training); ``DetectionTransform.from_config(data_cfg, train=...)`` builds a config's.
    ``classes``: the class list (its order is the label order): required to match a model when evaluating
    one; VOC-style folders take it as theirs (none: collected from their XML, sorted), other sources must have
    exactly these names. Concatenated sources are merged by class name. ``problems``: where loading problems
    go (default: the first raises, or each is skipped and counted under ``skip_bad``). ``side``: the split a
    description without one means (a YOLO set's split, a VOC-style folder's list); default "train" when
    ``train``, else "val".
    """
    data_root = get_data_root(root)
    sources = parse_dataset_spec(spec)
    caller_problems = problems is not None
    problems = problems if problems is not None else collecting()
    side = side or ("train" if train else "val")
    parts = [_load_part(s, data_root, side=side, classes=classes, skip_bad=skip_bad, problems=problems)
             for s in sources]
    if problems.items and not skip_bad and not caller_problems:
        # Every problem of the set at once (not only the first), before any time is spent on it.
        counts = ", ".join(f"{n} {kind}" for kind, n in problems.counts().most_common())
        raise DataError(f"{describe_spec(spec)}: {len(problems.items)} problem(s) ({counts}); first: "
                        f"{problems.items[0][1]} (tools/check_dataset.py lists them all; data.skip_bad=true "
                        "skips them)")
    if problems.items and skip_bad:
        for _, message in problems.items[:20]:
            logger.warning("skipping: %s", message)
        logger.warning("%d bad annotation(s) / image(s) skipped (data.skip_bad)", len(problems.items))
    kwargs: dict[str, Any] = dict(
        name=describe_spec(spec), train=train, transform=transform, use_difficult=use_difficult,
        filter_empty=filter_empty, skip_bad=skip_bad,
    )
    names = list(classes) if classes else _merged_classes(parts)
    for part, source in zip(parts, sources):
        if classes and source.format != "voc" and set(part.class_names) != set(names):
            # Scoring a model: a set with other classes would give meaningless APs (VOC-style folders take the
            # model's list as theirs; their XML must only use those names).
            raise DataError(f"dataset {source.path} has classes {part.class_names[:6]}"
                            f"{'...' if len(part.class_names) > 6 else ''}, not the {len(names)} expected "
                            f"{names[:6]}{'...' if len(names) > 6 else ''}")
        _relabel(part, names, source)
    if len(parts) == 1:
        p = parts[0]
        return DetectionDataset(p.records, names, family=p.family, default_metric=p.metric,  # type: ignore[arg-type]
                                num_skipped=p.skipped + len(problems.items), coco=p.coco,
                                contiguous_to_category_id=p.category_ids, **kwargs)
    # Concatenated: one record list; the COCO metric needs one COCO file, so VOC-style scoring (area under the
    # curve); category ids from the first source that has the class.
    ids: dict[int, int] = {}
    for label, name in enumerate(names):
        for p in parts:
            if p.category_ids and name in p.class_names:
                ids[label] = p.category_ids[p.class_names.index(name)]
                break
    taken = set(ids.values())
    for label in range(len(names)):
        if label not in ids:
            ids[label] = next(i for i in range(1, 10**6) if i not in taken)
            taken.add(ids[label])
    records = [r for p in parts for r in p.records]
    return DetectionDataset(records, names, family="custom", default_metric="voc",
                            num_skipped=sum(p.skipped for p in parts) + len(problems.items),
                            contiguous_to_category_id=ids, **kwargs)


def _merged_classes(parts: list[_Part]) -> list[str]:
    """The class list of concatenated parts: the first part's, then new names in their order of appearance."""
    names: list[str] = []
    for p in parts:
        names += [n for n in p.class_names if n not in names]
    return names


def _relabel(part: _Part, names: list[str], source: DatasetSource) -> None:
    """Map ``part``'s labels to the final class list ``names`` by class name (in place)."""
    if part.class_names == names:
        return
    missing = [n for n in part.class_names if n not in names]
    if missing:
        raise DataError(f"dataset {source.path}: class(es) {missing[:6]} are not among the {len(names)} classes "
                        f"{names[:8]}{'...' if len(names) > 8 else ''}")
    mapping = np.asarray([names.index(n) for n in part.class_names], dtype=np.int64)
    for r in part.records:
        r.labels = mapping[r.labels] if len(r.labels) else r.labels
    if part.category_ids is not None:
        part.category_ids = {names.index(n): part.category_ids[i] for i, n in enumerate(part.class_names)}
    part.class_names = list(names)


def _load_part(source: DatasetSource, data_root: Path, *, side: str, classes: Sequence[str] | None,
               skip_bad: bool, problems: Problems) -> _Part:
    if source.format == "name":
        return _load_named(source.path, data_root, skip_bad=skip_bad)
    if source.format == "coco":
        ann = Path(source.path)
        records, names, contiguous, coco = load_coco_records(ann, Path(source.image_dir or ann.parent), problems)
        records = _locate_coco_images(ann, source.image_dir, records, coco)
        records = _fill_missing_sizes(ann, records, coco, problems)
        return _Part(records, names, "coco", "coco", coco=coco, category_ids=contiguous)
    if source.format == "yolo":
        split = source.split or side
        if split == "test" and source.split is None and "test" not in read_yolo_yaml(Path(source.path)):
            split = "val"  # the evaluation side of a set without a test split (as before: its val split)
        records, names = load_yolo(Path(source.path), split, problems)
        return _Part(records, names, "yolo", "voc")
    layout = find_voc_layout(Path(source.path), source.ann_dir, source.image_dir)
    split = source.split or default_voc_split(layout, side)
    if split and not source.split:
        logger.info("%s: no split named; the %s side uses ImageSets/Main/%s.txt", layout.root, side, split)
    # Collected from every XML of the folder, not only the split's: the training and test sides then have the
    # same class list (a class present only in val.txt is not an "unknown class" of the test set).
    names = list(source.classes or classes or collect_voc_classes(layout, voc_folder_ids(layout, None)))
    if not source.classes and not classes:
        logger.info("%s: %d classes collected from all its XML (sorted): %s", layout.root, len(names),
                    ", ".join(names))
    records = load_voc_folder(layout, names, split, problems)
    return _Part(records, names, "voc", "voc")


def _locate_coco_images(ann: Path, image_dir: str, records: list[Record], coco: Any) -> list[Record]:
    """``records`` with their files in the folder that holds the images: ``image_dir``, or without one the JSON's
    folder, else its ``images/`` sub-folder (Roboflow writes ``<split>/_annotations.coco.json`` beside the images,
    or the images in ``<split>/images/``). When none of the images is there, one line naming the folder one level
    down that holds them, if any (a common slip: the image folder's parent given)."""
    if not records:
        return records
    folders = [Path(image_dir)] if image_dir else [ann.parent, ann.parent / "images"]
    names = [coco.imgs[r.image_id]["file_name"] for r in records]
    sample = names[:COCO_PROBE]
    for folder in folders:
        if any((folder / n).is_file() for n in sample):
            return records if folder == folders[0] else [replace(r, file=folder / n) for r, n in zip(records, names)]
    below = [d for f in folders if f.is_dir() for d in sorted(f.iterdir())
             if d.is_dir() and any((d / n).is_file() for n in sample)]
    hint = (f"; they are one folder down: use coco:{ann}:{below[0]}" if below
            else "; name the image folder: coco:ANNOTATIONS.json:IMAGE_DIR")
    raise DataError(f"{ann}: none of its {len(records)} images is in {' or '.join(map(str, folders))} "
                    f"(first: {names[0]}){hint}")


def _fill_missing_sizes(ann: Path, records: list[Record], coco: Any, problems: Problems) -> list[Record]:
    """``records`` with sizes from the image headers where the JSON gives none (CVAT and hand-written files omit
    width / height; aspect-ratio grouping and scoring need them), written into ``coco`` too; an image that cannot
    be read is a problem and left out."""
    out = []
    missing = 0
    for r in records:
        if r.height <= 0 or r.width <= 0:
            missing += 1
            try:
                h, w = image_size(r.file)
            except DataError as e:
                problems.add("unreadable_image" if r.file.is_file() else "missing_image", str(e))
                continue
            r = replace(r, height=h, width=w)
            coco.imgs[r.image_id].update(height=h, width=w)  # the same dicts as coco.dataset["images"]
        out.append(r)
    if missing:
        logger.info("%s: %d image(s) without width / height in the JSON; read from the image files", ann, missing)
    return out


def _load_named(name: str, data_root: Path, *, skip_bad: bool) -> _Part:
    """A catalog set (VOC years, COCO, synthetic) by name."""
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
        return _Part(records, list(VOC_CLASSES), "voc", metric, skipped=skipped)
    if name in COCO_SETS:
        folder, ann = COCO_SETS[name]
        coco_root = data_root / "coco"
        records, names, contiguous, coco = load_coco_records(coco_root / "annotations" / ann, coco_root / folder)
        return _Part(records, names, "coco", "coco", coco=coco, category_ids=contiguous)
    split = name.split("-", 1)[1]
    tree = ensure_synthetic(data_root)
    records, skipped = load_voc_records([(tree, split)], SYNTHETIC_CLASSES, skip_bad=skip_bad)
    # The same images as a COCO-format set, so the COCO metric works on the synthetic data too.
    return _Part(records, list(SYNTHETIC_CLASSES), "synthetic", "voc", skipped=skipped,
                 coco=load_coco(tree / "annotations" / f"instances_{split}.json"),
                 category_ids={i: i + 1 for i in range(len(SYNTHETIC_CLASSES))})


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
        transform=DetectionTransform.from_config(cfg, train=True),
        use_difficult=cfg.use_difficult,
        filter_empty=cfg.filter_empty,
        skip_bad=cfg.skip_bad,
        classes=cfg.classes or None,
    )
    if len(dataset) == 0:
        raise DataError(f"training dataset {dataset.name!r} yields no trainable image (after filtering empty "
                        "images)")
    return dataset


def build_test_dataset(cfg: DataConfig, spec: Any = None, classes: Sequence[str] | None = None
                       ) -> DetectionDataset:
    """The evaluation set ``spec`` (default ``cfg.test``) at the test size of ``cfg``; ``classes``: the model's
    class list (VOC-style folders take it; other sets must have these classes)."""
    return build_dataset(spec or cfg.test, cfg.root, train=False, transform=DetectionTransform.from_config(
        cfg, train=False), skip_bad=cfg.skip_bad, classes=classes or cfg.classes or None)
