"""One command-line contract for the nine tools: bad input is one line ``TOOL: error: ...`` and exit status 2;
``--help`` starts with runnable examples."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest

from tests.helpers import REPO

TOOLS = sorted(p.stem for p in (REPO / "tools").glob("*.py"))
# A bad input for each tool that its own code (not argparse) has to refuse.
BAD_INPUT = {
    "benchmark": ["--config", "/no/such/config.yaml"],
    "check_dataset": ["coco:/no/such/annotations.json:/no/such/images"],
    "convert_weights": ["--weights", "/no/such/weights.pth", "--depth", "50", "--output", "{tmp}/x.pth"],
    "degradation": ["solver.epochs=many"],
    "eval_det": ["--checkpoint", "/no/such/model.pth"],
    "export_onnx": ["--checkpoint", "/no/such/model.pth", "--output", "{tmp}/x.onnx"],
    "infer": ["--checkpoint", "/no/such/model.pth", "--input", "/no/such/photo.jpg"],
    "train_cls": ["--config", "/no/such/config.yaml"],
    "train_det": ["--imgsz", "0"],
}


def test_every_tool_has_a_bad_input_case() -> None:
    assert sorted(BAD_INPUT) == TOOLS


@pytest.mark.parametrize("tool", TOOLS)
def test_bad_input_is_one_line_and_exit_status_2(tool: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                                 ) -> None:
    module = importlib.import_module(f"tools.{tool}")
    argv = [a.replace("{tmp}", str(tmp_path)) for a in BAD_INPUT[tool]]
    assert module.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"{tool}: error: "), err


@pytest.mark.parametrize("tool", TOOLS)
def test_help_shows_examples(tool: str, capsys: pytest.CaptureFixture[str]) -> None:
    module = importlib.import_module(f"tools.{tool}")
    with pytest.raises(SystemExit) as exit_info:
        module.main(["--help"])
    assert exit_info.value.code == 0
    examples = [line for line in capsys.readouterr().out.splitlines()
                if line.strip().startswith(("python tools/", "accelerate launch"))]
    assert examples, f"tools/{tool}.py --help shows no example command"
