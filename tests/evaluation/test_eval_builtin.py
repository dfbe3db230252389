"""Integration: `tunelab eval` on the built-in real models and real data."""

from __future__ import annotations

import json

import pytest

from tunelab.cli import main

from conftest import builtin_model, shared_data

SQL_SYSTEM_PROMPT = "Write one SQLite query that answers the question, using the tables given. Reply with SQL only."

pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("smollm2")]


def test_smollm2_base_on_builtin_text2sql_and_general_knowledge(tmp_path, capsys):
    from tunelab.builtin.text2sql import builtin_text2sql_dir

    builtin_model("smollm2-135m")
    out = tmp_path / "eval"
    code = main(["eval", "--model_name_or_path", "smollm2-135m", "--task", "text2sql", "--dataset_name_or_path",
                 str(builtin_text2sql_dir()), "--max_eval_samples", "6", "--retention", "general_knowledge",
                 "--probe_samples", "12", "--max_new_tokens", "48", "--per_device_eval_batch_size", "12",
                 "--system_prompt", SQL_SYSTEM_PROMPT,
                 "--output_dir", str(out), "--use_cpu"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    r = json.loads((out / "eval_results.json").read_text())
    print("smollm2-135m base:", r["metrics"], r["retention"]["general_knowledge"]["after"])
    assert r["num_examples"] == 6 and 0.0 <= r["metrics"]["execution_accuracy"] <= 1.0
    assert r["metrics"]["executable"] > 0.2, "the instruct model should write some runnable SQL unprompted"
    gk = r["retention"]["general_knowledge"]
    assert gk["before"] == gk["after"] and gk["retention_ratio"] == 1.0   # the base against itself
    assert gk["after"] >= 0.25, "SmolLM2-135M-Instruct answers simple general-knowledge questions"


def test_minilm_stsb_spearman(tmp_path, capsys):
    sts = shared_data("stsb", "sts-dev.csv")
    builtin_model("minilm-l6")
    out = tmp_path / "sts"
    code = main(["eval", "--model_name_or_path", "minilm-l6", "--task", "similarity", "--dataset_name_or_path",
                 str(sts), "--output_dir", str(out), "--use_cpu"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    r = json.loads((out / "eval_results.json").read_text())
    assert r["num_examples"] == 1500
    assert r["metrics"]["spearman"] >= 0.80
    lo, hi = r["confidence_intervals"]["spearman"]
    assert lo < r["metrics"]["spearman"] < hi
