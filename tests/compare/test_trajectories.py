"""Recipe `curve_points`: each run is evaluated at its saved points, the trade-off plot draws one line per method
from the base through them, every point of it a number of results.jsonl, and the verdicts read matched comparisons
off the curves. Recipe `diagnostics`: each run's weight diagnostics recorded and plotted by layer."""

from __future__ import annotations

import subprocess
import sys

import pytest
import yaml

from tunelab.comparison.recipe import load_recipe
from tunelab.comparison.report import plot_tradeoff, verdicts
from tunelab.comparison.results import ResultsFile
from tunelab.comparison.trajectories import interpolate

from conftest import tiny_recipe

pytestmark = pytest.mark.xdist_group("compare")


def _numbers(obj) -> list[float]:
    if isinstance(obj, dict):
        return [x for v in obj.values() for x in _numbers(v)]
    if isinstance(obj, list):
        return [x for v in obj for x in _numbers(v)]
    return [float(obj)] if isinstance(obj, (int, float)) and not isinstance(obj, bool) else []


def test_compare_with_curve_points_plots_the_trajectories_from_results(tiny_llama, tmp_path):
    recipe = tiny_recipe(tmp_path, tiny_llama, [{"method": "full", "learning_rate": 1e-3},
                                                {"method": "lora", "lora_r": 4, "learning_rate": 1e-2}],
                         curve_points=2, diagnostics=True)
    out = tmp_path / "cmp"
    done = subprocess.run([sys.executable, "-m", "tunelab", "compare", str(recipe), "--output_dir", str(out),
                           "--device", "cpu"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    records = ResultsFile(out).records()
    runs = [r for r in records if r["method"] != "base"]
    for rec in runs:  # 3 steps, 2 points: step 2 saved and evaluated, step 3 is the run's end
        assert [p["step"] for p in rec["trajectory"]] == [2] and rec["global_step"] == 3
        assert rec["trajectory"][0]["headline_value"] is not None
        assert [p["step"] for p in rec["curves"]] == [0, 2, 3]
    assert (out / "plots" / "tradeoff.png").stat().st_size > 5000
    # recipe diagnostics: each run's ΔW diagnostics, by layer, in the record and the report
    for rec in runs:
        diag = rec["weight_diagnostics"]
        assert diag["method"] == rec["method"] and set(diag["per_depth"]) == {"0", "1"}
        assert sum(d["matrices"] for d in diag["per_depth"].values()) == diag["matrices"]
    assert (out / "plots" / "weights.png").stat().st_size > 5000

    fig = plot_tradeoff(records)
    lines = {line.get_label(): line for line in fig.axes[0].get_lines()}
    assert {"full", "lora"} <= set(lines)
    numbers = set(_numbers(records))
    for label in ("full", "lora"):
        xs, ys = lines[label].get_data()
        assert len(xs) == 3  # the base, step 2, the end
        for x, y in zip(xs, ys):
            assert any(x == pytest.approx(n, abs=1e-12) for n in numbers), (label, x)
            assert any(y == pytest.approx(n, abs=1e-12) for n in numbers), (label, y)
    matched = [line for line in verdicts(records) if "along its trajectory" in line]
    assert len(matched) == 1 and matched[0].startswith("lora along its trajectory")
    assert "interpolated" in matched[0] or "never reaches" in matched[0] or "does not reach" in matched[0]


def test_curve_points_on_a_classifier_fail_before_any_run(tiny_bert, tmp_path):
    """Trajectories track next-token signals: a sequence-classification model is refused at once, not after the
    base's evaluation in every run."""
    recipe = tiny_recipe(tmp_path, tiny_bert, ["lora"], curve_points=2)
    out = tmp_path / "cmp"
    done = subprocess.run([sys.executable, "-m", "tunelab", "compare", str(recipe), "--output_dir", str(out),
                           "--device", "cpu"], capture_output=True, text=True)
    assert done.returncode == 2, done.stderr[-2000:]
    line = done.stderr.strip().splitlines()[-1]
    assert line.startswith("error: --curve_points 2:") and "seq_cls" in line and "Traceback" not in done.stderr
    assert not out.exists()


def test_interpolation_reads_off_the_curve_and_never_extrapolates():
    curve = [{"step": 0, "x": 0.0, "y": 0.1}, {"step": 10, "x": 0.2, "y": 0.5}, {"step": 20, "x": 0.4, "y": 0.6}]
    assert interpolate(curve, "x", 0.1) == (pytest.approx(0.3), 0, 10)
    assert interpolate(curve, "x", 0.3) == (pytest.approx(0.55), 10, 20)
    assert interpolate(curve, "y", 0.55) == (pytest.approx(0.3), 10, 20)
    assert interpolate(curve, "x", 0.5) is None


def test_curve_points_change_the_run_keys_only_when_set(tiny_llama, tmp_path):
    plain = load_recipe(str(tiny_recipe(tmp_path, tiny_llama, ["lora"])))
    with_zero = load_recipe(str(tiny_recipe(tmp_path, tiny_llama, ["lora"], curve_points=0)))
    curved = load_recipe(str(tiny_recipe(tmp_path, tiny_llama, ["lora"], curve_points=3)))
    entry = plain.methods[0]
    assert plain.run_key(entry, 0) == with_zero.run_key(entry, 0) != curved.run_key(entry, 0)
    options = curved.train_options(entry, 0, train_file="t.jsonl", output_dir=str(tmp_path / "o"), device="cpu")
    assert options.curve_points == 3 and options.curve_checkpoints
    assert yaml.safe_load(curved.to_yaml())["curve_points"] == 3
    with pytest.raises(Exception, match="curve_points must be a whole number"):
        load_recipe(str(tiny_recipe(tmp_path, tiny_llama, ["lora"], curve_points=-1)))


def test_curve_points_and_diagnostics_from_the_command_line():
    """`tunelab compare --recipe demo --curve_points 4 --diagnostics` turns trajectories and weight diagnostics on
    for a recipe that has neither; --curve_points 0 turns them off; a negative count is one clear line."""
    from tunelab.cli import main
    from tunelab.comparison.api import recipe_from_options
    from tunelab.config import CompareOptions

    demo = recipe_from_options(CompareOptions(recipe="demo"))
    assert demo.curve_points == 0 and not demo.diagnostics
    on = recipe_from_options(CompareOptions(recipe="demo", curve_points=4, diagnostics=True))
    assert on.curve_points == 4 and on.diagnostics
    assert on.train_options(on.methods[1], 0, train_file="t.jsonl", output_dir="o").curve_points == 4
    assert recipe_from_options(CompareOptions(recipe="demo", curve_points=0)).curve_points == 0
    assert main(["compare", "--recipe", "demo", "--curve_points", "-1", "--output_dir", "/nonexistent/x"]) == 2
