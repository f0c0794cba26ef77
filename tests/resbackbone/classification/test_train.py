"""resbackbone.classification.train: a short synthetic run learns, resume is exact, and the trained backbone
initializes a detector (the classification -> detection weight hand-off)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from resbackbone.classification import ClassificationTrainer, ClsConfig
from resbackbone.engine.config import from_dict
from resbackbone.errors import ConfigError


def _tiny(tmp_path: Path, **solver: object) -> ClsConfig:
    return from_dict(ClsConfig, {
        "model": {"arch": "cifar_resnet8"},
        # 16 px images of 4 shape classes: seconds on a CPU.
        "data": {"dataset": "synthetic", "synthetic_per_class": 100, "synthetic_classes": 4, "num_workers": 0,
                 "crop_size": 16, "pad": 2},
        "solver": {"ims_per_batch": 50, "epochs": 10, "base_lr": 0.1, "steps": [60], "checkpoint_period": 5,
                   **solver},
        "test": {"ims_per_batch": 200},
        "output_dir": str(tmp_path),
    })


@pytest.mark.slow
def test_short_synthetic_run_learns_well_above_chance(tmp_path: Path) -> None:
    result = ClassificationTrainer(_tiny(tmp_path), progress=False).train()
    # 4 classes: chance is 75% top-1 error.
    assert result["test_top1_error"] < 0.4, result  # measured 0.13
    assert (tmp_path / "metrics.jsonl").is_file()


SGD = {"epochs": 2, "steps": [10]}
ADAMW = {"epochs": 1, "steps": [], "optimizer": "adamw", "base_lr": 1e-3, "weight_decay": 0.05}


@pytest.mark.slow
@pytest.mark.parametrize(("solver", "other", "other_name"), [(SGD, ADAMW, "AdamW"), (ADAMW, SGD, "SGD")])
def test_resume_is_exact_and_another_optimizer_is_refused(tmp_path: Path, solver: dict, other: dict,
                                                          other_name: str) -> None:
    full = ClassificationTrainer(_tiny(tmp_path / "a", **solver), progress=False)
    full.train()
    part = ClassificationTrainer(_tiny(tmp_path / "b", **solver), progress=False, stop_after=5)
    part.train()
    # torch would load the other optimizer's state without a word.
    with pytest.raises(ConfigError, match=f"another optimizer than this run's {other_name}"):
        ClassificationTrainer(_tiny(tmp_path / "b", **other), progress=False, resume=True)
    resumed = ClassificationTrainer(_tiny(tmp_path / "b", **solver), progress=False, resume=True)
    assert resumed.start_iter == 5
    resumed.train()
    a = full.accelerator.unwrap_model(full.model).state_dict()
    b = resumed.accelerator.unwrap_model(resumed.model).state_dict()
    for k in a:
        assert torch.equal(a[k], b[k]), k


@pytest.mark.slow
def test_classification_to_detection_hand_off(tmp_path: Path) -> None:
    from detection.config import DetectionConfig
    from detection.faster_rcnn import build_faster_rcnn

    cfg = _tiny(tmp_path, epochs=1, steps=[])
    cfg.model.arch = "resnet18"
    trainer = ClassificationTrainer(cfg, progress=False)
    trainer.train()
    weights = tmp_path / "backbone_weights.pth"
    assert weights.is_file()
    det_cfg = DetectionConfig()
    det_cfg.model.backbone.name = "resnet18"
    det_cfg.model.backbone.weights = str(weights)
    det_cfg.model.num_classes = 3
    detector = build_faster_rcnn(det_cfg.model)
    cls_state = trainer.accelerator.unwrap_model(trainer.model).state_dict()
    det_state = detector.state_dict()
    for k, v in cls_state.items():
        if k.startswith(("stem.", "res2.", "res3.", "res4.")) and not k.endswith("num_batches_tracked"):
            assert torch.equal(det_state[f"trunk.body.{k}"], v), k
        elif k.startswith("res5.") and not k.endswith("num_batches_tracked"):
            assert torch.equal(det_state[f"roi_heads.box_head.res5.{k[5:]}"], v), k
