"""Benchmark probes scored by lm-evaluation-harness: tunelab's task configs read the shipped benchmark files as
their formats say (labels, choice counts), a random model scores chance, a real one does not, the adapter-disabled
check reproduces the base through lm-eval, and every user error is one line with exit 2.

Every test that reads the benchmarks uses a small subset (the probe's limit), so the suite stays in its budget."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import pytest

from tunelab.cli import main
from tunelab.config import EvalOptions, TrainOptions
from tunelab.evaluation import benchmarks
from tunelab.evaluation.benchmarks import BenchmarkProbe, chance_level, seeded_subset
from tunelab.evaluation.run import evaluate

from conftest import ALPACA_ROWS, builtin_model, shared_data, write_jsonl

pytest.importorskip("lm_eval", reason="benchmark probes need lm-eval (pip install 'tunelab[benchmarks]')")


def bench_dir():
    return shared_data("benchmarks")


def _jsonl(path):
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


# --- pure parts ----------------------------------------------------------------------------------------------------

def test_chance_level_is_the_better_of_guessing_and_the_commonest_answer():
    four = [(0, ["a", "b", "c", "d"]), (3, ["e", "f", "g", "h"])]
    assert chance_level(four) == pytest.approx(0.25)
    assert chance_level([(0, ["x", "y", "z"]), (1, ["p", "q", "r", "s", "t"])]) == pytest.approx((1 / 3 + 1 / 5) / 2)
    assert chance_level([(0, ["a", "b"]), (0, ["a", "c"])]) == 1.0   # "a" is offered and right every time
    yes_no = [(1, ["no", "yes"])] * 62 + [(0, ["no", "yes"])] * 38   # BoolQ: always "yes" is right 62% of the time
    assert chance_level(yes_no) == pytest.approx(0.62)


def test_seeded_subset_is_random_reproducible_and_none_for_everything():
    a = seeded_subset(570, 20, 42)
    assert a == seeded_subset(570, 20, 42) and a == sorted(a) and len(set(a)) == 20
    assert a != list(range(20)), "a subset is drawn at random, not lm-eval's first N"
    assert seeded_subset(570, 20, 7) != a
    assert seeded_subset(570, None, 42) is None and seeded_subset(5, 9, 42) is None


def test_no_skill_floor_is_chance_plus_the_base_interval():
    floor, why = benchmarks.no_skill_floor({"chance_level": 0.25, "stderr": 0.1, "num_examples": 20})
    assert floor == pytest.approx(0.25 + 1.96 * 0.1, abs=1e-3) and "chance level 0.250" in why
    # true of a base below chance too (BoolQ: the majority answer is right 62% of the time), where "within" was not
    assert "not 1.96 standard errors (0.196) above chance level 0.250 on 20 examples" in why
    assert benchmarks.no_skill_floor({"chance_level": None, "stderr": 0.1, "num_examples": 20}) == (None, None)


# --- the shipped task configs read the files as their formats say -------------------------------------------------

@pytest.mark.shared_data
@pytest.mark.parametrize("name", ["arc_easy", "arc_challenge"])
def test_arc_labels_map_by_position_including_numeric_labels_and_3_or_5_choices(name):
    folder = bench_dir()
    rows = _jsonl(folder / f"{name}.dev.jsonl")
    task = BenchmarkProbe(name, benchmark_dir=folder).tasks()["tasks"][name]
    docs = task.eval_docs
    assert len(docs) == len(rows)
    numeric, counts = 0, set()
    for row, doc in zip(rows, docs):
        gold, choices = benchmarks._gold_and_choices(task, doc)
        labels = [c["label"] for c in row["question"]["choices"]]
        assert choices == [c["text"] for c in row["question"]["choices"]]
        assert gold == labels.index(row["answerKey"])
        numeric += row["answerKey"].isdigit()
        counts.add(len(choices))
    # the files' awkward rows are there, so the mapping above was checked on them
    assert numeric > 0 and {3, 4, 5} <= counts


@pytest.mark.shared_data
def test_the_other_benchmarks_read_every_row_with_its_gold():
    folder = bench_dir()
    for name, file in (("openbookqa", "openbookqa.test.jsonl"), ("boolq", "boolq.dev.jsonl"),
                       ("winogrande", "winogrande.dev.jsonl")):
        rows = _jsonl(folder / file)
        task = BenchmarkProbe(name, benchmark_dir=folder).tasks()["tasks"][name]
        docs = task.eval_docs
        assert len(docs) == len(rows), name
        for row, doc in list(zip(rows, docs))[:200]:
            gold, choices = benchmarks._gold_and_choices(task, doc)
            assert gold == row["gold"], name
            assert choices == (row["context_options"] if name == "winogrande" else row["choices"]), name
        if name == "winogrande":  # the shared continuation is scored after each option
            assert task.doc_to_target(docs[0]) == rows[0]["continuation"]
    # MMLU: 57 subjects x 5 questions from CSV, every choice kept as its text (numbers and "None" included)
    csv_rows = [r for path in sorted((folder / "mmlu_dev").glob("*_dev.csv"))
                for r in csv.DictReader(path.open(encoding="utf-8", newline=""))]
    task = BenchmarkProbe("mmlu", benchmark_dir=folder).tasks()["tasks"]["mmlu"]
    docs = task.eval_docs
    assert len(docs) == len(csv_rows) == 285
    expected = {(r["question"], int(r["answer"])): [r[f"choice{i}"] for i in range(4)] for r in csv_rows}
    for doc in docs:
        gold, choices = benchmarks._gold_and_choices(task, doc)
        assert expected[(doc["question"], gold)] == choices


# --- scoring through lm-eval -----------------------------------------------------------------------------------------

@pytest.mark.shared_data
def test_a_random_model_scores_about_chance_and_gets_no_retention_ratio(tiny_llama, tmp_path, capsys):
    folder = bench_dir()
    out = tmp_path / "eval"
    # NAME@N: the benchmark's own number of examples wins over --probe_samples (the generation probes' size)
    code = main(["eval", "--model_name_or_path", str(tiny_llama), "--retention", "arc_easy@60", "--probe_samples", "5",
                 "--benchmark_data_dir", str(folder), "--output_dir", str(out), "--use_cpu",
                 "--per_device_eval_batch_size", "16"])
    printed = capsys.readouterr()
    assert code == 0, printed.err
    p = json.loads((out / "eval_results.json").read_text())["retention"]["arc_easy@60"]
    assert p["task"] == "benchmark" and p["metric"] == "acc_norm" and p["num_examples"] == 60
    assert set(p["scores_after"]) >= {"acc", "acc_stderr", "acc_norm", "acc_norm_stderr"}
    assert 0.24 < p["chance_level"] < 0.26
    for metric in ("acc", "acc_norm"):  # within 3 standard errors of chance
        assert abs(p["scores_after"][metric] - p["chance_level"]) < 3 * p["scores_after"][f"{metric}_stderr"]
    assert p["before"] == p["after"] and p["retention_ratio"] is None and "chance level" in p["retention_note"]
    assert "retention arc_easy@60: acc_norm" in printed.out and "chance 0.25" in printed.out
    rows = [json.loads(x) for x in (out / "predictions.jsonl").read_text().splitlines()]
    rows = [r for r in rows if r["source"] == "retention:arc_easy@60"]
    assert len(rows) == 60 and all(0 <= r["prediction"] < len(r["choices"]) for r in rows)
    assert {r["doc_index"] for r in rows} == set(seeded_subset(570, 60, 42))


@pytest.fixture(scope="module")
def lora_adapter(tiny_llama, tmp_path_factory):
    from tunelab.training import train

    d = tmp_path_factory.mktemp("bench-adapter")
    data = write_jsonl(d / "train.jsonl", ALPACA_ROWS)
    opts = TrainOptions(model_name_or_path=str(tiny_llama), dataset_name_or_path=str(data), output_dir=str(d / "out"),
                        method="lora", max_steps=6, per_device_train_batch_size=4, max_seq_length=64, lora_r=4,
                        learning_rate=2e-2, warmup_ratio=0.0, save_steps=100, seed=0, use_cpu=True)
    return train(opts).output_dir


@pytest.mark.shared_data
def test_before_equals_adapter_disabled_through_lm_eval(tiny_llama, lora_adapter, tmp_path):
    r = evaluate(EvalOptions(model_name_or_path=str(tiny_llama), adapter=str(lora_adapter), retention=["arc_easy"],
                             probe_samples=24, benchmark_data_dir=str(bench_dir()), output_dir=str(tmp_path / "e"),
                             per_device_eval_batch_size=16, use_cpu=True)).results
    p = r["retention"]["arc_easy"]
    # "before" is the base loaded on its own; the disabled adapter must reproduce it to the last digit
    assert p["adapter_disabled_equals_base"] is True
    assert p["adapter_disabled"] == p["before"]
    assert p["adapter_disabled_scores"] == p["scores_before"]
    assert p["num_examples"] == 24 and p["scores_after"].keys() == p["scores_before"].keys()


@pytest.mark.shared_data
def test_a_probe_is_scored_on_a_model_in_memory_and_leaves_its_mode_and_rng(tiny_llama):
    """The training-time use: probe(model, tokenizer, limit) on a model in train mode, without reseeding torch."""
    import torch

    from tunelab import inference

    folder = shared_data("benchmarks")
    lm = inference.load(str(tiny_llama), use_cpu=True)
    lm.model.train()
    probe = BenchmarkProbe("winogrande", benchmark_dir=folder, seed=1)
    torch.manual_seed(123)
    expected_next = torch.rand(1)
    torch.manual_seed(123)
    score = probe(lm.model, lm.tokenizer, limit=8, batch_size=8)
    assert torch.rand(1) == expected_next, "the probe must not reseed torch's generator"
    assert lm.model.training, "the model goes back to train mode"
    assert score.num_examples == 8 and score.metric == "acc" and score.chance_level == pytest.approx(0.5)
    assert score.value is not None and score.stderr is not None


# --- user errors: one line, exit 2 ---------------------------------------------------------------------------------

def _error(capsys, argv) -> str:
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("error: ") and "\n" not in err, err
    return err


def test_missing_folder_malformed_row_and_unknown_name_are_one_line(tiny_llama, tmp_path, capsys):
    base = ["eval", "--model_name_or_path", str(tiny_llama), "--output_dir", str(tmp_path / "e"), "--use_cpu"]
    err = _error(capsys, [*base, "--retention", "arc_easy", "--benchmark_data_dir", str(tmp_path / "nowhere")])
    assert "--benchmark_data_dir" in err and "nowhere" in err
    empty = tmp_path / "empty"
    empty.mkdir()
    err = _error(capsys, [*base, "--retention", "boolq", "--benchmark_data_dir", str(empty)])
    assert "boolq.dev.jsonl" in err and "not found" in err
    bad = tmp_path / "bad"
    bad.mkdir()
    row = {"id": "x", "question": {"stem": "Which?", "choices": [{"text": "a", "label": "1"},
                                                                 {"text": "b", "label": "2"}]}, "answerKey": "2"}
    write_jsonl(bad / "arc_easy.dev.jsonl", [row, row, {**row, "answerKey": "C"}])
    err = _error(capsys, [*base, "--retention", "arc_easy", "--benchmark_data_dir", str(bad)])
    assert "arc_easy.dev.jsonl line 3" in err and "answerKey 'C'" in err
    (bad / "mmlu_dev").mkdir()
    (bad / "mmlu_dev" / "anatomy_dev.csv").write_text("question,choice0,choice1,choice2,choice3,answer\n"
                                                      "Q?,a,b,c,d,1\nQ2?,a,b,c,d,7\n")
    err = _error(capsys, [*base, "--retention", "mmlu", "--benchmark_data_dir", str(bad)])
    assert "anatomy_dev.csv line 3" in err and "answer '7'" in err
    err = _error(capsys, [*base, "--retention", "arc_eazy"])
    assert "arc_easy" in err and "lm_eval:TASK" in err
    err = _error(capsys, [*base, "--retention", "arc_easy@many"])
    assert "after @ comes this probe's number of examples" in err


@pytest.mark.integration
def test_unknown_or_offline_lm_eval_task_is_one_line(tiny_llama, tmp_path, capsys, monkeypatch):
    """Reads lm-eval's index of every task it ships (seconds of YAML parsing), hence integration."""
    base = ["eval", "--model_name_or_path", str(tiny_llama), "--output_dir", str(tmp_path / "e"), "--use_cpu"]
    err = _error(capsys, [*base, "--retention", "lm_eval:no_such_task"])
    assert "no task or group named 'no_such_task'" in err
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # conftest sets it too; the stock task's Hub dataset is unreachable
    err = _error(capsys, [*base, "--retention", "lm_eval:arc_easy"])
    assert "needs network" in err and "--benchmark_data_dir" in err


def test_without_lm_eval_installed_a_benchmark_probe_says_which_extra(tiny_llama, tmp_path):
    # lm_eval made unimportable in a fresh interpreter (None in sys.modules), as on an install without the extra
    code = ("import sys; sys.modules['lm_eval'] = None\n"
            "from tunelab.cli import main\n"
            f"sys.exit(main(['eval', '--model_name_or_path', {str(tiny_llama)!r}, '--retention', 'arc_easy', "
            f"'--output_dir', {str(tmp_path / 'e')!r}, '--use_cpu']))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    err = done.stderr.strip().splitlines()
    assert done.returncode == 2, done.stderr[-2000:]
    assert err[-1].startswith("error: --retention arc_easy") and "pip install 'tunelab[benchmarks]'" in err[-1]


def test_a_recipe_naming_a_benchmark_without_lm_eval_fails_before_any_run(tiny_llama, tmp_path):
    from conftest import tiny_recipe

    recipe = tiny_recipe(tmp_path, tiny_llama, ["lora"], retention=["drift", "arc_easy@64"])
    out = tmp_path / "cmp"
    code = ("import sys; sys.modules['lm_eval'] = None\n"
            "from tunelab.cli import main\n"
            f"sys.exit(main(['compare', {str(recipe)!r}, '--output_dir', {str(out)!r}, '--device', 'cpu']))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    err = done.stderr.strip().splitlines()
    assert done.returncode == 2, done.stderr[-2000:]
    assert err[-1].startswith("error: recipe tiny: --retention arc_easy@64") and "tunelab[benchmarks]" in err[-1]
    assert not (out / "runs").exists() or not any((out / "runs").iterdir()), "nothing ran"


# --- the real model ------------------------------------------------------------------------------------------------

@pytest.mark.integration
@pytest.mark.shared_data
@pytest.mark.xdist_group("smollm2")
def test_smollm2_is_well_above_chance_on_arc_easy():
    """On the demo's arc_easy@80 subset (seed 42): the base must show the skill by the probes' own rule, or the
    demo's ARC column would have no retention ratio."""
    from tunelab import inference

    folder = bench_dir()
    lm = inference.load(builtin_model("smollm2-135m"), use_cpu=True)
    score = BenchmarkProbe("arc_easy", benchmark_dir=folder, seed=42)(lm.model, lm.tokenizer, limit=80,
                                                                     batch_size=16)
    print("smollm2-135m arc_easy subset:", score.scores)
    assert score.num_examples == 80 and score.chance_level == pytest.approx(0.25, abs=0.01)
    floor, _ = benchmarks.no_skill_floor(score)
    assert score.value > floor, "the headline's 95% interval must clear chance"
    assert score.scores["acc"] - 1.96 * score.scores["acc_stderr"] > score.chance_level + 0.1


def test_shared_data_is_found_from_any_working_directory(tmp_path, monkeypatch):
    """A notebook or script run outside the checkout still finds ../shared/data beside it (the demo's arc_easy)."""
    from tunelab.evaluation.probes import CHECKOUT_DATA_DIR, default_data_dir

    if not CHECKOUT_DATA_DIR.is_dir():
        pytest.skip(f"no shared data folder beside this checkout ({CHECKOUT_DATA_DIR})")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("TUNELAB_DATA_DIR", raising=False)
    assert default_data_dir(None) == CHECKOUT_DATA_DIR
    assert default_data_dir(str(tmp_path)) == tmp_path   # an explicit folder wins
