"""tools/train_det.py: its command line in subprocesses (exact resume after SIGKILL, a VOC07+12 smoke run scored by
tools/eval_det.py, a bad override) and its config resolution through the module.

Tiny settings throughout (ResNet-18, 64-96 px, few RoIs); the synthetic set is generated once per session into a
temporary data root."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

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


def test_sigkill_then_resume_matches_uninterrupted_run(tmp_path: Path, synthetic_root: Path) -> None:
    env = subprocess_env(synthetic_root)
    common = ("solver.checkpoint_period=4", "solver.steps=[8]")
    full = tmp_path / "full"
    subprocess.run(_train_cmd(full, 12, *common), env=env, check=True, capture_output=True, timeout=300)

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
    # The metrics log of the resumed run continues where the killed one stopped.
    steps = [json.loads(line)["step"] for line in (killed / "metrics.jsonl").read_text().splitlines()]
    assert steps[-1] == 12


def _write_voc_tree(root: Path, year: str, ids: list[str], splits: dict[str, list[str]]) -> None:
    classes = ["person", "dog", "car"]
    images = {i: (100, 80, [(classes[(n + k) % 3], (10 + 5 * k, 12 + 3 * k, 60 + 5 * k, 50 + 3 * k), 0)
                            for k in range(2)])
              for n, i in enumerate(ids)}
    write_voc_year(root, year, images, splits)


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
