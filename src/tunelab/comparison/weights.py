"""Weight diagnostics in a comparison (recipe ``diagnostics: true``): each run's ΔW diagnostics
(:mod:`tunelab.evaluation.diagnostics`, the numbers `tunelab diagnose` prints) recorded in results.jsonl, and a
report plot of them by layer depth: the share of ‖ΔW‖_F² each layer holds, the median effective rank of its
matrices, and its intruder dimensions."""

from __future__ import annotations

import logging
import statistics
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def diagnose_run(output_dir: str | Path, *, use_cpu: bool) -> dict[str, Any]:
    """The record's summary of a run's diagnostics (per matrix they stay in OUTPUT_DIR/diagnostics.json), or why
    there are none."""
    from tunelab.errors import TunelabError
    from tunelab.evaluation.diagnostics import depth, diagnose

    try:
        result = diagnose(output_dir, use_cpu=use_cpu)
    except TunelabError as e:  # a method without weight updates (prompt tuning...): the record says so
        return {"skipped": str(e)}
    per_depth: dict[str, dict[str, list]] = {}
    for name, m in result["per_matrix"].items():
        d = per_depth.setdefault(str(depth(name)), {"intruders": [], "effective_rank": []})
        d["intruders"].append(m["intruders"])
        d["effective_rank"].append(m["effective_rank"])
    summary = {k: v for k, v in result.items() if k != "per_matrix"}
    summary["per_depth"] = {d: {"intruders": sum(v["intruders"]), "matrices": len(v["intruders"]),
                                "effective_rank_median": statistics.median(v["effective_rank"])}
                            for d, v in per_depth.items()}
    return summary


def plot_weights(records):
    """Per method (its first seed), by layer depth: ‖ΔW‖_F² share, median effective rank, intruder dimensions."""
    from tunelab.comparison.figures import figure
    from tunelab.comparison.rows import group_rows

    rows = [(row.label, rec["weight_diagnostics"]) for row in group_rows(records) if not row.is_base
            for rec in row.records[:1] if (rec.get("weight_diagnostics") or {}).get("per_depth")]
    if not rows:
        return None
    fig = figure(figsize=(12, 3.8))
    axes = fig.subplots(1, 3)
    panels = [("Share of ||ΔW||²", lambda d, s: s["by_depth"].get(d, {}).get("energy_share")),
              ("Effective rank (median, 90% energy)", lambda d, s: s["per_depth"][d]["effective_rank_median"]),
              ("Intruder dimensions", lambda d, s: s["per_depth"][d]["intruders"])]
    for ax, (title, value) in zip(axes, panels):
        for label, summary in rows:
            depths = sorted((d for d in summary["per_depth"] if d != "None"), key=int)
            ax.plot([int(d) for d in depths], [value(d, summary) for d in depths], "-o", markersize=3, label=label)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("layer")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle("What fine-tuning did to the weights, by layer (tunelab diagnose)", fontsize=11)
    fig.tight_layout()
    return fig
