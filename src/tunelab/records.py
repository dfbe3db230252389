"""The typed records that pass between stages, declared once: a training run's results (train_results.json), an
evaluation's results (eval_results.json), and a comparison's records (the lines of results.jsonl: runs and
learning-rate search trials). Every writer builds one of these and every reader goes through ``from_json``, so a
field renamed on one side only fails (a TypeError where a writer builds it, an AttributeError where a reader reads
it, a TunelabError where a file holds a key no field declares) instead of showing "–" in a report.

The files keep the keys tunelab has always written, plus ``schema_version``. A file without ``schema_version`` was
written before the records were declared (version 0): it is read leniently, because older tunelab versions wrote
fewer keys (no precision, no dtype) and some since dropped: a missing key reads as None, an unknown one is kept
(``extra``) and written back unchanged. A file of the current version must match the declaration exactly.

Nested parts whose shape belongs to one producer (data report, curves, retention probes, timings, ...) stay dicts.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from tunelab import run_files
from tunelab.errors import TunelabError

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
_EXTRA = "extra"


class Record:
    """What the records share: ``to_json`` / ``from_json`` / ``read``. A field with a default is *optional*: left
    out of the file when None (as the keys written only sometimes always were); a field without one is always
    written (its value may be None) and must be in a file of the current version."""

    what: ClassVar[str] = "record"   # for error messages: "train_results.json", ...

    @classmethod
    def declared(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls) if f.name != _EXTRA)

    @classmethod
    def required(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls) if f.name != _EXTRA
                     and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"schema_version": SCHEMA_VERSION}
        required = set(self.required())
        for name in self.declared():
            value = getattr(self, name)
            if value is not None or name in required:
                out[name] = value
        out.update(getattr(self, _EXTRA))
        return out

    @classmethod
    def from_json(cls, data: Any, *, source: str | Path | None = None):
        """The record a file (or a results.jsonl line) holds. ``source`` names it in errors."""
        where = f"{source}: " if source else ""
        if not isinstance(data, dict):
            raise TunelabError(f"{where}not a {cls.what} (a JSON object was expected, found {type(data).__name__})")
        data = dict(data)
        version = data.pop("schema_version", 0)
        if not isinstance(version, int) or version > SCHEMA_VERSION:
            raise TunelabError(f"{where}{cls.what} of schema version {version!r}; this tunelab reads up to "
                               f"{SCHEMA_VERSION}: upgrade tunelab")
        declared = set(cls.declared())
        unknown = [k for k in data if k not in declared]
        missing = [k for k in cls.required() if k not in data]
        if version == SCHEMA_VERSION and (unknown or missing):
            raise TunelabError(f"{where}not a {cls.what} of schema version {version}: "
                               + "; ".join(part for part in (
                                   f"unknown key(s) {', '.join(unknown)}" if unknown else "",
                                   f"missing key(s) {', '.join(missing)}" if missing else "") if part))
        if missing and version < SCHEMA_VERSION:
            log.debug("%s%s written before schema version 1 lacks %s (read as None)", where, cls.what, missing)
        values = {k: data.get(k) for k in declared if k in data or k in missing}
        return cls(**values, **{_EXTRA: {k: data[k] for k in unknown}})

    @classmethod
    def read(cls, path: str | Path):
        """The record in the file at ``path``, or None where there is none (a run not finished)."""
        try:
            data = run_files.read_json(path)
        except ValueError as e:
            raise TunelabError(f"{path}: not valid JSON ({e}); fix or remove it") from None
        return None if data is None else cls.from_json(data, source=path)


@dataclass(kw_only=True)
class TrainRecord(Record):
    """train_results.json: what a training run did and cost (training.py writes it, last)."""

    what: ClassVar[str] = "train_results.json"

    tunelab_version: str | None
    method: str
    peft: bool
    model_name_or_path: str
    base_model_path: str | None              # where the model was resolved to (a built-in's converted folder)
    task_kind: str | None
    dataset_name_or_path: str | None
    trainable_params: int | None
    total_params: int | None
    trainable_percent: float | None
    train_seconds: float | None
    train_tokens: int | None
    train_tokens_per_second: float | None
    train_samples: int | None
    global_step: int | None
    epochs: float | None
    effective_batch_size: int | None
    world_size: int | None
    peak_memory_bytes: int | None
    peak_memory_kind: str | None             # cuda_max_allocated, cpu_peak_rss, ...
    device: str | None
    device_name: str | None
    cpu_threads: str | None = None           # CPU runs
    # CPU runs: the share of their runnable time training's threads waited for a core (tunelab.contention)
    train_cpu_wait_share: float | None = None
    checkpoint_bytes: int | None
    final_train_loss: float | None
    mean_train_loss: float | None
    final_eval_loss: float | None
    loss_curve: list[dict[str, Any]] | None
    eval_curve: list[dict[str, Any]] | None
    data: dict[str, Any] | None              # data.prepare's report: format, template, labels, rows per split
    defaults_chosen: dict[str, Any] | None   # the method-aware defaults config.resolve chose
    padding_fraction: float | None
    processed_token_positions: int | None
    precision: str | None                    # precision.Precision.record()
    precision_reason: str | None
    peak_tensor_bytes: int | None
    peak_tensor_steps: int | None
    ica_masking: dict[str, Any] | None = None   # --mask_mode
    curves: list[dict[str, Any]] | None = None  # --track_retention / --max_forgetting
    tracking: dict[str, Any] | None = None
    exports: dict[str, Any] | None = None       # lifecycle: merged model, GGUF files
    extra: dict[str, Any] = field(default_factory=dict, repr=False)  # keys of a file older than version 1

    @property
    def label_names(self) -> list[str] | None:
        return (self.data or {}).get("labels")


@dataclass(kw_only=True)
class EvalRecord(Record):
    """eval_results.json: an evaluation's task metrics and retention probes (evaluation/run.py writes it, last)."""

    what: ClassVar[str] = "eval_results.json"

    tunelab_version: str | None
    model_name_or_path: str
    adapter: str | None
    task_kind: str | None
    template: str | None
    torch_dtype: str | None = None           # absent before evaluation recorded it (float32 then)
    # --task
    task: str | None = None
    dataset_name_or_path: str | None = None
    num_examples: int | None = None
    metrics: dict[str, Any] | None = None
    headline_metric: str | None = None
    confidence_intervals: dict[str, Any] | None = None
    confidence_level: float | None = None
    generation: dict[str, Any] | None = None
    eval_seconds: float | None = None
    task_note: str | None = None             # why the metrics are missing (an untrained head)
    invalid_rows_skipped: int | None = None  # --skip_invalid_rows
    invalid_rows: list[dict[str, Any]] | None = None
    # --retention
    retention: dict[str, Any] | None = None  # probe name -> its result
    base_model_name_or_path: str | None = None
    base_torch_dtype: str | None = None
    timings: dict[str, Any] | None = None    # seconds per phase
    extra: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def headline_value(self) -> float | None:
        return (self.metrics or {}).get(self.headline_metric) if self.headline_metric else None

    @property
    def headline_ci(self) -> list[float] | None:
        return (self.confidence_intervals or {}).get(self.headline_metric) if self.headline_metric else None


# what a comparison's run record copies from its run's train_results.json (comparison/processes.py)
TRAIN_FIELDS_IN_COMPARISON = (
    "trainable_params", "total_params", "trainable_percent", "train_seconds", "train_tokens",
    "train_tokens_per_second", "peak_memory_bytes", "peak_memory_kind", "peak_tensor_bytes", "precision",
    "precision_reason", "checkpoint_bytes", "final_train_loss", "final_eval_loss", "loss_curve", "global_step",
    "effective_batch_size", "device", "device_name", "train_cpu_wait_share")


@dataclass(kw_only=True)
class ComparisonRecord(Record):
    """One run of a comparison (the base, or a method x seed) in results.jsonl: what it cost, learned and kept, or
    why it failed (comparison/processes.py builds it from the worker's run_result.json; the runner adds the rate)."""

    what: ClassVar[str] = "results.jsonl record"

    key: str
    label: str
    method: str
    seed: int | None
    status: str                               # ok / failed
    error: str | None
    wall_seconds: float | None
    run_dir: str | None
    # from train_results.json (TRAIN_FIELDS_IN_COMPARISON)
    trainable_params: int | None = None
    total_params: int | None = None
    trainable_percent: float | None = None
    train_seconds: float | None = None
    train_tokens: int | None = None
    train_tokens_per_second: float | None = None
    peak_memory_bytes: int | None = None
    peak_memory_kind: str | None = None
    peak_tensor_bytes: int | None = None
    precision: str | None = None
    precision_reason: str | None = None
    checkpoint_bytes: int | None = None
    final_train_loss: float | None = None
    final_eval_loss: float | None = None
    loss_curve: list[dict[str, Any]] | None = None
    global_step: int | None = None
    effective_batch_size: int | None = None
    device: str | None = None
    device_name: str | None = None
    train_cpu_wait_share: float | None = None
    peft: bool | None = None
    # from eval_results.json
    task: str | None = None
    task_metrics: dict[str, Any] | None = None
    headline_metric: str | None = None
    task_note: str | None = None
    invalid_rows_skipped: int | None = None
    headline_value: float | None = None
    headline_ci: list[float] | None = None
    retention: dict[str, Any] | None = None
    generation: dict[str, Any] | None = None
    # from the worker and the launcher
    inference: dict[str, Any] | None = None   # generation tokens/s (comparison/worker.py)
    eval_dir: str | None = None
    timings: dict[str, Any] | None = None     # seconds per phase
    trajectory: list[dict[str, Any]] | None = None        # recipe curve_points
    curves: list[dict[str, Any]] | None = None
    tracking: dict[str, Any] | None = None
    weight_diagnostics: dict[str, Any] | None = None      # recipe diagnostics
    node: str | None = None                   # the Ray node that ran it
    # from the runner
    learning_rate: float | None = None
    search: dict[str, Any] | None = None      # the learning-rate search that chose the rate
    extra: dict[str, Any] = field(default_factory=dict, repr=False)


@dataclass(kw_only=True)
class TrialRecord(Record):
    """One trial of a learning-rate search in results.jsonl (``kind: trial``; comparison/search.py)."""

    what: ClassVar[str] = "results.jsonl trial record"

    key: str
    kind: str = "trial"
    label: str
    method: str
    seed: int | None
    study: str
    trial: int
    learning_rate: float | None
    status: str                               # finished / pruned / failed
    pruned_at_step: int | None
    stopped_by: str | None
    objective: str | None
    objective_value: float | None
    validation_loss_curve: list[dict[str, Any]]
    steps: int | None
    total_steps: int | None
    cost_seconds: float | None
    train_seconds: float | None
    error: str | None
    run_dir: str | None
    retry_of: int | None
    range: list[float] | None
    extra: dict[str, Any] = field(default_factory=dict, repr=False)


def comparison_record(data: Any, *, source: str | Path | None = None) -> ComparisonRecord | TrialRecord:
    """A results.jsonl line's record: a trial's (``kind: trial``) or a run's."""
    if isinstance(data, dict) and data.get("kind") == "trial":
        return TrialRecord.from_json(data, source=source)
    return ComparisonRecord.from_json(data, source=source)
