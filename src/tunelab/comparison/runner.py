"""Run a comparison: the base model evaluated once, then every method x seed trained and evaluated in a
subprocess of its own. Each finished run is recorded in results.jsonl at once; a re-run skips what is done."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunelab.comparison.data import prepare_data
from tunelab.comparison.processes import PlannedRun
from tunelab.comparison.progress import Progress
from tunelab.comparison.recipe import Recipe
from tunelab.comparison.results import ResultsFile
from tunelab.errors import TunelabError
from tunelab.evaluation.probes import default_data_dir
from tunelab.fileio import atomic_write_text
from tunelab.methods import get_method
from tunelab.options import to_dict
from tunelab import run_files
from tunelab.records import ComparisonRecord

log = logging.getLogger(__name__)


def plan(recipe: Recipe, out: Path, *, data_dir: Path | None, device: str,
         gpu_bf16: bool | None = None) -> list[PlannedRun]:
    """Every run of the comparison (the base first), with the options its subprocess will use. ``gpu_bf16``: the
    runs' GPUs are on other machines and do (not) support bf16 (see recipe._device_options)."""
    data = prepare_data(recipe, out, data_dir)
    runs = []
    base_dir = out / "runs" / "base"
    base_eval = recipe.eval_options(eval_file=data.eval, output_dir=str(base_dir / "eval"), model=recipe.model,
                                    adapter=None, baseline=None, data_dir=str(data_dir) if data_dir else None,
                                    sql_database=data.sql_database, device=device)
    runs.append(PlannedRun(recipe.base_key(), "base", "base", None, base_dir,
                           {"kind": "base", "run_dir": str(base_dir), "eval_options": to_dict(base_eval)}))
    baseline = str(base_dir / "eval" / run_files.EVAL_RESULTS)
    for entry in recipe.methods:
        for seed in recipe.seeds:
            key = recipe.run_key(entry, seed)
            run_dir = out / "runs" / f"{run_files.slug(entry.label, empty='run')}-seed{seed}-{key[:8]}"
            topts = recipe.train_options(entry, seed, train_file=data.train, output_dir=str(run_dir / "model"),
                                         device=device, gpu_bf16=gpu_bf16)
            eopts = recipe.eval_options(eval_file=data.eval, output_dir=str(run_dir / "eval"), model=recipe.model,
                                        adapter=None, baseline=baseline,
                                        data_dir=str(data_dir) if data_dir else None,
                                        sql_database=data.sql_database, device=device)
            explicit = sorted(set(entry.overrides) | {"method"})
            runs.append(PlannedRun(key, entry.label, entry.method, seed, run_dir,
                                   {"kind": "run", "run_dir": str(run_dir), "train_options": to_dict(topts),
                                    "eval_options": to_dict(eopts), "explicit": explicit,
                                    "diagnostics": recipe.diagnostics}))
    return runs


def _at_chosen_rates(recipe: Recipe, searched: dict, results: ResultsFile) -> tuple[Recipe, list[str]]:
    """The recipe whose entries train at the rates their searches chose; an entry whose search chose none (every
    trial failed) is left out, and each of its seeds recorded as failed with the reason. Returns the recipe and
    those records' keys."""
    import copy

    recipe = copy.deepcopy(recipe)
    kept, failed = [], []
    for entry in recipe.methods:
        outcome = searched[entry.label]
        if outcome.chosen_learning_rate is None:
            for seed in recipe.seeds:
                key = recipe.run_key(entry, seed)
                results.put(ComparisonRecord(key=key, label=entry.label, method=entry.method, seed=seed,
                                             status="failed", error=outcome.error, wall_seconds=0.0, run_dir=None,
                                             search=outcome.summary()))
                failed.append(key)
            log.warning("%s: %s; its runs are recorded as failed", entry.label, outcome.error)
            continue
        if "learning_rate" in entry.overrides:
            log.info("%s: the recipe's learning rate %g is replaced by the searched %.3g", entry.label,
                     entry.overrides["learning_rate"], outcome.chosen_learning_rate)
        entry.overrides["learning_rate"] = outcome.chosen_learning_rate
        kept.append(entry)
    recipe.methods = kept
    return recipe, failed


@dataclass
class ComparisonOutcome:
    output_dir: Path
    records: list[dict[str, Any]]
    ran: list[str]
    skipped: list[str]
    report_html: Path | None
    report_md: Path | None


def _check_curve_points(recipe: Recipe) -> None:
    """Trajectories track next-token signals during training: a model of another kind would fail every run after
    the base's evaluation; it fails here, before any work, by the runs' own rule."""
    if not recipe.curve_points:
        return
    from tunelab.models import detect_task_kind, load_config, resolve_model
    from tunelab.tracking import require_causal_lm

    try:
        kind = detect_task_kind(load_config(resolve_model(recipe.model)))
    except TunelabError:
        return  # (a model that cannot be read fails in its runs, with their own message)
    require_causal_lm(kind, recipe.model, f"--curve_points {recipe.curve_points}")


def run_comparison(recipe: Recipe, out: Path, *, data_dir: str | None = None, device: str = "auto",
                   force: bool = False, retry_failed: bool = False, run_timeout: float | None = None,
                   report: bool = True, parallel: int | None = None, launcher: str = "local",
                   ray_address: str | None = None, ray_num_cpus: int = 1,
                   ray_num_gpus: int | None = None) -> ComparisonOutcome:
    """Every run not finished yet, the base first (every run reads its evaluation), then the methods: one at a
    time, ``parallel`` at once on this machine, or as Ray tasks (``launcher="ray"``); see launchers.py."""
    from tunelab.comparison.launchers import make_launcher
    from tunelab.comparison.report import write_report

    out = Path(out)
    if launcher == "ray":
        out = out.resolve()  # the runs' paths are read on other machines, from other working directories
    resolved_data_dir = default_data_dir(data_dir)
    for entry in recipe.methods:  # impossible entries fail per run; unknown options fail here, before any work
        get_method(entry.method)
    _check_curve_points(recipe)
    # (impossible --parallel / --launcher settings fail here too, before the directory is made)
    launch = make_launcher(launcher, parallel=parallel, device=device, out=out, ray_address=ray_address,
                           ray_num_cpus=ray_num_cpus, ray_num_gpus=ray_num_gpus)
    try:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / "recipe.yaml", recipe.to_yaml())
        run_device, gpu_bf16 = launch.devices(device)
        results = ResultsFile(out)
        searched, unsearched = {}, []
        if recipe.search is not None:  # each entry's learning rate is tuned first, on a validation split
            from tunelab.comparison.search import run_search

            searched = run_search(recipe, out, data=prepare_data(recipe, out, resolved_data_dir), launch=launch,
                                  device=run_device, gpu_bf16=gpu_bf16, data_dir=resolved_data_dir,
                                  results=results, timeout=run_timeout, force=force,
                                  wave_size=parallel or (1 if launcher == "local" else len(recipe.methods)))
            recipe, unsearched = _at_chosen_rates(recipe, searched, results)
        runs = plan(recipe, out, data_dir=resolved_data_dir, device=run_device, gpu_bf16=gpu_bf16)
        done = results.by_key()
        ran, skipped, todo = [], [], []
        for run in runs:
            previous = done.get(run.key)
            finished = previous is not None and (previous["status"] == "ok" or not retry_failed)
            if finished and not force:
                skipped.append(run.label)
                log.info("%s%s: already done (%s), skipped", run.label,
                         f" seed {run.seed}" if run.seed is not None else "", previous["status"])
            else:
                todo.append(run)
        base = [r for r in todo if r.method == "base"]
        progress = Progress(todo)
        for batch in (base, [r for r in todo if r.method != "base"]):
            # Each record is written the moment its run ends, so an interrupted comparison keeps every finished run.
            for run, record in launch.run(batch, timeout=run_timeout):
                if run.method != "base":
                    record.learning_rate = run.spec["train_options"].get("learning_rate") \
                        or get_method(run.method).default_learning_rate
                if run.label in searched:
                    record.search = searched[run.label].summary()
                results.put(record)
                ran.append(run.label)
                log.info("%s", progress.finished(run, record.wall_seconds or 0.0))
                if record.status != "ok":
                    log.warning("%s failed: %s (recorded; the comparison goes on)", run.label, record.error)
                if run.method == "base" and record.status != "ok":
                    raise TunelabError(f"the base model's evaluation failed ({record.error}); every run depends "
                                       f"on it; see {run.run_dir / 'log.txt'}")
    finally:
        launch.close()
    wanted = {r.key for r in runs} | set(unsearched)
    records = [r for r in results.records() if r["key"] in wanted]
    html = md = None
    if report:
        html, md = write_report(out, records=records, recipe=recipe)
    return ComparisonOutcome(out, records, ran, skipped, html, md)

