"""The README's measured sections are generated from bench/results (never typed in), and what the generator says
about a result follows from the result."""

from __future__ import annotations

import importlib.util
import json
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
    return {"label": label, "status": "ok", "seed": 0, "task_metrics": {"rouge1": rouge1}}


def _bench_text(make_readme, tmp_path, monkeypatch, records) -> str:
    """The README's bench section generated from a results folder holding one DialogSum quality run."""
    run = {"records": records, "budget": ["--max_steps", "40"], "seeds": [0], "wall_seconds": 600,
           "table": {"header": ["Approach"], "rows": [[r["label"]] for r in records]},
           "machine": {"cores": 2, "cpu": "test", "torch": "x", "transformers": "x", "peft": "x", "date": "2026"}}
    (tmp_path / "quality-dialogsum.json").write_text(json.dumps(run), encoding="utf-8")
    monkeypatch.setattr(make_readme, "RESULTS", tmp_path)
    return make_readme.bench_section()


def test_dialogsum_shape_agrees_when_lora_is_close_to_full(make_readme, tmp_path, monkeypatch):
    text = _bench_text(make_readme, tmp_path, monkeypatch,
                       [_record("base", 0.20), _record("full", 0.30), _record("lora r=32", 0.29)])
    assert "full 0.300 (+10.0 points), LoRA r=32 0.290 (+9.0 points), LoRA 1.0 points below full" in text
    assert "The shape agrees" in text and "40 steps" in text


def test_dialogsum_shape_differs_when_lora_falls_behind(make_readme, tmp_path, monkeypatch):
    text = _bench_text(make_readme, tmp_path, monkeypatch,
                       [_record("base", 0.20), _record("full", 0.30), _record("lora r=32", 0.25),
                        _record("lora r=32", 0.27)])
    assert "LoRA r=32 0.260" in text  # the mean over seeds
    assert "The shape differs: LoRA 4.0 points below full, not within 2" in text


def test_dialogsum_says_above_when_lora_beats_full(make_readme, tmp_path, monkeypatch):
    text = _bench_text(make_readme, tmp_path, monkeypatch,
                       [_record("base", 0.16), _record("full", 0.34), _record("lora r=32", 0.40)])
    assert "LoRA 6.0 points above full" in text and "The shape differs: LoRA 6.0 points above full" in text


def test_dialogsum_says_one_seed_is_indicative_only_when_a_method_has_one_seed(make_readme, tmp_path, monkeypatch):
    one = _bench_text(make_readme, tmp_path, monkeypatch,
                      [_record("base", 0.20), _record("full", 0.30), _record("lora r=32", 0.29)])
    two = _bench_text(make_readme, tmp_path, monkeypatch,
                      [_record("base", 0.20), _record("full", 0.30), _record("full", 0.31), _record("lora r=32", 0.29),
                       _record("lora r=32", 0.30)])
    assert "One seed only" in one and "One seed only" not in two


def test_dialogsum_comparison_needs_all_three_rows(make_readme, tmp_path, monkeypatch):
    text = _bench_text(make_readme, tmp_path, monkeypatch, [_record("base", 0.2), _record("full", 0.3)])
    assert "### Quality and retention: dialogsum" in text and "Against the seed's published" not in text


def test_a_probe_without_ratios_says_why_under_its_table(make_readme, tmp_path, monkeypatch):
    why = "the base model scores bleu 0.34, below 1: it shows none of this skill"
    records = [{"label": label, "status": "ok", "seed": 0,
                "retention": {"multi30k_en_fr": {"metric": "bleu", "retention_ratio": None, "retention_note": why}}}
               for label in ("base", "lora")]
    text = _bench_text(make_readme, tmp_path, monkeypatch, records)
    assert text.count(why) == 1 and f"multi30k_en_fr: {why}." in text


def test_benchmark_figures_agree_only_within_the_interval(make_readme, tmp_path, monkeypatch):
    def bench(acc, se):
        scores = {"acc": acc, "acc_stderr": se, "acc_norm": acc, "acc_norm_stderr": se}
        return {"scores": scores, "metric": "acc_norm", "num_examples": 200, "num_documents": 1000,
                "chance_level": 0.25, "seconds": 1.0}

    run = {"benchmarks": {"arc_easy": bench(0.40, 0.03), "arc_challenge": bench(0.34, 0.03), "mmlu": bench(0.25, 0.01)},
           "published": {"arc_mean": 37.3, "mmlu_cloze": 29.3, "source": "model card"}, "command": "bench",
           "limit": 200, "seed": 0, "machine": {"cores": 2, "cpu": "test", "date": "2026"}}
    (tmp_path / "benchmarks-smollm2.json").write_text(json.dumps(run), encoding="utf-8")
    monkeypatch.setattr(make_readme, "RESULTS", tmp_path)
    text = make_readme.benchmarks_section()
    # ARC: mean 37.0, standard error sqrt(0.03^2 + 0.03^2) / 2 -> 95% half-width 4.2: the card's 37.3 agrees
    assert "ARC mean of Easy and Challenge, acc 37.0 against 37.3 published, -0.3 points" in text
    assert "within our 95% interval (±4.2), so they agree" in text
    assert "MMLU cloze, acc 25.0 against 29.3 published, -4.3 points, outside our 95% interval (±2.0), so they " \
           "differ" in text


def _curve_run(label, method, points):
    """A run as compare_overhead.py's trajectory summary keeps it: (score, drift KL) per point, the last its end."""
    *middle, (score, kl) = points
    point = lambda s, k: {"headline_value": s, "retention": {"drift": {"kl_divergence": k}}}  # noqa: E731
    return {"label": label, "method": method, **point(score, kl),
            "trajectory": [{"step": 10 * (i + 1), **point(s, k)} for i, (s, k) in enumerate(middle)]}


def test_an_ica_point_is_above_the_front_only_when_no_plain_point_beats_it_on_both_axes(make_readme):
    runs = [_curve_run("base", "base", [(0.0, 0.0)]),
            _curve_run("lora", "lora", [(0.10, 0.02), (0.20, 0.05)]),
            # halfway: more score than the base at less drift than lora's first point (above); at the end: lora's
            # first point has more score at less drift (below)
            _curve_run("lora+ica", "lora", [(0.05, 0.01), (0.08, 0.03)])]  # (a mask_mode entry's method is lora)
    placed = {p["step"]: p for p in make_readme.ica_front(runs, {"lora+ica"})}
    assert placed["10"]["plain_best"] == 0.0 and placed["10"]["above"] is True
    assert placed["end"]["plain_best"] == 0.10 and placed["end"]["above"] is False
    assert {p["label"] for p in placed.values()} == {"lora+ica"}  # plain runs are the front, not placed on it


def _diff(estimate, low, high, metric="contains_answer"):
    return {"metric": metric, "estimate": estimate, "low": low, "high": high,
            "excludes_zero": low > 0 or high < 0, "text": f"{estimate:+}"}


@pytest.mark.parametrize("task, gk, drift, says", [
    (_diff(-0.1, -0.2, -0.05), _diff(0.1, 0.05, 0.2), _diff(-0.01, -0.02, -0.005, "kl_divergence"),
     "this agrees with their finding"),
    (_diff(-0.1, -0.2, -0.05), _diff(0.0, -0.1, 0.1), _diff(0.01, 0.005, 0.02, "kl_divergence"),
     "this disagrees with their finding on drift"),
    (_diff(-0.05, -0.1, 0.0), _diff(0.0, -0.1, 0.1), _diff(0.0, -0.01, 0.01, "kl_divergence"),
     "the data neither confirm nor contradict"),
])
def test_the_biderman_comparison_claims_only_what_the_intervals_support(make_readme, task, gk, drift, says):
    task = {**task, "metric": "rougeL"}
    d = {"against_full": {"lora r=16": {"rougeL": task, "general_knowledge": gk, "drift": drift}},
         "runs": [_curve_run("full", "full", [(0.2, 0.05)]),
                  {**_curve_run("lora r=16", "lora", [(0.1, 0.01)]), "headline_metric": "rougeL"}]}
    text = make_readme.against_biderman(d)
    assert says in text
    assert "1 of lora r=16's 1 evaluated points lie above" in text  # 0.1 at KL 0.01: full's curve has only 0 there


def test_the_biderman_comparison_holds_the_false_discovery_rate_over_its_intervals(make_readme):
    """With the intervals' p-values stored, a difference that excludes 0 alone but not once the false discovery rate
    over the paragraph's intervals is held at 5% is not claimed (the demo's general knowledge, +12.5 [+3.1, +25.0],
    p 0.01 among 4 intervals, is kept; p 0.04 beside three at 1 is not)."""
    def with_p(diff, p):
        return {**diff, "p_value": p}

    def text(gk_p, drift_p):
        d = {"against_full": {"lora r=16": {
                "rougeL": with_p({**_diff(-0.02, -0.06, 0.0), "metric": "rougeL"}, 0.9),
                "general_knowledge": with_p(_diff(0.125, 0.031, 0.25), gk_p),
                "drift": with_p(_diff(0.03, 0.02, 0.04, "kl_divergence"), drift_p),
                "arc_easy": with_p(_diff(0.0, -0.04, 0.04), 1.0)}},
             "runs": [_curve_run("full", "full", [(0.2, 0.05)]),
                      {**_curve_run("lora r=16", "lora", [(0.1, 0.01)]), "headline_metric": "rougeL"}]}
        return make_readme.against_biderman(d)

    kept = text(0.01, 0.0)
    assert "on general_knowledge, +0.125: forgets less" in kept
    marginal = text(0.04, 1.0)  # the drift interval too: only its p-value decides here
    assert "on general_knowledge, +0.125: excludes 0 alone, not with the false discovery rate" in marginal
    assert "forgets less" not in marginal


def test_the_overhead_bound_spreads_every_process_cpu_second_over_the_cores(make_readme):
    # two runs: 300 + 100 CPU seconds of process, 120 of them in training calls, 50 s of training wall time
    prof = {"train_seconds": 50.0, "runs": [
        {"cpu_seconds": {"process_seconds": 300.0, "train_call_seconds": 120.0}},
        {"cpu_seconds": {"process_seconds": 100.0}}]}
    text = make_readme._overlap_bound(prof, 2)
    assert "those 400 CPU seconds would still take 200 s, 4.00x the training time" in text
    # 1.3 x 50 s x 2 cores = 130 CPU seconds, 120 of them training's: 10 left for the 280 outside training
    assert "the 280 CPU seconds spent outside the training calls cut to about 10" in text
    assert make_readme._overlap_bound({**prof, "runs": [{"cpu_seconds": {}}]}, 2) == ""  # no CPU figures, no claim


def test_a_median_under_the_target_is_read_against_the_machine_s_own_drift(make_readme):
    def result(full_rates, lora_rates, full_median, lora_median):
        runs = [{"method": m, "precision": "bf16", "plain_loop": {"tokens_per_second": r}}
                for m, rates in (("full", full_rates), ("lora", lora_rates)) for r in rates]
        return {"target_ratio": 0.97, "runs": runs, "summary": {
            "full bf16": {"method": "full", "precision": "bf16", "median_ratio": full_median},
            "lora bf16": {"method": "lora", "precision": "bf16", "median_ratio": lora_median}}}

    # the plain loop moved 10% (200 to 220 tok/s): 0.95 is 2.1% under the target, within it
    (text,) = [t for t in make_readme._drift_sentence(result([200.0, 220.0], [300.0, 303.0], 0.95, 1.0)) if t]
    assert "moved by up to 10% (full bf16: 200.0 to 220.0 tok/s)" in text
    assert "Every median under the target (full bf16 (0.950)) is closer to it than that" in text
    # a machine steady to 1%: 0.95 is further under the target than the drift, and is said to be
    (text,) = [t for t in make_readme._drift_sentence(result([200.0, 202.0], [300.0, 301.0], 0.95, 1.0)) if t]
    assert "Under the target by more than that: full bf16 (0.950)." in text and "does not tell" not in text
    assert "Every median" not in make_readme._drift_sentence(result([200.0, 220.0], [300.0, 303.0], 1.0, 0.99))[0]


def test_the_generation_sentence_states_ratios_of_the_recorded_speeds(make_readme):
    per_run = [{"label": "base", "inference": {"tokens_per_second": 90.0, "new_tokens": 256, "repeats": 3}},
               {"label": "full", "inference": {"tokens_per_second": 81.0}},
               {"label": "lora", "inference": {"adapter_tokens_per_second": 60.0, "merged_tokens_per_second": 80.0,
                                               "new_tokens": 256, "repeats": 3}},
               {"label": "qlora", "inference": {"adapter_tokens_per_second": 30.0, "merged_tokens_per_second": None,
                                                "not_merged_because": "quantized base"}}]
    text = make_readme._generation_sentence({"per_run": per_run})
    assert "lora generates with its adapter attached at 75% of its merged speed" in text
    assert "qlora, whose 4-bit base cannot take the adapter in, at 33% of the base model's speed" in text
    assert "forced to one length, 256 new tokens a repeat, the median of 3 repeats" in text
    assert "the base and full fine-tuning, models of one shape, measure 10% apart here" in text
    assert make_readme._generation_sentence({"per_run": [{"label": "full"}]}) == ""


def test_results_measured_with_probes_under_the_system_prompt_say_so(make_readme, tmp_path, monkeypatch):
    """A quality result written before retention probes were asked without the run's system prompt (no
    probe_prompting in its file) says so under its table, where its recipe has a system prompt; one written since,
    or of a recipe without one (sst2-sts), does not."""
    records = [_record("base", 0.2), _record("lora", 0.3)]
    old = _bench_text(make_readme, tmp_path, monkeypatch, records)
    assert "asked under the recipe's system prompt, as tunelab asked them when this was measured (2026)" in old
    run = json.loads((tmp_path / "quality-dialogsum.json").read_text())
    (tmp_path / "quality-dialogsum.json").write_text(json.dumps({**run, "probe_prompting": "without it"}))
    assert "asked under the recipe's system prompt" not in make_readme.bench_section()
    assert make_readme.probes_caveat(run, "sst2-sts") == []


def test_a_fixed_and_a_searched_table_measured_apart_are_not_read_side_by_side(make_readme):
    """The searched section sets a fixed-rate table beside a searched one: probes asked two ways, runs on CPUs with
    other bf16 instructions, or an untouched base that scores otherwise each say the columns do not compare."""
    def result(asked, cpu, date="2026-12-06T10:00:00"):
        return {"probe_prompting": asked, "machine": {"date": date},
                "records": [{"label": "base"}, {"label": "full", "precision_reason": cpu}]}

    same = result("without it", "auto: this CPU has avx512_bf16")
    assert make_readme._measured_apart(same, same, "rougeL", ["0.1263"], ["0.1263"]) == []
    old = result(None, "auto: this CPU has avx512_bf16 and amx_bf16", "2026-12-05T10:00:00")
    reasons = make_readme._measured_apart(same, old, "rougeL", ["0.1263"], ["0.1127"])
    assert len(reasons) == 3
    assert reasons[0] == ("the fixed-rate table's retention probes were asked without the recipe's system prompt, "
                          "the searched one's under the recipe's system prompt")
    assert "different CPUs" in reasons[1] and "amx_bf16" in reasons[1]
    assert reasons[2].startswith("the untouched base scores rougeL 0.1263 in the fixed-rate table (2026-12-06) and "
                                 "0.1127 in the searched one (2026-12-05)")


def test_a_resumed_benchmark_is_timed_by_its_own_work_not_the_last_invocation(make_readme):
    """bench/quality.py resumes: its last invocation's wall time is not the work's when an earlier one did part."""
    machine = {"cores": 2, "cpu": "x86_64", "date": "2026-12-07T10:00:00"}
    d = {"wall_seconds": 4500, "runs_wall_seconds": 1620, "search": {"seconds": 5040}, "machine": machine}
    whole = make_readme._time_taken(d)
    assert whole.startswith("The whole command took 75 min") and "the search took 84 min" in whole
    resumed = make_readme._time_taken({**d, "resumed": True})
    assert resumed.startswith("The comparison's runs took 27 min and the search 84 min")
    assert "the last took 75 min" in resumed and "whole command" not in resumed
    assert "search" not in make_readme._time_taken({**d, "search": None, "resumed": True})
