"""resbackbone.engine.progress: the non-finite loss guard, the JSON-lines metrics writer, ETA formatting."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from resbackbone.engine.progress import MetricsWriter, NonFiniteLossError, check_finite, format_eta


def test_check_finite_names_iteration_and_terms() -> None:
    check_finite({"loss_a": torch.tensor(1.0)}, 3)
    with pytest.raises(NonFiniteLossError, match=r"iteration 7 in loss_b"):
        check_finite({"loss_a": torch.tensor(1.0), "loss_b": torch.tensor(float("nan"))}, 7)


def test_metrics_writer_jsonl(tmp_path: Path) -> None:
    w = MetricsWriter(tmp_path, tensorboard=False)
    w.write(1, {"loss": 0.5})
    w.write(2, {"loss": 0.25, "lr": 0.1})
    w.close()
    lines = [json.loads(s) for s in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == [1, 2] and lines[1]["lr"] == 0.1
    assert format_eta(3725) == "1:02:05"
