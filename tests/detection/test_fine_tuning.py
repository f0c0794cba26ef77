"""detection.train, fine-tuning as practitioners do it: the validation loss is the training loss of the test
images and changes no state (C4, DC5, FPN); early stopping stops at the right evaluation, keeps the best model and
a resumed stopped run does nothing; the weight EMA is what is evaluated and saved and resumes bit for bit (with
repeat-factor sampling on); trackers get the scalars and the config through accelerate; check_dataset shows the
repeat factors.

Evaluation is stubbed where only its numbers matter (a scripted metric sequence): the runs are a few steps of the
tiny ResNet-18 C4 at 64 px."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from tests.helpers import REPO, TINY_CLASSES, TINY_TRAINING, randomize_bn_statistics, tiny_config, write_voc_year

SYNTHETIC_CONFIG = REPO / "configs/det/synthetic_r18_c4.yaml"


def _config(out: Path, root: Path, *overrides: str) -> Any:
    from detection.config import load_detection_config

    return load_detection_config(SYNTHETIC_CONFIG, [*TINY_TRAINING, f"data.root={root}", "data.num_workers=0",
                                                    "solver.steps=[]", f"output_dir={out}", *overrides])


def _state(path: Path, key: str = "state_dict") -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)[key]


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


class ScriptedEvaluation:
    """Stands in for detection.train.evaluate: returns the next scripted value as every AP, and remembers the
    model it was given and that model's state at the time."""

    def __init__(self, values: list[float]) -> None:
        self.values = values
        self.models: list[nn.Module] = []
        self.states: list[dict[str, torch.Tensor]] = []

    def __call__(self, model: nn.Module, cfg: Any, **kwargs: Any) -> dict[str, Any]:
        self.models.append(model)
        self.states.append({k: v.detach().clone() for k, v in model.state_dict().items()})
        v = self.values[min(len(self.states), len(self.values)) - 1]
        return {"mAP": v, "AP": v / 2, "AP50": v, "per_class": {name: v for name in TINY_CLASSES}}


@pytest.mark.parametrize("arch", ["C4", "DC5", "FPN"])
def test_validation_loss_is_the_training_loss_of_the_batch_and_changes_no_state(
        arch: str, synthetic_root: Path, one_thread: None) -> None:
    from detection.data import build_test_dataset, collate
    from detection.evaluation import validation_loss
    from detection.evaluation.validation_loss import training_targets
    from detection.faster_rcnn import build_faster_rcnn

    cfg = _config(Path("unused"), synthetic_root)
    dataset = build_test_dataset(cfg.data, classes=TINY_CLASSES)
    dataset.records = dataset.records[:3]
    torch.manual_seed(0)
    model = build_faster_rcnn(tiny_config(arch), class_names=TINY_CLASSES)  # from scratch: trainable BN
    randomize_bn_statistics(model)
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()

    val = validation_loss(model, dataset, seed=1234, batch_size=3)

    assert torch.equal(torch.get_rng_state(), rng), "the training RNG stream must not move"
    assert _same(model.state_dict(), before), "no parameter or buffer (BN statistics, counters) may change"
    assert all(m.training for m in model.modules()) and all(p.grad is None for p in model.parameters())
    assert validation_loss(model, dataset, seed=1234, batch_size=3) == val, "deterministic"
    # The reference: the training forward of the same three images, the same seed, BN in eval mode.
    images, targets = collate([dataset[i] for i in range(3)])
    targets = [training_targets(t, use_difficult=False, device=torch.device("cpu")) for t in targets]
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.eval()
    torch.manual_seed(1234)
    with torch.no_grad():
        ref = {k: v for k, v in model(images, targets).items() if k.startswith("loss_")}  # not the statistics
    assert set(val) == {"val_loss", *(f"val_{k}" for k in ref)}
    for k, v in ref.items():
        assert val[f"val_{k}"] == pytest.approx(float(v), rel=1e-9, abs=1e-12), k
    assert val["val_loss"] == pytest.approx(sum(float(v) for v in ref.values()), rel=1e-9)


@pytest.mark.parametrize(("best_metric", "values"), [
    ("mAP", [0.1, 0.3, 0.2, 0.3, 0.4, 0.5]),  # best at 2; 3 and 4 (a tie) do not improve: patience 2 stops at 4
    ("val_loss", [2.0, 1.5, 1.6, 1.5, 1.0, 0.9]),  # lower is better
])
def test_early_stopping_stops_at_the_right_evaluation_keeps_the_best_and_resume_does_nothing(
        tmp_path: Path, synthetic_root: Path, one_thread: None, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture, best_metric: str, values: list[float]) -> None:
    import detection.evaluation
    import detection.train as train_mod
    from detection.train import Trainer

    scripted = ScriptedEvaluation([0.5] * 6 if best_metric == "val_loss" else values)
    monkeypatch.setattr(train_mod, "evaluate", scripted)
    if best_metric == "val_loss":
        losses = iter(values)
        monkeypatch.setattr(detection.evaluation, "validation_loss",
                            lambda *a, **k: {"val_loss": (v := next(losses)), "val_loss_cls": v})
    out = tmp_path / "run"
    cfg = _config(out, synthetic_root, "solver.max_iter=12", "test.eval_period=1", "test.patience=2",
                  f"test.best_metric={best_metric}", "solver.checkpoint_period=100")

    result = Trainer(cfg, cpu=True, progress=False).train()

    stop = result["early_stop"]
    assert (result["iteration"], stop["iteration"], stop["best_iteration"], stop["best_value"]) == (4, 4, 2, values[1])
    assert stop["metric"] == best_metric and "patience 2" in stop["reason"]
    assert len(scripted.states) == 4, "no evaluation after the stop"
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    stop_records = [r for r in records if "early_stop/reason" in r]
    assert [(r["step"], r["early_stop/best_iteration"]) for r in stop_records] == [(4, 2)]
    # The stop is in the checkpoint of that iteration; model_best is the model evaluated at iteration 2, and
    # model_final the one where the run stopped.
    assert (out / "last_checkpoint").read_text().strip() == "model_0000004.pth"
    assert _state(out / "model_0000004.pth", "early_stop")["best_iteration"] == 2
    assert _same(_state(out / "model_best.pth"), scripted.states[1])
    assert _same(_state(out / "model_final.pth"), scripted.states[3])

    with caplog.at_level("INFO"):
        again = Trainer(cfg, cpu=True, progress=False, resume=True).train()
    assert "already stopped early at iteration 4" in caplog.text
    assert again["early_stop"] == stop and again["iteration"] == 4
    assert len(scripted.states) == 4 and sorted(p.name for p in out.glob("model_0*.pth")) == ["model_0000004.pth"]


@pytest.mark.slow
def test_ema_is_evaluated_and_saved_and_resumes_bit_exact_with_repeat_factor_sampling(
        tmp_path: Path, synthetic_root: Path, one_thread: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """6 steps with EMA and repeat-factor sampling (the synthetic classes are in ~60% of the images: threshold 0.7
    repeats some), uninterrupted and as 3 + resume 3: the averaged and the raw weights end identical; the
    evaluation gets the averaged model, and model_final / model_best hold it."""
    import detection.train as train_mod
    from detection.train import Trainer

    scripted = ScriptedEvaluation([0.2, 0.1])
    monkeypatch.setattr(train_mod, "evaluate", scripted)
    extra = ("solver.max_iter=6", "solver.checkpoint_period=3", "test.eval_period=3", "solver.ema_decay=0.8",
             "solver.ema_ramp_iters=2", "data.repeat_factor_threshold=0.7")
    full = Trainer(_config(tmp_path / "full", synthetic_root, *extra), cpu=True, progress=False)
    assert full._loader().batch_sampler.sampler.repeat_whole is not None
    full.train()
    assert scripted.models == [full.ema.module, full.ema.module], "evaluation must see the averaged weights"
    averaged = {k: v.detach().cpu() for k, v in full.ema.module.state_dict().items()}
    raw = {k: v.detach().cpu() for k, v in full.unwrapped.state_dict().items()}
    assert _same(_state(tmp_path / "full" / "model_final.pth"), averaged)
    assert not _same(averaged, raw)
    assert _same(_state(tmp_path / "full" / "model_best.pth"), scripted.states[0])  # 0.2 at iteration 3
    ckpt = torch.load(tmp_path / "full" / "model_0000006.pth", weights_only=True)
    assert _same(ckpt["model"], raw) and _same({k[len("module."):]: v for k, v in ckpt["ema"].items()
                                                if k.startswith("module.")}, averaged)

    split = tmp_path / "split"
    Trainer(_config(split, synthetic_root, *extra), cpu=True, progress=False, stop_after=3).train()
    assert not (split / "model_final.pth").exists()
    Trainer(_config(split, synthetic_root, *extra), cpu=True, progress=False, resume=True).train()
    resumed = torch.load(split / "model_0000006.pth", weights_only=True)
    assert _same(resumed["ema"], ckpt["ema"]) and _same(resumed["model"], ckpt["model"])
    assert _same(_state(split / "model_final.pth"), averaged)


def test_trackers_get_the_scalars_and_the_config_through_accelerate(
        tmp_path: Path, synthetic_root: Path, one_thread: None, monkeypatch: pytest.MonkeyPatch) -> None:
    import accelerate.tracking as tracking
    from accelerate.tracking import GeneralTracker
    from accelerate.utils import LoggerType
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    import detection.train as train_mod
    from detection.train import Trainer

    seen: dict[str, Any] = {"runs": [], "config": None, "logs": [], "finished": 0}

    class StubWandb(GeneralTracker):
        """What accelerate builds for log_with=["wandb"], without wandb."""

        name = "wandb"
        requires_logging_directory = False

        def __init__(self, run_name: str, **kwargs: Any) -> None:
            super().__init__()
            seen["runs"].append(run_name)

        @property
        def tracker(self) -> None:
            return None

        def store_init_configuration(self, values: dict) -> None:
            seen["config"] = values

        def log(self, values: dict, step: int | None = None, **kwargs: Any) -> None:
            seen["logs"].append((step, dict(values)))

        def finish(self) -> None:
            seen["finished"] += 1

    monkeypatch.setitem(tracking.LOGGER_TYPE_TO_CLASS, "wandb", StubWandb)
    monkeypatch.setattr(tracking, "_available_trackers", [*tracking._available_trackers, LoggerType.WANDB])
    monkeypatch.setattr(train_mod, "evaluate", ScriptedEvaluation([0.25]))
    out = tmp_path / "tracked"
    cfg = _config(out, synthetic_root, "solver.max_iter=2", "log_with=[wandb,tensorboard]")
    Trainer(cfg, cpu=True, progress=False).train()

    assert seen["runs"] == ["tracked"] and seen["finished"] == 1
    config = seen["config"]
    assert config["solver.max_iter"] == 2 and config["model.arch"] == "C4" and config["log_with"] == str(
        ["wandb", "tensorboard"])
    assert all(isinstance(v, bool | int | float | str) for v in config.values())
    logged = {k: (step, v) for step, values in seen["logs"] for k, v in values.items()}
    assert logged["test/mAP"] == (2, 0.25) and logged["loss"][0] == 2 and logged["lr"][0] == 2
    # TensorBoard, through the same path, in the folder and under the keys it always had.
    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    assert {"loss", "lr", "test/mAP"} <= set(events.Tags()["scalars"])
    assert [e.value for e in events.Scalars("test/mAP")] == [0.25]


def test_check_dataset_shows_class_frequencies_and_repeat_factors(tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    from tools import check_dataset

    # 5 images: dog in all, cat in 2, bird in 1 (and once more as a difficult box, which training leaves out).
    objects = {"a": ["dog", "cat"], "b": ["dog", "cat"], "c": ["dog", "bird"], "d": ["dog"], "e": ["dog"]}
    images = {i: (64, 48, [(n, (2 + 10 * k, 2, 12 + 10 * k, 30), 0) for k, n in enumerate(names)])
              for i, names in objects.items()}
    images["e"][2].append(("bird", (40, 5, 60, 40), 1))
    write_voc_year(tmp_path, "2007", images, {"train": list(objects)})
    voc = f"voc:{tmp_path / 'VOCdevkit' / 'VOC2007'}"
    assert check_dataset.main([voc, "--no-decode", "--json", "--repeat-factor-threshold", "0.8"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert (report["per_class"]["cat"]["images"], report["images"]) == (2, 5)
    rf = report["repeat_factors"]
    # f = dog 1.0, cat 0.4, bird 0.2 -> factors 1, sqrt(2), 2; images a, b: sqrt(2), c: 2, d, e: 1.
    assert rf["largest"] == pytest.approx({"bird": 2.0, "cat": 2 ** 0.5})
    assert (rf["min"], rf["max"], rf["images"]) == (1.0, 2.0, 5)
    assert rf["images_per_epoch"] == pytest.approx(2 + 2 * 2 ** 0.5 + 2)
    assert check_dataset.main([voc, "--no-decode", "--repeat-factor-threshold", "0.8"]) == 0
    text = capsys.readouterr().out
    cat_row = [line.split() for line in text.splitlines() if line.startswith("cat ")][0]
    assert "(%)" in text.splitlines()[1] and cat_row[:3] == ["cat", "2", "40.0"]
    assert "largest: bird 2.00, cat 1.41" in text
