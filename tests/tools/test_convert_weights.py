"""tools/convert_weights.py through its main(argv): an MSRA pickle and an fc-less file to native weights; errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from resbackbone.pixels import MSRA_PIXELS
from resbackbone.weights import pretrained_state_dict
from tools import convert_weights

pytestmark = pytest.mark.usefixtures("one_thread")


def test_convert_weights_cli(msra_r50: tuple[Path, dict[str, np.ndarray]], tmp_path: Path,
                             capsys: pytest.CaptureFixture[str]) -> None:
    # In-process (the tool is a thin argparse wrapper): a subprocess would spend most of its time importing torch.
    tool = convert_weights
    src, expect = msra_r50
    out = tmp_path / "r50.pth"
    assert tool.main(["--weights", str(src), "--depth", "50", "--output", str(out)]) == 0
    assert "msra" in capsys.readouterr().out
    state, info = pretrained_state_dict(str(out), 50)
    assert info.source == "resbackbone" and info.stride_in_1x1 and info.pixel_spec == MSRA_PIXELS
    assert np.array_equal(state["res5.2.conv3.weight"].numpy(), expect["res5.2.conv3.weight"])
    assert np.array_equal(state["fc.weight"].numpy(), expect["fc.weight"])
    # Weights without an fc (a detector's backbone) convert without inventing one.
    headless = tmp_path / "headless.pth"
    torch.save({k: v for k, v in state.items() if not k.startswith("fc.")}, headless)
    out2 = tmp_path / "r50_headless.pth"
    assert tool.main(["--weights", str(headless), "--depth", "50", "--output", str(out2)]) == 0
    assert "fc.weight" not in torch.load(out2, weights_only=True)["state_dict"]
    assert tool.main(["--weights", str(tmp_path / "nope.pth"), "--depth", "50", "--output", str(out)]) == 2
    err = capsys.readouterr().err
    assert "nope.pth" in err and "Traceback" not in err


def test_detectron2_flag_on_our_own_detector_file_says_so(tiny_checkpoint: Path, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "x.pth"
    assert convert_weights.main(["--detectron2", str(tiny_checkpoint), "--output", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert "already one of our detector files (resnet-det/faster-rcnn)" in err and "\n" not in err
    assert not out.exists()
