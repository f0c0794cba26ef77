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


def test_resume_drops_records_past_the_step_and_the_table_follows(tmp_path: Path) -> None:
    """A killed run logged past its last checkpoint: a resume from step 20 must not hold step 40 twice; results.csv
    has one row per record and the curves figure is drawn."""
    w = MetricsWriter(tmp_path, tensorboard=False)
    for step in (20, 40):
        w.write(step, {"loss": 1.0 / step, "lr": 0.01, "epoch": step / 10})
    w.write(40, {"test/mAP": 0.5, "test/AP/cat": None})
    w.truncate_after(20)
    assert [r["step"] for r in w.records()] == [20]
    w.write(40, {"loss": 0.02, "lr": 0.01})
    w.write(40, {"test/mAP": 0.4})
    w.write_table(plot=True)
    rows = (tmp_path / "results.csv").read_text().splitlines()
    assert rows[0].split(",")[:2] == ["step", "time"] and len(rows) == 4
    assert (tmp_path / "results.png").stat().st_size > 1000


def test_loss_window_smooths_and_round_trips() -> None:
    from resbackbone.engine.progress import LossWindow

    w = LossWindow(3)
    for v in (1.0, 100.0, 2.0, 3.0):
        w.add({"loss": v})
    assert w.median("loss") == 3.0 and w.mean("loss") == pytest.approx(35.0)
    again = LossWindow(3)
    again.load(w.state())
    assert again.median("loss") == w.median("loss")
