"""Strict typed config loading shared by both trainers."""

from pathlib import Path

import pytest

from detection.config import DetectionConfig, load_detection_config
from resbackbone.engine.config import load_config, parse_overrides, save_config, to_dict
from resbackbone.errors import ConfigError


def test_defaults_roundtrip_through_yaml(tmp_path: Path) -> None:
    cfg = load_detection_config()
    save_config(cfg, tmp_path / "cfg.yaml")
    again = load_detection_config(tmp_path / "cfg.yaml")
    assert to_dict(again) == to_dict(cfg)


def test_base_and_overrides(tmp_path: Path) -> None:
    (tmp_path / "base.yaml").write_text("solver:\n  base_lr: 0.01\n  steps: [5, 8]\nmodel:\n  num_classes: 3\n")
    (tmp_path / "child.yaml").write_text("base: base.yaml\nsolver:\n  max_iter: 10\n")
    cfg = load_detection_config(tmp_path / "child.yaml", ["solver.base_lr=0.5", "model.rpn.nms_thresh=0.6"])
    assert cfg.solver.base_lr == 0.5 and cfg.solver.steps == (5, 8) and cfg.solver.max_iter == 10
    assert cfg.model.num_classes == 3 and cfg.model.rpn.nms_thresh == 0.6
    assert isinstance(cfg.solver.steps, tuple)


@pytest.mark.parametrize(
    ("override", "needle"),
    [
        ("model.rpn.nms=0.6", "'model.rpn.nms'"),
        ("model.arch=C5", "'model.arch'"),
        ("solver.max_iter=1.5", "'solver.max_iter'"),
        ("solver.steps=seven", "'solver.steps\\[0\\]'"),
        ("model.pixel.mean=5", "'model.pixel.mean'"),
        ("data.flip_prob=yes", "'data.flip_prob'"),
        ("model.backbone.freeze_at=null", "'model.backbone.freeze_at'"),
    ],
)
def test_bad_override_names_the_key(override: str, needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        load_detection_config(overrides=[override])


def test_bad_file_errors_name_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  nope: 1\n")
    with pytest.raises(ConfigError, match="bad.yaml.*'model.nope'"):
        load_detection_config(bad)
    with pytest.raises(ConfigError, match="not found"):
        load_detection_config(tmp_path / "missing.yaml")
    two = tmp_path / "two.yaml"
    (tmp_path / "one.yaml").write_text("base: bad.yaml\n")
    two.write_text("base: one.yaml\n")
    with pytest.raises(ConfigError, match="at most one level"):
        load_config(DetectionConfig, two)


def test_parse_overrides_nests_and_parses_yaml() -> None:
    assert parse_overrides(["a.b=1", "a.c=[1, 2]", "d=x"]) == {"a": {"b": 1, "c": [1, 2]}, "d": "x"}
    with pytest.raises(ConfigError, match="key=value"):
        parse_overrides(["novalue"])


def test_floats_written_the_way_people_write_them(tmp_path: Path) -> None:
    """PyYAML reads ``1e-4`` (no dot) as a string; every decimal float form must load as a number, in files and
    in overrides, while text that is not a number stays an error naming the key."""
    path = tmp_path / "c.yaml"
    path.write_text("solver:\n  weight_decay: 1e-4\n  base_lr: 2E-3\n")
    cfg = load_detection_config(path, ["solver.momentum=.9", "model.rpn.nms_thresh=7e-1"])
    assert (cfg.solver.weight_decay, cfg.solver.base_lr, cfg.solver.momentum) == (1e-4, 2e-3, 0.9)
    assert cfg.model.rpn.nms_thresh == 0.7
    with pytest.raises(ConfigError, match="solver.base_lr.*expected a number"):
        load_detection_config(None, ["solver.base_lr=fast"])


def test_a_scalar_where_a_list_is_expected_is_a_one_element_list(tmp_path: Path) -> None:
    """``data.min_size_train=256`` means ``[256]``, on the command line and in a file; fixed-length tuples (a pixel
    mean of three values) still need all their values."""
    cfg = load_detection_config(None, ["data.min_size_train=256", "solver.steps=7"])
    assert cfg.data.min_size_train == (256,) and cfg.solver.steps == (7,)
    path = tmp_path / "c.yaml"
    path.write_text("data:\n  min_size_train: 320\n")
    assert load_detection_config(path).data.min_size_train == (320,)
    with pytest.raises(ConfigError, match="'model.pixel.mean'"):
        load_detection_config(None, ["model.pixel.mean=5"])


def test_a_command_line_typo_is_blamed_on_the_command_line(tmp_path: Path) -> None:
    path = tmp_path / "recipe.yaml"
    path.write_text("solver:\n  base_lr: 0.01\n")
    with pytest.raises(ConfigError) as err:
        load_detection_config(path, ["solver.bogus_key=1"])
    text = str(err.value)
    assert text.startswith("command-line override") and "'solver.bogus_key'" in text and "recipe.yaml" not in text
    path.write_text("solver:\n  bogus_key: 1\n")
    with pytest.raises(ConfigError, match=r"recipe.yaml.*'solver.bogus_key'"):
        load_detection_config(path, ["solver.base_lr=0.1"])


def test_config_differences_name_the_fields() -> None:
    from resbackbone.engine.config import config_differences

    a = load_detection_config(None, [])
    b = load_detection_config(None, ["model.roi_heads.pooler_resolution=7", "solver.base_lr=0.5"])
    assert config_differences(a, b, ignore=("solver.",)) == ["model.roi_heads.pooler_resolution: 14 -> 7"]
