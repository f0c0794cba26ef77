"""tools/train_det.py end to end on CPU: exact resume after SIGKILL, 2-process accelerate, VOC CLI smoke run.

Tiny settings throughout (ResNet-18, 64-96 px, few RoIs); the synthetic set is generated once per session into a
temporary data root.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
TRAIN = REPO / "tools" / "train_det.py"

# A CPU-sized C4 model and solver: seconds per run.
TINY = [
    "model.backbone.name=resnet18",
    "model.rpn.batch_size_per_image=32",
    "model.rpn.pre_nms_topk_train=200",
    "model.rpn.post_nms_topk_train=50",
    "model.rpn.pre_nms_topk_test=100",
    "model.rpn.post_nms_topk_test=20",
    "model.roi_heads.batch_size_per_image=16",
    "data.min_size_train=[64]",
    "data.max_size_train=96",
    "data.min_size_test=64",
    "data.max_size_test=96",
    "solver.ims_per_batch=2",
    "solver.warmup_iters=2",
    "test.ims_per_batch=8",
]


@pytest.fixture(scope="module")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from detection.data.synthetic import generate_synthetic

    root = tmp_path_factory.mktemp("data")
    generate_synthetic(root)  # the tree build_dataset("synthetic-*") expects (a few seconds)
    return root


def _env(data_root: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["RESDET_DATA_ROOT"] = str(data_root)
    env["OMP_NUM_THREADS"] = "1"  # bit-identical comparisons need the same reduction order in every run
    env["PYTHONPATH"] = str(REPO)
    return env


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
        *TINY,
        "data.num_workers=1",
        *extra,
    ]


def _final_state(out: Path) -> dict[str, torch.Tensor]:
    payload = torch.load(out / "model_final.pth", map_location="cpu", weights_only=True)
    return payload["state_dict"]


def test_sigkill_then_resume_matches_uninterrupted_run(tmp_path: Path, data_root: Path) -> None:
    env = _env(data_root)
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


def test_two_process_accelerate_splits_data_and_keeps_weights_identical(tmp_path: Path, data_root: Path) -> None:
    script = tmp_path / "dist_train.py"
    script.write_text(DIST_SCRIPT)
    out = tmp_path / "out"
    out.mkdir()
    cmd = [
        str(Path(sys.executable).parent / "accelerate"), "launch",
        # accelerate has no CPU-only multi-process flag: --multi_gpu on a machine without GPUs runs gloo MULTI_CPU.
        "--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
        "--dynamo_backend", "no", str(script), str(out), str(REPO / "configs/det/synthetic_r18_c4.yaml"),
        *TINY, "solver.ims_per_batch=4", "data.num_workers=0", f"output_dir={out / 'run'}",
        "solver.max_iter=10", "solver.steps=[8]",
    ]
    env = _env(data_root)
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


def _write_voc_tree(root: Path, year: str, ids: list[str], splits: dict[str, list[str]]) -> None:
    import cv2
    import numpy as np

    base = root / "VOCdevkit" / f"VOC{year}"
    (base / "JPEGImages").mkdir(parents=True)
    (base / "Annotations").mkdir()
    (base / "ImageSets" / "Main").mkdir(parents=True)
    rng = np.random.default_rng(int(year))
    classes = ["person", "dog", "car"]
    for n, i in enumerate(ids):
        img = rng.integers(0, 255, size=(80, 100, 3), dtype=np.uint8)
        cv2.imwrite(str(base / "JPEGImages" / f"{i}.jpg"), img)
        objs = "".join(
            f"<object><name>{classes[(n + k) % 3]}</name><pose>Left</pose><truncated>0</truncated>"
            f"<difficult>0</difficult><bndbox><xmin>{10 + 5 * k}</xmin><ymin>{12 + 3 * k}</ymin>"
            f"<xmax>{60 + 5 * k}</xmax><ymax>{50 + 3 * k}</ymax></bndbox></object>"
            for k in range(2)
        )
        (base / "Annotations" / f"{i}.xml").write_text(
            f"<annotation><folder>VOC{year}</folder><filename>{i}.jpg</filename><size><width>100</width>"
            f"<height>80</height><depth>3</depth></size><segmented>0</segmented>{objs}</annotation>"
        )
    for split, members in splits.items():
        (base / "ImageSets" / "Main" / f"{split}.txt").write_text("".join(f"{m}\n" for m in members))


def test_voc07_plus_12_cli_smoke_then_eval_tool(tmp_path: Path) -> None:
    root = tmp_path / "data"
    ids07 = ["000001", "000002", "000003", "000004"]
    _write_voc_tree(root, "2007", ids07, {"trainval": ids07[:2], "train": ids07[:1], "val": ids07[1:2],
                                          "test": ids07[2:]})
    ids12 = ["2008_000001", "2008_000002"]
    _write_voc_tree(root, "2012", ids12, {"trainval": ids12, "train": ids12[:1], "val": ids12[1:]})
    out = tmp_path / "out"
    env = _env(root)
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
        capture_output=True, text=True, timeout=120, env=_env(tmp_path),
    )
    assert res.returncode == 2
    assert "bogus_key" in res.stderr and "Traceback" not in res.stderr


def test_linear_scaling_rule_and_max_iter_override() -> None:
    sys.path.insert(0, str(REPO / "tools"))
    from detection.config import SolverConfig
    from resbackbone.engine.schedule import apply_linear_scaling

    s = apply_linear_scaling(SolverConfig(ims_per_batch=8, reference_ims_per_batch=1, base_lr=0.001,
                                          max_iter=80000, steps=(60000,), warmup_iters=800))
    assert s.base_lr == pytest.approx(0.008) and s.max_iter == 10000 and s.steps == (7500,) and s.warmup_iters == 100
    assert apply_linear_scaling(SolverConfig(ims_per_batch=4)) == SolverConfig(ims_per_batch=4)


def test_frozen_bn_from_scratch_is_rejected() -> None:
    from detection.config import load_detection_config
    from detection.train import check_config as resolve_backbone_flags
    from resbackbone.errors import ConfigError

    cfg = load_detection_config(None, ["model.backbone.norm=frozen_bn", "model.backbone.weights=none"])
    with pytest.raises(ConfigError, match="frozen_bn needs pretrained weights"):
        resolve_backbone_flags(cfg)


def test_seeded_items_are_reproducible(data_root: Path) -> None:
    from detection.data import build_dataset
    from resbackbone.engine.sampling import sample_seed

    ds = build_dataset("synthetic-train", data_root, train=True, min_size=(64, 80, 96), max_size=160,
                       flip_prob=0.5, photometric=True)
    seeds = [sample_seed(0, it, slot) for it in range(4) for slot in range(2)]
    assert len(set(seeds)) == len(seeds)
    for s in seeds[:4]:
        a, ta = ds.get_item_seeded(1, s)
        b, tb = ds.get_item_seeded(1, s)
        assert torch.equal(a, b) and torch.equal(ta["boxes"], tb["boxes"])
    sizes = {ds.get_item_seeded(1, s)[0].shape for s in seeds}
    assert len(sizes) > 1, "multi-scale training must vary the size across seeds"


def test_backbone_flag_takes_any_timm_model_name() -> None:
    """``--backbone`` is ours for resnet18..152 and a timm model otherwise; a timm trunk then starts from its own
    timm ImageNet weights instead of the config's torchvision ones, unless weights are given explicitly."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("train_det_cli", TRAIN)
    assert spec is not None and spec.loader is not None
    cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cli)
    cfg = cli.resolve_config(cli.parse_args(["--dataset", "voc07+12", "--backbone", "convnext_tiny"]))
    assert (cfg.model.backbone.name, cfg.model.backbone.weights) == ("timm:convnext_tiny", "timm")
    cfg = cli.resolve_config(cli.parse_args(["--dataset", "voc07+12", "--backbone", "resnet50"]))
    assert (cfg.model.backbone.name, cfg.model.backbone.weights) == ("resnet50", "torchvision")
    cfg = cli.resolve_config(cli.parse_args(["--backbone", "timm:resnet10t", "--backbone-weights", "none"]))
    assert (cfg.model.backbone.name, cfg.model.backbone.weights) == ("timm:resnet10t", "none")
