"""report.md and a self-contained report.html, drawn only from results.jsonl and the runs' prediction files.

The table users know from comparison write-ups (the untouched base as a row, mean ± 95% CI over seeds), the
learning-forgetting trade-off with its Pareto front, cost bars, loss curves, a qualitative side-by-side and one
verdict line per method computed from the numbers.
"""

from __future__ import annotations

import base64
import html
import random
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunelab.comparison.figures import figure, pareto_front, png, tradeoff_axes
from tunelab.comparison.results import ResultsFile
from tunelab.comparison.rows import (BUSY_MARK, Row, fmt_num, fmt_params, fmt_rate, fmt_seconds, fmt_stat,
                                     generation_speed, group_rows, mark_busy, is_drift_probe, probe_title,
                                     probes_of, retention_ratio, retention_value, timed_busy, wait_shares)
from tunelab import contention
from tunelab.errors import TunelabError
from tunelab.evaluation.tasks import HIGHER_IS_BETTER
from tunelab.fileio import atomic_write_text
from tunelab.units import format_bytes
from tunelab import run_files

QUALITATIVE_EXAMPLES = 4


# --- paired differences (comparison/statistics.py) ------------------------------------------------------------

def _headline(rows: list[Row]) -> str | None:
    return next((r["headline_metric"] for row in rows for r in row.records if r.get("headline_metric")), None)


def reference_rows(rows: list[Row]) -> tuple[Row | None, Row | None]:
    """(the reference: full fine-tuning, else the best method; the best method by mean headline score)."""
    methods = [r for r in rows if r.records and not r.is_base]
    headline = _headline(methods)
    scored = [r for r in methods if r.stat(lambda x: x.get("headline_value")).mean is not None]
    best = None
    if scored:
        sign = 1 if HIGHER_IS_BETTER.get(headline, True) else -1
        best = max(scored, key=lambda r: sign * r.stat(lambda x: x.get("headline_value")).mean)
    full = next((r for r in methods if r.method == "full"), None)
    return (full or best), best


_DIFFERENCES: dict[tuple, dict] = {}


def differences(row: Row, ref: Row) -> dict:
    """``row`` minus ``ref`` on each measure (headline metric, retention probes) with 95% paired bootstrap
    intervals over the same test examples (and seeds); {} where the runs left no per-example scores."""
    from tunelab.comparison.statistics import compare_runs

    key = tuple((r.get("key"), r.get("eval_dir")) for r in row.records) + (None,) + tuple(
        (r.get("key"), r.get("eval_dir")) for r in ref.records)
    if key not in _DIFFERENCES:
        _DIFFERENCES[key] = compare_runs(row.records, ref.records)
    return _DIFFERENCES[key]


def _indistinguishable(d, ref_name: str, examples: str = "test examples") -> str:
    """``examples``: what the measure is scored on (the task's test examples, a probe's examples)."""
    interval = d.format().split(" [", 1)[-1].rstrip("]")
    text = f"indistinguishable from {ref_name} at this sample size ([{interval}]{' ' + d.unit if d.unit else ''}"
    if d.identical:
        return text + f": the same score on every one of its {examples})"
    n = d.examples_to_separate()
    if not n:
        return text + ")"
    if n <= d.n_examples:  # a 2-point difference would show at this size: the one measured is smaller
        return text + f"; its {d.n_examples} {examples} would separate a 2-point difference)"
    return text + f"; about {n} {examples} would separate a 2-point difference)"


@dataclass
class _Claims:
    """The paired intervals a report's verdicts read (every method against the reference, on each measure, and
    against the best method), and which of the differences they claim survive false-discovery control over all
    of them (statistics.false_discovery_kept)."""

    intervals: list = field(default_factory=list)
    kept: set[int] = field(default_factory=set)   # id() of each kept Difference

    def say(self, d, text: str) -> str:
        """A claimed difference's text, marked where false-discovery control over the report does not keep it."""
        if id(d) in self.kept or len(self.intervals) < 2:
            return text
        return f"{text} (not kept under false-discovery control over this report's {len(self.intervals)} intervals)"

    def summary(self, ref_name: str) -> list[str]:
        from tunelab.comparison.statistics import CONFIDENCE

        n = len(self.intervals)
        claimed = sum(d.excludes_zero for d in self.intervals)
        if n < 2 or not claimed:
            return []
        return [f"Multiple comparisons: these verdicts read {n} paired 95% intervals; were no method different "
                f"from {ref_name} on anything, about {(1 - CONFIDENCE) * n:.2g} of them would exclude 0 by chance. "
                f"{claimed} do; "
                f"{len(self.kept)} of those stay claimed with the false discovery rate over all {n} held at 5% "
                "(Benjamini-Hochberg)."]


def _claims(rows: list[Row], ref: Row, best: Row | None, headline: str | None) -> _Claims:
    from tunelab.comparison.statistics import false_discovery_kept

    intervals = []
    for row in rows:
        if row is ref:
            continue
        intervals += differences(row, ref).values()
        if best is not None and best is not ref and best is not row and headline:
            b = differences(row, best).get(headline)
            intervals += [b] if b is not None else []
    intervals = [d for d in intervals if d.low is not None and d.high is not None]
    kept = {id(d) for d, k in zip(intervals, false_discovery_kept(intervals)) if k}
    return _Claims(intervals, kept)


# --- the table -----------------------------------------------------------------------------------------------

def table(records: list[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the comparison table, as displayed strings."""
    rows = group_rows(records)
    ok = [r for row in rows for r in row.records]
    headline = next((r["headline_metric"] for r in ok if r.get("headline_metric")), None)
    metric_names = []
    for r in ok:
        for name in (r.get("task_metrics") or {}):
            if name not in metric_names and name not in ("gold_errors", "tokens"):
                metric_names.append(name)
    if headline in metric_names:
        metric_names.remove(headline)
        metric_names.insert(0, headline)
    probes = probes_of(ok)
    # on the CPU, the live tensor bytes beside the resident set size: methods compared rather than allocators
    tensor_peak = any(r.get("peak_tensor_bytes") for r in ok)
    generation = any(generation_speed(r) is not None for r in ok)
    header = ["Approach", "Trainable params (%)", "Training time", "Peak memory",
              *(["Tensor peak"] if tensor_peak else []), "Checkpoint size",
              *(["Generation tokens/s"] if generation else []), *metric_names]
    for p in probes:
        header.append(f"{probe_title(p)} KL ↓" if is_drift_probe(ok, p) else f"{probe_title(p)} (retention)")
    body = []
    for row in rows:
        if not row.records:
            body.append([f"{row.label} (failed)", *["–"] * (len(header) - 1)])
            continue
        name = "base (untouched)" if row.is_base else row.label
        if len(row.records) > 1:
            name += f" (n={len(row.records)})"
        params = row.stat(lambda r: r.get("trainable_params"))
        pct = row.stat(lambda r: r.get("trainable_percent"))
        cells = [name,
                 "0 (0%)" if row.is_base else f"{fmt_params(params.mean)} ({pct.mean:.3f}%)",
                 "–" if row.is_base else mark_busy(fmt_stat(row.stat(lambda r: r.get("train_seconds")), fmt_seconds),
                                                   row),
                 "–" if row.is_base else fmt_stat(row.stat(lambda r: r.get("peak_memory_bytes")), format_bytes),
                 *(["–" if row.is_base else fmt_stat(row.stat(lambda r: r.get("peak_tensor_bytes")), format_bytes)]
                   if tensor_peak else []),
                 "–" if row.is_base else fmt_stat(row.stat(lambda r: r.get("checkpoint_bytes")), format_bytes),
                 *([_generation_cell(row)] if generation else [])]
        for m in metric_names:
            cells.append(fmt_stat(row.stat(lambda r, m=m: (r.get("task_metrics") or {}).get(m))))
        for p in probes:
            value = fmt_stat(row.stat(lambda r, p=p: retention_value(r, p)))
            ratio = row.stat(lambda r, p=p: retention_ratio(r, p))
            if not is_drift_probe(ok, p) and ratio.mean is not None and not row.is_base:
                value += f" ({100 * ratio.mean:.0f}%)"
            cells.append(value)
        body.append(cells)
    _search_and_difference_columns(rows, header, body)
    return header, body


def _generation_cell(row: Row) -> str:
    """Tokens/s as evaluated and, for an adapter the method merges, after merging it into the base."""
    text = fmt_stat(row.stat(generation_speed), fmt_rate)
    merged = row.stat(lambda r: generation_speed(r, merged=True))
    text = text if merged.mean is None else f"{text} (merged {fmt_stat(merged, fmt_rate)})"
    return mark_busy(text, row, "generation")


def _search_and_difference_columns(rows: list[Row], header: list[str], body: list[list[str]]) -> None:
    """The chosen learning rate and the search's cost (when the rates were searched), and each method's headline
    difference from the reference with its 95% paired interval, appended to the table."""
    searched = any(r.get("search") for row in rows for r in row.records + row.failed)
    ref, _ = reference_rows(rows)
    headline = _headline(rows)
    diffs = {row.label: differences(row, ref).get(headline) for row in rows
             if ref is not None and headline and row.records and not row.is_base and row is not ref}
    show_diff = any(d is not None for d in diffs.values())
    if searched:
        header += ["Learning rate", "Tuning cost"]
    if show_diff:
        header.append(f"Δ {headline} vs {ref.label} (95% CI)")
    for row, cells in zip(rows, body):
        if searched:
            rec = (row.records or row.failed or [{}])[0]
            found = rec.get("search") or {}
            rate = found.get("chosen_learning_rate") or rec.get("learning_rate")
            cost = found.get("tuning_seconds")
            runs = row.stat(lambda r: r.get("wall_seconds")).mean
            cells += ["–" if row.is_base or rate is None else f"{rate:.2g}" + (" (searched)" if found else ""),
                      "–" if cost is None else _tuning_cost(found) + (
                          f" ({cost / runs:.1f}× a run)" if runs and not _busy_search(found, row) else "")]
        if show_diff:
            d = diffs.get(row.label)
            cells.append("reference" if row is ref else "–" if d is None else d.format())


def markdown_table(header: list[str], body: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in body]
    return "\n".join(lines)


# --- verdicts ------------------------------------------------------------------------------------------------

def verdicts(records: list[dict[str, Any]]) -> list[str]:
    """One line per method, computed from the numbers, against full fine-tuning (or the best method)."""
    rows = [r for r in group_rows(records) if r.records and not r.is_base]
    if not rows:
        return []
    ok = [r for row in rows for r in row.records]
    headline = next((r["headline_metric"] for r in ok if r.get("headline_metric")), None)
    higher = HIGHER_IS_BETTER.get(headline, True)
    drift_probe = next((p for p in probes_of(ok) if is_drift_probe(ok, p)), None)

    def score(row): return row.stat(lambda r: r.get("headline_value")).mean
    ref = next((r for r in rows if r.method == "full"), None)
    if ref is None:
        ref = max(rows, key=lambda r: (score(r) or 0) if higher else -(score(r) or float("inf")))
    ref_name = "full fine-tuning" if ref.method == "full" else ref.label
    _, best = reference_rows(rows)
    claims = _claims(rows, ref, best, headline)
    lines = []
    ref_score = score(ref)
    ref_params = ref.stat(lambda r: r.get("trainable_params")).mean
    ref_mem = ref.stat(lambda r: r.get("peak_memory_bytes")).mean
    ref_time = ref.stat(lambda r: r.get("train_seconds")).mean
    ref_drift = ref.stat(lambda r: retention_value(r, drift_probe)).mean if drift_probe else None
    for row in rows:
        s = score(row)
        if row is ref:
            parts = [f"{headline} {fmt_num(s)}", f"{fmt_params(ref_params)} trainable parameters",
                     f"{format_bytes(ref_mem)} peak memory", f"{fmt_seconds(ref_time)} training"]
            if drift_probe and ref_drift is not None:
                parts.append(f"drift KL {fmt_num(ref_drift)}")
            lines.append(f"{row.label} (reference): " + ", ".join(parts))
            continue
        parts = []
        # A difference is claimed only where its 95% paired interval excludes 0 (comparison/statistics.py).
        diffs = differences(row, ref)
        hd = diffs.get(headline)
        if hd is not None:
            parts.append(claims.say(hd, f"{headline} {hd.format()} against {ref_name}") if hd.excludes_zero
                         else f"{headline} {_indistinguishable(hd, ref_name)}")
            if best is not None and best is not ref and best is not row:
                b = differences(row, best).get(headline)
                if b is not None:
                    parts.append(claims.say(b, f"{b.format()} against the best method, {best.label}")
                                 if b.excludes_zero else _indistinguishable(b, f"the best method, {best.label}"))
        elif s is not None and ref_score:
            pct = 100 * (s / ref_score if higher else ref_score / s) if s else 0.0
            parts.append(f"{pct:.0f}% of {ref_name}'s {headline}")
        elif s is not None:
            parts.append(f"{headline} {fmt_num(s)} vs {fmt_num(ref_score)} for {ref_name}")
        p = row.stat(lambda r: r.get("trainable_params")).mean
        if p is not None and ref_params:
            share = 100 * p / ref_params
            # two significant digits for small shares (3.6%, 0.12%), never exponent notation (100%, 250%)
            parts.append(f"{share:.0f}% of its trainable parameters" if share >= 10 else
                         f"{share:.2g}% of its trainable parameters")
        m = row.stat(lambda r: r.get("peak_memory_bytes")).mean
        if m and ref_mem:
            parts.append(f"{m / ref_mem:.2f}× its peak memory")
        t = row.stat(lambda r: r.get("train_seconds")).mean
        if t and ref_time and (timed_busy(row) or timed_busy(ref)):
            parts.append(f"training time not compared ({BUSY_MARK}: timed on a busy machine)")
        elif t and ref_time:
            parts.append(f"{t / ref_time:.2f}× its training time")
        for probe, pd in diffs.items():  # the task probes' retention: a difference only where it is one
            if probe != headline and probe != drift_probe:
                parts.append(claims.say(pd, f"{probe_title(probe)} {pd.format()}") if pd.excludes_zero
                             else f"{probe_title(probe)} {_indistinguishable(pd, ref_name, 'probe examples')}")
        if drift_probe and drift_probe in diffs and not diffs[drift_probe].excludes_zero:
            parts.append(f"drift {_indistinguishable(diffs[drift_probe], ref_name, 'probe examples')}")
        elif drift_probe:
            d = row.stat(lambda r: retention_value(r, drift_probe)).mean
            interval = claims.say(diffs[drift_probe], f" (KL {diffs[drift_probe].format()})") \
                if drift_probe in diffs else ""
            if d is not None and ref_drift is not None:
                if d > 0 and ref_drift > d:
                    parts.append(f"{ref_drift / d:.1f}× less drift{interval}")
                elif ref_drift > 0 and d > ref_drift:
                    parts.append(f"{d / ref_drift:.1f}× more drift{interval}")
                else:
                    parts.append(f"drift KL {fmt_num(d)} vs {fmt_num(ref_drift)}")
        if hd is None and s is not None:
            parts.append("no interval: the runs left no per-example scores")
        lines.append(f"{row.label}: " + ", ".join(parts))
    from tunelab.comparison.trajectories import matched_comparisons

    lines += claims.summary(ref_name)
    lines += matched_comparisons(records)  # recipe curve_points: read off the trajectories
    for row in group_rows(records):
        for rec in row.failed:
            lines.append(f"{row.label} (seed {rec.get('seed')}): failed — {rec.get('error')}")
    return lines


# --- plots ---------------------------------------------------------------------------------------------------

def _label_offsets(anchors: list[tuple[float, float]], labels: list[str],
                   fontsize: float = 9) -> list[tuple[int, int]]:
    """Offsets (points) of labels from their points such that no two labels' boxes overlap: each label takes the
    first free place on its point's line, right of the point then left of it, then one line up, one line down,
    two up, ... ``anchors`` are the points' positions in points (display units at 72 dpi); a label's box is
    estimated from its length. A negative x offset means the label ends there (right-aligned)."""
    height = fontsize + 2
    shifts = [0] + [s for n in range(1, len(anchors) + 1) for s in (n, -n)]
    boxes: list[tuple[float, float, float, float]] = []
    offsets = []
    for (x, y), label in zip(anchors, labels):
        width = 0.6 * fontsize * len(label)
        for dx, dy in ((dx, 4 + shift * height) for shift in shifts for dx in (6, -6)):
            left = x + dx if dx > 0 else x + dx - width
            box = (left, left + width, y + dy, y + dy + height)
            if not any(box[0] < b[1] and b[0] < box[1] and box[2] < b[3] and b[2] < box[3] for b in boxes):
                break
        boxes.append(box)
        offsets.append((dx, round(dy)))
    return offsets


def plot_tradeoff(records):
    """One point per method: the mean over its seeds, with 95% CI bars where there are several; with trajectories
    (recipe curve_points), one line per method through its points (comparison/trajectories.py)."""
    from tunelab.comparison import trajectories

    if trajectories.has_trajectories(records):
        return trajectories.plot_trajectories(records)
    probe, xlabel, x_higher = tradeoff_axes(records)
    ok = [r for r in records if r["status"] == "ok" and r.get("headline_value") is not None]
    if probe is None or not ok:
        return None
    headline = ok[0]["headline_metric"]
    y_higher = HIGHER_IS_BETTER.get(headline, True)

    def kept(r):
        if r["method"] == "base" and x_higher:
            return 1.0
        return retention_ratio(r, probe) if x_higher else retention_value(r, probe)

    pts, errs, labels = [], [], []
    for row in group_rows(ok):
        x, y = row.stat(kept), row.stat(lambda r: r.get("headline_value"))
        if x.mean is None:
            continue
        pts.append((x.mean, y.mean))
        errs.append((x.half_width or 0.0, y.half_width or 0.0))
        labels.append(row.label + (f" ({y.n} seeds)" if y.n > 1 else ""))
    if not pts:
        return None
    fig = figure(figsize=(7, 4.5))
    ax = fig.subplots()
    ax.scatter([p[0] for p in pts], [p[1] for p in pts], s=50, color="#2b6cb0", zorder=3)
    if any(e != (0.0, 0.0) for e in errs):
        ax.errorbar([p[0] for p in pts], [p[1] for p in pts], xerr=[e[0] for e in errs], yerr=[e[1] for e in errs],
                    fmt="none", ecolor="#2b6cb0", alpha=0.6, capsize=3, zorder=2)
    ax.autoscale_view()  # the limits the points will be drawn in, for their positions on the page
    to_points = 72 / fig.dpi
    anchors = [(px * to_points, py * to_points) for px, py in ax.transData.transform(pts)]
    for (x, y), label, (dx, dy) in zip(pts, labels, _label_offsets(anchors, labels)):
        ax.annotate(label, (x, y), textcoords="offset points", xytext=(dx, dy), fontsize=9,
                    ha="left" if dx > 0 else "right")
    front = sorted(pareto_front(pts, x_higher, y_higher), key=lambda i: pts[i][0])
    if len(front) > 1:
        ax.plot([pts[i][0] for i in front], [pts[i][1] for i in front], "--", color="#dd6b20", zorder=2,
                label="Pareto front")
        ax.legend(loc="best", fontsize=9)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(f"{headline} ({'higher' if y_higher else 'lower'} is better)")
    ax.set_title("What each method learns against what it keeps")
    if not x_higher:
        ax.invert_xaxis()
    ax.grid(alpha=0.3)
    return fig


def plot_costs(records):
    rows = [r for r in group_rows(records) if r.records and not r.is_base]
    if not rows:
        return None
    fig = figure(figsize=(12, 3.8))
    axes = fig.subplots(1, 3)
    labels = [mark_busy(r.label, r) for r in rows]
    series = [("Peak memory (GiB)", lambda r: (r.get("peak_memory_bytes") or 0) / 2**30, False),
              ("Training time (s)", lambda r: r.get("train_seconds") or 0, False),
              ("Trainable parameters (log)", lambda r: max(r.get("trainable_params") or 0, 1), True)]
    for ax, (title, getter, log) in zip(axes, series):
        stats = [row.stat(getter) for row in rows]
        ax.barh(labels, [s.mean or 0 for s in stats], xerr=[s.half_width or 0 for s in stats], color="#4a5568")
        ax.set_title(title, fontsize=10)
        if log:
            ax.set_xscale("log")
        ax.invert_yaxis()
        ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    return fig


def plot_loss_curves(records):
    ok = [r for r in records if r["status"] == "ok" and r.get("loss_curve")]
    if not ok:
        return None
    fig = figure(figsize=(7, 4))
    ax = fig.subplots()
    for r in ok:
        curve = r["loss_curve"]
        label = r["label"] + (f" (seed {r['seed']})" if r.get("seed") else "")
        ax.plot([p["step"] for p in curve], [p["loss"] for p in curve], label=label)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("training loss")
    ax.set_title("Loss curves")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return fig


def search_trials(records) -> list[dict[str, Any]]:
    return [r for r in records if r.get("kind") == "trial"]


def plot_lr_sensitivity(records):
    """The learning-rate search: each trial's validation objective against its rate, one colour per method; a
    pruned trial is an x at the last validation loss it reached (its step beside it), the chosen rate circled."""
    trials = search_trials(records)
    if not trials:
        return None
    chosen = {r["label"]: (r.get("search") or {}).get("chosen_learning_rate") for r in records
              if r.get("kind") != "trial" and r.get("search")}
    on_loss = all(t.get("objective") in (None, "validation_loss") for t in trials)
    fig = figure(figsize=(7, 4.5))
    ax = fig.subplots()
    colours = {}
    for label in dict.fromkeys(t["label"] for t in trials):
        mine = sorted((t for t in trials if t["label"] == label), key=lambda t: t["learning_rate"] or 0)
        done = [t for t in mine if t["status"] == "finished" and t.get("objective_value") is not None]
        line, = ax.plot([t["learning_rate"] for t in done], [t["objective_value"] for t in done], "o-",
                        label=label, zorder=3)
        colours[label] = line.get_color()
        for t in mine:
            curve = t.get("validation_loss_curve") or []
            if t["status"] == "pruned" and curve and on_loss:
                ax.plot([t["learning_rate"]], [curve[-1]["eval_loss"]], "x", color=colours[label], ms=8, zorder=3)
                ax.annotate(f"step {t.get('pruned_at_step')}", (t["learning_rate"], curve[-1]["eval_loss"]),
                            textcoords="offset points", xytext=(5, -10), fontsize=7, color=colours[label])
            elif t["status"] != "finished":  # no objective to place it by: marked along the bottom edge
                ax.plot([t["learning_rate"]], [0.02], "x" if t["status"] == "pruned" else "v", color=colours[label],
                        ms=8, transform=ax.get_xaxis_transform(), clip_on=False)
        pick = next((t for t in done if chosen.get(label) and t["learning_rate"] == chosen[label]), None)
        if pick is not None:
            ax.plot([pick["learning_rate"]], [pick["objective_value"]], "o", ms=16, mfc="none",
                    mec=colours[label], mew=2, zorder=4)
    ax.set_xscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("validation loss (lower is better)" if on_loss else
                  f"validation {trials[0].get('objective')}")
    ax.set_title("Learning-rate search (x: pruned where it stopped; circle: chosen)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return fig


# Each returns a matplotlib Figure (or None when the records hold nothing to draw); the report embeds them as PNG
# and the Python API's Comparison.plot(kind) returns them as they are.
def plot_weights(records):
    from tunelab.comparison.weights import plot_weights as plot

    return plot(records)


PLOTS = {"tradeoff": plot_tradeoff, "costs": plot_costs, "loss_curves": plot_loss_curves,
         "lr_sensitivity": plot_lr_sensitivity, "weights": plot_weights}


def plot_pngs(records) -> dict[str, bytes]:
    out = {}
    for name, fn in PLOTS.items():
        fig = fn(records)
        if fig is not None:
            out[name] = png(fig)
    return out


# --- qualitative side-by-side --------------------------------------------------------------------------------

def _task_predictions(rec: dict[str, Any]) -> list[dict[str, Any]]:
    eval_dir = rec.get("eval_dir")
    path = Path(eval_dir) / run_files.EVAL_PREDICTIONS if eval_dir else None
    if not path or not path.is_file():
        return []
    task = rec.get("task")
    return [r for _, r in run_files.read_jsonl(path) if isinstance(r, dict) and r.get("source") == task]


def qualitative(records: list[dict[str, Any]], seed: int = 0, k: int = QUALITATIVE_EXAMPLES) -> list[dict[str, Any]]:
    """The same handful of test inputs for every run (chosen with the seed): reference and each output."""
    rows = group_rows(records)
    first = {row.label: sorted(row.records, key=lambda r: r.get("seed") or 0)[0] for row in rows if row.records}
    preds = {label: {p["input"]: p for p in _task_predictions(rec)} for label, rec in first.items()}
    inputs = list(next((v for v in preds.values() if v), {}).keys())
    if not inputs:
        return []
    chosen = sorted(random.Random(seed).sample(range(len(inputs)), min(k, len(inputs))))
    out = []
    for i in chosen:
        text = inputs[i]
        ref = next((p[text]["reference"] for p in preds.values() if text in p), None)
        out.append({"input": text, "reference": ref,
                    "outputs": {label: (p.get(text) or {}).get("prediction") for label, p in preds.items()}})
    return out


# --- the learning-rate search ------------------------------------------------------------------------------

@dataclass
class SearchSection:
    intro: str
    header: list[str]
    rows: list[list[str]]
    trial_header: list[str]
    trial_rows: list[list[str]]


def search_section(records) -> SearchSection | None:
    """What was searched, how and on what split (from the runs' search summaries), each method's outcome and
    cost, and every trial."""
    from tunelab.comparison.search_settings import status_text

    rows = [row for row in group_rows(records) if any(r.get("search") for r in row.records + row.failed)]
    if not rows:
        return None
    found = [next(r["search"] for r in row.records + row.failed if r.get("search")) for row in rows]
    f = found[0]
    sampler = (f"Optuna's TPE sampler (seed {f['seed']}; its first {max(1, f['trials_asked'] // 2)} trials "
               "random)" if f["sampler"] == "tpe" else "Optuna's grid sampler (log-spaced, seeded order)")
    split = (f"a validation split of {100 * f['validation_fraction']:g}% of the training rows "
             f"({f['validation_rows']} rows{', whole ' + f['grouped_by'] + ' groups' if f['grouped_by'] else ''}, "
             f"seed {f['seed']}; the trials trained on the other {f['search_train_rows']})")
    objective = "the validation loss" if f["objective"] == "loss" else "the task's headline metric"
    intro = (f"Each method's learning rate was searched before the comparison: {sampler}, {f['trials_asked']} "
             f"trials per method over a log-uniform range (the method family's unless the recipe gave one), judged "
             f"by {objective} on {split}; the test set was not read. Optuna's successive-halving pruner (the best "
             f"third go on at each rung) compared the validation loss every {f['eval_every_steps']} "
             f"step{'s' if f['eval_every_steps'] != 1 else ''} and "
             f"stopped the trials that fell behind; a method's search trains at most {f['max_cost']:g} full "
             "budgets of steps. The comparison's runs then trained at the chosen rate, for the full budget, every "
             "seed. Cost: the trials' wall time (model loading included), against the mean wall time of the "
             "method's own runs (training and evaluation).")
    header = ["Method", "Range searched", "Trials (finished / pruned / failed)", "Chosen rate", "Tuning cost",
              "× one run", "Steps trained (× one budget)"]
    body = []
    for row, o in zip(rows, found):
        runs = row.stat(lambda r: r.get("wall_seconds")).mean
        chosen = o.get("chosen_learning_rate")
        busy = _busy_search(o, row)
        body.append([row.label, f"{o['low']:.0e} – {o['high']:.0e}",
                     f"{o['trials']} ({o['finished']} / {o['pruned']} / {o['failed']})",
                     f"{chosen:.2g}" if chosen else f"none: {o.get('error')}",
                     _tuning_cost(o),
                     f"{o['tuning_seconds'] / runs:.2f}×" if runs and not busy else "–",
                     f"{o['tuning_steps']} ({o['tuning_steps'] / max(o['full_budget_steps'], 1):.2f}×)"])
    trial_header = ["Method", "Trial", "Learning rate", "Status", "Validation objective", "Cost"]
    trial_rows = []
    for t in sorted(search_trials(records), key=lambda t: (t["label"], t["trial"])):
        curve = t.get("validation_loss_curve") or []
        value = t.get("objective_value")
        shown = fmt_num(value) if value is not None else (
            f"loss {fmt_num(curve[-1]['eval_loss'])} at step {curve[-1]['step']}" if curve else "–")
        trial_rows.append([t["label"], str(t["trial"]), f"{t['learning_rate']:.3g}", status_text(t), shown,
                           fmt_seconds(t.get("cost_seconds"))])
    return SearchSection(intro, header, body, trial_header, trial_rows)


# --- writing -------------------------------------------------------------------------------------------------

def _md_escape(text: Any) -> str:
    return str(text if text is not None else "–").replace("|", "\\|").replace("\n", " ⏎ ")


def render_markdown(recipe_name: str, header, body, verdict_lines, examples, plot_files: dict[str, str],
                    notes: list[str], search: SearchSection | None = None) -> str:
    parts = [f"# tunelab comparison: {recipe_name}", "", markdown_table(header, body), ""]
    if notes:
        parts += [f"- {n}" for n in notes] + [""]
    if verdict_lines:
        parts += ["## Verdicts", ""] + [f"- {v}" for v in verdict_lines] + [""]
    if search is not None:
        parts += ["## Learning-rate search", "", search.intro, "", markdown_table(search.header, search.rows), "",
                  markdown_table(search.trial_header, search.trial_rows), ""]
    for name, file in plot_files.items():
        parts += [f"![{name}]({file})", ""]
    if examples:
        parts += ["## Side by side", ""]
        labels = list(examples[0]["outputs"])
        parts.append("| Input | Reference | " + " | ".join(labels) + " |")
        parts.append("|" + "---|" * (len(labels) + 2))
        for ex in examples:
            cells = [_md_escape(ex["input"][:300]), _md_escape(ex["reference"])]
            cells += [_md_escape(ex["outputs"][label]) for label in labels]
            parts.append("| " + " | ".join(cells) + " |")
        parts.append("")
    return "\n".join(parts)


_CSS = """body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem auto;max-width:1200px;
color:#1a202c;padding:0 1rem}h1{font-size:1.6rem}h2{font-size:1.2rem;margin-top:2rem}
table{border-collapse:collapse;width:100%;font-size:.85rem;margin:1rem 0}th,td{border:1px solid #cbd5e0;
padding:.35rem .5rem;text-align:left;vertical-align:top}th{background:#edf2f7}tr:nth-child(even) td{background:#f7fafc}
td.input{max-width:28rem;white-space:pre-wrap}img{max-width:100%;margin:.5rem 0;border:1px solid #e2e8f0}
.note{color:#4a5568;font-size:.85rem}li{margin:.25rem 0}"""


def table_html(header, body, table_id: str = "results") -> str:
    e = html.escape
    rows = "".join("<tr>" + "".join(f"<td>{e(c)}</td>" for c in row) + "</tr>" for row in body)
    return (f"<table id='{table_id}'><thead><tr>" + "".join(f"<th>{e(h)}</th>" for h in header)
            + f"</tr></thead><tbody>{rows}</tbody></table>")


def html_fragment(records: list[dict[str, Any]]) -> str:
    """The table, the verdicts and the trade-off plot, for a notebook cell."""
    header, body = table(records)
    parts = [table_html(header, body, "tunelab-results")]
    lines = verdicts(records)
    if lines:
        parts.append("<ul>" + "".join(f"<li>{html.escape(v)}</li>" for v in lines) + "</ul>")
    fig = plot_tradeoff(records)
    if fig is not None:
        parts.append(f"<img alt='trade-off' src='data:image/png;base64,{base64.b64encode(png(fig)).decode()}'>")
    return "\n".join(parts)


def render_html(recipe_name: str, header, body, verdict_lines, examples, plots: dict[str, bytes],
                notes: list[str], search: SearchSection | None = None) -> str:
    e = html.escape
    out = ["<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
           f"<title>tunelab comparison: {e(recipe_name)}</title><style>{_CSS}</style></head><body>",
           f"<h1>tunelab comparison: {e(recipe_name)}</h1>", table_html(header, body)]
    out += [f"<p class='note'>{e(n)}</p>" for n in notes]
    if verdict_lines:
        out.append("<h2>Verdicts</h2><ul id='verdicts'>" + "".join(f"<li>{e(v)}</li>" for v in verdict_lines)
                   + "</ul>")
    if search is not None:
        out += ["<h2>Learning-rate search</h2>", f"<p>{e(search.intro)}</p>",
                table_html(search.header, search.rows, "search"),
                table_html(search.trial_header, search.trial_rows, "search-trials")]
    titles = {"tradeoff": "Learning against forgetting", "costs": "What each method costs",
              "loss_curves": "Loss curves", "lr_sensitivity": "Learning-rate sensitivity",
              "weights": "What fine-tuning did to the weights"}
    for name, image in plots.items():
        data = base64.b64encode(image).decode()
        out.append(f"<h2>{e(titles.get(name, name))}</h2><img id='plot-{name}' alt='{e(name)}' "
                   f"src='data:image/png;base64,{data}'>")
    if examples:
        labels = list(examples[0]["outputs"])
        out.append("<h2>Side by side</h2><table id='side-by-side'><thead><tr><th>Input</th><th>Reference</th>"
                   + "".join(f"<th>{e(lab)}</th>" for lab in labels) + "</tr></thead><tbody>")
        for ex in examples:
            cells = [f"<td class='input'>{e(ex['input'][:600])}</td>", f"<td>{e(str(ex['reference']))}</td>"]
            cells += [f"<td>{e(str(ex['outputs'][lab]))}</td>" for lab in labels]
            out.append("<tr>" + "".join(cells) + "</tr>")
        out.append("</tbody></table>")
    out.append("</body></html>")
    return "\n".join(out)


def write_report(out: Path, *, records: list[dict[str, Any]] | None = None, recipe=None) -> tuple[Path, Path]:
    out = Path(out)
    if records is None:
        records = ResultsFile(out).records()
    if not records:
        raise TunelabError(f"{out}: no results.jsonl records to report on; run `tunelab compare` first")
    records = with_trials(out, records)
    name = recipe.name if recipe is not None else _recipe_name(out)
    seed = (recipe.seeds[0] if recipe is not None and recipe.seeds else 0)
    header, body = table(records)
    verdict_lines = verdicts(records)
    examples = qualitative(records, seed=seed)
    plots = plot_pngs(records)
    plot_dir = out / "plots"
    plot_dir.mkdir(exist_ok=True)
    files = {}
    for k, image in plots.items():
        (plot_dir / f"{k}.png").write_bytes(image)
        files[k] = f"plots/{k}.png"
    notes = _notes(records) + _difference_notes(header)
    search = search_section(records)
    md = atomic_write_text(out / "report.md", render_markdown(name, header, body, verdict_lines, examples, files,
                                                              notes, search))
    page = atomic_write_text(out / "report.html", render_html(name, header, body, verdict_lines, examples, plots,
                                                              notes, search))
    return page, md


def with_trials(out: Path, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The runs, and the trials of the learning-rate searches their rates came from (read from results.jsonl when
    the caller passed the runs only); trials of earlier searches (another recipe) are left out."""
    runs = [r for r in records if r.get("kind") != "trial"]
    studies = {r["search"]["study"] for r in runs if r.get("search")}
    pool = records if search_trials(records) else ResultsFile(out).records() if studies else []
    return runs + [t for t in search_trials(pool) if t.get("study") in studies]


def _difference_notes(header: list[str]) -> list[str]:
    if not any(h.startswith("Δ ") for h in header):
        return []
    return ["Δ: the method's headline score minus the reference's, in points (x100 for proportions), with a 95% "
            "interval from a paired bootstrap over the same test examples (and the seeds, where there are "
            "several); verdicts call a difference only when its interval excludes 0, and estimate the test "
            "examples that would separate a 2-point difference as n·((1.96 + 0.84)·se / 2 points)², se being the "
            "bootstrap standard error at n examples (80% power). Of many intervals some exclude 0 by chance: a "
            "claimed difference that does not stay claimed with the false discovery rate over all the verdicts' "
            "intervals held at 5% (Benjamini-Hochberg, on the bootstrap's p-values) is marked so."]


def missing_value_notes(records) -> list[str]:
    """Why numbers are missing: a row without task metrics (once per label), a probe without retention ratios
    (its base shows none of the skill; once per probe), and evaluation rows left out (--skip_invalid_rows)."""
    ok = [r for r in records if r["status"] == "ok"]
    tasks = {r["label"]: r["task_note"] for r in ok if r.get("task_note")}
    probes = {probe_title(p): v["retention_note"] for r in ok for p, v in (r.get("retention") or {}).items()
              if v.get("retention_note")}
    skipped: dict[int, list[str]] = {}
    for r in ok:
        if r.get("invalid_rows_skipped") and r["label"] not in skipped.get(r["invalid_rows_skipped"], []):
            skipped.setdefault(r["invalid_rows_skipped"], []).append(r["label"])
    rows = {", ".join(labels): f"{n} evaluation row{'s' if n > 1 else ''} left out: {'their' if n > 1 else 'its'} "
            "database schema does not run in SQLite (--skip_invalid_rows); the scores are of the other rows"
            for n, labels in skipped.items()}
    return [f"{name}: {why}." for name, why in {**tasks, **probes, **rows}.items()]


def classification_notes(records) -> list[str]:
    """What a classification accuracy is read against: always answering the test set's commonest label, and which
    models gave every test example one label (a model that cannot tell the labels apart on this test set, whatever
    its accuracy: on SST-2 that is about 0.51)."""
    refs: list[str] = []
    constant = []
    for row in group_rows(records):
        rec = min(row.records, key=lambda r: r.get("seed") or 0) if row.records else None
        if rec is None or rec.get("task") != "classification" or rec.get("headline_value") is None:
            continue
        preds = _task_predictions(rec)
        refs = refs or [str(p.get("reference")).strip() for p in preds]
        answers = {str(p.get("prediction")).strip() for p in preds}
        if len(preds) > 1 and len(answers) == 1:
            constant.append(f"{row.label} ({answers.pop()})")
    if not refs:
        return []
    common, count = Counter(refs).most_common(1)[0]
    notes = [f"Always answering the test set's commonest label ({common}) would score accuracy "
             f"{count / len(refs):.4f} ({count} of {len(refs)})."]
    if constant:
        notes.append(f"Every test example got the same label from {', '.join(constant)}: "
                     f"{'that model does' if len(constant) == 1 else 'those models do'} not tell the labels apart "
                     "on this test set.")
    return notes


def _notes(records) -> list[str]:
    ok = [r for r in records if r["status"] == "ok"]
    notes = []
    kinds = {r.get("peak_memory_kind") for r in ok if r.get("peak_memory_kind")}
    if "cpu_peak_rss" in kinds:
        notes.append("Peak memory on the CPU is the training process's peak resident set size (weights, "
                     "optimizer, activations and the Python runtime); on a GPU it is torch's peak allocated memory.")
    if any(r.get("peak_tensor_bytes") for r in ok):
        notes.append("Tensor peak: the most bytes of live tensors (weights, gradients, optimizer states, "
                     "activations) during the first 2 optimizer steps, counted as tunelab estimate --validate "
                     "counts them: no allocator caching or Python runtime, so it compares the methods; every "
                     "method sees the same first batches.")
    if any(generation_speed(r) is not None for r in ok):
        notes.append(generation_note(ok))
    devices = sorted({f"{r.get('device')} ({r.get('device_name')})" for r in ok if r.get("device")})
    if devices:
        notes.append("Device: " + ", ".join(devices) + ".")
    if any(len([q for q in ok if q["label"] == r["label"]]) > 1 for r in ok):
        notes.append("With several seeds, values are mean ± 95% confidence half-width (t distribution).")
    notes += missing_value_notes(ok) + classification_notes(ok) + busy_notes(ok)
    probes = probes_of(ok)
    if probes:
        notes.append("Retention columns show the tuned model's probe score with its retention ratio (after/before) "
                     "in brackets; a KL column is the mean token-level KL divergence from the base model on the "
                     "base model's own continuations (0 = unchanged).")
    return notes


def _busy_search(found: dict[str, Any], row: Row) -> bool:
    """Whether a search's cost, or the runs it is set against, was timed beside other work."""
    return bool(found.get("busy_trials")) or bool(timed_busy(row))


def _tuning_cost(found: dict[str, Any]) -> str:
    return fmt_seconds(found["tuning_seconds"]) + (f" {BUSY_MARK}" if found.get("busy_trials") else "")


def busy_notes(records) -> list[str]:
    """Which timings were measured while other work ran on the machine, and how much it held them up."""
    runs = []
    for row in group_rows(records):
        for r in row.records:
            busy = [f"{timing} {100 * share:.0f}%" for timing, share in wait_shares(r).items()
                    if contention.busy(share)]
            if busy:
                seed = f" (seed {r['seed']})" if r.get("seed") is not None else ""
                runs.append(f"{row.label}{seed}: {', '.join(busy)}")
        found = next((r["search"] for r in row.records + row.failed if r.get("search")), {})
        if found.get("busy_trials"):
            runs.append(f"{row.label}'s learning-rate search: the training of {found['busy_trials']} of its "
                        f"{found['trials']} trials")
    if not runs:
        return []
    return [f"{BUSY_MARK} Timed on a busy machine (other work beside the run, or more threads than cores): these "
            f"timings' threads waited for a core this share of the time they were ready to run: {'; '.join(runs)} "
            f"(busy above "
            f"{100 * contention.BUSY_WAIT_SHARE:.0f}%; alone, tunelab's runs wait about 1% or less). A time so marked "
            "measures that load as well as its method and is compared with no other; run the comparison on an "
            "otherwise idle machine to compare times."]


def generation_note(records) -> str:
    """How the generation column was measured, with the figures' own spread: timings on a shared machine move
    between processes, so a small difference between two runs is not a difference between their methods."""
    spreads = [(hi - lo) / hi for r in records for key in ("tokens_per_second_range",
                                                            "adapter_tokens_per_second_range",
                                                            "merged_tokens_per_second_range")
               if (rng := (r.get("inference") or {}).get(key)) and (lo := rng[0]) is not None and (hi := rng[1])]
    inference = next(r["inference"] for r in records if r.get("inference"))
    repeats, tokens = inference.get("repeats"), inference.get("new_tokens")
    spread = f" (within a run the repeats differ by up to {100 * max(spreads):.0f}%)" if spreads else ""
    return (f"Generation tokens/s: greedy answers to the same test prompts, {tokens} new tokens a repeat, the "
            f"median of {repeats} timed repeats{spread}, in the dtype each model was evaluated in; each run measures "
            "in its own process, and timings move between processes and with other load, so compare large gaps "
            "only. A PEFT model is timed with its adapter attached and, in brackets, after merge_and_unload where "
            "its method merges (not onto a quantized base).")


def _recipe_name(out: Path) -> str:
    path = out / "recipe.yaml"
    if path.is_file():
        return run_files.read_yaml_mapping(path).get("name", out.name)
    return out.name
