"""One definition of every command's options: dataclasses whose fields carry their help text.

The CLI is generated from these dataclasses and the Python API takes the same names, so the two cannot drift
apart. Values come from three layers, later ones winning: the dataclass defaults, a ``--config`` YAML file, and
the command line. ``explicit`` remembers which names the user set, so method-aware defaults fill only the rest.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from pathlib import Path
from typing import Any

from tunelab import run_files
from tunelab.errors import TunelabError

_MISSING = dataclasses.MISSING


def option(default: Any = _MISSING, help: str = "", *, choices: typing.Sequence[str] | None = None,
           aliases: typing.Sequence[str] = (), metavar: str | None = None, group: str = "options",
           positional: bool = False, negation: str | None = None) -> Any:
    """A dataclass field with the metadata the CLI generator needs. Mutable defaults are copied per instance.
    ``negation``: for a bool field, the name of a second flag that sets it to False (``--no_bf16``)."""
    metadata = {"help": help, "choices": tuple(choices) if choices else None, "aliases": tuple(aliases),
                "metavar": metavar, "group": group, "positional": positional, "negation": negation}
    if isinstance(default, (list, dict)):
        value = default
        return dataclasses.field(default_factory=lambda: type(value)(value), metadata=metadata)
    if default is _MISSING:
        return dataclasses.field(metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def _base_type(tp: Any) -> tuple[Any, bool]:
    """(element type, is_list) for int | None, list[str] | None, and friends."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return _base_type(args[0])
    if origin is list:
        return typing.get_args(tp)[0], True
    return tp, False


def _parse_bool(text: str) -> bool:
    low = str(text).strip().lower()
    if low in ("1", "true", "yes", "y", "on"):
        return True
    if low in ("0", "false", "no", "n", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def _split_list(values: list[str]) -> list[str]:
    """Accept both ``--x a b`` and ``--x a,b``."""
    out: list[str] = []
    for v in values:
        out.extend(p.strip() for p in str(v).split(",") if p.strip())
    return out


def fields_of(cls: type) -> list[dataclasses.Field]:
    hints = typing.get_type_hints(cls)
    result = []
    for f in dataclasses.fields(cls):
        f.type = hints[f.name]
        result.append(f)
    return result


def add_dataclass_arguments(parser: argparse.ArgumentParser, cls: type) -> None:
    """Add one flag per field. Defaults are suppressed so that only flags the user gave reach the namespace."""
    groups: dict[str, argparse._ArgumentGroup] = {}
    for f in fields_of(cls):
        meta = f.metadata
        if meta.get("hidden"):
            continue
        elem, is_list = _base_type(f.type)
        default = f.default if f.default is not _MISSING else (
            f.default_factory() if f.default_factory is not _MISSING else None)
        help_text = meta.get("help", "")
        if callable(help_text):  # computed now: e.g. the options of methods registered after tunelab was imported
            help_text = help_text()
        if default not in (None, [], "") and "default:" not in help_text:
            help_text = f"{help_text} (default: {default})"
        group = groups.setdefault(meta.get("group", "options"), parser.add_argument_group(meta.get("group")))
        kwargs: dict[str, Any] = {"help": help_text, "default": argparse.SUPPRESS, "dest": f.name}
        if meta.get("choices"):
            kwargs["choices"] = meta["choices"]
        if meta.get("metavar"):
            kwargs["metavar"] = meta["metavar"]
        if meta.get("positional"):
            # also a flag (--run_dir, and its aliases such as --adapter, as the other commands take a run): then
            # the positional may be left out, and a missing value is reported by build() as for any option
            flags = [f"--{f.name}", *meta.get("aliases", ())]
            kwargs.pop("dest")
            group.add_argument(f.name, nargs="?", **kwargs)
            group.add_argument(*flags, dest=f.name, default=argparse.SUPPRESS, help=f"same as {f.name.upper()}")
            continue
        names = [f"--{f.name}", *meta.get("aliases", ())]
        if elem is bool:
            group.add_argument(*names, nargs="?", const=True, type=_parse_bool, **kwargs)
            if meta.get("negation"):
                group.add_argument(f"--{meta['negation']}", dest=f.name, action="store_const", const=False,
                                   default=argparse.SUPPRESS, help=f"same as --{f.name} false")
        elif is_list:
            group.add_argument(*names, nargs="+", type=str, **kwargs)
        else:
            group.add_argument(*names, type=elem if elem in (int, float) else str, **kwargs)


def load_yaml_config(path: str | Path, cls: type) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise TunelabError(f"--config {path}: file not found; pass the path of a YAML file of options")
    data = run_files.read_yaml_mapping(path, label=f"--config {path}", fix="write one option name: value per line")
    # keys a run saves beside its options (tunelab_config.yaml: the precision and why), so a saved file is a config
    data = {k: v for k, v in data.items() if k not in getattr(cls, "SAVED_RECORD_KEYS", ())}
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise TunelabError(f"--config {path}: unknown option(s) {', '.join(unknown)}; see --help for the names")
    return data


def coerce(cls: type, values: dict[str, Any], *, source: str) -> dict[str, Any]:
    """Check and convert values (from YAML or the API) to the field types; errors name the option and the source."""
    by_name = {f.name: f for f in fields_of(cls)}
    out: dict[str, Any] = {}
    for name, value in values.items():
        if name not in by_name:
            raise TunelabError(f"{source}: unknown option {name!r}; see --help for the names")
        f = by_name[name]
        elem, is_list = _base_type(f.type)
        if value is None:
            out[name] = None
            continue
        try:
            if is_list:
                if isinstance(value, dict):  # --method_options as a mapping (YAML, the Python API)
                    value = [f"{k}={v}" for k, v in value.items()]
                items = value if isinstance(value, (list, tuple)) else [value]
                out[name] = [elem(v) for v in _split_list([str(v) for v in items])] if elem is not str \
                    else _split_list([str(v) for v in items])
            elif elem is bool:
                out[name] = value if isinstance(value, bool) else _parse_bool(value)
            elif elem in (int, float):
                if isinstance(value, bool):
                    raise ValueError
                out[name] = elem(value)
                if elem is int and isinstance(value, float) and value != int(value):
                    raise ValueError
            else:
                out[name] = value if isinstance(value, (str, dict)) else str(value)
        except (ValueError, TypeError, argparse.ArgumentTypeError):
            raise TunelabError(f"{source}: option {name} expects {getattr(elem, '__name__', elem)}"
                               f"{' list' if is_list else ''}, got {value!r}")
        choices = f.metadata.get("choices")
        if choices and out[name] is not None:
            for v in (out[name] if is_list else [out[name]]):
                if v not in choices:
                    raise TunelabError(f"{source}: option {name}={v!r} is not one of {', '.join(choices)}")
    return out


def build(cls: type, *layers: tuple[dict[str, Any], str]) -> tuple[Any, set[str]]:
    """Merge value layers (later wins) over the dataclass defaults; return (instance, names set explicitly)."""
    merged: dict[str, Any] = {}
    explicit: set[str] = set()
    for values, source in layers:
        clean = coerce(cls, values, source=source)
        merged.update(clean)
        explicit.update(clean)
    missing = [f.name for f in dataclasses.fields(cls)
               if f.default is _MISSING and f.default_factory is _MISSING and f.name not in merged]
    if missing:
        raise TunelabError(f"missing required option(s): {', '.join('--' + m for m in missing)}")
    return cls(**merged), explicit


def from_namespace(ns: argparse.Namespace, cls: type) -> dict[str, Any]:
    names = {f.name for f in dataclasses.fields(cls)}
    values = {k: v for k, v in vars(ns).items() if k in names}
    for f in fields_of(cls):
        if f.name in values and _base_type(f.type)[1]:
            values[f.name] = _split_list(values[f.name])
    return values


def to_dict(obj: Any) -> dict[str, Any]:
    return {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}


class Parser(argparse.ArgumentParser):
    """argparse that raises instead of exiting, so every user error takes the same one-line path."""

    def error(self, message: str):
        raise TunelabError(f"{self.prog}: {message} (see {self.prog} --help)")


def command_parser(prog: str, description: str) -> Parser:
    return Parser(prog=prog, description=description, formatter_class=argparse.RawDescriptionHelpFormatter)


def parse_options(cls: type, argv: list[str], prog: str, description: str) -> tuple[Any, set[str]]:
    """Flags -> (options instance, names set explicitly), with --config YAML beneath the flags."""
    parser = command_parser(prog, description)
    add_dataclass_arguments(parser, cls)
    ns = parser.parse_args(argv)
    flags = from_namespace(ns, cls)
    layers = []
    if flags.get("config"):
        layers.append((load_yaml_config(flags["config"], cls), f"--config {flags['config']}"))
    layers.append((flags, "command line"))
    return build(cls, *layers)
