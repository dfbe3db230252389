"""`tunelab eval`: task metrics and knowledge retention for a base model, a PEFT adapter or a fully fine-tuned
model. Writes predictions.jsonl and eval_results.json (last, atomically: its presence marks a finished run)."""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tunelab import __version__, inference
from tunelab.config import EvalOptions
from tunelab.errors import TunelabError
from tunelab.evaluation import retention
from tunelab.evaluation.benchmarks import default_benchmark_dir, no_skill_floor
from tunelab.evaluation.probes import (ProbeContext, default_data_dir, folder_database, load_task_examples,
                                       parse_probe, sample_examples)
from tunelab.evaluation.tasks import TaskSettings, check_sql_schemas, run_task
from tunelab.fileio import atomic_write_json, atomic_write_jsonl, atomic_write_text
from tunelab.options import to_dict
from tunelab import run_files
from tunelab.records import EvalRecord

log = logging.getLogger(__name__)

# where the benchmarks' files live does not change what is measured (like the output folder)
_NON_IDENTITY = {"output_dir", "overwrite_output_dir", "config", "baseline", "use_cpu", "benchmark_data_dir"}


@dataclass
class EvalResult:
    output_dir: Path
    record: EvalRecord      # what eval_results.json holds
    skipped: bool = False
    model: inference.LoadedModel | None = field(default=None, repr=False)  # the evaluated model, in memory

    @property
    def results(self) -> dict[str, Any]:
        """eval_results.json's contents, as a dict (the API's long-standing view of ``record``)."""
        return self.record.to_json()

    @property
    def results_path(self) -> Path:
        return self.output_dir / run_files.EVAL_RESULTS


def _identity(opts: EvalOptions) -> dict[str, Any]:
    return yaml.safe_load(yaml.safe_dump({k: v for k, v in to_dict(opts).items() if k not in _NON_IDENTITY}))


def _check(opts: EvalOptions) -> None:
    if not opts.task and not opts.retention:
        raise TunelabError("nothing to evaluate: pass --task with --dataset_name_or_path, or --retention probes")
    if opts.task and not opts.dataset_name_or_path:
        raise TunelabError(f"--task {opts.task} needs --dataset_name_or_path")
    if opts.dataset_name_or_path and not opts.task:
        raise TunelabError("--dataset_name_or_path needs --task (what the data measures)")
    for name in ("max_new_tokens", "per_device_eval_batch_size", "probe_samples", "max_seq_length"):
        if getattr(opts, name) < 1:
            raise TunelabError(f"--{name} must be at least 1, got {getattr(opts, name)}")
    if opts.baseline and not Path(opts.baseline).is_file():
        raise TunelabError(f"--baseline {opts.baseline}: no such file; pass a base model's eval_results.json")


def _run_columns(opts: EvalOptions) -> tuple[list[str] | None, str | None]:
    """The columns the evaluated run trained on (tunelab_config.yaml beside its adapter or model), if any."""
    run = inference.read_run_config(opts.adapter or opts.model_name_or_path)
    return run.get("input_columns"), run.get("target_column")


def _base_reference(opts: EvalOptions, lm: inference.LoadedModel) -> str | None:
    """The untouched base behind the evaluated model, or None when the model *is* the base."""
    if opts.base_model_name_or_path:
        return opts.base_model_name_or_path
    if lm.is_peft:
        return opts.model_name_or_path
    trained_from = lm.run_config.get("model_name_or_path")
    return trained_from if trained_from and trained_from != opts.model_name_or_path else None


def evaluate(opts: EvalOptions, model: inference.LoadedModel | None = None) -> EvalResult:
    """Evaluate ``opts``'s model, or ``model`` when given: the same model already in memory (the one a training run
    just returned, ``inference.from_trained``), which then is not loaded again. The numbers are the same."""
    opts = dataclasses.replace(opts, model_name_or_path=inference.base_for(opts.model_name_or_path, opts.adapter))
    _check(opts)
    out = Path(opts.output_dir)
    saved = out / run_files.EVAL_OPTIONS
    if (out / run_files.EVAL_RESULTS).is_file() and not opts.overwrite_output_dir:
        if saved.is_file() and run_files.read_yaml_mapping(saved) == _identity(opts):
            log.info("%s already holds this finished evaluation; nothing to do", out)
            return EvalResult(out, EvalRecord.read(out / run_files.EVAL_RESULTS), skipped=True)
        raise TunelabError(f"--output_dir {out}: holds a different evaluation; choose a new directory or pass "
                           "--overwrite_output_dir")
    probes = [parse_probe(spec) for spec in opts.retention or []]
    data_dir = default_data_dir(opts.data_dir)
    ctx = ProbeContext(data_dir, opts.probe_samples, opts.seed,
                       benchmark_dir=default_benchmark_dir(opts.benchmark_data_dir, data_dir))
    # bad probe data fails before loading; a benchmark probe's "examples" are the probe bound to its checked data
    probe_examples = {probe.name: probe.load(ctx) for probe, _ in probes}

    task_examples, invalid_rows = None, []
    if opts.task:
        task_examples = load_task_examples(opts.task, opts.dataset_name_or_path, eval_split=opts.eval_split,
                                           dataset_config=opts.dataset_config, dataset_format=opts.dataset_format,
                                           input_columns=opts.input_columns, target_column=opts.target_column,
                                           run_columns=_run_columns(opts))
        task_examples = sample_examples(task_examples, opts.max_eval_samples, opts.seed)
        if opts.task == "text2sql" and not (opts.sql_database or folder_database(opts.dataset_name_or_path)):
            # schemas that do not run in SQLite: an error naming the row before the model loads, or left out
            task_examples, invalid_rows = check_sql_schemas(task_examples, skip_invalid=opts.skip_invalid_rows,
                                                            seed=opts.seed)

    timings: dict[str, Any] = {}  # seconds per phase, for the comparison's overhead profile
    started = time.perf_counter()
    lm = model or inference.load(opts.model_name_or_path, opts.adapter, use_cpu=opts.use_cpu,
                                 task_type=opts.task_type, template=opts.template, system_prompt=opts.system_prompt,
                                 torch_dtype=opts.torch_dtype)
    timings["model_load_seconds"] = time.perf_counter() - started
    settings = TaskSettings(max_new_tokens=opts.max_new_tokens, batch_size=opts.per_device_eval_batch_size,
                            max_seq_length=opts.max_seq_length, seed=opts.seed)
    results: dict[str, Any] = {
        "tunelab_version": __version__, "model_name_or_path": opts.model_name_or_path, "adapter": opts.adapter,
        "task_kind": lm.task_kind, "template": lm.template.name, "torch_dtype": _dtype_name(lm.dtype),
    }
    prediction_rows: list[dict[str, Any]] = []
    if opts.task:
        settings.sql_database = opts.sql_database or (folder_database(opts.dataset_name_or_path)
                                                      if opts.task == "text2sql" else None)
        started = time.perf_counter()
        outcome = run_task(opts.task, lm, task_examples, settings)
        results.update({
            "task": opts.task, "dataset_name_or_path": opts.dataset_name_or_path,
            "num_examples": len(task_examples), "metrics": outcome.scores, "headline_metric": outcome.headline,
            "confidence_intervals": {outcome.headline: outcome.confidence_interval},
            "confidence_level": 0.95, "generation": outcome.generation,
            "eval_seconds": time.perf_counter() - started,
        })
        if outcome.note:
            results["task_note"] = outcome.note
        if invalid_rows:  # --skip_invalid_rows: how many rows were left out, and which
            results.update(invalid_rows_skipped=len(invalid_rows), invalid_rows=invalid_rows)
        prediction_rows += [dict(row, source=opts.task) for row in outcome.rows]

    if probes:
        base_ref = _base_reference(opts, lm)
        baseline = _comparable(EvalRecord.read(opts.baseline) if opts.baseline else None, lm, opts)
        started = time.perf_counter()
        base_lm = _load_base(base_ref, lm, opts) if base_ref else lm
        timings["base_load_seconds"] = time.perf_counter() - started
        # both asked without the run's system prompt (retention.general_view); the same object when they are one
        asked = retention.general_view(lm)
        asked_base = asked if base_lm is lm else retention.general_view(base_lm)
        retention_results = {}
        checked = _adapter_disabled_probes(lm, [probe for probe, _ in probes])
        for probe, sql_db in probes:
            examples = probe_examples[probe.name]
            started = time.perf_counter()
            check = probe.name in checked
            if probe.task == "drift":
                result, rows = _run_drift(asked_base, asked, examples, settings, check)
            elif probe.task == "benchmark":
                result, rows = _run_benchmark_probe(examples, asked_base, asked, settings, baseline, check)
            else:
                cap = min(settings.max_new_tokens, probe.max_new_tokens or settings.max_new_tokens)
                probe_settings = TaskSettings(**{**settings.__dict__, "sql_database": sql_db, "max_new_tokens": cap})
                result, rows = _run_task_probe(probe, asked_base, asked, examples, probe_settings, baseline, check)
            retention_results[probe.name] = {**result, "seconds": time.perf_counter() - started,
                                             retention.ASKED_WITHOUT_SYSTEM_PROMPT: True}
            prediction_rows += [dict(row, source=f"retention:{probe.name}") for row in rows]
        results["retention"] = retention_results
        results["base_model_name_or_path"] = base_ref or opts.model_name_or_path
        results["base_torch_dtype"] = _base_dtype(lm, opts)  # the dtype "before" was scored in

    timings["task_seconds"] = results.get("eval_seconds")
    timings["probe_seconds"] = {name: r["seconds"] for name, r in (results.get("retention") or {}).items()}
    results["timings"] = timings
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_jsonl(out / run_files.EVAL_PREDICTIONS, prediction_rows)
    atomic_write_text(saved, yaml.safe_dump(_identity(opts), sort_keys=False))
    record = EvalRecord(**results)
    atomic_write_json(out / run_files.EVAL_RESULTS, record.to_json())
    return EvalResult(out, record, model=lm)


def evaluation_of(trained, topts, eval_values: dict[str, Any]) -> tuple[dict[str, Any], Any]:
    """What evaluating a training run takes: ``eval_values`` naming the run's output (its adapter on the base, or
    its model), and the model training left in memory, to evaluate instead of loading it again from the run
    directory: the same weights in the same dtype (``inference.from_trained``). The model is None, and evaluation
    loads from disk, when the run was already finished (nothing in memory) or --torch_dtype asks for another dtype
    than the run's (:func:`needs_saved_weights`)."""
    from tunelab.methods import get_method

    if get_method(trained.record.method).peft:
        eval_values = {**eval_values, "model_name_or_path": topts.model_name_or_path,
                       "adapter": str(trained.output_dir)}
    else:
        eval_values = {**eval_values, "model_name_or_path": str(trained.output_dir), "adapter": None}
    if trained.model is None or needs_saved_weights(eval_values):
        return eval_values, None
    eopts = EvalOptions(**eval_values)
    return eval_values, inference.from_trained(trained.model, trained.tokenizer, trained.output_dir,
                                               model_path=trained.record.base_model_path, use_cpu=eopts.use_cpu,
                                               template=eopts.template, system_prompt=eopts.system_prompt)


def needs_saved_weights(eval_values: dict[str, Any]) -> bool:
    """Whether evaluation must load the run from disk: another dtype than the one the run computes in."""
    return eval_values.get("torch_dtype", "auto") != "auto"


def _dtype_name(dtype) -> str | None:
    return str(dtype).replace("torch.", "") if dtype is not None else None


def _base_dtype(lm: inference.LoadedModel, opts: EvalOptions) -> str:
    """The dtype the base is scored in for "before" (``inference.reference_dtype``)."""
    import torch

    on_gpu = torch.cuda.is_available() and not opts.use_cpu
    return _dtype_name(inference.reference_dtype(lm.run_config, lm.dtype, on_gpu=on_gpu)) or "float32"


def _comparable(baseline: EvalRecord | None, lm: inference.LoadedModel, opts: EvalOptions) -> dict | None:
    """The baseline's probe results (name -> result), which serve as "before" only when the base was scored in the
    dtype the base is scored in here (files older than the dtype record were float32): bf16 and float32 answers
    differ, which is no forgetting."""
    if baseline is None:
        return None
    if not all((r or {}).get(retention.ASKED_WITHOUT_SYSTEM_PROMPT) for r in (baseline.retention or {}).values()):
        log.info("--baseline %s asked its probes under the run's system prompt (written by an older tunelab): the "
                 "base is scored again", opts.baseline)
        return None
    theirs, ours = baseline.torch_dtype or "float32", _base_dtype(lm, opts)
    if theirs == ours:
        return baseline.retention or {}
    log.info("--baseline %s scored the base in %s, the base is compared in %s here: it is scored again",
             opts.baseline, theirs, ours)
    return None


def _load_base(base_ref: str, lm: inference.LoadedModel, opts: EvalOptions) -> inference.LoadedModel:
    """The untouched base, prompted with the same template as the tuned model and run in the dtype it computes in,
    so that scores compare."""
    return inference.load(base_ref, None, use_cpu=opts.use_cpu, task_type=lm.task_kind, template=lm.template.name,
                          system_prompt=lm.template.system_prompt, torch_dtype=_base_dtype(lm, opts))


def _quantized(lm: inference.LoadedModel) -> bool:
    return bool(lm.run_config.get("use_4bit") or lm.run_config.get("use_8bit"))


QUANTIZED_NOTE = "the base is quantized for this method: 'adapter_disabled' scores the quantized base"


def _adapter_disabled_probes(lm: inference.LoadedModel, probes) -> set[str]:
    """The probes also scored with a PEFT model's adapter switched off. On a quantized base, every one: that score
    is the quantized base's, what quantization alone costs. Otherwise the switched-off adapter must reproduce the
    base, a property of the loaded model rather than of a probe, so one probe checks it: drift where it is asked
    (a forward pass whose KL from the base must be 0 to the last digit, the strictest and cheapest check), else the
    first probe. Scoring every probe twice made a LoRA run's probes cost twice full fine-tuning's."""
    if not lm.is_peft or not probes:
        return set()
    if _quantized(lm):
        return {probe.name for probe in probes}
    runs = [probe for probe in probes if _runs_on(probe, lm)] or probes
    return {next((probe for probe in runs if probe.task == "drift"), runs[0]).name}


# the model kinds a probe task scores (others skip it, with a reason); every kind for the rest
PROBE_KINDS = {"drift": ("causal_lm",), "benchmark": ("causal_lm", "seq2seq_lm")}


def _runs_on(probe, lm: inference.LoadedModel) -> bool:
    return lm.task_kind in PROBE_KINDS.get(probe.task, (lm.task_kind,))


def _run_task_probe(probe, base_lm, lm, examples, settings, baseline,
                    check_disabled: bool) -> tuple[dict[str, Any], list[dict]]:
    after = retention.score_probe(probe.task, lm, examples, settings)
    before_from_baseline = (baseline or {}).get(probe.name, {}).get("after") if baseline else None
    if before_from_baseline is not None:
        before_value = before_from_baseline
    elif base_lm is lm:
        before_value = after["value"]
    else:
        before_value = retention.score_probe(probe.task, base_lm, examples, settings)["value"]
    result = {"task": probe.task, "metric": after["metric"], "before": before_value, "after": after["value"],
              **retention.compare_scores(before_value, after["value"], after["metric"]),
              "scores_after": after["scores"], "confidence_interval_after": after["confidence_interval"],
              "num_examples": after["num_examples"]}
    if check_disabled:
        with inference.adapter_disabled(lm) as base_within:
            disabled = retention.score_probe(probe.task, base_within, examples, settings)
        result["adapter_disabled"] = disabled["value"]
        result["adapter_disabled_equals_base"] = disabled["value"] == before_value
        if _quantized(lm):
            result["note"] = QUANTIZED_NOTE
    return result, after["predictions"]


def _run_benchmark_probe(probe, base_lm, lm, settings, baseline,
                         check_disabled: bool) -> tuple[dict[str, Any], list[dict]]:
    """An lm-eval benchmark on the tuned model ("after"), the base ("before", or the baseline's score) and, for PEFT,
    the tuned model with its adapter switched off; the same seeded documents each time."""
    if lm.task_kind not in PROBE_KINDS["benchmark"]:
        return {"task": "benchmark", "metric": None,
                "skipped": f"benchmarks score a language model's answers; this is a {lm.task_kind} model"}, []
    after = probe(lm.model, lm.tokenizer, batch_size=settings.batch_size)
    prior = (baseline or {}).get(probe.name) or {}
    if prior.get("after") is not None and prior.get("metric") == after.metric:
        before = {"value": prior["after"], "stderr": prior.get("stderr_after"), "scores": prior.get("scores_after"),
                  "chance_level": prior.get("chance_level"), "num_examples": prior.get("num_examples")}
    else:
        scored = after if base_lm is lm else probe(base_lm.model, base_lm.tokenizer, batch_size=settings.batch_size)
        before = {"value": scored.value, "stderr": scored.stderr, "scores": scored.scores,
                  "chance_level": scored.chance_level, "num_examples": scored.num_examples}
    floor, why = no_skill_floor(before)
    result = {"task": "benchmark", "lm_eval_task": after.task, "metric": after.metric,
              "before": before["value"], "after": after.value,
              **retention.compare_scores(before["value"], after.value, after.metric, no_skill_below=floor,
                                         no_skill_why=why, higher_is_better=after.higher_is_better),
              "stderr_before": before["stderr"], "stderr_after": after.stderr,
              "scores_before": before["scores"], "scores_after": after.scores,
              "confidence_interval_after": after.confidence_interval, "chance_level": after.chance_level,
              "num_examples": after.num_examples, "seed": probe.seed}
    if check_disabled:
        with inference.adapter_disabled(lm) as base_within:
            disabled = probe(base_within.model, base_within.tokenizer, batch_size=settings.batch_size)
        result["adapter_disabled"] = disabled.value
        result["adapter_disabled_scores"] = disabled.scores
        result["adapter_disabled_equals_base"] = disabled.value == before["value"]
        if _quantized(lm):
            result["note"] = QUANTIZED_NOTE
    return result, after.rows


def _run_drift(base_lm, lm, prompts, settings, check_disabled: bool) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The drift result, and a row per continuation (its KL summed over its tokens) for predictions.jsonl."""
    if lm.task_kind not in PROBE_KINDS["drift"]:
        return {"metric": "kl_divergence", "skipped": f"drift needs a causal LM; this is a {lm.task_kind} model"}, []
    refs = retention.drift_references(base_lm, prompts, batch_size=settings.batch_size)
    result = retention.drift(base_lm, lm, refs, batch_size=settings.batch_size, per_example=True)
    rows = [{"input": refs[r["index"]].messages[0]["content"], "reference": refs[r["index"]].messages[-1]["content"],
             "prediction": "", "score": r["kl_sum"] / r["tokens"], "kl_sum": r["kl_sum"], "tokens": r["tokens"]}
            for r in result.pop("per_example")]
    if check_disabled:
        with inference.adapter_disabled(lm) as base_within:
            disabled = retention.drift(base_lm, base_within, refs, batch_size=settings.batch_size)
        result["adapter_disabled_kl_divergence"] = disabled.get("kl_divergence")
        result["adapter_disabled_delta_cross_entropy"] = disabled.get("delta_cross_entropy")
        result["adapter_disabled_equals_base"] = disabled.get("kl_divergence") == 0.0
        if _quantized(lm):
            result["note"] = QUANTIZED_NOTE
    return result, rows
