"""Plain frozen dataclass configs, read and written as JSON beside the weights.

A config knows how to rebuild its component; ``save_config``/``load_config`` round-trip any
(nested) dataclass of numbers, strings, bools, lists/tuples and dicts. No pickles, no exec.
"""

from __future__ import annotations

import dataclasses
import json
import os
import typing
from pathlib import Path

from flipnet.errors import ConfigError
from flipnet.io import write_bytes_atomic


def config_to_dict(cfg) -> dict:
    """A dataclass (possibly nested) as a JSON-ready dict."""
    if not dataclasses.is_dataclass(cfg):
        raise ConfigError(f"not a dataclass config: {type(cfg).__name__}")
    return json.loads(json.dumps(dataclasses.asdict(cfg)))


def _build(tp, value, where: str):
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        return config_from_dict(tp, value, where)
    if origin is tuple and isinstance(value, list):
        args = typing.get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_build(args[0], v, where) for v in value)
        return tuple(value)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        for a in typing.get_args(tp):
            if dataclasses.is_dataclass(a) and isinstance(value, dict):
                return config_from_dict(a, value, where)
            if typing.get_origin(a) is tuple and isinstance(value, list):
                return tuple(value)
    return value


def config_from_dict(cls, data: dict, where: str = "config"):
    """Rebuild dataclass ``cls`` from a dict; unknown keys are an error that names them."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a JSON object for {cls.__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"{where}: unknown keys for {cls.__name__}: {', '.join(unknown)}")
    kwargs = {k: _build(hints.get(k), v, where) for k, v in data.items()}
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{where}: invalid {cls.__name__}: {e}") from None


def save_config(cfg, path: str | os.PathLike) -> Path:
    """Write a dataclass config as indented JSON (atomically), with its class name."""
    payload = {"_class": type(cfg).__name__, **config_to_dict(cfg)}
    return write_bytes_atomic(path, (json.dumps(payload, indent=2) + "\n").encode())


def load_config(cls, path: str | os.PathLike):
    """Read a JSON config written by ``save_config`` into dataclass ``cls``."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a JSON object")
    name = data.pop("_class", cls.__name__)
    if name != cls.__name__:
        raise ConfigError(f"{path}: holds a {name} config, expected {cls.__name__}")
    return config_from_dict(cls, data, str(path))
