"""detection.data.catalog: dataset names (unknown ones list the valid names) and data-root resolution."""

from __future__ import annotations

from pathlib import Path

import pytest

from detection.data import DATASET_NAMES, build_dataset, get_data_root
from tests.helpers import REPO


def test_unknown_name_lists_valid_names(voc_root: Path) -> None:
    with pytest.raises(ValueError, match="valid names") as e:
        build_dataset("voc2007", voc_root, train=False)
    assert all(n in str(e.value) for n in DATASET_NAMES)


def test_data_root_resolution(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("RESDET_DATA_ROOT", str(tmp_path / "env"))
    assert get_data_root(tmp_path / "flag") == tmp_path / "flag"
    assert get_data_root() == tmp_path / "env"
    monkeypatch.delenv("RESDET_DATA_ROOT")
    assert get_data_root() == REPO / "datasets"
    # Installed into site-packages (no checkout around the package): ./datasets of the working directory.
    import resbackbone.engine.paths as paths

    monkeypatch.setattr(paths, "checkout_datasets_dir", lambda: None)
    monkeypatch.chdir(tmp_path)
    assert get_data_root() == tmp_path / "datasets"


def test_skip_bad_reaches_the_datasets_from_the_config(voc_root: Path) -> None:
    """``data.skip_bad`` (YAML or ``data.skip_bad=true`` on the command line) is what the trainer's and the
    evaluator's datasets are built with: a corrupt image is then skipped and counted instead of stopping."""
    from detection.config import load_detection_config
    from detection.data import build_test_dataset, build_train_dataset

    (voc_root / "VOCdevkit/VOC2007/JPEGImages/000001.jpg").write_bytes(b"")
    args = [f"data.root={voc_root}", "data.train=voc07-trainval", "data.test=voc07-test"]
    strict = load_detection_config(None, args)
    lenient = load_detection_config(None, [*args, "data.skip_bad=true"])
    assert not strict.data.skip_bad and lenient.data.skip_bad
    assert not build_train_dataset(strict.data).skip_bad and build_train_dataset(lenient.data).skip_bad
    with pytest.raises(ValueError, match=r"000001\.jpg"):
        build_test_dataset(strict.data)[0]
    evaluation = build_test_dataset(lenient.data)
    image, target = evaluation[0]
    assert target["image_id"] == "000001" and target["skipped"] and evaluation.num_skipped == 1
