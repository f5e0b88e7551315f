"""Plain values <-> the config's typed fields: what YAML files and `--set` overrides are checked against.

Conversion is only where it is lossless and obvious (an integral float to int, "1e-3" to a float, a list to a
pair); anything else raises ConfigError naming the key, and an unknown key gets a "did you mean" from the known
ones.
"""

from __future__ import annotations

import difflib
import re
import types
import typing
from dataclasses import fields, is_dataclass
from typing import Any

__all__ = ["ConfigError", "coerce", "from_plain", "to_plain", "unknown_key_message"]


class ConfigError(ValueError):
    """A config value or key that cannot be used; the message names the key and what was expected."""


def to_plain(obj: Any) -> Any:
    if is_dataclass(obj):
        return {f.name: to_plain(getattr(obj, f.name)) for f in fields(obj)}
    if isinstance(obj, tuple):
        return [to_plain(v) for v in obj]
    return obj


def from_plain(cls: type, data: Any, prefix: str) -> Any:
    where = prefix.rstrip(".") or "the config"
    if not isinstance(data, dict):
        raise ConfigError(f"{where} must be a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in fields(cls)]
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        path = f"{prefix}{key}"
        if key not in names:
            raise ConfigError(unknown_key_message(path, str(key), names))
        hint = hints[key]
        if is_dataclass(hint):
            kwargs[key] = from_plain(hint, value if value is not None else {}, f"{path}.")
        else:
            kwargs[key] = coerce(value, hint, path)
    return cls(**kwargs)


_FLOAT_RE = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")


def coerce(value: Any, hint: Any, path: str) -> Any:
    """Check `value` against a field's annotation, converting only where it is lossless and obvious."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(hint)
        if value is None:
            if type(None) in args:
                return None
            raise ConfigError(f"{path} cannot be null")
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return coerce(value, arg, path)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0])
    if origin is tuple:
        args = typing.get_args(hint)
        if not isinstance(value, list | tuple) or len(value) != len(args):
            raise ConfigError(f"{path} expects a list of {len(args)} values, got {value!r}")
        return tuple(coerce(v, a, f"{path}[{i}]") for i, (v, a) in enumerate(zip(value, args, strict=True)))
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{path} expects true or false, got {value!r}")
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"{path} expects an integer, got {value!r}")
    if hint is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        # YAML 1.1 reads "1e-3" (no dot) as a string; accept any plain decimal number written that way.
        if isinstance(value, str) and _FLOAT_RE.match(value.strip()):
            return float(value)
        raise ConfigError(f"{path} expects a number, got {value!r}")
    if hint is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{path} expects a string, got {value!r}")
    raise ConfigError(f"{path}: unsupported field type {hint!r}")  # a programming error in this module


def unknown_key_message(path: str, key: str, names: list[str]) -> str:
    close = difflib.get_close_matches(key, names, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return f"unknown config key {path!r}{hint} (known here: {', '.join(names)})"
