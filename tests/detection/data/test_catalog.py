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
