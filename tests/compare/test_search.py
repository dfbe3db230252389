"""The learning-rate search of `tunelab compare` (comparison/search.py) on a tiny real model, and the paired
statistics the report's verdicts use (comparison/statistics.py).

The task is built so that the rate matters: every training answer is the same SQL query, which a good rate learns
within a few steps and a rate of 1e-7 does not learn at all."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from tunelab.comparison.results import ResultsFile
from tunelab.errors import TunelabError

from conftest import write_jsonl

pytestmark = pytest.mark.xdist_group("compare")

TRAIN = [{"question": f"Count the books on shelf {i}.", "answer": "SELECT count(*) FROM books"} for i in range(40)]
TEST = [{"question": f"What is the capital of France? ({i})", "answer": "Paris"} for i in range(4)]


def search_recipe(tmp: Path, model: Path, *, trials: int, seed: int, low: float = 1e-7, high: float = 1e-1,
                  max_steps: int = 6, curve_points: int = 0) -> Path:
    recipe = {"name": "tiny-search", "model": str(model), "task": "qa",
              "data": {"train": str(write_jsonl(tmp / "train.jsonl", TRAIN)),
                       "eval": str(write_jsonl(tmp / "test.jsonl", TEST))},
              "budget": {"max_steps": max_steps, "per_device_train_batch_size": 4, "max_seq_length": 64},
              "eval": {"max_new_tokens": 4, "per_device_eval_batch_size": 4},
              # a grid over the range in a seeded order: evaluations every 2 steps, the pruner's rungs at 2 and 6
              "search": {"trials": trials, "sampler": "grid", "seed": seed, "evaluations": 3},
              "methods": [{"method": "full", "learning_rate_range": [low, high]}], "seeds": [0]}
    if curve_points:
        recipe["curve_points"] = curve_points
    path = tmp / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def compare_cmd(recipe: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "tunelab", "compare", str(recipe), "--output_dir", str(out), "--device", "cpu"]


def trials_of(out: Path) -> list[dict]:
    return [r for r in ResultsFile(out).records() if r.get("kind") == "trial"]


def study_trials(out: Path) -> list:
    import optuna

    from tunelab.comparison.search import storage_url

    (summary,) = optuna.get_all_study_summaries(storage_url(out))
    return optuna.load_study(study_name=summary.study_name, storage=storage_url(out)).get_trials()


@pytest.fixture(scope="module")
def searched(tiny_llama, tmp_path_factory):
    """One comparison with the search on: a grid of 1e-4, 1e-1, 1e-7 (in that order) for full fine-tuning, and a
    trajectory of 2 points for the comparison proper (which the trials must not pay for)."""
    tmp = tmp_path_factory.mktemp("search")
    out = tmp / "cmp"
    done = subprocess.run(compare_cmd(search_recipe(tmp, tiny_llama, trials=3, seed=1, curve_points=2), out),
                          capture_output=True,
                          text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    return tmp, out


def test_the_search_picks_a_rate_that_learns_and_prunes_early(searched):
    _, out = searched
    trials = {t["trial"]: t for t in trials_of(out)}
    assert sorted(trials) == [0, 1, 2]
    by_rate = {round(float(np.log10(t["learning_rate"]))): t for t in trials.values()}
    assert sorted(by_rate) == [-7, -4, -1]
    # 1e-7 learns nothing in the budget: it falls behind at the first rung and is pruned there, before the end.
    slow = by_rate[-7]
    assert slow["status"] == "pruned" and slow["pruned_at_step"] == 2 and slow["steps"] == 2 < slow["total_steps"]
    assert "pruned at step 2" in (out / "report.md").read_text()
    (run,) = [r for r in ResultsFile(out).records() if r["label"] == "full" and r.get("kind") != "trial"]
    chosen = run["search"]["chosen_learning_rate"]
    picked = next(t for t in trials.values() if t["learning_rate"] == chosen)
    # The chosen rate is the finished trial with the lowest validation loss, and that loss fell while it trained,
    # to well below where the 1e-7 trial stayed.
    finished = [t for t in trials.values() if t["status"] == "finished"]
    assert picked["objective_value"] == min(t["objective_value"] for t in finished)
    curve = [p["eval_loss"] for p in picked["validation_loss_curve"]]
    assert curve[-1] < curve[0] and picked["objective_value"] < slow["validation_loss_curve"][-1]["eval_loss"] - 0.3
    # The comparison proper trained at that rate for the full budget and was evaluated on the test set.
    assert run["status"] == "ok" and run["learning_rate"] == chosen and run["global_step"] == 6
    assert run["search"]["trials"] == 3 and run["search"]["tuning_steps"] == 6 + 6 + 2
    # Cost: each trial recorded with its seconds; the search's seconds are their sum.
    assert run["search"]["tuning_seconds"] == pytest.approx(sum(t["cost_seconds"] for t in trials.values()))
    # and how many trials trained beside other work (their threads waited for a core: tunelab.contention)
    assert 0 <= run["search"]["busy_trials"] <= 3


def test_the_trials_never_see_the_test_set(searched):
    tmp, out = searched
    train = {json.dumps(r, sort_keys=True) for r in TRAIN}
    test_file = str(tmp / "test.jsonl")
    specs = [json.loads(p.read_text()) for p in sorted((out / "search").glob("*/spec.json"))]
    assert len(specs) == 3
    for spec in specs:
        assert test_file not in json.dumps(spec)  # no option of a trial names the test file
        data = Path(spec["train_options"]["dataset_name_or_path"])
        seen = {name: [json.dumps(json.loads(line), sort_keys=True)
                       for line in (data / name).read_text().splitlines()] for name in ("train.jsonl",
                                                                                        "validation.jsonl")}
        # what the trial trains and is judged on are training rows, split in two, nothing else
        assert set(seen["train.jsonl"]) | set(seen["validation.jsonl"]) == train
        assert not set(seen["train.jsonl"]) & set(seen["validation.jsonl"])
        assert len(seen["validation.jsonl"]) == 4  # 10% of 40
        assert sorted(os.listdir(data)) == ["train.jsonl", "validation.jsonl"]
        # a trial is judged by its validation loss only: it neither saves nor tracks a trajectory
        assert spec["train_options"]["curve_points"] == 0 and not spec["train_options"]["track_retention"]
    (run,) = [r for r in ResultsFile(out).records() if r["label"] == "full" and r.get("kind") != "trial"]
    assert len(run["trajectory"]) == 1  # while the comparison proper does (its 2nd point is the end of training)


def test_the_report_shows_the_search(searched):
    _, out = searched
    md = (out / "report.md").read_text()
    assert "## Learning-rate search" in md and "validation split of 10% of the training rows" in md
    assert "the test set was not read" in md
    header = next(line for line in md.splitlines() if line.startswith("| Approach"))
    assert "Learning rate" in header and "Tuning cost" in header
    assert (out / "plots" / "lr_sensitivity.png").stat().st_size > 5000
    from tunelab.comparison.report import plot_lr_sensitivity

    ax = plot_lr_sensitivity(ResultsFile(out).records()).axes[0]
    pruned = [line for line in ax.lines if line.get_marker() == "x"]
    assert len(pruned) == 1 and pruned[0].get_xdata()[0] == pytest.approx(1e-7)
    circled = [line for line in ax.lines if line.get_markersize() == 16]
    run = next(r for r in ResultsFile(out).records() if r["label"] == "full" and r.get("kind") != "trial")
    assert len(circled) == 1 and circled[0].get_xdata()[0] == run["search"]["chosen_learning_rate"]
    # A second command finds the search and the runs finished and repeats nothing.
    before = (out / "results.jsonl").read_text()
    done = subprocess.run(compare_cmd(out.parent / "recipe.yaml", out), capture_output=True, text=True)
    assert done.returncode == 0 and "ran 0 run(s)" in done.stdout
    assert (out / "results.jsonl").read_text() == before


def _children(pid: int) -> list:
    import psutil

    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def test_a_killed_search_resumes_without_repeating_a_finished_trial(tiny_llama, tmp_path):
    recipe = search_recipe(tmp_path, tiny_llama, trials=3, seed=1)
    out = tmp_path / "cmp"
    proc = subprocess.Popen(compare_cmd(recipe, out), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.time() + 400
    try:
        # Kill everything once trial 0 is recorded and trial 1's worker is training.
        while time.time() < deadline:
            if trials_of(out) and list((out / "search").glob("*trial1*/log.txt")):
                time.sleep(1.0)
                break
            assert proc.poll() is None, "the comparison ended before it could be killed"
            time.sleep(0.2)
        else:
            pytest.fail("the first trial did not finish in time")
        for child in [*_children(proc.pid), proc]:
            try:
                os.kill(child.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    finally:
        proc.wait()
    (first,) = trials_of(out)
    stamp = (Path(first["run_dir"]) / "run_result.json").stat().st_mtime_ns
    done = subprocess.run(compare_cmd(recipe, out), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (Path(first["run_dir"]) / "run_result.json").stat().st_mtime_ns == stamp, "trial 0 ran again"
    records = trials_of(out)
    numbers = [r["trial"] for r in records]
    study = study_trials(out)
    assert sorted(numbers) == [t.number for t in study]  # every trial of the study in results.jsonl, once
    interrupted = [r for r in records if r["status"] == "interrupted"]
    assert [r["trial"] for r in interrupted] == [1]
    retried = [r for r in records if r["retry_of"] == 1]
    assert len(retried) == 1 and retried[0]["learning_rate"] == interrupted[0]["learning_rate"]
    # The study completed its three trials (the interrupted one does not count) and the comparison ran.
    counted = [r for r in records if r["status"] != "interrupted"]
    assert len(counted) == 3 and len({r["learning_rate"] for r in counted}) == 3
    run = next(r for r in ResultsFile(out).records() if r["label"] == "full" and r.get("kind") != "trial")
    assert run["status"] == "ok" and run["search"]["trials"] == 3


def test_a_crashed_trial_is_recorded_as_failed_and_the_comparison_finishes(tiny_llama, tmp_path):
    recipe = search_recipe(tmp_path, tiny_llama, trials=2, seed=1, low=1e-4)
    out = tmp_path / "cmp"
    proc = subprocess.Popen(compare_cmd(recipe, out), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    deadline = time.time() + 300
    killed = False
    while not killed and time.time() < deadline and proc.poll() is None:
        for child in _children(proc.pid):  # the worker of trial 0, once it runs: it crashes (SIGKILL)
            if any("trial0" in part for part in child.cmdline()):
                os.kill(child.pid, signal.SIGKILL)
                killed = True
        time.sleep(0.1)
    stdout, _ = proc.communicate(timeout=600)
    assert killed and proc.returncode == 0, stdout[-2000:]
    trials = {t["trial"]: t for t in trials_of(out)}
    assert trials[0]["status"] == "failed" and "SIGKILL" in trials[0]["error"]
    assert trials[1]["status"] == "finished"
    run = next(r for r in ResultsFile(out).records() if r["label"] == "full" and r.get("kind") != "trial")
    assert run["status"] == "ok" and run["learning_rate"] == trials[1]["learning_rate"]
    assert run["search"]["failed"] == 1 and run["search"]["finished"] == 1
    assert "failed (killed by SIGKILL" in (out / "report.md").read_text()


def test_a_trial_trains_without_writing_its_weights(tiny_llama, tmp_path):
    from tunelab.config import TrainOptions
    from tunelab.training import train

    data = write_jsonl(tmp_path / "train.jsonl", TRAIN[:8])
    opts = TrainOptions(model_name_or_path=str(tiny_llama), dataset_name_or_path=str(data), method="full",
                        output_dir=str(tmp_path / "trial"), max_steps=2, max_seq_length=64, use_cpu=True, seed=0)
    trained = train(opts, save_weights=False)
    assert trained.model is not None and trained.record.global_step == 2
    assert trained.record.checkpoint_bytes is None
    # no weights (a full model is hundreds of MB, read by nobody), and nothing that passes for a finished run
    written = sorted(f.name for f in (tmp_path / "trial").rglob("*") if f.is_file())
    assert not [n for n in written if n.endswith((".safetensors", ".bin")) or n == "train_results.json"], written


def test_a_search_on_the_task_metric_scores_each_trial_from_memory(tiny_llama, tmp_path):
    # The objective is the task's headline metric on the validation split, scored on the model training left in
    # memory (a trial writes no weights to load).
    recipe = search_recipe(tmp_path, tiny_llama, trials=2, seed=1, low=1e-4, max_steps=4)
    spec = yaml.safe_load(recipe.read_text())
    spec["search"]["objective"] = "metric"
    spec["methods"] = [{"method": "lora", "lora_r": 2, "learning_rate_range": [1e-3, 1e-1]}]
    recipe.write_text(yaml.safe_dump(spec))
    out = tmp_path / "cmp"
    done = subprocess.run(compare_cmd(recipe, out), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    trials = trials_of(out)
    assert [t["status"] for t in trials] == ["finished", "finished"]
    assert all(t["objective"] == "contains_answer" and t["objective_value"] is not None for t in trials)
    run = next(r for r in ResultsFile(out).records() if r["method"] == "lora" and r.get("kind") != "trial")
    assert run["status"] == "ok" and run["checkpoint_bytes"] > 0  # the comparison's own run saves its adapter


# --- settings -----------------------------------------------------------------------------------------------

def test_ranges_come_from_the_methods_and_the_help_states_them():
    from tunelab.comparison.search import family_ranges
    from tunelab.config import CompareOptions

    ranges = family_ranges()
    assert ranges[(1e-6, 1e-4)] == ["full"]
    assert set(ranges[(3e-5, 3e-3)]) == {"lora", "qlora", "dora", "adalora", "loha", "lokr", "oft"}
    assert set(ranges[(1e-3, 1e-1)]) == {"ia3", "vera", "prompt_tuning", "prefix_tuning", "llama_adapter"}
    help_text = CompareOptions.__dataclass_fields__["search"].metadata["help"]
    for (low, high), names in ranges.items():
        assert f"{low:.0e} to {high:.0e}".replace("e-0", "e-") in help_text
        assert all(name in help_text for name in names)


def test_search_settings_from_the_recipe_and_the_command_line():
    from tunelab.comparison.recipe import apply_overrides, parse_recipe
    from tunelab.comparison.search import search_range

    raw = {"model": "m", "task": "text2sql", "data": {"train": "x.jsonl", "holdout": {"column": "db_id"}},
           "methods": ["full", {"method": "lora", "learning_rate_range": [1e-4, 1e-2]}]}
    plain = parse_recipe(raw, source="r.yaml")
    assert plain.search is None
    on = apply_overrides(plain, search="learning_rate", search_settings={"trials": 4})
    assert on.search.trials == 4 and on.search.validation_fraction == 0.1 and on.search.group_by == "db_id"
    assert [search_range(e) for e in on.methods] == [(1e-6, 1e-4), (1e-4, 1e-2)]
    assert apply_overrides(on, search="none").search is None
    with pytest.raises(TunelabError, match="add --search learning_rate"):
        apply_overrides(plain, search_settings={"trials": 4})
    with pytest.raises(TunelabError, match="learning_rate_range"):
        parse_recipe({**raw, "methods": [{"method": "lora", "learning_rate_range": [1e-2, 1e-4]}]}, source="r")
    with pytest.raises(TunelabError, match="validation_fraction"):
        parse_recipe({**raw, "search": {"validation_fraction": 1.5}}, source="r.yaml")
    # The entry's range is part of what it is (a different range is a different study and runs).
    assert on.methods[1].as_dict()["learning_rate_range"] == [1e-4, 1e-2]


def test_the_validation_split_keeps_groups_whole_and_is_seeded(tmp_path):
    from tunelab.comparison.data import ComparisonData, prepare_search_data
    from tunelab.comparison.recipe import parse_recipe

    rows = [{"question": f"q{i}", "answer": "a", "db_id": f"db{i % 10}"} for i in range(100)]
    train = write_jsonl(tmp_path / "t.jsonl", rows)
    recipe = parse_recipe({"model": "m", "task": "qa", "data": {"train": str(train), "eval": str(train)},
                           "methods": ["lora"]}, source="r")
    data = ComparisonData(str(train), str(train), None)

    def split(seed, group_by, out):
        found = prepare_search_data(recipe, data, out, fraction=0.2, group_by=group_by, seed=seed)
        read = [[json.loads(x) for x in (Path(found.directory) / f).read_text().splitlines()]
                for f in ("train.jsonl", "validation.jsonl")]
        return found, read

    found, (tr, va) = split(0, "db_id", tmp_path / "a")
    assert found.validation_rows == 20 and found.grouped_by == "db_id"
    assert not {r["db_id"] for r in tr} & {r["db_id"] for r in va} and len({r["db_id"] for r in va}) == 2
    assert split(0, "db_id", tmp_path / "b")[1] == [tr, va]  # the same split every time
    assert split(1, "db_id", tmp_path / "c")[1] != [tr, va]
    _, (tr, va) = split(0, None, tmp_path / "d")
    assert len(va) == 20 and len({r["db_id"] for r in va}) > 2  # rows, not groups
    with pytest.raises(TunelabError, match="search.group_by 'nope'"):
        split(0, "nope", tmp_path / "e")


# --- paired statistics --------------------------------------------------------------------------------------

def _mean(values):
    values = np.asarray(values, dtype=float)
    return lambda idx: float(values[idx].mean())


def test_the_paired_interval_excludes_zero_when_one_method_wins_on_every_example():
    from tunelab.comparison.statistics import paired_difference

    rng = np.random.default_rng(0)
    base = rng.random(60)
    d = paired_difference([_mean(base + rng.uniform(0.01, 0.05, 60))], [_mean(base)], 60, metric="accuracy")
    assert d.low > 0 and d.excludes_zero and d.low <= d.estimate <= d.high
    # Unpaired, the examples' own spread (0-1) would swamp a 3-point gain: the pairing is what separates them.
    assert d.high - d.low < 0.03


def test_the_paired_interval_of_identical_scores_is_zero():
    from tunelab.comparison.statistics import paired_difference

    scores = np.random.default_rng(1).random(50)
    d = paired_difference([_mean(scores)], [_mean(scores.copy())], 50, metric="rougeL")
    assert (d.estimate, d.low, d.high) == (0.0, 0.0, 0.0) and d.identical and not d.excludes_zero
    seeds = [_mean(scores)] * 3
    d = paired_difference(seeds, seeds, 50, metric="rougeL")
    assert (d.low, d.high) == (0.0, 0.0)


def test_the_paired_interval_of_two_noisy_equal_methods_contains_zero():
    from tunelab.comparison.statistics import paired_difference

    rng = np.random.default_rng(2)
    a, b = (rng.random(80) < 0.5).astype(float), (rng.random(80) < 0.5).astype(float)
    d = paired_difference([_mean(a)], [_mean(b)], 80, metric="accuracy")
    assert d.low < 0 < d.high and not d.excludes_zero
    # Several seeds each: the seeds are resampled too, which widens the interval over the examples-only one.
    sa = [_mean((rng.random(80) < 0.5).astype(float)) for _ in range(3)]
    sb = [_mean((rng.random(80) < 0.5).astype(float)) for _ in range(3)]
    seeded = paired_difference(sa, sb, 80, metric="accuracy")
    assert seeded.low < 0 < seeded.high and seeded.n_seeds == (3, 3)
    # The sample size that would separate 2 points: n·((1.96+0.84)·se/0.02)², with se the bootstrap's.
    expected = 80 * ((1.959964 + 0.841621) * d.standard_error / 0.02) ** 2
    assert d.examples_to_separate() == pytest.approx(expected, rel=1e-3, abs=1)


def test_corpus_measures_are_recomputed_on_each_resample(tmp_path):
    """BLEU is a corpus score and drift a token-weighted mean: the difference is of those, not of the rows' mean."""
    import sacrebleu

    from tunelab.comparison.statistics import run_measures

    refs = ["le chat est sur le tapis", "il fait beau aujourd'hui", "la maison est grande", "je mange une pomme"]
    hyps = ["le chat est sur le tapis", "il fait beau", "la maison", "je mange une pomme rouge"]
    rows = [{"source": "retention:mt", "input": str(i), "reference": r, "prediction": h, "score": 0.0}
            for i, (r, h) in enumerate(zip(refs, hyps))]
    rows += [{"source": "retention:drift", "input": str(i), "reference": "", "prediction": "", "score": 0.0,
              "kl_sum": kl, "tokens": n} for i, (kl, n) in enumerate([(1.0, 10), (3.0, 30), (0.0, 5)])]
    (tmp_path / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    measures = run_measures({"eval_dir": str(tmp_path), "retention": {"mt": {"metric": "bleu"},
                                                                       "drift": {"metric": "kl_divergence"}}})
    everything = np.arange(4)
    assert measures["mt"].resampler(everything) == pytest.approx(sacrebleu.corpus_bleu(hyps, [refs]).score)
    assert measures["drift"].resampler(np.arange(3)) == pytest.approx(4.0 / 45)


def _records_with_predictions(tmp_path, scores: dict[str, list[float]]) -> list[dict]:
    records = []
    for label, values in scores.items():
        eval_dir = tmp_path / label
        eval_dir.mkdir(parents=True)
        rows = [{"source": "qa", "input": f"q{i}", "reference": "a", "prediction": "a", "score": v}
                for i, v in enumerate(values)]
        (eval_dir / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        records.append({"key": label, "label": label, "method": label if label == "full" else "lora", "seed": 0,
                        "status": "ok", "task": "qa", "headline_metric": "contains_answer",
                        "headline_value": float(np.mean(values)), "task_metrics": {"contains_answer": np.mean(values)},
                        "trainable_params": 100 if label == "full" else 5, "trainable_percent": 1.0,
                        "eval_dir": str(eval_dir)})
    return records


def test_a_classifier_is_read_against_the_commonest_label(tmp_path):
    """A classification report says what always answering the commonest test label scores, and which models gave
    every test example one label (ag_news at 10 steps: full and ia3 did, at accuracy 0.23, the commonest share)."""
    from tunelab.comparison.report import classification_notes

    refs = ["world", "sports", "world", "tech", "world", "sports", "business", "world"]
    answers = {"full": ["world"] * 8, "lora": ["world", "sports", "tech", "tech", "world", "sports", "world", "tech"],
               "ia3": ["world"] * 8}
    records = []
    for label, preds in answers.items():
        eval_dir = tmp_path / label
        eval_dir.mkdir()
        rows = [{"source": "classification", "input": f"t{i}", "reference": r, "prediction": p, "score": float(p == r)}
                for i, (r, p) in enumerate(zip(refs, preds))]
        (eval_dir / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        records.append({"key": label, "label": label, "method": label, "seed": 0, "status": "ok",
                        "task": "classification", "headline_metric": "accuracy",
                        "headline_value": float(np.mean([p == r for p, r in zip(preds, refs)])),
                        "eval_dir": str(eval_dir)})
    notes = classification_notes(records)
    assert notes[0] == "Always answering the test set's commonest label (world) would score accuracy 0.5000 (4 of 8)."
    assert notes[1] == ("Every test example got the same label from full (world), ia3 (world): those models do not "
                        "tell the labels apart on this test set.")
    assert classification_notes(records[1:2]) == notes[:1]
    assert classification_notes([{**r, "task": "qa"} for r in records]) == []


def test_verdicts_claim_a_difference_only_when_its_interval_excludes_zero(tmp_path):
    from tunelab.comparison.report import table, verdicts

    rng = np.random.default_rng(3)
    full = (rng.random(40) < 0.5).astype(float)
    noisy = full.copy()
    flip = rng.choice(40, 6, replace=False)
    noisy[flip] = 1 - noisy[flip]  # 6 of 40 answers differ, both ways: no difference to claim
    worse = full.copy()
    worse[np.flatnonzero(full)[:8]] = 0.0  # 8 right answers lost, none gained
    lines = verdicts(_records_with_predictions(tmp_path, {"full": list(full), "lora a": list(noisy),
                                                           "lora b": list(worse)}))
    a = next(line for line in lines if line.startswith("lora a:"))
    b = next(line for line in lines if line.startswith("lora b:"))
    assert "contains_answer indistinguishable from full fine-tuning at this sample size ([" in a
    assert "test examples would separate a 2-point difference" in a and "% of full fine-tuning's" not in a
    assert "contains_answer -20.0 points [" in b and "against full fine-tuning" in b
    header, body = table(_records_with_predictions(tmp_path / "t", {"full": list(full), "lora b": list(worse)}))
    assert header[-1] == "Δ contains_answer vs full (95% CI)"
    assert body[0][-1] == "reference" and body[1][-1].startswith("-20.0 points [")


def test_a_claim_false_discovery_control_does_not_keep_is_marked(tmp_path):
    """Each interval alone excludes 0 for 5% of measures that do not differ: over a report's several intervals a
    marginal difference (4 of 40 answers lost, none gained: p about 0.03) is not kept when the false discovery rate
    over all of them is held at 5%; a large one (8 lost) is."""
    from tunelab.comparison.report import verdicts
    from tunelab.comparison.statistics import false_discovery_kept

    full = np.array([1.0, 0.0] * 20)
    lost = {"lora strong": 8, "lora marginal": 4, "lora a": 0, "lora b": 0, "lora c": 0}
    scores = {"full": list(full)}
    for label, n in lost.items():
        worse = full.copy()
        worse[np.flatnonzero(full)[:n]] = 0.0
        scores[label] = list(worse)
    lines = verdicts(_records_with_predictions(tmp_path, scores))
    line = {label: next(x for x in lines if x.startswith(label + ":")) for label in lost}
    assert "-20.0 points [" in line["lora strong"] and "not kept" not in line["lora strong"]
    assert "-10.0 points [" in line["lora marginal"]
    assert "(not kept under false-discovery control over this report's 5 intervals)" in line["lora marginal"]
    summary = next(x for x in lines if x.startswith("Multiple comparisons:"))
    assert "read 5 paired 95% intervals" in summary and "about 0.25 of them" in summary
    assert "2 do; 1 of those stay claimed" in summary
    # one interval alone: nothing to correct for, the marginal difference is claimed as it stands
    one = verdicts(_records_with_predictions(tmp_path / "one", {"full": scores["full"],
                                                                 "lora marginal": scores["lora marginal"]}))
    assert "-10.0 points [" in one[1] and "not kept" not in one[1]
    assert not any(x.startswith("Multiple comparisons:") for x in one)
    assert false_discovery_kept([]) == []


def test_a_study_is_kept_across_changes_its_trials_do_not_depend_on():
    """Evaluation settings and retention probes do not touch a trial judged by validation loss: changing them keeps
    the search; the budget, the data or the objective start a new one."""
    import dataclasses

    from tunelab.comparison.recipe import parse_recipe
    from tunelab.comparison.search import study_name

    raw = {"model": "m", "task": "qa", "data": {"train": "x.jsonl", "eval": "y.jsonl"}, "methods": ["lora"],
           "budget": {"max_steps": 20}, "eval": {"max_eval_samples": 24}, "search": {"trials": 6}}
    base = parse_recipe(raw, source="r")

    def name(recipe, **settings):
        s = dataclasses.replace(recipe.search, **settings)
        return study_name(recipe, recipe.methods[0], s, 3e-5, 3e-3, 0)

    other_eval = parse_recipe({**raw, "eval": {"max_eval_samples": 48}, "retention": ["drift"]}, source="r")
    assert name(other_eval) == name(base)
    assert name(other_eval, objective="metric") != name(base, objective="metric")
    assert name(parse_recipe({**raw, "budget": {"max_steps": 40}}, source="r")) != name(base)
    assert name(base, validation_fraction=0.2) != name(base)


@pytest.mark.parametrize("se, needle", [(0.02, "about 377 test examples would separate a 2-point difference)"),
                                        (0.005, "its 48 test examples would separate a 2-point difference)")])
def test_the_sample_size_to_separate_two_points_reads_right(se, needle):
    """A verdict never says 'about 3 examples would separate' of a measure already scored on 48: there the
    examples at hand would show a 2-point difference, and the one measured is smaller."""
    from tunelab.comparison.report import _indistinguishable
    from tunelab.comparison.statistics import Difference

    d = Difference(measure="contains_answer", metric="contains_answer", estimate=0.01, low=-0.01, high=0.03,
                   standard_error=se, n_examples=48, n_seeds=(1, 1))
    text = _indistinguishable(d, "full fine-tuning")
    assert text.startswith("indistinguishable from full fine-tuning at this sample size ([-1.0, +3.0] points; ")
    assert text.endswith(needle), text
