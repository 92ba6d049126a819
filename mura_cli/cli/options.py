"""Command-line options built from the run configs' own declarations (mura_cli.config.option): the
default, help text, choices and range are written once, in the dataclass, and read here."""

from __future__ import annotations

import dataclasses
from enum import Enum
from pathlib import Path
from typing import Any

import typer


def _spec(config_cls, name: str) -> dataclasses.Field:
    for spec in dataclasses.fields(config_cls):
        if spec.name == name:
            return spec
    raise KeyError(f"{config_cls.__name__} has no option {name!r}")


def opt(config_cls, name: str, *flags: str, **overrides) -> Any:
    """The Typer option for ``config_cls.name``: its declared default, help, range and names; a
    choice's default becomes its Enum member (Typer then lists and checks the choices)."""
    spec = _spec(config_cls, name)
    meta = spec.metadata
    default = overrides.pop("default", spec.default)
    if isinstance(default, tuple):  # a repeatable option
        default = [meta["choice"](v) for v in default] if meta.get("choice") else list(default)
    elif meta.get("choice") is not None and default is not None:
        default = meta["choice"](default)
    names = flags or meta.get("flags") or ()
    if spec.type in ("bool", "bool | None") and not names:
        dashed = name.replace("_", "-")
        names = (f"--{dashed}/--no-{dashed}",)
    settings = {"help": meta.get("help") or None}
    if meta.get("choice") is None and not spec.type.startswith("bool"):
        # as argparse names a value (--batch-size BATCH_SIZE); a folder is a FOLDER
        settings["metavar"] = "FOLDER" if name.endswith("_dir") else name.upper()
    if meta.get("min") is not None:
        settings["min"] = meta["min"]
    if meta.get("max") is not None:
        settings["max"] = meta["max"]
    if default is None:
        settings["show_default"] = False
    settings.update(overrides)
    return typer.Option(default, *names, **settings)


def plain(value):
    """A parsed option as the config stores it: Enum -> its string, list -> tuple, Path -> str."""
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, list):
        return tuple(plain(v) for v in value)
    if isinstance(value, Path):
        return str(value)
    return value


def build(config_cls, parsed: dict, **given):
    """``config_cls`` from a command's parsed options (those it declares) and ``given`` values;
    an invalid value is a usage error (exit code 2) naming the problem."""
    names = {spec.name for spec in dataclasses.fields(config_cls)}
    values = {key: plain(value) for key, value in parsed.items() if key in names}
    values.update({key: plain(value) for key, value in given.items()})
    try:
        return config_cls(**values)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
