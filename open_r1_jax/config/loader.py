"""Building the config tree: defaults <- YAML <- dotted ``key.sub=value`` overrides, every value
checked against its field's annotation; back to dicts and YAML; dotted copies (``replace``)."""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import yaml

from open_r1_jax.config.model import ModelConfig
from open_r1_jax.config.run import Config, LoRAConfig


class ConfigError(ValueError):
    """A configuration mistake; the message names the key and what would be accepted."""


def _type_name(tp: Any) -> str:
    if get_origin(tp) is Literal:
        return " | ".join(repr(a) for a in get_args(tp))
    if get_origin(tp) is tuple:
        return f"list of {_type_name(get_args(tp)[0])}"
    return getattr(tp, "__name__", str(tp))


def _coerce(key: str, value: Any, tp: Any) -> Any:
    """Check ``value`` against the annotation ``tp``; return it in canonical form."""
    origin = get_origin(tp)
    if origin is Literal:
        if value not in get_args(tp):
            raise ConfigError(f"{key}: got {value!r}; accepted: {_type_name(tp)}")
        return value
    if origin is tuple:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            value = [value]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: got {value!r}; accepted: {_type_name(tp)}")
        return tuple(_coerce(f"{key}[{i}]", v, get_args(tp)[0]) for i, v in enumerate(value))
    if origin in (typing.Union, types.UnionType):
        raise NotImplementedError(f"{key}: union types are not used in the config")
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: got {value!r}; accepted: true or false")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"{key}: got {value!r}; accepted: an integer")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads "1e-3" (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{key}: got {value!r}; accepted: a number")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{key}: got {value!r}; accepted: a string")
    raise NotImplementedError(f"{key}: unsupported annotation {tp}")


def _build(cls: type, data: dict[str, Any] | None, prefix: str = "") -> Any:
    data = dict(data or {})
    hints = typing.get_type_hints(cls)
    kwargs = {}
    names = {f.name for f in dataclasses.fields(cls)}
    for key in data:
        if key not in names:
            where = f"{prefix}{key}"
            raise ConfigError(f"unknown key '{where}'; accepted keys here: {', '.join(sorted(names))}")
    for f in dataclasses.fields(cls):
        if f.name not in data:
            continue
        key, value, tp = f"{prefix}{f.name}", data[f.name], hints[f.name]
        if dataclasses.is_dataclass(tp):
            if not isinstance(value, dict):
                raise ConfigError(f"{key}: expected a mapping of sub-keys, got {value!r}")
            kwargs[f.name] = _build(tp, value, prefix=f"{key}.")
        else:
            kwargs[f.name] = _coerce(key, value, tp)
    return cls(**kwargs)


def _set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = tree
    for p in parts[:-1]:
        child = node.setdefault(p, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override '{dotted}': '{p}' is not a section")
        node = child
    node[parts[-1]] = value


def parse_overrides(overrides: list[str]) -> dict[str, Any]:
    """``["train.steps=10", "model.moe.router=sigmoid"]`` -> nested dict (values parsed as YAML)."""
    tree: dict[str, Any] = {}
    for item in overrides:
        if "=" not in item or item.startswith("="):
            raise ConfigError(f"override '{item}': expected key.sub=value")
        key, raw = item.split("=", 1)
        _set_dotted(tree, key.strip(), yaml.safe_load(raw) if raw != "" else "")
    return tree


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in extra.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Defaults <- YAML file <- dotted overrides, then validation."""
    data: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        try:
            loaded = yaml.safe_load(path.read_text())
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: not valid YAML: {e}") from e
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"{path}: expected a mapping at the top level")
        data = loaded or {}
    data = _merge(data, parse_overrides(overrides or []))
    cfg = _build(Config, data)
    _checks.validate(cfg)
    return cfg


def build_section(cls: type, overrides: list[str]) -> Any:
    """A dataclass tree of another command (e.g. the evaluator's) from its dotted overrides, with the
    same checks and messages as the training config."""
    return _build(cls, parse_overrides(overrides))


def from_dict(data: dict[str, Any]) -> Config:
    cfg = _build(Config, data)
    _checks.validate(cfg)
    return cfg


def to_dict(cfg: Any) -> dict[str, Any]:
    """Plain nested dict (tuples as lists) for YAML/JSON."""

    def conv(v: Any) -> Any:
        if dataclasses.is_dataclass(v):
            return {f.name: conv(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, tuple):
            return [conv(x) for x in v]
        return v

    return conv(cfg)


def dump_yaml(cfg: Config, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))


def replace(cfg: Any, **changes: Any) -> Any:
    """``replace(cfg, **{"train.steps": 5})``: a copy with dotted keys changed, re-validated."""
    data = to_dict(cfg)
    for k, v in changes.items():
        _set_dotted(data, k, v)
    return from_dict(data)


def lora_from_dict(section: dict[str, Any]) -> LoRAConfig:
    """A ``LoRAConfig`` from the lora section of a saved config."""
    return _build(LoRAConfig, section, prefix="lora.")


def model_from_dict(section: dict[str, Any]) -> ModelConfig:
    """A ``ModelConfig`` from a model section alone (a checkpoint's or an export's), validated alone."""
    cfg = _build(ModelConfig, section, prefix="model.")
    _checks.validate_model(cfg)
    return cfg


# The checks (checks.py) raise ConfigError: imported here, below its definition, so that either module
# can be imported first.
from open_r1_jax.config import checks as _checks  # noqa: E402
