"""`tunelab compare` end to end on tiny real models: the table matches results.jsonl, a killed comparison
resumes without redoing finished runs, a failing method is recorded and the others finish."""

from __future__ import annotations

import dataclasses
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tunelab import contention
from tunelab.cli import main
from tunelab.comparison.results import ResultsFile
from tunelab.errors import TunelabError

from conftest import tiny_recipe

pytestmark = pytest.mark.xdist_group("compare")

def _numbers(cell: str) -> list[float]:
    return [float(x) for x in re.findall(r"-?\d+(?:\.\d+)?(?:e-?\d+)?", cell)]


def _md_rows(md: str) -> tuple[list[str], list[list[str]]]:
    lines = [l for l in md.splitlines() if l.startswith("| ")]
    header = [c.strip() for c in lines[0].strip("|").split(" | ")]
    rows = [[c.strip() for c in l.strip().strip("|").split(" | ")] for l in lines[1:len(lines)]]
    return header, [r for r in rows if len(r) == len(header)]


def test_end_to_end_table_equals_results(comparison):
    out, captured = comparison
    records = {r["label"]: r for r in ResultsFile(out).records()}
    assert set(records) == {"base", "full", "lora", "ia3"}
    assert all(r["status"] == "ok" for r in records.values())
    for name in ("tradeoff", "costs", "loss_curves"):
        assert (out / "plots" / f"{name}.png").stat().st_size > 5000
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 3 and "<table id='results'>" in html

    header, rows = _md_rows((out / "report.md").read_text())
    assert header[:6] == ["Approach", "Trainable params (%)", "Training time", "Peak memory", "Tensor peak",
                          "Checkpoint size"]  # (the tensor peak: CPU runs)
    by_label = {row[0].replace("base (untouched)", "base"): row for row in rows}
    assert set(by_label) == set(records)
    for label, rec in records.items():
        row = dict(zip(header, by_label[label]))
        if label != "base":
            assert _numbers(row["Trainable params (%)"])[-1] == pytest.approx(round(rec["trainable_percent"], 3))
            assert _numbers(row["Peak memory"])[0] == pytest.approx(round(rec["peak_memory_bytes"] / 2**20, 2))
            assert 0 < rec["peak_tensor_bytes"] < rec["peak_memory_bytes"]  # no allocator cache, no runtime
            unit = 2**20 if "MiB" in row["Tensor peak"] else 2**10
            assert _numbers(row["Tensor peak"])[0] == pytest.approx(round(rec["peak_tensor_bytes"] / unit, 2))
            ckpt = _numbers(row["Checkpoint size"])[0]
            unit = 2**20 if "MiB" in row["Checkpoint size"] else 2**10
            assert ckpt == pytest.approx(round(rec["checkpoint_bytes"] / unit, 2))
            assert _numbers(row["Training time"])[0] == pytest.approx(round(rec["train_seconds"], 1))
            # how long training's threads waited for a core, measured (Linux): marked when the machine was busy
            if contention.snapshot() is not None:
                assert 0 <= rec["train_cpu_wait_share"] < 1
            assert row["Training time"].endswith("†") == contention.busy(rec["train_cpu_wait_share"])
        for metric, value in rec["task_metrics"].items():
            if metric in header:
                assert _numbers(row[metric])[0] == pytest.approx(round(value, 4), abs=1e-9)
        # tokens/s as evaluated (an adapter attached) and, for a method that merges, after merging
        speeds = rec["inference"]
        want = [speeds.get("tokens_per_second", speeds.get("adapter_tokens_per_second")),
                speeds.get("merged_tokens_per_second")]
        assert (want[1] is not None) == (label in ("lora", "ia3"))
        assert _numbers(row["Generation tokens/s"]) == pytest.approx([round(v, 1) for v in want if v is not None])
        if contention.snapshot() is not None:  # whether other work slowed the measurement, and the mark that says so
            assert 0 <= speeds["cpu_wait_share"] < 1
        assert row["Generation tokens/s"].endswith("†") == contention.busy(speeds.get("cpu_wait_share"))
        drift_col = next(h for h in header if h.startswith("drift"))
        kl = rec["retention"]["drift"]["kl_divergence"]
        assert _numbers(row[drift_col])[0] == pytest.approx(kl, rel=1e-3, abs=1e-4)
        lm_col = next(h for h in header if h.startswith("language_modeling"))
        assert _numbers(row[lm_col])[0] == pytest.approx(
            round(rec["retention"][next(k for k in rec["retention"] if k != "drift")]["after"], 4))
    assert "Generation tokens/s: greedy answers to the same test prompts" in (out / "report.md").read_text()
    # The printed table is the report's table.
    assert "| base (untouched) |" in captured.stdout and f"report: {out / 'report.html'}" in captured.stdout
    # `tunelab report` rebuilds the same files from results.jsonl alone.
    before = (out / "report.md").read_text()
    (out / "report.md").unlink()
    assert main(["report", str(out)]) == 0
    assert (out / "report.md").read_text() == before
    # Verdict lines are computed from the numbers.
    full_params = records["full"]["trainable_params"]
    verdict = next(l for l in before.splitlines() if l.startswith("- lora:"))
    assert f"{100 * records['lora']['trainable_params'] / full_params:.2g}% of its trainable parameters" in verdict


def test_a_failing_method_is_recorded_and_the_others_complete(tiny_llama, tmp_path, capsys):
    recipe = tiny_recipe(tmp_path, tiny_llama, [{"method": "lora", "lora_r": 4},
                                                {"method": "lora", "label": "broken",
                                                 "lora_target_modules": ["no_such_layer"]}])
    out = tmp_path / "cmp"
    code = main(["compare", str(recipe), "--output_dir", str(out), "--device", "cpu"])
    captured = capsys.readouterr()
    assert code == 1
    records = {r["label"]: r for r in ResultsFile(out).records()}
    assert records["lora"]["status"] == "ok"
    assert records["broken"]["status"] == "failed"
    assert "matches no module" in records["broken"]["error"]
    assert "broken (failed)" in (out / "report.md").read_text()
    assert "failed: broken" in captured.out
    # a progress line after each run: which of how many, and the time left once a training run has finished
    assert "1 of 3 runs done; the time left is estimated once a training run has finished" in captured.err
    assert "2 of 3 runs done; about " in captured.err and "3 of 3 runs done" in captured.err
    # A re-run does not retry the failure unless asked.
    assert main(["compare", str(recipe), "--output_dir", str(out), "--device", "cpu"]) == 1
    assert "skipped 3 already finished" in capsys.readouterr().out


def test_killed_comparison_resumes_without_redoing_finished_runs(tiny_llama, tmp_path):
    recipe = tiny_recipe(tmp_path, tiny_llama, [{"method": "lora", "lora_r": 4}, "ia3"])
    out = tmp_path / "cmp"
    cmd = [sys.executable, "-m", "tunelab", "compare", str(recipe), "--output_dir", str(out), "--device", "cpu"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    results = ResultsFile(out)
    deadline = time.time() + 300
    try:
        while time.time() < deadline:
            if {r["label"] for r in results.records()} >= {"base", "lora"}:
                break
            assert proc.poll() is None, "the comparison ended before it could be killed"
            time.sleep(0.2)
        else:
            pytest.fail("the first method did not finish in time")
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    finished = {r["label"]: r for r in results.records()}
    lora_results = Path(finished["lora"]["run_dir"]) / "model" / "train_results.json"
    stamp = lora_results.stat().st_mtime_ns
    done = subprocess.run(cmd, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "skipped 2 already finished" in done.stdout
    final = results.records()
    assert sorted(r["label"] for r in final) == ["base", "ia3", "lora"]
    assert lora_results.stat().st_mtime_ns == stamp, "a finished run was trained again"
    assert all(r["status"] == "ok" for r in final)
    # No leftover run directories from the killed attempt: each label has exactly one.
    dirs = sorted(p.name.split("-seed")[0] for p in (out / "runs").iterdir())
    assert dirs == ["base", "ia3", "lora"]


def test_recipe_errors_are_clear(tiny_llama, tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"model": str(tiny_llama), "task": "qa", "data": {"train": "x.jsonl"},
                                   "methods": ["lora", "lora"]}))
    assert main(["compare", str(bad), "--output_dir", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "give data.eval (a file, or a folder: its test split), or data.holdout: {fraction: 0.1}" in err
    bad.write_text(yaml.safe_dump({"model": str(tiny_llama), "task": "qa",
                                   "data": {"train": "x.jsonl", "eval": "x.jsonl"},
                                   "methods": ["lora", {"method": "lora", "max_steps": 9}]}))
    assert main(["compare", str(bad), "--output_dir", str(tmp_path / "o")]) == 2
    assert "part of the shared budget" in capsys.readouterr().err
    assert main(["compare", "--recipe", "no-such-recipe"]) == 2
    assert "built-in: demo" in capsys.readouterr().err


def test_a_printed_builtin_recipe_is_a_recipe_to_start_from(tmp_path, capsys):
    """`tunelab recipes demo > my_recipe.yaml` gives a file `tunelab compare` reads as the demo; an unknown name is
    one line naming the built-in ones."""
    from tunelab.comparison.recipe import load_recipe

    assert main(["recipes", "demo"]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("# The default demo") and "methods:" in printed
    mine = tmp_path / "my_recipe.yaml"
    mine.write_text(printed, encoding="utf-8")
    assert dataclasses.replace(load_recipe(str(mine)), source="") == dataclasses.replace(load_recipe("demo"), source="")
    assert main(["recipes", "nope"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "built-in: demo, demo-ica" in err


def test_builtin_recipes_load():
    from tunelab.comparison.recipe import builtin_recipes, load_recipe

    names = builtin_recipes()
    assert {"demo", "dialogsum", "spider", "sst2-sts"} <= set(names)
    for name in names:
        recipe = load_recipe(name)
        assert recipe.methods and recipe.seeds
        for entry in recipe.methods:
            recipe.train_options(entry, 0, train_file="t.jsonl", output_dir="o", device="cpu")
    demo = load_recipe("demo")
    assert [m.method for m in demo.methods][:3] == ["full", "lora", "qlora"]


@pytest.mark.parametrize(("flag", "want"), [
    ("general_knowledge,drift", ["general_knowledge", "drift"]),
    ("none", []),
    (None, ["general_knowledge", "drift", "arc_easy@80"]),  # the demo recipe's own
])
def test_retention_replaces_the_recipe_s_probes(flag, want):
    from tunelab.comparison.api import recipe_from_options
    from tunelab.config import CompareOptions
    from tunelab.options import parse_options

    argv = ["--recipe", "demo", *(["--retention", flag] if flag else [])]
    recipe = recipe_from_options(parse_options(CompareOptions, argv, "tunelab compare", "")[0])
    assert recipe.retention == want
    eval_opts = recipe.eval_options(eval_file="e.jsonl", output_dir="o", model="m", adapter=None, baseline=None,
                                    data_dir=None, sql_database=None)
    assert (eval_opts.retention or []) == want
    if flag:  # other probes are other runs: none of the recipe's finished runs is taken for one of these
        assert recipe.base_key() != recipe_from_options(parse_options(
            CompareOptions, ["--recipe", "demo"], "tunelab compare", "")[0]).base_key()


@pytest.mark.parametrize(("flags", "base_dtype"), [([], "auto"), (["--no_bf16"], "float32"),
                                                   (["--bf16"], "bfloat16")])
def test_the_base_is_evaluated_in_the_precision_the_comparison_sets(flags, base_dtype):
    """A --no_bf16 comparison scored its base row in bf16 (eval's auto: what tunelab trains in on this CPU) while
    each run scored its 'before' in float32: the demo's base answered 17 of 32 general-knowledge questions in the
    row and 15 as the runs' 'before', so the row and the retention ratios read two models."""
    from tunelab.comparison.api import recipe_from_options
    from tunelab.config import CompareOptions
    from tunelab.options import parse_options

    recipe = recipe_from_options(parse_options(CompareOptions, ["--recipe", "demo", *flags], "tunelab compare",
                                               "")[0])
    common = dict(eval_file="e.jsonl", output_dir="o", baseline=None, data_dir=None, sql_database=None)
    assert recipe.eval_options(model=recipe.model, adapter=None, **common).torch_dtype == base_dtype
    # a run's evaluation reads its precision from the run itself
    assert recipe.eval_options(model="runs/full/model", adapter=None, **common).torch_dtype == "auto"
    assert recipe.eval_options(model=recipe.model, adapter="runs/lora/model", **common).torch_dtype == "auto"


def test_an_unknown_retention_probe_is_named_with_its_flag(tmp_path, capsys):
    out = tmp_path / "unused"
    assert main(["compare", "demo", "--retention", "general_knowledge,trivia", "--output_dir", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --retention trivia: not a built-in probe") and len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_batching_flags_are_shared_budget_overrides():
    """--group_by_length / --packing on `tunelab compare` reach every method's training, like the other budget
    flags, and a recipe may set them under budget but not per method."""
    from tunelab.options import parse_options
    from tunelab.comparison.api import recipe_from_options
    from tunelab.comparison.recipe import parse_recipe
    from tunelab.config import CompareOptions

    argv = ["--recipe", "spider", "--group_by_length", "--max_steps", "3"]
    opts, _ = parse_options(CompareOptions, argv, "tunelab compare", "")
    recipe = recipe_from_options(opts)
    assert recipe.budget["group_by_length"] is True and "packing" not in recipe.budget
    for entry in recipe.methods:
        train = recipe.train_options(entry, 0, train_file="t.jsonl", output_dir="o", device="cpu")
        assert train.group_by_length and not train.packing and train.max_steps == 3
    plain = recipe_from_options(parse_options(CompareOptions, ["--recipe", "spider"], "tunelab compare", "")[0])
    assert "group_by_length" not in plain.budget
    raw = {"model": "m", "task": "qa", "data": {"train": "x.jsonl", "eval": "x.jsonl"}}
    packed = parse_recipe({**raw, "budget": {"packing": True}, "methods": ["lora"]}, source="r.yaml")
    assert packed.budget == {"packing": True}
    with pytest.raises(TunelabError, match="part of the shared budget"):
        parse_recipe({**raw, "methods": [{"method": "lora", "group_by_length": True}]}, source="r.yaml")


@pytest.fixture(scope="session")
def chromium():
    """Headless Chromium, installed by `make browser` (which .ci/run calls): the test run installs nothing. Absent
    outside CI the test is skipped with the reason; in CI (CI set) an absent browser is a failure."""
    import shutil

    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        why = "headless Chromium is not installed: run `make browser` (Debian's chromium package, needs root)"
        if os.environ.get("CI"):
            pytest.fail(f"{why}; .ci/run installs it before the tests")
        pytest.skip(why)
    return path


CHROME_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--no-first-run", "--hide-scrollbars"]


def test_html_report_renders_in_chromium(comparison, chromium, tmp_path):
    from PIL import Image

    out, _ = comparison
    page = (out / "report.html").as_uri()
    profile = ["--user-data-dir=" + str(tmp_path / "profile")]
    dom = subprocess.run([chromium, *CHROME_FLAGS, *profile, "--dump-dom", page], capture_output=True, text=True,
                         timeout=120).stdout
    for text in ("base (untouched)", ">full<", ">lora<", ">ia3<", "Learning against forgetting",
                 "What each method costs", "Side by side", "Verdicts"):
        assert text in dom, text
    assert dom.count("data:image/png;base64,") == 3
    shot = tmp_path / "report.png"
    subprocess.run([chromium, *CHROME_FLAGS, *profile, "--window-size=1300,2600", f"--screenshot={shot}", page],
                   capture_output=True, timeout=120)
    image = Image.open(shot).convert("RGB")
    assert image.size == (1300, 2600)
    colours = image.getcolors(maxcolors=1_000_000)
    counts = {rgb: n for n, rgb in colours}
    # The table's header shading, the trade-off plot's points and the cost bars are all on screen.
    assert counts.get((0xED, 0xF2, 0xF7), 0) > 2000, "table header not rendered"
    assert sum(n for rgb, n in counts.items() if _near(rgb, (0x2B, 0x6C, 0xB0))) > 100, "trade-off points missing"
    assert sum(n for rgb, n in counts.items() if _near(rgb, (0x4A, 0x55, 0x68))) > 2000, "cost bars missing"
    assert len(colours) > 500, "the page looks blank"


def _near(a, b, tol=12):
    return all(abs(x - y) <= tol for x, y in zip(a, b))


def test_verdict_shares_read_as_percentages():
    from tunelab.comparison.report import verdicts

    def rec(label, method, params, score):
        return {"label": label, "method": method, "seed": 0, "status": "ok", "trainable_params": params,
                "headline_metric": "rougeL", "headline_value": score, "peak_memory_bytes": 2**30,
                "train_seconds": 10.0}

    lines = verdicts([rec("full", "full", 1_000_000, 0.4), rec("full+ica_preserve", "full", 1_000_000, 0.2),
                      rec("lora", "lora", 35_040, 0.3)])
    assert "full+ica_preserve: 50% of full fine-tuning's rougeL, 100% of its trainable parameters" in lines[1]
    assert "3.5% of its trainable parameters" in lines[2]


def test_a_training_time_from_a_busy_machine_is_marked_and_compared_with_none():
    from tunelab.comparison.report import _notes, table, verdicts

    def rec(label, method, seconds, waited):
        return {"label": label, "method": method, "seed": 0, "status": "ok", "trainable_params": 10,
                "trainable_percent": 1.0, "headline_metric": "rougeL", "headline_value": 0.3,
                "peak_memory_bytes": 2**30, "train_seconds": seconds, "train_cpu_wait_share": waited}

    idle = [rec("full", "full", 100.0, 0.002), rec("lora", "lora", 50.0, 0.01), rec("ia3", "ia3", 40.0, None)]
    header, body = table(idle)
    assert [dict(zip(header, row))["Training time"] for row in body] == ["1m 40.0s", "50.0 s", "40.0 s"]
    assert "0.50× its training time" in verdicts(idle)[1]
    assert not any("busy" in note for note in _notes(idle))

    busy = [rec("full", "full", 100.0, 0.002), rec("lora", "lora", 150.0, 0.34), rec("ia3", "ia3", 40.0, None)]
    header, body = table(busy)
    assert [dict(zip(header, row))["Training time"] for row in body] == ["1m 40.0s", "2m 30.0s †", "40.0 s"]
    lines = verdicts(busy)
    assert "training time not compared (†: timed on a busy machine)" in lines[1]
    assert "× its training time" not in lines[1]
    assert "0.40× its training time" in lines[2]  # ia3 and full both had their cores
    (note,) = [n for n in _notes(busy) if n.startswith("†")]
    assert "lora (seed 0): training 34%" in note and "full" not in note
    # the generation tokens/s measured beside other work: marked in its column, and named in the note
    busy[2].update(inference={"tokens_per_second": 20.0, "cpu_wait_share": 0.5})
    busy[0].update(inference={"tokens_per_second": 30.0, "cpu_wait_share": 0.01})
    header, body = table(busy)
    assert [dict(zip(header, row))["Generation tokens/s"] for row in body] == ["30.0", "–", "20.0 †"]
    (note,) = [n for n in _notes(busy) if n.startswith("†")]
    assert "lora (seed 0): training 34%; ia3 (seed 0): generation 50%" in note
    # a learning-rate search whose trials trained beside other work: its cost is marked and set against no run
    def searched(label, busy_trials):
        return dict(rec(label, label, 100.0, 0.0), wall_seconds=200.0,
                    search={"chosen_learning_rate": 1e-4, "tuning_seconds": 600.0, "trials": 6,
                            "busy_trials": busy_trials})

    header, body = table([searched("full", 0), searched("lora", 2)])
    assert [dict(zip(header, row))["Tuning cost"] for row in body] == ["10m 00.0s (3.0× a run)", "10m 00.0s †"]
    (note,) = [n for n in _notes([searched("full", 0), searched("lora", 2)]) if n.startswith("†")]
    assert "lora's learning-rate search: the training of 2 of its 6 trials" in note and "full" not in note
    # a busy reference: no method's time is compared with it
    lines = verdicts([rec("full", "full", 100.0, 0.2), rec("lora", "lora", 50.0, 0.0)])
    assert "training time not compared" in lines[1]


def test_tradeoff_plot_draws_one_point_per_method_with_its_seed_interval():
    """Three seeds of a method are one point (their mean) with 95% CI bars, so that labels do not pile up."""
    from tunelab.comparison.report import plot_tradeoff
    from tunelab.comparison.rows import Stat

    def rec(label, method, seed, score, kept):
        return {"label": label, "method": method, "seed": seed, "status": "ok", "headline_metric": "accuracy",
                "headline_value": score, "retention": {"gk": {"metric": "accuracy", "before": 0.5, "after": kept,
                                                              "retention_ratio": kept / 0.5}}}

    records = [rec("base", "base", None, 0.1, 0.5), rec("ia3", "ia3", 0, 0.2, 0.45),
               *[rec("lora", "lora", s, 0.3 + 0.1 * s, 0.2 + 0.05 * s) for s in range(3)]]
    ax = plot_tradeoff(records).axes[0]
    assert sorted(t.get_text() for t in ax.texts) == ["base", "ia3", "lora (3 seeds)"]
    kept, score = Stat.of([0.4, 0.5, 0.6]), Stat.of([0.3, 0.4, 0.5])  # lora's retention ratios and accuracies
    points = [tuple(p) for p in ax.collections[0].get_offsets().tolist()]
    assert len(points) == 3 and any(p == pytest.approx((kept.mean, score.mean)) for p in points)
    (bars,) = ax.containers  # one errorbar container: x and y bars for every point
    _, _, (x_bars, y_bars) = bars.lines
    lora_y = [seg for seg in y_bars.get_segments() if seg[0][0] == pytest.approx(kept.mean)]
    assert lora_y[0][1][1] - lora_y[0][0][1] == pytest.approx(2 * score.half_width)
    assert all(seg[0][1] == seg[1][1] for seg in y_bars.get_segments() if seg[0][0] != pytest.approx(kept.mean))


def test_tradeoff_labels_of_nearby_points_do_not_overprint():
    from tunelab.comparison.report import plot_tradeoff

    def rec(label, kept, score):
        gk = {"metric": "contains_answer", "before": 0.5, "after": 0.5 * kept, "retention_ratio": kept}
        return {"label": label, "method": label.split()[0], "seed": 0, "status": "ok", "headline_metric": "accuracy",
                "headline_value": score, "retention": {"general_knowledge": gk}}

    # three methods close together (long labels reach over their neighbours' points) and one far off
    records = [rec("base", 1.0, 0.10), rec("lora r=16 (a long label)", 0.90, 0.500),
               rec("qlora (another long label)", 0.905, 0.502), rec("dora", 0.898, 0.497), rec("ia3", 0.5, 0.9)]
    fig = plot_tradeoff(records)
    fig.canvas.draw()
    ax = fig.axes[0]
    labels = [t for t in ax.texts if t.get_text() != "Pareto front"]
    assert len(labels) == 5
    boxes = [t.get_window_extent() for t in labels]
    for i, a in enumerate(boxes):
        for b in boxes[i + 1:]:
            assert not a.overlaps(b), (a, b)
    points = ax.transData.transform([(r["retention"]["general_knowledge"]["retention_ratio"], r["headline_value"])
                                     for r in records])
    for (x, y), box in zip(points, boxes):  # each label stays near its point (within a few lines of text)
        assert min(abs(box.x0 - x), abs(box.x1 - x)) < 20 and abs(box.y0 - y) < 60 * fig.dpi / 72


def test_a_probe_without_ratios_is_explained_and_not_plotted():
    from tunelab.comparison.figures import tradeoff_axes
    from tunelab.comparison.report import missing_value_notes, table

    why = "the base model scores bleu 0.34, below 1: it shows none of this skill"

    def rec(label, method, gk_after, bleu_after):
        bleu = {"metric": "bleu", "before": 0.34, "after": bleu_after, "retention_ratio": None, "retention_note": why}
        gk = {"metric": "contains_answer", "before": 0.5, "after": gk_after, "retention_ratio": gk_after / 0.5}
        return {"label": label, "method": method, "seed": 0, "status": "ok", "headline_metric": "accuracy",
                "headline_value": 0.2, "task_metrics": {"accuracy": 0.2}, "trainable_params": 10,
                "trainable_percent": 1.0, "retention": {"multi30k_en_fr": bleu, "general_knowledge": gk}}

    records = [rec("base", "base", 0.5, 0.34), rec("lora", "lora", 0.25, 0.9)]
    assert f"multi30k_en_fr: {why}." in missing_value_notes(records)
    assert tradeoff_axes(records)[0] == "general_knowledge"  # multi30k comes first, but has no ratio to plot
    header, body = table(records)
    lora = dict(zip(header, body[1]))
    assert lora[next(h for h in header if h.startswith("multi30k"))] == "0.9000"  # the score, no bracketed ratio
    assert lora[next(h for h in header if h.startswith("general_knowledge"))] == "0.2500 (50%)"


def test_seed_statistics_are_a_t_interval_and_zero_wide_for_equal_values():
    import warnings

    from tunelab.comparison.rows import Stat

    three = Stat.of([0.4, 0.5, None, 0.6])
    assert (three.mean, three.n) == (pytest.approx(0.5), 3)
    assert three.half_width == pytest.approx(4.302653 * 0.1 / 3 ** 0.5, rel=1e-5)  # t(0.975, 2) * sd / sqrt(n)
    assert Stat.of([0.7]).half_width is None
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # scipy warned of catastrophic cancellation on identical seeds
        same = Stat.of([1 / 24] * 3)
    assert same.half_width == 0.0 and same.mean == pytest.approx(1 / 24)


def test_a_run_without_task_metrics_says_why_in_the_record_and_the_report(tmp_path):
    from tunelab.comparison.processes import PlannedRun, outcome
    from tunelab.comparison.report import write_report
    from tunelab.fileio import atomic_write_json

    why = "the model has no classification head for these labels (its labels are LABEL_0, LABEL_1)"
    ev = {"task": "classification", "metrics": {"accuracy": None, "macro_f1": None}, "headline_metric": "accuracy",
          "task_note": why}
    run = PlannedRun("k", "base", "base", None, tmp_path / "runs" / "base", {})
    atomic_write_json(run.run_dir / "run_result.json", {"kind": "base", "eval_results": ev})
    rec = outcome(run, 0, 1.0)  # what the runner records once the run's worker has ended
    assert rec.status == "ok" and rec.task_note == why and rec.headline_value is None
    _, md = write_report(tmp_path, records=[rec.to_json()])
    assert f"- base: {why}." in md.read_text(encoding="utf-8")
