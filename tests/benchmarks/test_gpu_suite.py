"""benchmarks/gpu_suite.py in smoke mode on the CPU: every expected entry is there, measured (finite) or skipped
with a reason, and the Markdown block is written."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from benchmarks import gpu_suite

# C4 against its torchvision-assembled twin ("det") and R50-FPN against torchvision's own ("fpn").
DET = [f"{f}.{p}.{k}.{m}" for f in ("det", "fpn") for p in ("fp32", "bf16") for k in ("ours", "twin")
       for m in ("train_images_per_s", "inference_ms_per_image", "train_step_peak_mib", "inference_peak_mib")]
DET += [f"{f}.{p}.ratio.{m}" for f in ("det", "fpn") for p in ("fp32", "bf16") for m in ("train", "inference")]
CLS = [f"cls.{n}.{m}" for n in ("ours.eager", "ours.compiled", "torchvision.eager")
       for m in ("images_per_s", "peak_mib")]
VOC = ["voc_card.train_peak_mib", "voc_card.step_s", "voc_card.ims_per_device"]
# Measured on any device, smoke sizes included.
ALWAYS_MEASURED = ["det.fp32.ours.train_images_per_s", "det.fp32.twin.inference_ms_per_image", "det.fp32.ratio.train",
                   "fpn.fp32.ours.train_images_per_s", "fpn.fp32.twin.inference_ms_per_image", "fpn.fp32.ratio.train",
                   "cls.ours.eager.images_per_s", "cls.torchvision.eager.images_per_s", "voc_card.step_s",
                   "voc_card.ims_per_device"]


@pytest.mark.slow
def test_smoke_run_on_cpu(tmp_path: Path, one_thread: None) -> None:
    assert gpu_suite.main(["--smoke", "--device=cpu", f"--out={tmp_path}"]) == 0
    data = json.loads((tmp_path / "gpu_suite.json").read_text())
    rec = data["measurements"]
    assert sorted(rec) == sorted(DET + CLS + VOC)
    for key, r in rec.items():
        if r["value"] is None:
            assert isinstance(r.get("skipped"), str) and r["skipped"], key  # skipped, and says why
        else:
            assert math.isfinite(r["value"]) and r["value"] > 0, key
    for key in ALWAYS_MEASURED:
        assert rec[key]["value"] is not None, key
    if not torch.cuda.is_available():
        assert "N/A on CPU" in rec["voc_card.train_peak_mib"]["skipped"]
        assert "bf16" in rec["det.bf16.ours.train_images_per_s"]["skipped"]
    # The VOC card's micro-batch comes from its config (solver.ims_per_device, default 2).
    assert rec["voc_card.ims_per_device"]["value"] >= 1
    md = (tmp_path / "gpu_suite.md").read_text()
    assert md.startswith("### GPU suite:") and "VOC card" in md
    assert "| C4 fp32 train images/s |" in md and "| FPN fp32 train images/s |" in md
    assert "Skipped: " in md and data["meta"]["smoke"] is True


def test_markdown_marks_missing_and_skipped() -> None:
    meta = {"device_name": "X", "date": "2026-12-01", "command": "c", "torch": "t", "elapsed_s": 1.0,
            "detector": "d", "classification": "c"}
    md = gpu_suite.markdown({"det.fp32.ours.train_images_per_s": gpu_suite.measured(2.5, "images/s"),
                             "det.fp32.twin.train_images_per_s": gpu_suite.skipped("because")}, meta)
    assert "| C4 fp32 train images/s | 2.50 | skipped |" in md and "Skipped: because." in md and "missing" in md
