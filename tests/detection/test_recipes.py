"""The run-config rules shared by tools/train_det.py and the Python API (detection.recipes)."""

from __future__ import annotations

import pytest

from detection.data.catalog import DATASET_NAMES
from detection.recipes import (
    RECIPES,
    RunOptions,
    config_dir,
    default_config_name,
    resolve_run_config,
    schedule_at_fractions,
)
from resbackbone.errors import ConfigError
from tools import train_det


@pytest.mark.parametrize("name", DATASET_NAMES)
def test_every_catalog_name_has_a_shipped_config(name: str) -> None:
    config = default_config_name(name)
    assert config not in RECIPES.values(), f"{name} fell through to the own-data recipe"
    assert (config_dir() / config).is_file()


def test_own_data_gets_the_recipe_and_unknown_recipe_is_one_error() -> None:
    assert default_config_name("coco:a.json:img") == RECIPES["default"]
    assert default_config_name({"format": "voc", "root": "x"}) == RECIPES["default"]
    assert default_config_name("voc07+12", "cpu") == RECIPES["cpu"]
    assert default_config_name("voc07++12") == "voc07++12_c4.yaml"
    with pytest.raises(ConfigError, match="unknown recipe 'gpu'"):
        default_config_name(None, "gpu")


def test_api_and_command_line_resolve_alike() -> None:
    argv = ["--epochs", "3", "--batch", "4", "--imgsz", "96", "--backbone", "resnet34", "model.rpn.nms_thresh=0.6"]
    from_cli = train_det.resolve_config(train_det.parse_args(argv))
    from_api = resolve_run_config(RunOptions(epochs=3, batch=4, imgsz=96, backbone="resnet34",
                                             overrides=["model.rpn.nms_thresh=0.6"]))
    assert from_api == from_cli
    assert from_api.data.test == "synthetic-test" and from_api.model.rpn.nms_thresh == 0.6
    assert from_api.solver.max_epochs == 3 and from_api.data.min_size_test == 96


def test_max_iter_over_an_epoch_schedule_uses_the_trainers_rule() -> None:
    """--max-iter on an epoch recipe and the trainer's epoch -> iteration step are one rule."""
    epoch_recipe = str(config_dir() / "finetune_c4.yaml")
    cfg = resolve_run_config(RunOptions(config=epoch_recipe, dataset="synthetic-train", max_iter=40))
    base = resolve_run_config(RunOptions(config=epoch_recipe, dataset="synthetic-train"))
    assert base.solver.max_epochs > 0 and base.solver.step_fractions
    expected = schedule_at_fractions(base.solver, 40)
    assert cfg.solver.max_epochs == 0 and cfg.solver.max_iter == 40
    assert cfg.solver.steps == expected.steps and cfg.solver.warmup_iters == expected.warmup_iters
    assert all(0 < st < 40 for st in cfg.solver.steps)
