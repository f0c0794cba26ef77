"""`pip install .` (not editable) gives working tools: console scripts and ``python -m resdet_tools.<tool>``."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from tests.helpers import REPO

# The standard library reads TOML from Python 3.11 on (the project supports 3.10).
tomllib = pytest.importorskip("tomllib")

PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())


def test_every_package_folder_is_installed() -> None:
    """pyproject lists the packages by hand (tools/ and configs/ are mapped to other names): none is forgotten."""
    listed = set(PYPROJECT["tool"]["setuptools"]["packages"])
    found = {".".join(p.parent.relative_to(REPO).parts) for top in ("resbackbone", "detection")
             for p in (REPO / top).rglob("__init__.py")}
    assert found | {"resdet_tools", "resdet_configs"} == listed


def test_every_tool_is_a_console_script() -> None:
    scripts = PYPROJECT["project"]["scripts"]
    targets = {v.split(":")[0].removeprefix("resdet_tools.") for v in scripts.values()}
    assert targets == {p.stem for p in (REPO / "tools").glob("*.py")}
    assert all(v.endswith(":main") for v in scripts.values())


def test_torch_requirement_has_no_upper_cap() -> None:
    deps = {re.split(r"[<>=!~ ]", d, maxsplit=1)[0]: d for d in PYPROJECT["project"]["dependencies"]}
    assert "<" not in deps["torch"] and "<" not in deps["torchvision"], deps


@pytest.mark.slow
def test_wheel_install_trains_from_another_directory(tmp_path: Path) -> None:
    """Build the wheel, install it into a fresh virtualenv that borrows this one's dependencies (torch etc.,
    nothing downloaded), and train the default for 2 iterations from an empty directory."""
    # Built from a copy of what the wheel holds: setuptools writes build/ into the source tree it builds.
    src = tmp_path / "src"
    for name in ("pyproject.toml", "README.md"):
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO / name, src / name)
    for name in ("resbackbone", "detection", "tools", "configs"):
        shutil.copytree(REPO / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w",
                    str(wheels), str(src)], check=True, capture_output=True)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                          check=True, capture_output=True, text=True).stdout.strip()
    # This environment's packages as a plain path entry: its .pth files (the editable install of this checkout)
    # are not processed, so `detection` can only come from the wheel.
    (Path(site) / "borrowed.pth").write_text(sysconfig.get_path("purelib") + "\n")
    subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-deps", next(iter(wheels.glob("*.whl")))],
                   check=True, capture_output=True)
    work = tmp_path / "elsewhere"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "RESDET_DATA_ROOT")}
    env["OMP_NUM_THREADS"] = "1"
    where = subprocess.run([str(python), "-c", "import detection, resdet_tools; print(detection.__file__)"],
                           cwd=work, env=env, check=True, capture_output=True, text=True).stdout
    assert where.startswith(site), where
    run = subprocess.run([str(venv / "bin" / "resdet-train"), "--max-iter", "2", "--no-progress", "--cpu"],
                         cwd=work, env=env, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "mAP@0.5 = " in run.stdout, run.stdout
    # The synthetic set went to ./datasets and the run to ./output, not into site-packages or the checkout.
    assert (work / "datasets").is_dir() and any((work / "output").glob("*/model_final.pth"))
    module = subprocess.run([str(python), "-m", "resdet_tools.check_dataset", "--help"], cwd=work, env=env,
                            capture_output=True, text=True)
    assert module.returncode == 0 and "usage" in module.stdout
