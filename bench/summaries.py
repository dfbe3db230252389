"""What the benchmarks that run `tunelab compare` keep of a comparison beyond its table: the learning-rate search
(chosen rates, cost, trials) and the learning-forgetting trajectories (points, weight diagnostics, the report's
plots), with the report's verdict lines. bench/make_readme.py reads these keys from compare-*.json and
quality-*.json alike."""

from __future__ import annotations

import shutil

from common import RESULTS


def trajectory_summary(records: list[dict], out, name: str) -> dict:
    """With trajectories or weight diagnostics: every run's points, the verdict lines (matched comparisons
    included) and the report's plots, copied beside the results as PNGs for the README."""
    if not any(r.get("trajectory") or r.get("weight_diagnostics") for r in records):
        return {}
    from tunelab.comparison.report import verdicts

    plots = {}
    for kind in ("tradeoff", "weights"):
        png = out / "plots" / f"{kind}.png"
        if png.is_file():
            target = RESULTS / f"{name}-{kind}.png"
            shutil.copyfile(png, target)
            plots[kind] = target.name
    keep = ("label", "method", "headline_metric", "headline_value", "retention", "trajectory", "weight_diagnostics")
    return {"runs": [{k: r.get(k) for k in keep} for r in records], "verdicts": verdicts(records), "plots": plots,
            "against_full": differences_against_full(records)}


def differences_against_full(records: list[dict]) -> dict[str, dict]:
    """Each method minus full fine-tuning at the end of training, on the task metric and every retention probe,
    with the report's 95% paired bootstrap interval (comparison/statistics.py), by label: what the README may say
    about them (a difference only where the interval excludes 0) without the runs' prediction files."""
    from tunelab.comparison.statistics import compare_runs

    ok = [r for r in records if r.get("status") == "ok" and r.get("method") != "base"]
    full = [r for r in ok if r.get("method") == "full"]
    if not full:
        return {}
    by_label: dict[str, list[dict]] = {}
    for r in ok:
        if r.get("method") != "full":
            by_label.setdefault(r["label"], []).append(r)
    return {label: {name: {"metric": d.metric, "estimate": d.estimate, "low": d.low, "high": d.high,
                           "excludes_zero": d.excludes_zero, "p_value": d.p_value, "text": d.format()}
                    for name, d in compare_runs(runs, full).items()}
            for label, runs in by_label.items()}


def search_summary(records: list[dict], trials: list[dict]) -> dict:
    """What the learning-rate search chose and cost, per method, its trials, and the verdicts with their paired
    intervals (nothing when the search was off)."""
    if not trials:
        return {}
    from tunelab.comparison.report import verdicts

    methods = {}
    for r in records:
        found = r.get("search")
        if found:
            methods[r["label"]] = {**found, "run_wall_seconds": r["wall_seconds"],
                                   "cost_over_run": found["tuning_seconds"] / r["wall_seconds"]}
    keep = ("label", "trial", "learning_rate", "status", "pruned_at_step", "stopped_by", "objective_value",
            "validation_loss_curve", "steps", "cost_seconds", "error")
    return {"search": {"methods": methods, "seconds": sum(t.get("cost_seconds") or 0 for t in trials),
                       "trials": [{k: t.get(k) for k in keep} for t in trials]},
            "verdicts": verdicts(records)}
