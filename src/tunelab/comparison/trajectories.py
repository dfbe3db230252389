"""Learning-forgetting trajectories in a comparison (recipe field ``curve_points: K``).

Each run saves its adapter (or model) at K evenly spaced steps (`tunelab train --curve_points`; the last point is the
end of training), and its worker evaluates every saved point as it evaluates the run itself: the task metric and the
retention probes. results.jsonl then holds, per run, ``trajectory``: the points before the end, each with its step,
task score and probe values in the same shape as the run's own. A method's trajectory is the base model (the
origin), its points, and the run's end.

From the trajectories the report draws one line per method on the learning-forgetting plane, with the Pareto front
over every point (Biderman et al. 2024 plot LoRA and full fine-tuning this way), and states matched comparisons:
each method's task score at the forgetting full fine-tuning ends at, full fine-tuning's at the forgetting the method
ends at, and the forgetting at which the method reaches full fine-tuning's score. These are read off the curves by
linear interpolation between two evaluated points (never extrapolated) and said to be so; they are point estimates
without intervals, so no line claims one method is better from them.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable

from tunelab.records import EvalRecord, TrainRecord

log = logging.getLogger(__name__)

CURVE_EVAL_DIR = "curve-eval"


# --- in the worker ---------------------------------------------------------------------------------------------

def point_of(step: int, evaluated: EvalRecord, seconds: float | None) -> dict[str, Any]:
    """A trajectory point: what the report reads from a run record (headline value, retention values)."""
    return {"step": step, "seconds": seconds, "headline_metric": evaluated.headline_metric,
            "headline_value": evaluated.headline_value,
            "retention": {name: {k: p.get(k) for k in ("metric", "kl_divergence", "delta_cross_entropy", "before",
                                                      "after", "retention_ratio") if k in p}
                          for name, p in (evaluated.retention or {}).items()}}


def evaluate_points(trained: TrainRecord, eval_values: dict[str, Any], run_dir: Path, *, peft: bool,
                    evaluate: Callable) -> list[dict[str, Any]]:
    """Every saved curve point of the run evaluated with the run's own evaluation options."""
    from tunelab.config import EvalOptions

    seconds = {p["step"]: p.get("seconds") for p in trained.curves or []}
    points = []
    for checkpoint in (trained.tracking or {}).get("curve_checkpoints") or []:
        step, path = checkpoint["step"], checkpoint["path"]
        values = dict(eval_values, output_dir=str(Path(run_dir) / CURVE_EVAL_DIR / f"step-{step}"))
        if peft:
            values["adapter"] = path
        else:
            values.update(model_name_or_path=path, adapter=None)
        log.info("curve point: evaluating step %d (%s)", step, path)
        points.append(point_of(step, evaluate(EvalOptions(**values)).record, seconds.get(step)))
    return points


# --- in the report ---------------------------------------------------------------------------------------------

def has_trajectories(records: list[dict[str, Any]]) -> bool:
    return any(r.get("trajectory") for r in records if r.get("status") == "ok")


def method_curves(records: list[dict[str, Any]], x_of: Callable[[dict], float | None]) -> dict[str, list[dict]]:
    """Per method label: [{"step", "x", "y"}, ...] from the base through its points to its end, each the mean over
    the method's seeds at that step (the same steps for every seed of a method)."""
    from tunelab.comparison.rows import group_rows

    rows = group_rows([r for r in records if r.get("status") == "ok"])
    base = next((row for row in rows if row.is_base), None)
    origin = None
    if base is not None:
        origin = {"step": 0, "x": _mean([x_of(r) for r in base.records]),
                  "y": _mean([r.get("headline_value") for r in base.records])}
    curves = {}
    for row in rows:
        if row.is_base:
            continue
        by_step: dict[int, list[dict]] = {}
        for rec in row.records:
            for point in [*(rec.get("trajectory") or []), {**rec, "step": rec.get("global_step")}]:
                by_step.setdefault(point["step"], []).append(point)
        points = [{"step": step, "x": _mean([x_of(p) for p in ps]), "y": _mean([p.get("headline_value") for p in ps])}
                  for step, ps in sorted(by_step.items(), key=lambda kv: kv[0] or 0)]
        points = [p for p in points if p["x"] is not None and p["y"] is not None]
        curves[row.label] = ([origin] if origin and origin["x"] is not None and origin["y"] is not None else []) \
            + points
    return curves


def _mean(values) -> float | None:
    vals = [float(v) for v in values if v is not None]
    return sum(vals) / len(vals) if vals else None


def interpolate(curve: list[dict], along: str, target: float) -> tuple[float, int, int] | None:
    """The other coordinate where ``curve`` first reaches ``along`` = ``target``, linearly between the two points
    around it: (value, step before, step after); None when the curve never reaches it (no extrapolation)."""
    other = "y" if along == "x" else "x"
    for a, b in zip(curve, curve[1:]):
        lo, hi = sorted((a[along], b[along]))
        if lo <= target <= hi:
            if a[along] == b[along]:
                return a[other], a["step"], b["step"]
            t = (target - a[along]) / (b[along] - a[along])
            return a[other] + t * (b[other] - a[other]), a["step"], b["step"]
    return None


def matched_comparisons(records: list[dict[str, Any]]) -> list[str]:
    """Verdict lines read off the trajectories, against full fine-tuning (or, without it, the first method)."""
    from tunelab.comparison.figures import tradeoff_axes
    from tunelab.comparison.rows import fmt_num, probe_title

    if not has_trajectories(records):
        return []
    probe, _, x_higher = tradeoff_axes(records)
    ok = [r for r in records if r.get("status") == "ok" and r.get("headline_metric")]
    if probe is None or not ok:
        return []
    headline = ok[0]["headline_metric"]
    x_of = trajectory_x(probe, x_higher)
    xname = f"{probe_title(probe)} retention" if x_higher else f"{probe_title(probe)} KL"
    curves = {label: c for label, c in method_curves(records, x_of).items() if len(c) >= 2}
    if len(curves) < 2:
        return []
    methods = {r["label"]: r["method"] for r in ok}
    ref = next((label for label in curves if methods.get(label) == "full"), next(iter(curves)))
    ref_name = "full fine-tuning" if methods.get(ref) == "full" else ref
    ref_curve = curves[ref]
    ref_end = ref_curve[-1]
    lines = []
    for label, curve in curves.items():
        if label == ref:
            continue
        end = curve[-1]
        parts = []
        at = interpolate(curve, "x", ref_end["x"])
        parts.append(f"at the {xname} {ref_name} ends at ({fmt_num(ref_end['x'])}, step {ref_end['step']}), "
                     + (f"{label} scores {headline} {fmt_num(at[0])} (interpolated between its steps {at[1]} and "
                        f"{at[2]}; {ref_name}: {fmt_num(ref_end['y'])})" if at else
                        f"{label} has no point: its curve never reaches that {xname}"))
        back = interpolate(ref_curve, "x", end["x"])
        parts.append(f"at the {xname} {label} ends at ({fmt_num(end['x'])}), "
                     + (f"{ref_name} scored {fmt_num(back[0])} (interpolated between its steps {back[1]} and "
                        f"{back[2]}; {label}: {fmt_num(end['y'])})" if back else
                        f"{ref_name}'s curve has no point"))
        same = interpolate(curve, "y", ref_end["y"])
        parts.append(f"{label} reaches {ref_name}'s {headline} {fmt_num(ref_end['y'])} at {xname} "
                     f"{fmt_num(same[0])} (interpolated between its steps {same[1]} and {same[2]})" if same else
                     f"{label} does not reach {ref_name}'s {headline} {fmt_num(ref_end['y'])} along its curve")
        lines.append(f"{label} along its trajectory (matched, read off the curves, one point estimate each): "
                     + "; ".join(parts))
    return lines


def trajectory_x(probe: str, x_higher: bool) -> Callable[[dict], float | None]:
    """The forgetting axis of a record or point: the probe's retention ratio (the base: 1), or its KL from the
    base (the base: its own, 0)."""
    def x_of(rec: dict) -> float | None:
        if x_higher and rec.get("method") == "base":
            return 1.0
        p = (rec.get("retention") or {}).get(probe) or {}
        return p.get("retention_ratio") if x_higher else p.get("kl_divergence")
    return x_of


def plot_trajectories(records):
    """One line per method from the base through its curve points to its end, and the Pareto front over every
    point."""
    from tunelab.comparison.figures import figure, pareto_front, tradeoff_axes
    from tunelab.evaluation.tasks import HIGHER_IS_BETTER

    probe, xlabel, x_higher = tradeoff_axes(records)
    ok = [r for r in records if r.get("status") == "ok" and r.get("headline_metric")]
    if probe is None or not ok:
        return None
    headline = ok[0]["headline_metric"]
    y_higher = HIGHER_IS_BETTER.get(headline, True)
    curves = method_curves(records, trajectory_x(probe, x_higher))
    if not any(curves.values()):
        return None
    fig = figure(figsize=(7, 4.5))
    ax = fig.subplots()
    everything = []
    for label, curve in curves.items():
        xs, ys = [p["x"] for p in curve], [p["y"] for p in curve]
        line, = ax.plot(xs, ys, "-o", markersize=4, label=label, zorder=3)
        for p in curve[1:]:
            ax.annotate(str(p["step"]), (p["x"], p["y"]), textcoords="offset points", xytext=(4, 4), fontsize=7,
                        color=line.get_color())
        everything += [(p["x"], p["y"]) for p in curve]
    front = sorted(set(everything[i] for i in pareto_front(everything, x_higher, y_higher)))
    if len(front) > 1:
        ax.plot([p[0] for p in front], [p[1] for p in front], "--", color="#888888", zorder=2, label="Pareto front")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(f"{headline} ({'higher' if y_higher else 'lower'} is better)")
    ax.set_title("Learning against forgetting over training (base → points → end; numbers: steps)")
    if not x_higher:
        ax.invert_xaxis()
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    return fig
