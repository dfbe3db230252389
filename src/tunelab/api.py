"""The Python API: one function per command, taking the same options under the same names as the CLI flags.

The options dataclasses in ``tunelab.config`` drive both the CLI and these functions, and each function's
docstring lists them (generated from the same field help), so the two cannot drift apart. Errors raise
``tunelab.TunelabError`` with the message the CLI prints; nothing here calls ``sys.exit``.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from tunelab import options as _options
from tunelab.config import CompareOptions, EvalOptions, TrainOptions
from tunelab.errors import TunelabError


def _build(cls, where: str, values: dict[str, Any]):
    """Options from keywords (None means 'not given'), with the same checks and conversions as the CLI."""
    given = {k: v for k, v in values.items() if v is not None}
    return _options.build(cls, (given, where))


def _help(text) -> str:
    return text() if callable(text) else text


def _doc(summary: str, cls, *, returns: str, aliases: dict[str, str] | None = None, skip=()) -> str:
    lines = [summary, "", "Parameters", "----------"]
    for short, long in (aliases or {}).items():
        lines.append(f"{short} : str\n    Short name for ``{long}``.")
    for f in _options.fields_of(cls):
        if f.name in skip:
            continue
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else "required")
        lines.append(f"{f.name} : {getattr(f.type, '__name__', str(f.type))}, default {default!r}\n"
                     f"    {_help(f.metadata.get('help', ''))}")
    lines += ["", "Returns", "-------", returns, "", "Raises", "------",
              "TunelabError\n    For bad input, with the same one-line message the CLI prints."]
    return "\n".join(lines)


def _given(options: dict[str, Any], **shorthands: Any) -> dict[str, Any]:
    """The options with the shorthand arguments that were given (``model=`` is ``model_name_or_path``...)."""
    return {**options, **{name: value for name, value in shorthands.items() if value is not None}}


# --- train ---------------------------------------------------------------------------------------------------

def train(model: str | None = None, dataset: str | None = None, **options: Any):
    from tunelab.training import train as _train

    values = _given(options, model_name_or_path=model, dataset_name_or_path=dataset)
    opts, explicit = _build(TrainOptions, "tunelab.train()", values)
    return _train(opts, explicit)


train.__doc__ = _doc("Fine-tune a model fully or with a PEFT method (``tunelab train``).", TrainOptions,
                     returns="TrainResult\n    ``output_dir``, ``record`` (train_results.json as a "
                             "``tunelab.records.TrainRecord``), ``results`` (the same as a dict), "
                             "``results_path``, and the trained ``model`` and ``tokenizer`` in memory.",
                     aliases={"model": "model_name_or_path", "dataset": "dataset_name_or_path"}, skip={"config"})


# --- evaluate ------------------------------------------------------------------------------------------------

def evaluate(model: str | None = None, dataset: str | None = None, **options: Any):
    from tunelab.evaluation.run import evaluate as _evaluate

    values = _given(options, model_name_or_path=model, dataset_name_or_path=dataset)
    opts, _ = _build(EvalOptions, "tunelab.evaluate()", values)
    return _evaluate(opts)


evaluate.__doc__ = _doc("Task metrics and knowledge retention (``tunelab eval``).", EvalOptions,
                        returns="EvalResult\n    ``output_dir``, ``record`` (eval_results.json as a "
                                "``tunelab.records.EvalRecord``), ``results`` (the same as a dict), "
                                "``results_path``.",
                        aliases={"model": "model_name_or_path", "dataset": "dataset_name_or_path"},
                        skip={"config"})


# --- compare -------------------------------------------------------------------------------------------------

class Comparison:
    """A finished (or partly finished) comparison: its records, table, plots and report."""

    def __init__(self, output_dir: str | Path, records: list[dict[str, Any]] | None = None):
        from tunelab.comparison.results import ResultsFile

        self.output_dir = Path(output_dir)
        records = records if records is not None else ResultsFile(self.output_dir).records()
        # the runs; a learning-rate search's trials are the report's (plot('lr_sensitivity') reads them)
        self.records = [r for r in records if r.get("kind") != "trial"]
        if not self.records:
            raise TunelabError(f"{self.output_dir}: no results.jsonl records; run tunelab.compare(...) first")

    @classmethod
    def load(cls, output_dir: str | Path) -> "Comparison":
        """A comparison directory written by ``tunelab compare`` (from the CLI or the API)."""
        return cls(output_dir)

    @property
    def report_path(self) -> Path:
        return self.output_dir / "report.html"

    def table(self):
        """A pandas DataFrame with one row per run (the base model included)."""
        import pandas as pd

        from tunelab.comparison.rows import run_values

        return pd.DataFrame([run_values(r) for r in self.records])

    def plot(self, kind: str = "tradeoff"):
        """A matplotlib Figure: ``tradeoff``, ``costs``, ``loss_curves`` or ``lr_sensitivity`` (the report's
        plots; the last one where the learning rates were searched)."""
        from tunelab.comparison.report import PLOTS, with_trials

        if kind not in PLOTS:
            raise TunelabError(f"plot kind {kind!r}: choose one of {', '.join(PLOTS)}")
        fig = PLOTS[kind](with_trials(self.output_dir, self.records))
        if fig is None:
            raise TunelabError(f"plot {kind!r}: the comparison has no data for it yet")
        return fig

    def _repr_html_(self) -> str:
        from tunelab.comparison.report import html_fragment

        return html_fragment(self.records)

    def __repr__(self) -> str:
        ok = sum(r["status"] == "ok" for r in self.records)
        return f"Comparison({str(self.output_dir)!r}, {ok} of {len(self.records)} runs ok)"


def compare(recipe: str, **overrides: Any) -> Comparison:
    from tunelab.comparison.api import compare_from_options
    from tunelab.logs import progress_shown

    opts, _ = _build(CompareOptions, "tunelab.compare()", {"recipe": recipe, **overrides})
    with progress_shown():
        outcome = compare_from_options(opts)
    return Comparison(outcome.output_dir, outcome.records)


compare.__doc__ = _doc("Full fine-tuning and PEFT methods side by side (``tunelab compare``).", CompareOptions,
                       returns="Comparison\n    ``table()``, ``plot(kind)``, ``report_path``, ``records``; shown as "
                               "its table and trade-off plot in a notebook.")


# --- estimate ------------------------------------------------------------------------------------------------

class MemoryEstimate:
    """A predicted peak training memory, broken into its parts."""

    def __init__(self, estimate, headroom_gb: float = 1.0):
        self._estimate = estimate
        self.headroom_gb = headroom_gb

    @property
    def peak_bytes(self) -> int:
        return self._estimate.peak_bytes

    @property
    def breakdown(self) -> dict[str, int]:
        """weights, gradients, optimizer states, activations, temporaries (bytes); they sum to peak_bytes."""
        return dict(self._estimate.breakdown)

    @property
    def trainable_params(self) -> int:
        return self._estimate.trainable_params

    @property
    def checkpoint_bytes(self) -> int:
        return self._estimate.checkpoint_bytes

    def fits(self, gb: float) -> bool:
        """Whether the run fits a device of ``gb`` GB (keeping the headroom for the runtime)."""
        from tunelab.memory.estimator import fits

        return fits(self.peak_bytes, gb, self.headroom_gb)

    def to_dict(self) -> dict[str, Any]:
        return self._estimate.to_dict()

    def __repr__(self) -> str:
        return (f"MemoryEstimate({self._estimate.model!r}, method={self._estimate.method!r}, "
                f"peak={self.peak_bytes / 2**30:.2f} GiB)")

    def _repr_html_(self) -> str:
        rows = "".join(f"<tr><td>{k.replace('_bytes', '').replace('_', ' ')}</td><td>{v / 2**20:,.1f} MiB</td></tr>"
                       for k, v in self.breakdown.items())
        return (f"<b>{self._estimate.model}, {self._estimate.method}: peak {self.peak_bytes / 2**30:.2f} GiB</b>"
                f"<table>{rows}</table>")


def estimate(model: str | None = None, **options: Any) -> MemoryEstimate:
    from tunelab.config import EstimateOptions
    from tunelab.memory.estimator import estimate as _estimate

    values = _given(options, model_name_or_path=model)
    opts, _ = _build(EstimateOptions, "tunelab.estimate()", values)
    if not opts.model_name_or_path:
        raise TunelabError("tunelab.estimate(): pass model= (a built-in name, a folder, a Hub id or an architecture "
                           "such as llama-2-7b)")
    return MemoryEstimate(_estimate(opts, device=opts.device, num_labels=opts.num_labels), opts.headroom_gb)


def _estimate_doc() -> str:
    from tunelab.config import EstimateOptions

    return _doc("Predict peak training memory without loading weights (``tunelab estimate``).", EstimateOptions,
                returns="MemoryEstimate\n    ``peak_bytes``, ``breakdown``, ``fits(gb)``, ``to_dict()``.",
                aliases={"model": "model_name_or_path"},
                skip={"config", "json", "table", "validate", "fit", "table_sizes", "table_methods",
                      "validate_models", "validate_methods", "validate_seq_lengths", "validate_batch_size",
                      "tolerance", "gpu_memory_gb"})


estimate.__doc__ = _estimate_doc()


# --- the adapter lifecycle: generate, merge, export_gguf, push -------------------------------------------------

def generate(model: str | None = None, adapters: dict[str, str] | None = None, **options: Any):
    from tunelab.adapters import run_generate
    from tunelab.config import GenerateOptions

    named = None if adapters is None else [f"{name}={path}" for name, path in adapters.items()]
    values = _given(options, model_name_or_path=model, adapter=named)
    opts, _ = _build(GenerateOptions, "tunelab.generate()", values)
    return run_generate(opts)


def merge(model: str | None = None, adapter: str | None = None, **options: Any):
    from tunelab.config import MergeOptions
    from tunelab.merge import merge as _merge

    values = _given(options, model_name_or_path=model, adapter=adapter)
    opts, _ = _build(MergeOptions, "tunelab.merge()", values)
    return _merge(opts.model_name_or_path, opts.adapter, opts.output_dir,
                  overwrite_output_dir=opts.overwrite_output_dir, use_cpu=opts.use_cpu,
                  torch_dtype=opts.torch_dtype)


def export_gguf(model: str | None = None, **options: Any):
    from tunelab.config import ExportOptions
    from tunelab.gguf_export import export_gguf as _export

    values = _given(options, model_name_or_path=model)
    opts, _ = _build(ExportOptions, "tunelab.export_gguf()", values)
    return _export(opts.model_name_or_path, opts.output, adapter=opts.adapter, outtype=opts.outtype,
                   overwrite=opts.overwrite, use_cpu=opts.use_cpu)


def push(model: str | None = None, **options: Any):
    from tunelab.config import PushOptions
    from tunelab.hub import plan_upload, push as _push

    values = _given(options, model_name_or_path=model)
    opts, _ = _build(PushOptions, "tunelab.push()", values)
    if opts.dry_run:
        return plan_upload(opts.model_name_or_path, opts.repo_id, eval_results=opts.eval_results)
    return _push(opts.model_name_or_path, opts.repo_id, private=opts.private, eval_results=opts.eval_results,
                 commit_message=opts.commit_message)


def _lifecycle_docs() -> None:
    from tunelab.config import ExportOptions, GenerateOptions, MergeOptions, PushOptions

    generate.__doc__ = _doc("Answer prompts with one base and several adapters (``tunelab generate``). For repeated "
                            "calls on a loaded base use ``tunelab.AdapterSession``.", GenerateOptions,
                            returns="list of dict\n    One record per input: its fields, ``adapter`` and "
                                    "``response``.",
                            aliases={"model": "model_name_or_path", "adapters": "adapter (as {name: dir})"},
                            skip={"config"})
    merge.__doc__ = _doc("Fold an adapter into its base and save a standalone model (``tunelab merge``).",
                         MergeOptions, returns="MergeResult\n    ``output_dir`` and ``info`` (merge_info.json).",
                         aliases={"model": "model_name_or_path"}, skip={"config"})
    export_gguf.__doc__ = _doc("Write a Llama-family model as a GGUF file (``tunelab export gguf``).", ExportOptions,
                               returns="GgufResult\n    ``path``, ``outtype``, ``tensors``, ``file_bytes``, "
                                       "``tensor_types``.", aliases={"model": "model_name_or_path"},
                               skip={"config"})
    push.__doc__ = _doc("Upload an adapter or a model with a model card (``tunelab push``).", PushOptions,
                        returns="PushResult\n    ``url`` and ``plan`` (files, card); with dry_run=True the "
                                "UploadPlan only.", aliases={"model": "model_name_or_path"}, skip={"config"})


_lifecycle_docs()


def __getattr__(name: str):
    if name == "AdapterSession":  # loads a base once and switches adapters per call
        from tunelab.adapters import AdapterSession

        return AdapterSession
    raise AttributeError(name)


def read_results(path: str | Path) -> dict[str, Any]:
    """A train_results.json or eval_results.json as a dict, checked against its declared record
    (``tunelab.records.TrainRecord`` / ``EvalRecord``; files of older tunelab versions are read too)."""
    from tunelab.records import EvalRecord, TrainRecord

    data = json.loads(Path(path).read_text(encoding="utf-8"))
    kind = TrainRecord if isinstance(data, dict) and "global_step" in data else EvalRecord
    return kind.from_json(data, source=path).to_json()
