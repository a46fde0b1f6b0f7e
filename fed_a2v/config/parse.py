"""JSON to the typed config: walk the schema's dataclasses, check each key's type and rule,
and name the file and key path on failure."""

from __future__ import annotations

import dataclasses
import json
import math
import re
import types
import typing
from pathlib import Path
from typing import Any

from fed_a2v.config.field_rules import ConfigError, suggest
from fed_a2v.config.schema import NodeConfig


def _describe(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in typing.get_args(tp))
    if origin is list:
        return f"a list of {_describe(typing.get_args(tp)[0])}"
    return {int: "an integer", float: "a number", bool: "true/false", str: "a string",
            type(None): "null"}.get(tp, getattr(tp, "__name__", str(tp)))


def _matches(value: Any, tp: Any) -> tuple[bool, Any]:
    """Whether `value` has type `tp`; returns the value coerced (int -> float) when it does."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(tp):
            ok, coerced = _matches(value, arg)
            if ok:
                return True, coerced
        return False, value
    if origin is list:
        if not isinstance(value, list):
            return False, value
        (item_tp,) = typing.get_args(tp)
        out = []
        for item in value:
            ok, coerced = _matches(item, item_tp)
            if not ok:
                return False, value
            out.append(coerced)
        return True, out
    if tp is type(None):
        return value is None, value
    if tp is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        return ok, float(value) if ok else value
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool), value
    return isinstance(value, tp), value


def _check_rule(value: Any, rule: dict[str, Any], where: str) -> None:
    if value is None:
        return
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{where}: {value} is not a finite number")
    if "pattern" in rule and not re.fullmatch(rule["pattern"], str(value)):
        raise ConfigError(f"{where}: {json.dumps(value)} is not allowed; use one of "
                          f"{rule['shown']}")
    if "items" in rule:  # a list whose every item is one of these
        for item in value:
            _check_rule(item, {"choices": rule["items"]}, where)
    if "choices" in rule and value not in rule["choices"]:
        allowed = ", ".join(json.dumps(c) for c in rule["choices"])
        hint = suggest(str(value), [str(c) for c in rule["choices"]])
        raise ConfigError(
            f"{where}: {json.dumps(value)} is not allowed; use one of {allowed}{hint}")
    if "min" in rule and value < rule["min"]:
        raise ConfigError(f"{where}: {value} is below the minimum {rule['min']}")
    if "max" in rule and value > rule["max"]:
        raise ConfigError(f"{where}: {value} is above the maximum {rule['max']}")
    if "min_exclusive" in rule and value <= rule["min_exclusive"]:
        raise ConfigError(f"{where}: {value} must be greater than {rule['min_exclusive']}")


def build(cls: type, data: Any, path: str, source: str) -> Any:
    """Build dataclass `cls` from a JSON object, rejecting unknown keys and bad values."""
    where = f"{source}: '{path}'" if path else source
    if not isinstance(data, dict):
        raise ConfigError(f"{where} must be a JSON object, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        key_path = f"{path}.{key}" if path else key
        if key not in fields:
            allowed = ", ".join(fields)
            raise ConfigError(
                f"{source}: unknown key '{key_path}'{suggest(key, list(fields))}; "
                f"allowed keys here: {allowed}"
            )
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            kwargs[key] = build(tp, value, key_path, source)
            continue
        if typing.get_origin(tp) is dict:
            value_tp = typing.get_args(tp)[1]
            kwargs[key] = (_build_nodes(value, key_path, source) if value_tp is NodeConfig
                           else _build_map(value, value_tp, key_path, source))
            continue
        ok, coerced = _matches(value, tp)
        if not ok:
            raise ConfigError(
                f"{source}: '{key_path}' must be {_describe(tp)}, got {json.dumps(value)}"
            )
        _check_rule(coerced, fields[key].metadata.get("rule", {}), f"{source}: '{key_path}'")
        kwargs[key] = coerced
    return cls(**kwargs)


def _build_map(data: Any, value_tp: type, path: str, source: str) -> dict[str, Any]:
    # values as given: `float | int` options keep their ints (_matches would make them floats)
    if not isinstance(data, dict) or not all(_matches(v, value_tp)[0] for v in data.values()):
        raise ConfigError(f"{source}: '{path}' must be a JSON object of {_describe(value_tp)} "
                          "values")
    return dict(data)


def _build_nodes(data: Any, path: str, source: str) -> dict[str, NodeConfig]:
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: '{path}' must be a JSON object keyed by node id")
    nodes = {}
    for node_id, entry in data.items():
        if not re.fullmatch(r"[0-9]+", str(node_id)):
            raise ConfigError(
                f"{source}: '{path}.{node_id}': node ids are partition numbers such as \"0\""
            )
        nodes[str(int(node_id))] = build(NodeConfig, entry, f"{path}.{node_id}", source)
    return nodes


def read_json(path: Path) -> Any:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as err:
        raise ConfigError(f"{path}: cannot read config file: {err.strerror or err}") from err
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise ConfigError(
            f"{path}: line {err.lineno}, column {err.colno}: malformed JSON: {err.msg}"
        ) from err
