"""model.compile=true: the trunk and the per-RoI head are torch.compile-d in place; detections equal the eager
model's and checkpoint keys do not change (state dicts load both ways)."""

from __future__ import annotations

import shutil
from dataclasses import replace

import pytest
import torch

from detection import build_faster_rcnn
from detection.config import load_detection_config
from tests.helpers import BOX_TOL_PX, SCORE_TOL, probe_images, tiny_config


def _compiler_available() -> bool:
    """Inductor on CPU writes and builds C++: it needs a compiler on PATH."""
    return any(shutil.which(c) for c in ("g++", "c++", "clang++"))


def test_compile_field_defaults_off_and_parses() -> None:
    assert tiny_config().compile is False
    assert load_detection_config(None, ["model.compile=true"]).model.compile is True


@pytest.mark.skipif(not _compiler_available(), reason="torch.compile (inductor) needs a C++ compiler on the CPU")
def test_compiled_model_equals_eager_and_keeps_keys(one_thread: None) -> None:
    cfg = tiny_config()
    torch.manual_seed(0)
    eager = build_faster_rcnn(cfg).eval()
    compiled = build_faster_rcnn(replace(cfg, compile=True)).eval()
    assert list(compiled.state_dict()) == list(eager.state_dict())  # no "_orig_mod." anywhere
    assert not any("_orig_mod" in k for k in compiled.state_dict())
    compiled.load_state_dict(eager.state_dict())  # eager -> compiled
    eager2 = build_faster_rcnn(cfg).eval()
    eager2.load_state_dict(compiled.state_dict())  # compiled -> eager
    image = probe_images(64, 96)[0]
    with torch.inference_mode():
        ref, out = eager([image])[0], compiled([image])[0]
        again = eager2([image])[0]
    assert len(ref["boxes"]) > 0 and ref["labels"].shape == out["labels"].shape
    torch.testing.assert_close(out["scores"], ref["scores"], atol=SCORE_TOL, rtol=0)
    torch.testing.assert_close(out["boxes"], ref["boxes"], atol=BOX_TOL_PX, rtol=0)
    assert torch.equal(out["labels"], ref["labels"]) and torch.equal(again["boxes"], ref["boxes"])
