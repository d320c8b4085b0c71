"""Build click options from a config dataclass, so every command shows defaults and help
and accepts ``--config FILE.json`` plus ``--dry-run`` without hand-written option lists.

``ConfigCommand`` builds those options only when its command is used: the config classes live
in modules that import torch, and ``flipnet --help`` or ``flipnet restore --help`` should not.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import typing
from pathlib import Path

import click

_SCALARS = {int: click.INT, float: click.FLOAT, str: click.STRING, bool: bool, Path: click.Path()}


def _click_type(tp):
    origin = typing.get_origin(tp)
    if tp in _SCALARS:
        return _SCALARS[tp], False
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return _click_type(args[0])
    if origin is typing.Literal:
        return click.Choice([str(a) for a in typing.get_args(tp)]), False
    if origin is tuple:
        args = typing.get_args(tp)
        if args and all(a in (int, float) for a in args if a is not Ellipsis):
            return click.STRING, True  # comma-separated on the command line
    return None, False


def config_options(cls, *, exclude: tuple[str, ...] = ()):
    """Decorator adding one ``--field-name`` option per simple field of dataclass ``cls``."""
    hints = typing.get_type_hints(cls)

    def decorate(fn):
        for f in reversed(dataclasses.fields(cls)):
            if f.name in exclude:
                continue
            ctype, is_tuple = _click_type(hints[f.name])
            if ctype is None:
                continue
            default = f.default if f.default is not dataclasses.MISSING else None
            if is_tuple and default is not None:
                default = ",".join(str(v) for v in default)
            name = "--" + f.name.replace("_", "-")
            help_text = f.metadata.get("help", "")
            if ctype is bool:
                fn = click.option(f"{name}/--no-{name[2:]}", f.name, default=None,
                                  help=f"{help_text} [default: {default}]")(fn)
            else:
                fn = click.option(name, f.name, type=ctype, default=None,
                                  help=f"{help_text} [default: {default}]")(fn)
        fn = click.option("--config", "config_file", type=click.Path(dir_okay=False),
                          help="JSON config to start from (command-line options override it).")(fn)
        fn = click.option("--dry-run", is_flag=True,
                          help="Print the resolved config as JSON and exit.")(fn)
        return fn

    return decorate


class ConfigCommand(click.Command):
    """A command whose ``config_options`` are built on first use from ``config="module:Class"``.

    Listing the command (``flipnet --help``) reads only its name and docstring, so the module
    holding the config class (and torch behind it) is imported only when the command itself
    is parsed or asked for its help.
    """

    def __init__(self, *args, config: str, **kwargs):
        self._config_spec = config
        self._own_params: list[click.Parameter] = []
        super().__init__(*args, **kwargs)

    @property
    def params(self) -> list[click.Parameter]:
        """The declared options followed by the config's (built once)."""
        if self._config_spec is not None:
            module, name = self._config_spec.split(":")
            cls = getattr(importlib.import_module(module), name)
            self._config_spec = None

            def holder():
                pass

            config_options(cls)(holder)
            self._own_params += list(reversed(holder.__click_params__))
        return self._own_params

    @params.setter
    def params(self, value: list[click.Parameter]) -> None:
        self._own_params = list(value)


def resolve_config(cls, kwargs: dict, **fixed):
    """Merge defaults < ``--config`` file < given options < ``fixed``; pops the option keys."""
    from flipnet.config import config_from_dict, config_to_dict, load_config

    config_file = kwargs.pop("config_file", None)
    kwargs.pop("dry_run", None)
    base = load_config(cls, config_file) if config_file else cls(**{
        k: v for k, v in fixed.items() if k in {f.name for f in dataclasses.fields(cls)}})
    data = config_to_dict(base)
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        value = kwargs.pop(f.name, None)
        if value is None:
            continue
        if typing.get_origin(hints[f.name]) is tuple or _click_type(hints[f.name])[1]:
            try:
                value = [float(v) if "." in v else int(v) for v in str(value).split(",") if v]
            except ValueError:
                raise click.BadParameter(f"{value!r} is not a comma-separated list of numbers",
                                         param_hint="--" + f.name.replace("_", "-")) from None
        data[f.name] = value
    data.update({k: v for k, v in fixed.items() if k in data})
    return config_from_dict(cls, data, "command-line options")


def print_config(cfg) -> None:
    """Print a resolved config (for ``--dry-run``)."""
    from flipnet.config import config_to_dict

    click.echo(json.dumps({"_class": type(cfg).__name__, **config_to_dict(cfg)}, indent=2))
