"""Plain frozen dataclass configs, read and written as JSON beside the weights.

A config knows how to rebuild its component; ``save_config``/``load_config`` round-trip any
(nested) dataclass of numbers, strings, bools, lists/tuples and dicts. No pickles, no exec.
Every value read back is checked against the field's type hint (``bool`` is not an ``int``; an
``int`` is accepted where a ``float`` is expected), so a bad file ends in a ``ConfigError`` that
names the key and the expected type instead of a ``TypeError`` deep inside a model.
"""

from __future__ import annotations

import dataclasses
import json
import os
import types
import typing
from pathlib import Path

from flipnet.errors import ConfigError
from flipnet.io import write_bytes_atomic

_UNION_TYPES = (typing.Union, types.UnionType)


def config_to_dict(cfg) -> dict:
    """A dataclass (possibly nested) as a JSON-ready dict."""
    if not dataclasses.is_dataclass(cfg):
        raise ConfigError(f"not a dataclass config: {type(cfg).__name__}")
    return json.loads(json.dumps(dataclasses.asdict(cfg)))


class _Mismatch(Exception):
    """A value does not fit a type hint (turned into a ConfigError by ``config_from_dict``)."""


def _type_name(tp) -> str:
    """A short readable name of a type hint: ``int``, ``tuple of float``, ``int or null``."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is type(None):
        return "null"
    if origin in _UNION_TYPES:
        return " or ".join(_type_name(a) for a in args)
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return f"a list of {_type_name(args[0])}"
        return f"a list of {len(args)} ({', '.join(_type_name(a) for a in args)})"
    if origin is typing.Literal:
        return "one of " + ", ".join(json.dumps(a) for a in args)
    if origin is not None:
        return getattr(origin, "__name__", str(origin))
    if dataclasses.is_dataclass(tp):
        return f"a {tp.__name__} object"
    return getattr(tp, "__name__", str(tp))


def _shown(value) -> str:
    """A value as the user wrote it, shortened."""
    try:
        text = json.dumps(value)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _build(tp, value, where: str):
    """``value`` converted to type hint ``tp`` (lists -> tuples, dicts -> dataclasses)."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is None or tp is typing.Any or tp is object:
        return value
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise _Mismatch
        return config_from_dict(tp, value, where)
    if tp is type(None):
        if value is not None:
            raise _Mismatch
        return None
    if origin in _UNION_TYPES:
        for a in args:
            try:
                return _build(a, value, where)
            except _Mismatch:
                continue
        raise _Mismatch
    if origin is typing.Literal:
        if value not in args or isinstance(value, bool) != any(isinstance(a, bool) for a in args):
            raise _Mismatch
        return value
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise _Mismatch
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_build(args[0], v, where) for v in value)
        if not args:
            return tuple(value)
        if len(value) != len(args):
            raise _Mismatch
        return tuple(_build(a, v, where) for a, v in zip(args, value))
    if origin in (list, dict):
        if not isinstance(value, origin):
            raise _Mismatch
        return value
    return _build_scalar(tp, value)


def _build_scalar(tp, value):
    """Check a plain (non-generic) type: bool is not int, int is fine for float."""
    if tp is bool:
        ok = isinstance(value, bool)
    elif tp is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif tp is float:
        # an int stays an int (a valid float, PEP 484), so save -> load -> save is byte-identical
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    elif tp is str:
        ok = isinstance(value, str)
    elif tp is Path:
        ok = isinstance(value, (str, os.PathLike))  # kept as given: JSON holds strings
    elif isinstance(tp, type) and tp in (dict, list):
        ok = isinstance(value, tp)
    else:
        return value  # a type JSON cannot hold: leave it to the dataclass
    if not ok:
        raise _Mismatch
    return value


def config_from_dict(cls, data: dict, where: str = "config"):
    """Rebuild dataclass ``cls`` from a dict, checking every value against its type hint;
    unknown keys or a value of the wrong type are a ``ConfigError`` naming the key."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a JSON object for {cls.__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(str(k) for k in set(data) - names)
    if unknown:
        raise ConfigError(f"{where}: unknown keys for {cls.__name__}: {', '.join(unknown)}")
    kwargs = {}
    for key, value in data.items():
        try:
            kwargs[key] = _build(hints.get(key), value, where)
        except _Mismatch:
            raise ConfigError(f"{where}: {cls.__name__}.{key} must be "
                              f"{_type_name(hints.get(key))}, got {_shown(value)}") from None
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{where}: invalid {cls.__name__}: {e}") from None


def save_config(cfg, path: str | os.PathLike) -> Path:
    """Write a dataclass config as indented JSON (atomically), with its class name."""
    payload = {"_class": type(cfg).__name__, **config_to_dict(cfg)}
    return write_bytes_atomic(path, (json.dumps(payload, indent=2) + "\n").encode())


def folder_config_class(folder: str | os.PathLike) -> str | None:
    """The ``_class`` that ``folder/config.json`` names (which kind of weights folder it is);
    None when the file is absent or unreadable."""
    try:
        data = json.loads((Path(folder) / "config.json").read_text())
    except (OSError, ValueError):
        return None
    return data.get("_class") if isinstance(data, dict) else None


def load_config(cls, path: str | os.PathLike):
    """Read a JSON config written by ``save_config`` into dataclass ``cls``."""
    try:
        path = Path(path)
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: is a folder, not a JSON config file") from None
    except (OSError, ValueError) as e:  # ValueError: a NUL byte in the path
        raise ConfigError(f"{path!s:.200}: cannot read config file "
                          f"({getattr(e, 'strerror', None) or e})") from None
    try:
        data = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as e:
        raise ConfigError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a JSON object")
    name = data.pop("_class", cls.__name__)
    if name != cls.__name__:
        raise ConfigError(f"{path}: holds a {name} config, expected {cls.__name__}")
    return config_from_dict(cls, data, str(path))
