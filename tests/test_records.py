"""The typed records between stages (tunelab/records.py): what training writes, evaluation writes and a comparison
records is declared once; a key renamed on one side only fails instead of showing "–" in a report; files written
before the declaration (no schema_version) are still read."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest

from tunelab.errors import TunelabError
from tunelab.records import (SCHEMA_VERSION, TRAIN_FIELDS_IN_COMPARISON, ComparisonRecord, EvalRecord, TrainRecord,
                             TrialRecord)

from conftest import REPO

# A train_results.json that `tunelab compare --recipe demo` wrote (smollm2-135m, LoRA r=16, 2 steps on the CPU)
# before the records were declared: no schema_version.
LEGACY_TRAIN = """{"tunelab_version": "0.1.0", "method": "lora", "peft": true, "model_name_or_path": "smollm2-135m",
"base_model_path": "/root/.cache/tunelab/models/smollm2-135m", "task_kind": "causal_lm",
"dataset_name_or_path": "/root/.cache/tunelab/data/text2sql-v1/train.jsonl", "trainable_params": 4884480,
"total_params": 139399488, "trainable_percent": 3.503944003008103, "train_seconds": 5.578677440000092,
"train_tokens": 955, "train_tokens_per_second": 171.18752791700825, "train_samples": 400, "global_step": 2,
"epochs": 0.02, "effective_batch_size": 4, "world_size": 1, "peak_memory_bytes": 2184175616,
"peak_memory_kind": "cpu_peak_rss", "device": "cpu", "device_name": "x86_64", "cpu_threads": "2",
"checkpoint_bytes": 19593064, "final_train_loss": 1.0756627321243286, "mean_train_loss": 1.0511026978492737,
"final_eval_loss": null, "loss_curve": [{"step": 1, "loss": 1.0265426635742188}, {"step": 2, "loss":
1.0756627321243286}], "eval_curve": [], "data": {"format": "qa", "template": "chat", "labels": null, "train":
{"rows": 400, "kept": 400, "truncated": 0, "dropped": 0, "tokens": 50693, "target_tokens": 10870,
"dropped_examples": []}, "eval": null}, "defaults_chosen": {"warmup_ratio": 0.03}, "padding_fraction":
0.18603286384976525, "processed_token_positions": 1704, "precision": "bf16", "precision_reason":
"auto: this CPU has avx512_bf16 and amx_bf16", "peak_tensor_bytes": 1260035980, "peak_tensor_steps": 2}"""

# An eval_results.json of a LoRA adapter (task and retention probes), from before evaluation recorded its dtype.
LEGACY_EVAL = """{"tunelab_version": "0.1.0", "model_name_or_path": "tiny-llama", "adapter": "/runs/lora",
"task_kind": "causal_lm", "template": "chat", "task": "qa", "dataset_name_or_path": "/data/qa.jsonl",
"num_examples": 4, "metrics": {"exact_match": 0.25, "contains_answer": 0.5}, "headline_metric": "contains_answer",
"confidence_intervals": {"contains_answer": [0.0, 1.0]}, "confidence_level": 0.95, "generation": {"seconds": 0.57,
"new_tokens": 16, "tokens_per_second": 27.7}, "eval_seconds": 0.59, "retention": {"drift": {"metric":
"kl_divergence", "kl_divergence": 8.76e-06, "delta_cross_entropy": -0.0026, "num_examples": 4, "seconds": 6.4}},
"base_model_name_or_path": "tiny-llama", "timings": {"model_load_seconds": 0.04, "task_seconds": 0.59,
"probe_seconds": {"drift": 6.4}}}"""


def _train() -> TrainRecord:
    """Built as training.py builds it: every field by keyword."""
    return TrainRecord(**json.loads(LEGACY_TRAIN))


def _eval() -> EvalRecord:
    return EvalRecord(**json.loads(LEGACY_EVAL), torch_dtype="bfloat16")


def test_a_legacy_file_reads_into_every_declared_field_and_writes_back_its_keys():
    legacy = json.loads(LEGACY_TRAIN)
    record = TrainRecord.from_json(legacy)
    assert record.extra == {}  # every key the current code writes is declared
    assert {name: getattr(record, name) for name in legacy} == legacy
    assert record.to_json() == {"schema_version": SCHEMA_VERSION, **legacy}  # the same keys, and the version
    assert TrainRecord.from_json(record.to_json()) == record
    evals = EvalRecord.from_json(json.loads(LEGACY_EVAL))
    assert evals.torch_dtype is None and evals.headline_value == 0.5 and evals.headline_ci == [0.0, 1.0]


def test_a_legacy_file_with_keys_of_an_older_version_keeps_them():
    old = {k: v for k, v in json.loads(LEGACY_TRAIN).items() if not k.startswith("peak_tensor")}
    old["memory_peak"] = 123  # a key no field declares (one an older tunelab wrote)
    record = TrainRecord.from_json(old)
    assert record.peak_tensor_bytes is None and record.extra == {"memory_peak": 123}
    assert record.to_json()["memory_peak"] == 123


@pytest.mark.parametrize("name", TrainRecord.required())
def test_a_key_renamed_in_the_file_fails(name):
    """A current file whose key is spelled differently from the declaration (renamed on one side only)."""
    data = _train().to_json()
    data[name + "_renamed"] = data.pop(name)
    with pytest.raises(TunelabError, match=f"unknown key\\(s\\) {name}_renamed; missing key\\(s\\) {name}"):
        TrainRecord.from_json(data, source="run/train_results.json")


def test_unknown_missing_and_newer_versions_are_refused_with_the_file_named():
    data = _eval().to_json()
    with pytest.raises(TunelabError, match="^e.json: .*unknown key\\(s\\) accuracy$"):
        EvalRecord.from_json({**data, "accuracy": 1.0}, source="e.json")
    del data["model_name_or_path"]
    with pytest.raises(TunelabError, match="missing key\\(s\\) model_name_or_path"):
        EvalRecord.from_json(data)
    with pytest.raises(TunelabError, match="schema version 99.*upgrade tunelab"):
        EvalRecord.from_json({**_eval().to_json(), "schema_version": 99})
    with pytest.raises(TunelabError, match="a JSON object was expected"):
        TrainRecord.from_json([1, 2])


def test_optional_fields_are_left_out_when_unset_and_required_ones_written_as_null():
    record = _train()
    assert "ica_masking" not in record.to_json() and "exports" not in record.to_json()
    assert record.to_json()["final_eval_loss"] is None
    with pytest.raises(TypeError):  # a writer that leaves a required field out fails where it builds the record
        TrainRecord(method="lora")


def test_what_a_comparison_copies_from_a_run_is_declared_on_both_sides():
    train = {f.name for f in dataclasses.fields(TrainRecord)}
    comparison = {f.name for f in dataclasses.fields(ComparisonRecord)}
    assert set(TRAIN_FIELDS_IN_COMPARISON) <= train & comparison


def test_every_field_arrives_at_the_comparison_record_and_the_model_card(tmp_path):
    """Train and eval results written through their records; read by the comparison's record building (from the
    worker's run_result.json, through results.jsonl) and by the model card."""
    from tunelab.comparison.processes import PlannedRun, outcome
    from tunelab.comparison.results import ResultsFile
    from tunelab.fileio import atomic_write_json
    from tunelab.hub import model_card
    from tunelab import run_files

    train, evals = _train(), _eval()
    run = PlannedRun("k1", "lora r=16", "lora", 0, tmp_path / "runs" / "lora", {})
    atomic_write_json(run.run_dir / run_files.WORKER_RESULT,
                      {"kind": "run", "train_results": train.to_json(), "eval_results": evals.to_json(),
                       "eval_dir": str(run.run_dir / "eval"), "timings": {"train_call_seconds": 7.0}})
    rec = outcome(run, 0, 12.5)
    assert rec.status == "ok" and rec.wall_seconds == 12.5
    for name in TRAIN_FIELDS_IN_COMPARISON:
        assert getattr(rec, name) == getattr(train, name), name
    assert (rec.peft, rec.task, rec.task_metrics, rec.headline_metric, rec.headline_value, rec.headline_ci,
            rec.retention, rec.generation) == (True, "qa", evals.metrics, "contains_answer", 0.5, [0.0, 1.0],
                                               evals.retention, evals.generation)
    results = ResultsFile(tmp_path)
    results.put(rec)
    (line,) = results.records()
    assert ComparisonRecord.from_json(line) == rec
    assert all(line[name] == getattr(train, name) for name in TRAIN_FIELDS_IN_COMPARISON
               if getattr(train, name) is not None)

    folder = tmp_path / "lora"
    folder.mkdir()
    (folder / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 16, "lora_alpha": 32}))
    (folder / run_files.TRAIN_RESULTS).write_text(json.dumps(train.to_json()))
    (folder / run_files.EVAL_RESULTS).write_text(json.dumps(evals.to_json()))
    card = model_card(folder, repo_id="me/lora")
    for shown in ("4,884,480 of 139,399,488 (3.504%)", "(400 training examples)", "| steps / epochs | 2 / 0.02 |",
                  "| effective batch size | 4 |", "5.6 s on cpu", "| final train loss | 1.0757 |",
                  "## Evaluation: qa", "(4 examples; 95% bootstrap interval for contains_answer: 0.0000-1.0000)",
                  "| **contains_answer** | 0.5000 |", "| drift | KL from base", "trained with tunelab 0.1.0"):
        assert shown in card, shown


def test_results_jsonl_lines_are_checked_on_load_and_on_put(tmp_path):
    from tunelab.comparison.results import ResultsFile

    results = ResultsFile(tmp_path)
    good = ComparisonRecord(key="a", label="base", method="base", seed=None, status="ok", error=None,
                            wall_seconds=1.0, run_dir="runs/base")
    results.put(good)
    with pytest.raises(TunelabError, match="unknown key\\(s\\) headline"):
        results.put({**good.to_json(), "key": "b", "headline": 0.5})
    legacy = json.loads((REPO / "bench" / "results" / "quality-spider.json").read_text())["records"][1]
    results.put(legacy)  # a record written before schema_version: read as it was
    lines = results.path.read_text().splitlines()
    results.path.write_text("\n".join([*lines, json.dumps({**good.to_json(), "key": "c", "headline": 1})]))
    with pytest.raises(TunelabError, match="results.jsonl line 3: .*unknown key\\(s\\) headline"):
        results.records()
    trial = TrialRecord(key="trial:s:0", label="lora", method="lora", seed=0, study="s", trial=0,
                        learning_rate=1e-4, status="finished", pruned_at_step=None, stopped_by=None,
                        objective="validation_loss", objective_value=1.5, validation_loss_curve=[], steps=4,
                        total_steps=8, cost_seconds=2.0, train_seconds=1.0, error=None, run_dir=None, retry_of=None,
                        range=[1e-5, 1e-3])
    results.path.write_text("\n".join(lines))
    results.put(trial)
    assert [r.get("kind") for r in results.records()] == [None, None, "trial"]
    assert results.by_key()["trial:s:0"]["objective_value"] == 1.5


def test_the_shipped_bench_results_are_records_of_the_declared_shape():
    for path in sorted((REPO / "bench" / "results").glob("quality-*.json")):
        for data in json.loads(path.read_text())["records"]:
            assert ComparisonRecord.from_json(data, source=path).extra == {}, path


def test_api_read_results_checks_the_file(tmp_path):
    from tunelab.api import read_results

    path = tmp_path / "train_results.json"
    path.write_text(LEGACY_TRAIN)
    assert read_results(path)["schema_version"] == SCHEMA_VERSION
    path.write_text(json.dumps({**_train().to_json(), "train_secs": 1.0}))
    with pytest.raises(TunelabError, match="unknown key\\(s\\) train_secs"):
        read_results(path)
    assert Path(path).is_file()


def test_a_comparison_finds_its_predictions_from_any_directory_and_after_a_move(tmp_path, monkeypatch, caplog):
    """eval_dir is stored relative to the comparison's folder and read back absolute: paired intervals need the
    per-example predictions, and a report rebuilt elsewhere used to lose them without a word."""
    from tunelab.comparison.results import ResultsFile
    from tunelab.comparison.statistics import prediction_rows
    from tunelab import run_files

    eval_dir = tmp_path / "cmp" / "runs" / "lora" / "eval"
    eval_dir.mkdir(parents=True)
    (eval_dir / run_files.EVAL_PREDICTIONS).write_text(json.dumps({"source": "qa", "score": 1.0}) + "\n")
    record = ComparisonRecord(key="a", label="lora", method="lora", seed=0, status="ok", error=None,
                              wall_seconds=1.0, run_dir="runs/lora", eval_dir="cmp/runs/lora/eval")
    monkeypatch.chdir(tmp_path)  # where the comparison ran: the runner's paths are relative to it
    ResultsFile(Path("cmp")).put(record)
    assert json.loads((tmp_path / "cmp" / run_files.COMPARISON_RESULTS).read_text())["eval_dir"] == "runs/lora/eval"

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    (line,) = ResultsFile(tmp_path / "cmp").records()
    assert line["eval_dir"] == str(eval_dir.resolve()) and prediction_rows(line) == [{"source": "qa", "score": 1.0}]
    (tmp_path / "cmp").rename(tmp_path / "moved")
    (line,) = ResultsFile(tmp_path / "moved").records()
    assert prediction_rows(line) == [{"source": "qa", "score": 1.0}]

    # a results.jsonl written before: its path is relative to where the comparison ran, and found from there
    legacy = tmp_path / "moved" / run_files.COMPARISON_RESULTS
    legacy.write_text(json.dumps({**record.to_json(), "eval_dir": "moved/runs/lora/eval"}) + "\n")
    monkeypatch.chdir(tmp_path)
    assert prediction_rows(ResultsFile(Path("moved")).records()[0]) == [{"source": "qa", "score": 1.0}]

    shutil.rmtree(tmp_path / "moved" / "runs")
    with caplog.at_level("WARNING"):
        assert prediction_rows(ResultsFile(Path("moved")).records()[0]) == []
    assert "paired differences cannot be computed" in caplog.text
