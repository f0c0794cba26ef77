"""tools/train_det.py: its command line in subprocesses (exact resume after SIGKILL, a VOC07+12 smoke run scored by
tools/eval_det.py, a bad override) and its config resolution through the module.

Tiny settings throughout (ResNet-18, 64-96 px, few RoIs); the synthetic set is generated once per session into a
temporary data root."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from detection.recipes import dataset_label
from resbackbone.errors import ConfigError
from tests.helpers import REPO, TINY_TRAINING, subprocess_env, write_voc_year
from tools import train_det

TRAIN = REPO / "tools" / "train_det.py"


def _train_cmd(out: Path, max_iter: int, *extra: str) -> list[str]:
    return [
        sys.executable,
        str(TRAIN),
        "--no-progress",
        "--cpu",
        "--output-dir",
        str(out),
        "--max-iter",
        str(max_iter),
        *TINY_TRAINING,
        "data.num_workers=1",
        *extra,
    ]


def _final_state(out: Path) -> dict[str, torch.Tensor]:
    payload = torch.load(out / "model_final.pth", map_location="cpu", weights_only=True)
    return payload["state_dict"]


COMMON = ("solver.checkpoint_period=4", "solver.steps=[8]")


@pytest.fixture(scope="module")
def full_run(tmp_path_factory: pytest.TempPathFactory, synthetic_root: Path) -> Path:
    """The uninterrupted 12-iteration run the interrupted ones are compared with."""
    full = tmp_path_factory.mktemp("full") / "run"
    subprocess.run(_train_cmd(full, 12, *COMMON), env=subprocess_env(synthetic_root), check=True,
                   capture_output=True, timeout=300)
    return full


@pytest.mark.slow
def test_sigkill_then_resume_matches_uninterrupted_run(tmp_path: Path, synthetic_root: Path, full_run: Path) -> None:
    env = subprocess_env(synthetic_root)
    common, full = COMMON, full_run

    killed = tmp_path / "killed"
    proc = subprocess.Popen(_train_cmd(killed, 12, *common), env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while not (killed / "model_0000004.pth").exists():
        assert proc.poll() is None, "training ended before its first checkpoint"
        assert time.time() < deadline
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (killed / "model_final.pth").exists(), "the run was supposed to be killed before the end"

    res = subprocess.run(_train_cmd(killed, 12, *common, "--resume"), env=env, capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    a, b = _final_state(full), _final_state(killed)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), f"{k} differs after resume"
    # The metrics log of the resumed run continues where the killed one stopped, each step once.
    steps = [json.loads(line)["step"] for line in (killed / "metrics.jsonl").read_text().splitlines()]
    assert steps[-1] == 12


@pytest.mark.slow
@pytest.mark.parametrize(("signum", "resume"), [(signal.SIGINT, True), (signal.SIGTERM, False)])
def test_stop_signal_checkpoints_the_step_says_how_to_resume_and_resume_is_exact(
        tmp_path: Path, synthetic_root: Path, full_run: Path, signum: int, resume: bool) -> None:
    """Ctrl-C / SIGTERM: the current step finishes, its checkpoint is written (checkpoint_period 4 is not reached),
    one line says how to continue, no traceback; --resume then ends bit-exact with the uninterrupted run."""
    env = subprocess_env(synthetic_root)
    run = tmp_path / "run"
    proc = subprocess.Popen(_train_cmd(run, 12, *COMMON, "solver.checkpoint_period=100"), env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    # The line logged once the stop handler is in place, before the first step.
    deadline = time.time() + 240
    assert proc.stderr is not None
    for line in proc.stderr:
        if "Ctrl-C stops" in line:
            break
        assert time.time() < deadline
    time.sleep(0.5)
    proc.send_signal(signum)
    err = proc.stderr.read()
    rc = proc.wait(timeout=240)
    assert rc == 128 + signum, err[-3000:]
    last = err.strip().splitlines()[-1]
    match = re.fullmatch(r"interrupted at iteration (\d+); `--resume` continues from it", last)
    assert match, err[-3000:]
    assert "Traceback" not in err and "KeyboardInterrupt" not in err
    n = int(match.group(1))
    assert 0 < n < 12 and (run / f"model_{n:07d}.pth").is_file() and not (run / "model_final.pth").exists()
    assert (run / "results.csv").is_file() and (run / "results.png").is_file()
    if not resume:
        return
    res = subprocess.run(_train_cmd(run, 12, *COMMON, "solver.checkpoint_period=100", "--resume"), env=env,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert f"at iteration {n}" in res.stderr
    a, b = _final_state(full_run), _final_state(run)
    for k in a:
        assert torch.equal(a[k], b[k]), f"{k} differs after an interrupted and resumed run"


def _write_voc_tree(root: Path, year: str, ids: list[str], splits: dict[str, list[str]]) -> None:
    classes = ["person", "dog", "car"]
    images = {i: (100, 80, [(classes[(n + k) % 3], (10 + 5 * k, 12 + 3 * k, 60 + 5 * k, 50 + 3 * k), 0)
                            for k in range(2)])
              for n, i in enumerate(ids)}
    write_voc_year(root, year, images, splits)


@pytest.mark.slow
def test_voc07_plus_12_cli_smoke_then_eval_tool(tmp_path: Path) -> None:
    root = tmp_path / "data"
    ids07 = ["000001", "000002", "000003", "000004"]
    _write_voc_tree(root, "2007", ids07, {"trainval": ids07[:2], "train": ids07[:1], "val": ids07[1:2],
                                          "test": ids07[2:]})
    ids12 = ["2008_000001", "2008_000002"]
    _write_voc_tree(root, "2012", ids12, {"trainval": ids12, "train": ids12[:1], "val": ids12[1:]})
    out = tmp_path / "out"
    env = subprocess_env(root)
    cmd = [
        sys.executable, str(TRAIN), "--dataset", "voc07+12", "--backbone", "resnet101", "--backbone-weights",
        "none", "--max-iter", "2", "--data-root", str(root), "--output-dir", str(out), "--no-progress", "--cpu",
        "data.min_size_train=[64]", "data.max_size_train=96", "data.min_size_test=64", "data.max_size_test=96",
        "data.num_workers=0", "solver.ims_per_batch=2", "model.rpn.post_nms_topk_train=50",
        "model.rpn.post_nms_topk_test=20", "model.roi_heads.batch_size_per_image=8",
    ]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=400)
    assert res.returncode == 0, res.stderr[-4000:]
    assert (out / "model_final.pth").is_file() and (out / "config.yaml").is_file()
    cfg_text = (out / "config.yaml").read_text()
    assert "resnet101" in cfg_text and "voc07+12" in cfg_text
    report = tmp_path / "eval.json"
    res = subprocess.run(
        [sys.executable, str(REPO / "tools" / "eval_det.py"), "--checkpoint", str(out / "model_final.pth"),
         "--dataset", "voc07-test", "--data-root", str(root), "--output", str(report), "--cpu",
         "--num-workers", "0"],
        env=env, capture_output=True, text=True, timeout=300,
    )
    assert res.returncode == 0, res.stderr[-4000:]
    scores = json.loads(report.read_text())
    assert 0.0 <= scores["mAP"] <= 1.0 and set(scores["per_class"]) >= {"person", "dog", "car"}


def test_bad_override_is_one_clear_error(tmp_path: Path) -> None:
    res = subprocess.run(
        [sys.executable, str(TRAIN), "--output-dir", str(tmp_path), "solver.bogus_key=1"],
        capture_output=True, text=True, timeout=120, env=subprocess_env(tmp_path),
    )
    assert res.returncode == 2
    assert "bogus_key" in res.stderr and "Traceback" not in res.stderr


def test_backbone_flag_takes_any_timm_model_name() -> None:
    """``--backbone`` is ours for resnet18..152 and a timm model otherwise; a timm trunk then starts from its own
    timm ImageNet weights instead of the config's torchvision ones, unless weights are given explicitly."""
    cfg = train_det.resolve_config(train_det.parse_args(["--dataset", "voc07+12", "--backbone", "convnext_tiny"]))
    assert (cfg.model.backbone.name, cfg.model.backbone.weights) == ("timm:convnext_tiny", "timm")
    cfg = train_det.resolve_config(train_det.parse_args(["--dataset", "voc07+12", "--backbone", "resnet50"]))
    assert (cfg.model.backbone.name, cfg.model.backbone.weights) == ("resnet50", "torchvision")
    cfg = train_det.resolve_config(train_det.parse_args(["--backbone", "timm:resnet10t", "--backbone-weights", "none"]))
    assert (cfg.model.backbone.name, cfg.model.backbone.weights) == ("timm:resnet10t", "none")


def test_overrides_may_stand_between_the_flags() -> None:
    args = train_det.parse_args(["solver.base_lr=0.01", "--cpu", "solver.max_iter=7", "--max-iter", "5"])
    assert args.cpu and args.max_iter == 5 and args.overrides == ["solver.base_lr=0.01", "solver.max_iter=7"]
    cfg = train_det.resolve_config(args)
    assert (cfg.solver.base_lr, cfg.solver.max_iter) == (0.01, 5)


# ------------------------------------------------------------------------------------------ own data, flags


def _voc_folder(root: Path) -> Path:
    """A VOC devkit year of 4 images whose classes (car, dog, person) are not the synthetic set's."""
    ids = ["000001", "000002", "000003", "000004"]
    _write_voc_tree(root, "2007", ids, {"train": ids[:3], "val": ids[3:]})
    return root / "VOCdevkit" / "VOC2007"


def test_resume_on_another_dataset_is_refused_in_one_line(tmp_path: Path, synthetic_root: Path,
                                                          capsys: pytest.CaptureFixture[str],
                                                          one_thread: None) -> None:
    out = tmp_path / "run"
    base = ["--no-progress", "--cpu", "--output-dir", str(out), "--data-root", str(synthetic_root), "--max-iter",
            "2", "--backbone-weights", "none", *TINY_TRAINING, "data.num_workers=0"]
    assert train_det.main(base) == 0
    folder = _voc_folder(tmp_path / "voc")
    capsys.readouterr()
    assert train_det.main([*base, "--resume", "--dataset", f"voc:{folder}:train", "--test-dataset",
                           f"voc:{folder}:val", "--config", str(REPO / "configs/det/synthetic_r18_c4.yaml")]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err and "--resume refused" in err, err
    assert "classes 3 (circle, rectangle, triangle) vs this run's 3 (car, dog, person)" in err
    assert "dataset synthetic-train vs voc:" in err


@pytest.mark.slow
def test_resume_warning_names_the_fields_that_differ(tmp_path: Path, synthetic_root: Path, one_thread: None,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    out = tmp_path / "run"
    base = ["--no-progress", "--cpu", "--output-dir", str(out), "--data-root", str(synthetic_root),
            *TINY_TRAINING, "data.num_workers=0"]
    assert train_det.main([*base, "--max-iter", "2", "solver.checkpoint_period=1"]) == 0
    with caplog.at_level("WARNING"):
        assert train_det.main([*base, "--max-iter", "3", "--resume", "model.rpn.nms_thresh=0.6"]) == 0
    assert "differs from the checkpoint's in 1 field(s): model.rpn.nms_thresh: 0.7 -> 0.6" in caplog.text


def test_data_train_override_picks_the_finetuning_recipe_and_names_the_output_folder(tmp_path: Path) -> None:
    """``data.train={format: voc, ...}`` without --dataset is own data, as --dataset is: the fine-tuning config
    (not the synthetic one), its test split found, an output folder named after the data."""
    folder = _voc_folder(tmp_path / "pets")
    for argv in ([f"data.train={{format: voc, root: {folder}, split: train}}"], ["--dataset", f"voc:{folder}:train"]):
        cfg = train_det.resolve_config(train_det.parse_args(argv))
        assert (cfg.model.arch, cfg.model.backbone.name, cfg.solver.max_epochs) == ("FPN", "resnet50", 24), argv
        assert cfg.data.test["split"] == "val" if isinstance(cfg.data.test, dict) else cfg.data.test.endswith(":val")
        assert cfg.output_dir == "output/VOC2007_fpn", argv  # finetune_fpn.yaml
    cfg = train_det.resolve_config(train_det.parse_args(["--dataset", f"voc:{folder}:train", "--recipe", "cpu"]))
    assert cfg.output_dir == "output/VOC2007_c4_cpu"
    assert (cfg.model.backbone.name, cfg.model.roi_heads.pooler_resolution, cfg.solver.optimizer) == \
        ("resnet18", 4, "adamw")
    # A COCO export's generic names are passed over for its folder; explicit folders are kept.
    assert dataset_label({"format": "coco", "ann_file": "/x/pets/train/_annotations.coco.json",
                                    "image_dir": "/x/pets/train"}) == "pets"
    cfg = train_det.resolve_config(train_det.parse_args(["--dataset", f"voc:{folder}:train", "--output-dir", "o"]))
    assert cfg.output_dir == "o"


def test_convenience_flags_map_to_config_keys(tmp_path: Path) -> None:
    folder = _voc_folder(tmp_path / "d")
    cfg = train_det.resolve_config(train_det.parse_args(
        ["--dataset", f"voc:{folder}:train", "--epochs", "6", "--imgsz", "320", "--batch", "4"]))
    d, s = cfg.data, cfg.solver
    assert (d.min_size_train, d.min_size_test, d.max_size_train, d.max_size_test) == ((320,), 320, 533, 533)
    # finetune_c4.yaml: 8 images at lr 0.01 -> 4 images at 0.005 (linear scaling rule).
    assert (s.max_epochs, s.ims_per_batch, s.base_lr) == (6.0, 4, 0.005)
    # An iteration schedule given epochs keeps its lr steps' places as fractions.
    cfg = train_det.resolve_config(train_det.parse_args(["--epochs", "2", "solver.max_iter=100",
                                                         "solver.steps=[50]", "solver.schedule=multistep"]))
    assert (cfg.solver.max_epochs, cfg.solver.step_fractions) == (2.0, (0.5,))
    cfg = train_det.resolve_config(train_det.parse_args(["data.min_size_train=256"]))
    assert cfg.data.min_size_train == (256,)
    with pytest.raises(ConfigError, match="--epochs and --max-iter"):
        train_det.resolve_config(train_det.parse_args(["--epochs", "2", "--max-iter", "5"]))


def test_cli_typo_is_blamed_on_the_command_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = _voc_folder(tmp_path / "d")
    assert train_det.main(["--dataset", f"voc:{folder}:train", "--output-dir", str(tmp_path / "o"),
                           "solver.bogus_key=1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("train_det: error: command-line override") and "'solver.bogus_key'" in err
    assert "finetune_c4.yaml" not in err and "\n" not in err
