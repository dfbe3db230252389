"""The README's measured sections are generated from bench/results (never typed in), and what the generator says
about a result follows from the result."""

from __future__ import annotations

import importlib.util
import sys

import pytest

from conftest import REPO


@pytest.fixture(scope="module")
def make_readme():
    spec = importlib.util.spec_from_file_location("make_readme", REPO / "bench" / "make_readme.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["make_readme"] = module
    spec.loader.exec_module(module)
    return module


def test_readme_is_what_bench_results_generate(make_readme):
    text = (REPO / "README.md").read_text(encoding="utf-8")
    assert make_readme.render(text) == text, "README.md is out of date: run `python bench/make_readme.py`"


def _record(label, rouge1):
    return {"label": label, "status": "ok", "task_metrics": {"rouge1": rouge1}}


def _dialogsum(records):
    return {"records": records, "budget": ["--max_steps", "40"]}


def test_dialogsum_shape_agrees_when_lora_is_close_to_full(make_readme):
    lines = make_readme._dialogsum_against_seed(_dialogsum(
        [_record("base", 0.20), _record("full", 0.30), _record("lora r=32", 0.29)]))
    text = " ".join(lines)
    assert "full 0.300 (+10.0 points), LoRA r=32 0.290 (+9.0 points), LoRA 1.0 points below full" in text
    assert "The shape agrees" in text and "40 steps" in text


def test_dialogsum_shape_differs_when_lora_falls_behind(make_readme):
    text = " ".join(make_readme._dialogsum_against_seed(_dialogsum(
        [_record("base", 0.20), _record("full", 0.30), _record("lora r=32", 0.25), _record("lora r=32", 0.27)])))
    assert "LoRA r=32 0.260" in text  # the mean over seeds
    assert "The shape differs: LoRA 4.0 points below full, not within 2" in text


def test_dialogsum_says_above_when_lora_beats_full(make_readme):
    text = " ".join(make_readme._dialogsum_against_seed(_dialogsum(
        [_record("base", 0.16), _record("full", 0.34), _record("lora r=32", 0.40)])))
    assert "LoRA 6.0 points above full" in text and "The shape differs: LoRA 6.0 points above full" in text


def test_dialogsum_says_one_seed_is_indicative_only_when_a_method_has_one_seed(make_readme):
    one = " ".join(make_readme._dialogsum_against_seed(_dialogsum(
        [_record("base", 0.20), _record("full", 0.30), _record("lora r=32", 0.29)])))
    two = " ".join(make_readme._dialogsum_against_seed(_dialogsum(
        [_record("base", 0.20), _record("full", 0.30), _record("full", 0.31), _record("lora r=32", 0.29),
         _record("lora r=32", 0.30)])))
    assert "One seed only" in one and "One seed only" not in two


def test_dialogsum_comparison_needs_all_three_rows(make_readme):
    assert make_readme._dialogsum_against_seed(_dialogsum([_record("base", 0.2), _record("full", 0.3)])) == []


def test_a_probe_without_ratios_says_why_under_its_table(make_readme):
    why = "the base model scores bleu 0.34, below 1: it shows none of this skill"
    records = [{"label": label, "status": "ok", "seed": 0,
                "retention": {"multi30k_en_fr": {"metric": "bleu", "retention_ratio": None, "retention_note": why}}}
               for label in ("base", "lora")]
    text = " ".join(make_readme._failures({"records": records}))
    assert text.count(why) == 1 and f"multi30k_en_fr: {why}." in text
