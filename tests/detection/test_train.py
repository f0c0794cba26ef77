"""detection.train: config checks, and the Trainer under a 2-process accelerate launch (data split across ranks,
identical weights)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.helpers import REPO, TINY_TRAINING, subprocess_env


def test_frozen_bn_from_scratch_is_rejected() -> None:
    from detection.config import load_detection_config
    from detection.train import check_config as resolve_backbone_flags
    from resbackbone.errors import ConfigError

    cfg = load_detection_config(None, ["model.backbone.norm=frozen_bn", "model.backbone.weights=none"])
    with pytest.raises(ConfigError, match="frozen_bn needs pretrained weights"):
        resolve_backbone_flags(cfg)


DIST_SCRIPT = r"""
import json, sys
import torch
from detection.config import load_detection_config
from detection.train import Trainer

out = sys.argv[1]
cfg = load_detection_config(sys.argv[2], sys.argv[3:])
trainer = Trainer(cfg, progress=False, stop_after=3)
seen = []
orig = trainer._to_device
def record(images, targets):
    seen.extend(int(t["index"]) for t in targets)
    return orig(images, targets)
trainer._to_device = record
model = trainer.accelerator.unwrap_model(trainer.model)
init = {k: v.detach().clone() for k, v in model.state_dict().items()}
trainer.train()
rank = trainer.accelerator.process_index
torch.save({k: v.detach().cpu() for k, v in model.named_parameters()}, f"{out}/rank{rank}.pt")
changed = sum(not torch.equal(init[k], v) for k, v in model.state_dict().items())
json.dump({"seen": seen, "world": trainer.accelerator.num_processes, "changed": changed},
          open(f"{out}/rank{rank}.json", "w"))
"""


@pytest.mark.slow
def test_two_process_accelerate_splits_data_and_keeps_weights_identical(tmp_path: Path, synthetic_root: Path) -> None:
    script = tmp_path / "dist_train.py"
    script.write_text(DIST_SCRIPT)
    out = tmp_path / "out"
    out.mkdir()
    cmd = [
        str(Path(sys.executable).parent / "accelerate"), "launch",
        # accelerate has no CPU-only multi-process flag: --multi_gpu on a machine without GPUs runs gloo MULTI_CPU.
        "--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
        "--dynamo_backend", "no", str(script), str(out), str(REPO / "configs/det/synthetic_r18_c4.yaml"),
        *TINY_TRAINING, "solver.ims_per_batch=4", "data.num_workers=0", f"output_dir={out / 'run'}",
        "solver.max_iter=10", "solver.steps=[8]",
    ]
    env = subprocess_env(synthetic_root)
    env["CUDA_VISIBLE_DEVICES"] = ""
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=400)
    assert res.returncode == 0, res.stderr[-4000:]
    info = [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [i["world"] for i in info] == [2, 2]
    seen0, seen1 = info[0]["seen"], info[1]["seen"]
    assert len(seen0) == len(seen1) == 3 * 2, "each rank takes its half of every 4-image global batch"
    # Within one epoch no image repeats, so the ranks' shares of the same global batches are disjoint.
    assert not set(seen0) & set(seen1)
    # Parameters must agree bit for bit. (BatchNorm running statistics are rank-local between DDP's per-forward
    # broadcasts from rank 0, as in any DDP run; checkpoints hold rank 0's.)
    w0 = torch.load(out / "rank0.pt", weights_only=True)
    w1 = torch.load(out / "rank1.pt", weights_only=True)
    for k in w0:
        assert torch.equal(w0[k], w1[k]), f"ranks disagree on {k}"
    assert info[0]["changed"] > 10, "training steps must have changed the weights"


def _one_step(cfg_overrides: list[str], out: Path) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
    from detection.config import load_detection_config
    from detection.train import Trainer

    cfg = load_detection_config(REPO / "configs/det/synthetic_r18_c4.yaml",
                                [*TINY_TRAINING, *cfg_overrides, f"output_dir={out}"])
    trainer = Trainer(cfg, cpu=True, progress=False, stop_after=1)
    steps: list[dict[str, float]] = []
    step = trainer._step
    trainer._step = lambda batches, it: steps.append(step(batches, it)) or steps[-1]  # type: ignore[method-assign]
    trainer.train()
    return {k: v.detach().clone() for k, v in trainer.unwrapped.named_parameters()}, steps[0]


@pytest.mark.parametrize("arch", ["C4", "FPN"])
def test_accumulated_micro_batches_give_the_big_batch_step(tmp_path: Path, synthetic_root: Path, arch: str,
                                                           request: pytest.FixtureRequest, one_thread: None) -> None:
    """4 images per step as 1 pass of 4, 2 passes of 2 and 4 passes of 1: the same images and augmentations, the
    same losses and, after one SGD step, the same weights (BN frozen, as when fine-tuning a trained detector).

    The RPN and RoI samples are made to take every candidate: random sampling draws from the global RNG, so with
    other pass sizes it picks other (equally distributed) anchors and RoIs; this test is about the arithmetic."""
    tiny_checkpoint: Path = request.getfixturevalue("tiny_checkpoint" if arch == "C4" else "tiny_fpn_checkpoint")
    common = [f"data.root={synthetic_root}", f"model.weights={tiny_checkpoint}", "solver.ims_per_batch=4",
              "model.rpn.batch_size_per_image=100000", "model.rpn.positive_fraction=0.5",
              "model.roi_heads.batch_size_per_image=100000",
              "data.num_workers=0", "solver.max_iter=2", "solver.steps=[]", "solver.warmup_iters=0",
              "solver.base_lr=0.05", "solver.clip_grad_norm=0", "solver.optimizer=sgd", "solver.schedule=multistep"]
    ref, ref_stats = _one_step([*common, "solver.ims_per_device=4"], tmp_path / "a")
    changed = 0
    for micro, name in ((2, "b"), (1, "c")):
        params, stats = _one_step([*common, f"solver.ims_per_device={micro}"], tmp_path / name)
        for key in ("loss_rpn_cls", "loss_rpn_box", "loss_cls", "loss_box_reg"):
            assert stats[key] == pytest.approx(ref_stats[key], rel=1e-5, abs=1e-7), (micro, key)
        for k, v in params.items():
            torch.testing.assert_close(v, ref[k], rtol=1e-5, atol=1e-6, msg=f"{k} with {micro} image(s) per pass")
    init = torch.load(tiny_checkpoint, weights_only=True)["state_dict"]
    changed = sum(not torch.equal(init[k], v) for k, v in ref.items() if k in init)
    assert changed > 10, "the step must have changed the weights"


def test_batch_plan_and_its_errors() -> None:
    from detection.config import load_detection_config
    from detection.train import batch_plan
    from resbackbone.errors import ConfigError

    def plan(batch: int, device: int, procs: int):  # noqa: ANN202
        cfg = load_detection_config(None, [f"solver.ims_per_batch={batch}", f"solver.ims_per_device={device}"])
        return batch_plan(cfg, procs)

    p = plan(8, 2, 1)
    assert (p.per_process, p.micro, p.accumulation) == (8, 2, 4)
    assert "8 images per step = 1 process(es) x 4 accumulated pass(es) x 2 image(s) per pass" == p.describe()
    assert (plan(8, 2, 8).micro, plan(8, 2, 8).accumulation) == (1, 1)  # one image per GPU: one pass of it
    with pytest.raises(ConfigError, match=r"solver.ims_per_device=3 does not divide the 8 images .* use "
                                          r"solver.ims_per_device=2"):
        plan(8, 3, 1)
    with pytest.raises(ConfigError, match="not divisible by the 3 processes"):
        plan(8, 2, 3)


def test_epoch_schedule_is_resolved_from_the_training_set() -> None:
    from detection.config import load_detection_config
    from detection.train import resolve_epoch_schedule
    from resbackbone.errors import ConfigError

    cfg = load_detection_config(None, ["solver.ims_per_batch=4", "solver.max_epochs=12",
                                       "solver.step_fractions=[0.75]", "solver.warmup_iters=100",
                                       "test.eval_epochs=3"])
    out = resolve_epoch_schedule(cfg, 50)  # 12 x 50 / 4 = 150 iterations
    assert (out.solver.max_iter, out.solver.steps, out.solver.warmup_iters) == (150, (112,), 37)
    assert out.test.eval_period == 38  # 3 epochs of 12.5 iterations
    assert resolve_epoch_schedule(load_detection_config(None, []), 50).solver.max_iter == 40000  # untouched
    with pytest.raises(ConfigError, match="step_fractions must lie in"):
        resolve_epoch_schedule(load_detection_config(None, ["solver.max_epochs=2", "solver.step_fractions=[1.5]"]),
                               10)


def test_old_grad_accum_steps_configs_still_load() -> None:
    """Detector files written before solver.ims_per_device existed carried solver.grad_accum_steps."""
    from detection.checkpoint import upgrade_config_dict
    from detection.config import DetectionConfig
    from resbackbone.engine.config import from_dict, to_dict

    old = to_dict(DetectionConfig())
    old["solver"].pop("ims_per_device")
    old["solver"].update(grad_accum_steps=4, ims_per_batch=8)
    cfg = from_dict(DetectionConfig, upgrade_config_dict(old))
    assert (cfg.solver.ims_per_batch, cfg.solver.ims_per_device) == (8, 2)


def test_max_iter_flag_replaces_an_epoch_schedule() -> None:
    from tools.train_det import parse_args, resolve_config

    cfg = resolve_config(parse_args(["--config", str(REPO / "configs/det/finetune_c4.yaml"), "--dataset",
                                     "synthetic-train", "--test-dataset", "synthetic-test", "--max-iter", "40"]))
    s = cfg.solver
    assert (s.max_epochs, s.max_iter, s.steps, s.step_fractions, s.warmup_iters) == (0.0, 40, (30,), (), 10)


@pytest.mark.slow
def test_periodic_evaluation_keeps_the_best_model_and_reads_the_test_set_once(
        tmp_path: Path, synthetic_root: Path, one_thread: None, monkeypatch: pytest.MonkeyPatch) -> None:
    import json

    import detection.data
    from detection.config import load_detection_config
    from detection.train import Trainer

    calls: list[object] = []
    build = detection.data.build_test_dataset

    def counting(*args: object, **kwargs: object) -> object:
        calls.append(args)
        return build(*args, **kwargs)

    monkeypatch.setattr(detection.data, "build_test_dataset", counting)
    out = tmp_path / "run"
    cfg = load_detection_config(REPO / "configs/det/synthetic_r18_c4.yaml", [
        *TINY_TRAINING, f"data.root={synthetic_root}", "data.num_workers=0", "solver.max_iter=4", "solver.steps=[]",
        "test.eval_period=2", "solver.checkpoint_period=4", f"output_dir={out}"])
    result = Trainer(cfg, cpu=True, progress=False).train()
    assert len(calls) == 1, "the test set is built once per run, not once per evaluation"
    evals = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    evals = [(e["step"], e["test/mAP"]) for e in evals if "test/mAP" in e]
    assert [step for step, _ in evals] == [2, 4] and evals[-1][1] == result["mAP"]
    # The evaluations at 2 and at the end (4) are the candidates for the best model.
    assert (out / "model_best.pth").is_file()
    best = torch.load(out / "model_best.pth", weights_only=True)
    assert set(best["state_dict"]) == set(torch.load(out / "model_final.pth", weights_only=True)["state_dict"])


def test_epoch_schedule_checkpoints_every_epoch_and_evaluation() -> None:
    """A small set's run is shorter than checkpoint_period: with max_epochs it still gets a checkpoint at every
    epoch's end (the first step past it) and every evaluation; without, only every checkpoint_period."""
    from types import SimpleNamespace

    from detection.config import load_detection_config
    from detection.train import Trainer

    def due(overrides: list[str], evaluated: int | None = None) -> list[int]:
        cfg = load_detection_config(None, ["solver.ims_per_batch=4", "solver.checkpoint_period=500", *overrides])
        fake = SimpleNamespace(cfg=cfg, dataset=range(10))  # 10 images, 4 per step: an epoch is 2.5 steps
        fake.epoch = lambda i: Trainer.epoch(fake, i)
        return [i for i in range(1, 11) if Trainer._checkpoint_due(fake, i, i == evaluated)]

    assert due(["solver.max_epochs=4", "solver.max_iter=10"]) == [3, 5, 8, 10]
    assert due(["solver.max_epochs=4", "solver.max_iter=10", "solver.checkpoint_epochs=2"], evaluated=4) == [4, 5, 10]
    assert due(["solver.max_iter=10"], evaluated=4) == [10]


@pytest.mark.slow
def test_log_lines_metrics_records_csv_and_curves(tmp_path: Path, synthetic_root: Path, one_thread: None,
                                                 monkeypatch: pytest.MonkeyPatch,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    """Without a progress bar a line every LOG_PERIOD steps (loss terms, lr, s/it, data time, ETA); the records
    carry the epoch, smoothed losses and the per-class AP of each evaluation; results.csv and results.png follow;
    augmented training images are written at the start. A CPU run estimated to take long says so once, naming the
    CPU recipe."""
    import detection.train as train_mod
    from detection.config import load_detection_config
    from detection.train import Trainer

    monkeypatch.setattr(train_mod, "LOG_PERIOD", 2)
    monkeypatch.setattr(train_mod, "LONG_CPU_RUN_S", 0.0)
    out = tmp_path / "run"
    cfg = load_detection_config(REPO / "configs/det/synthetic_r18_c4.yaml", [
        *TINY_TRAINING, f"data.root={synthetic_root}", "data.num_workers=0", "solver.max_iter=6", "solver.steps=[]",
        "test.eval_period=4", "solver.checkpoint_period=6", f"output_dir={out}"])
    with caplog.at_level("INFO"):
        Trainer(cfg, cpu=True, progress=False).train()
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("iter ")]
    assert [line.split()[1] for line in lines] == ["2/6", "4/6", "6/6"]
    assert all(k in lines[0] for k in ("loss ", "rpn_cls", "lr ", "s/it (data", "eta ")), lines[0]
    long_run = [r.getMessage() for r in caplog.records if "needs about" in r.getMessage()]
    assert len(long_run) == 1 and "--recipe cpu" in long_run[0] and "finetune_c4_cpu.yaml" in long_run[0]
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    train_recs = [r for r in records if "loss" in r]
    assert [r["step"] for r in train_recs] == [2, 4, 6]
    assert {"epoch", "loss_cls", "loss_cls_mean", "data_time", "lr", "seconds_per_iter"} <= train_recs[0].keys()
    assert train_recs[0]["epoch"] == pytest.approx(2 * 2 / 400)
    evals = [r for r in records if "test/mAP" in r]
    assert [r["step"] for r in evals] == [4, 6]
    assert {"test/AP/circle", "test/AP/rectangle", "test/AP/triangle"} <= evals[0].keys()
    rows = (out / "results.csv").read_text().splitlines()
    assert len(rows) == 1 + len(records) and rows[0].startswith("step,")
    assert (out / "results.png").stat().st_size > 1000
    # What the model sees, written at the start.
    assert len(list((out / train_mod.AUGMENTED_DIR).glob("augmented_*.jpg"))) == train_mod.AUGMENTED_SAMPLES


def test_init_from_log_keeps_the_c4_pooler_and_reports_the_source_class_count(
        tmp_path: Path, synthetic_root: Path, caplog: pytest.LogCaptureFixture, one_thread: None) -> None:
    """C4 weights do not fix the pooled size (res5 runs on any): the config's stays, without a "fixed by the
    weights" claim; the class-count line names the source detector's real count, not the config default."""
    from detection.checkpoint import detector_payload
    from detection.config import load_detection_config
    from detection.faster_rcnn import build_faster_rcnn
    from detection.train import Trainer

    names = [f"c{i}" for i in range(80)]
    src_cfg = load_detection_config(None, ["model.backbone.name=resnet18", "model.num_classes=80",
                                           "model.roi_heads.pooler_resolution=14"])
    src = tmp_path / "src.pth"
    torch.save(detector_payload(build_faster_rcnn(src_cfg.model, class_names=names), src_cfg, names), src)
    cfg = load_detection_config(REPO / "configs/det/synthetic_r18_c4.yaml", [
        *TINY_TRAINING, f"data.root={synthetic_root}", "data.num_workers=0", f"model.weights={src}",
        f"output_dir={tmp_path / 'run'}", "solver.max_iter=1"])
    with caplog.at_level("INFO"):
        trainer = Trainer(cfg, cpu=True, progress=False)
    trainer.close()
    assert trainer.cfg.model.roi_heads.pooler_resolution == 2  # the recipe's, not the source's 14
    assert not [r for r in caplog.records if "pooler" in r.getMessage() and "fixed" in r.getMessage()]
    assert f"model.num_classes = 3, from the training set ({src} was trained on 80 class(es))" in caplog.text
    assert "20 -> " not in caplog.text
