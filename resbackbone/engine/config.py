"""Typed configuration trees: dataclasses, strict YAML loading, ``key=value`` overrides.

The one config loader of the detection and classification trainers. Rules:
- a YAML file may name one ``base:`` file (relative to itself); the base may not name another;
- unknown keys and wrong types are errors naming the dotted key (and the file);
- overrides are ``a.b.c=value`` strings; the value is parsed as YAML (``lr=0.02``, ``steps=[10,20]``);
  errors in them are reported as the command line's, not the config file's;
- a single value where a variable-length list is expected is taken as a one-element list
  (``data.min_size_train=256`` means ``[256]``), as a person means it.
"""

from __future__ import annotations

import dataclasses
import re
import types
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Literal, TypeVar, Union, get_args, get_origin, get_type_hints

from ..errors import ConfigError
from ..serialization import atomic_write_text

T = TypeVar("T")
# A decimal float as people write it: 1e-4, .5, 2., -3E+2 (not "nan" / "inf", which are not config values).
_FLOAT_TEXT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against annotation ``tp``; converts lists to tuples and ints to floats only."""
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        if value is None:
            if type(None) in args:
                return None
            raise ConfigError(f"config key '{key}': null is not allowed (expected {_type_name(tp)})")
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(f"config key '{key}': {value!r} does not match {_type_name(tp)}")
    if origin is Literal:
        if value not in get_args(tp):
            raise ConfigError(f"config key '{key}': {value!r} is not one of {list(get_args(tp))}")
        return value
    if origin in (tuple, list):
        args = get_args(tp)
        fixed = origin is tuple and args and args[-1] is not Ellipsis
        if not isinstance(value, (list, tuple)) and not fixed and value is not None \
                and not isinstance(value, Mapping):
            value = [value]  # `min_size_train=256`: the one-element list the writer meant
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"config key '{key}': expected a list, got {value!r}")
        if fixed:
            if len(args) != len(value):
                raise ConfigError(f"config key '{key}': expected {len(args)} values, got {len(value)}")
            items = [_coerce(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args))]
        else:
            item_tp = args[0] if args else Any
            items = [_coerce(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, Mapping):
            raise ConfigError(f"config key '{key}': expected a mapping for section {tp.__name__}, got {value!r}")
        return from_dict(tp, value, prefix=f"{key}.")
    if tp is float:
        if isinstance(value, str) and _FLOAT_TEXT.fullmatch(value.strip()):
            # YAML 1.1 (PyYAML) reads "1e-4" as a string: it needs "1.0e-4". Accept every float a person writes.
            return float(value)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"config key '{key}': expected a number, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"config key '{key}': expected an integer, got {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"config key '{key}': expected true/false, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"config key '{key}': expected a string, got {value!r}")
        return value
    raise ConfigError(f"config key '{key}': unsupported annotation {tp!r}")


def from_dict(cls: type[T], data: Mapping[str, Any], prefix: str = "") -> T:
    """Build dataclass ``cls`` from a mapping, rejecting unknown keys and wrong types."""
    hints = get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - set(fields))
    if unknown:
        names = ", ".join(f"'{prefix}{k}'" for k in unknown)
        raise ConfigError(f"unknown config key(s) {names}; valid keys here: {sorted(fields)}")
    kwargs = {k: _coerce(v, hints[k], f"{prefix}{k}") for k, v in data.items()}
    return cls(**kwargs)


def to_dict(cfg: Any) -> dict[str, Any]:
    """Plain-data (YAML / JSON / checkpoint safe) dict of a config dataclass; tuples become lists."""

    def plain(v: Any) -> Any:
        if dataclasses.is_dataclass(v):
            return {f.name: plain(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        return v

    return plain(cfg)


def merge_dicts(base: dict[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    """Recursive merge; mappings merge key by key, everything else is replaced."""
    out = dict(base)
    for k, v in update.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), Mapping):
            out[k] = merge_dicts(out[k], v)
        else:
            out[k] = v
    return out


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a config YAML (with at most one ``base:`` level) into a dict. Errors name the file."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: invalid YAML ({e})") from e
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping, got {type(data).__name__}")
    base = data.pop("base", None)
    if base is None:
        return data
    base_path = (path.parent / base).resolve()
    base_data = read_yaml_no_base(base_path, referrer=path)
    return merge_dicts(base_data, data)


def read_yaml_no_base(path: Path, referrer: Path) -> dict[str, Any]:
    import yaml

    if not path.is_file():
        raise ConfigError(f"{referrer}: base file not found: {path}")
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping")
    if "base" in data:
        raise ConfigError(f"{path}: a base config may not name another base (at most one level)")
    return data


def parse_overrides(items: Iterable[str]) -> dict[str, Any]:
    """``["solver.base_lr=0.02", "model.rpn.nms_thresh=0.6"]`` -> nested dict of YAML-parsed values."""
    import yaml

    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key=value")
        key, raw = item.split("=", 1)
        key = key.strip()
        if not key:
            raise ConfigError(f"override {item!r} has an empty key")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError as e:
            raise ConfigError(f"override {item!r}: value is not valid YAML ({e})") from e
        node = out
        parts = key.split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r} conflicts with another override of '{p}'")
        node[parts[-1]] = value
    return out


def load_config(
    cls: type[T], path: str | Path | None = None, overrides: Iterable[str] = (), extra: Mapping[str, Any] | None = None
) -> T:
    """Defaults of ``cls`` <- YAML file (with its base) <- ``extra`` dict <- ``key=value`` overrides."""
    data = to_dict(cls())
    if path is not None:
        try:
            data = merge_dicts(data, read_yaml(path))
            # The file alone first: its mistakes name the file, the command line's name the command line.
            from_dict(cls, data)
        except ConfigError as e:
            if str(e).startswith(str(path)):
                raise
            raise ConfigError(f"{path}: {e}") from e
    if extra:
        data = merge_dicts(data, extra)
    overrides = list(overrides)
    try:
        return from_dict(cls, merge_dicts(data, parse_overrides(overrides)))
    except ConfigError as e:
        if not overrides:
            raise
        raise ConfigError(f"command-line override: {e}") from e


def flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}`` (lists stay values)."""
    out: dict[str, Any] = {}
    for k, v in data.items():
        if isinstance(v, Mapping) and v:
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def config_differences(old: Any, new: Any, *, ignore: Iterable[str] = ()) -> list[str]:
    """The dotted keys whose values differ between two configs (dataclasses or dicts) as ``key: old -> new``
    texts, sorted; keys under any ``ignore`` prefix are left out."""
    a = flatten(old if isinstance(old, Mapping) else to_dict(old))
    b = flatten(new if isinstance(new, Mapping) else to_dict(new))
    skip = tuple(ignore)
    return [f"{k}: {_brief(a.get(k))} -> {_brief(b.get(k))}" for k in sorted(set(a) | set(b))
            if not k.startswith(skip) and _plain(a.get(k)) != _plain(b.get(k))]


def _plain(v: Any) -> Any:
    return [_plain(x) for x in v] if isinstance(v, (list, tuple)) else v


def _brief(v: Any) -> str:
    text = str(_plain(v))
    return text if len(text) <= 60 else text[:57] + "..."


def save_config(cfg: Any, path: str | Path) -> None:
    """Write the resolved config as YAML (atomically: temp file + rename)."""
    import yaml

    atomic_write_text(path, yaml.safe_dump(to_dict(cfg), sort_keys=False))


__all__ = [
    "ConfigError",
    "config_differences",
    "flatten",
    "from_dict",
    "load_config",
    "merge_dicts",
    "parse_overrides",
    "read_yaml",
    "save_config",
    "to_dict",
]
