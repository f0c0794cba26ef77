"""tools/degradation.py on the command line: the paper's Figure 6 (plain vs residual CIFAR nets) on a tiny set."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import REPO


@pytest.mark.slow
def test_degradation_script_writes_the_figure(tmp_path: Path) -> None:
    import subprocess
    import sys

    tool = REPO / "tools" / "degradation.py"
    out = tmp_path / "fig6.png"
    res = subprocess.run(
        [sys.executable, str(tool), "--depths", "8", "14", "--epochs", "1", "--batch-size", "50", "--workdir",
         str(tmp_path / "runs"), "--output", str(out), "data.synthetic_per_class=50", "data.synthetic_classes=4",
         "data.crop_size=16", "data.pad=2", "data.num_workers=0"],
        capture_output=True, text=True, timeout=300,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    assert out.stat().st_size > 10_000
    for arch in ("cifar_plain8", "cifar_resnet8", "cifar_plain14", "cifar_resnet14"):
        assert (tmp_path / "runs" / arch / "metrics.jsonl").is_file()
