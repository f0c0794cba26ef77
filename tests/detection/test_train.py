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
