"""datasets/prepare.py (a script, loaded by its path: datasets/ is not a package) reports present, missing and
broken data sets."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from tests.helpers import REPO


def test_prepare_script_reports_present_missing_and_broken(
    voc_root: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    # datasets/ is not a package (see DESIGN.md): load the script by path.
    script = REPO / "datasets" / "prepare.py"
    spec = importlib.util.spec_from_file_location("resdet_prepare", script)
    prepare = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    monkeypatch.setitem(sys.modules, "resdet_prepare", prepare)  # dataclasses look their module up
    spec.loader.exec_module(prepare)  # type: ignore[union-attr]
    assert prepare.main(["--data-root", str(voc_root), "--datasets", "voc07-test", "voc07+12"]) == 0
    out = capsys.readouterr().out
    assert "OK       voc07-test                 2 images (official release: 4952" in out
    assert "OK       voc07+12                   5 images (official release: 16551" in out
    assert prepare.main(["--data-root", str(voc_root), "--datasets", "coco2017-val"]) == 1
    assert str(voc_root / "coco" / "annotations" / "instances_val2017.json") in capsys.readouterr().out
    (voc_root / "VOCdevkit/VOC2012/JPEGImages/2008_000002.jpg").unlink()
    assert prepare.main(["--data-root", str(voc_root)]) == 1  # a present set is broken
    out = capsys.readouterr().out
    assert "BROKEN   voc12-trainval" in out and "2008_000002.jpg" in out and "MISSING  synthetic-test" in out
