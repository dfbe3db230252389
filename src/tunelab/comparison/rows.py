"""A comparison's records grouped into the report's rows (one per label: mean and 95% interval over seeds) and
the number formats every table and plot of the report uses. Below report.py, trajectories.py and weights.py."""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunelab import contention
from tunelab.evaluation.retention import is_drift


# --- aggregation ---------------------------------------------------------------------------------------------

@dataclass
class Stat:
    mean: float | None
    half_width: float | None = None   # 95% CI half-width over seeds (t distribution); None with one seed
    n: int = 0

    @classmethod
    def of(cls, values: list[float | None]) -> "Stat":
        vals = [float(v) for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
        if not vals:
            return cls(None, None, 0)
        mean = sum(vals) / len(vals)
        if len(vals) < 2:
            return cls(mean, None, len(vals))
        from scipy import stats

        # statistics.stdev is exact for equal values (0.0); scipy's warns of cancellation on them
        sd = statistics.stdev(vals)
        return cls(mean, float(stats.t.ppf(0.975, len(vals) - 1) * sd / math.sqrt(len(vals))), len(vals))


@dataclass
class Row:
    label: str
    method: str
    records: list[dict[str, Any]]
    failed: list[dict[str, Any]] = field(default_factory=list)

    def stat(self, getter) -> Stat:
        return Stat.of([getter(r) for r in self.records])

    @property
    def is_base(self) -> bool:
        return self.method == "base"


def retention_value(rec: dict, probe: str) -> float | None:
    p = (rec.get("retention") or {}).get(probe) or {}
    return p.get("kl_divergence") if is_drift(p) else p.get("after")


def retention_ratio(rec: dict, probe: str) -> float | None:
    return ((rec.get("retention") or {}).get(probe) or {}).get("retention_ratio")


def group_rows(records: list[dict[str, Any]]) -> list[Row]:
    rows: dict[str, Row] = {}
    for rec in records:
        if rec.get("kind") == "trial":  # a learning-rate search's trial: the search section's, not a row
            continue
        row = rows.setdefault(rec["label"], Row(rec["label"], rec["method"], []))
        (row.records if rec["status"] == "ok" else row.failed).append(rec)
    ordered = sorted(rows.values(), key=lambda r: (not r.is_base,))
    return ordered


def probes_of(records: list[dict[str, Any]]) -> list[str]:
    names: dict[str, None] = {}
    for rec in records:
        for name in rec.get("retention") or {}:
            names.setdefault(name, None)
    return list(names)


def is_drift_probe(records, probe: str) -> bool:
    return any(is_drift((r.get("retention") or {}).get(probe)) for r in records)


def generation_speed(rec: dict, merged: bool = False) -> float | None:
    """A run's generation tokens/s (comparison/worker.py's inference cost): as evaluated (a PEFT model with its
    adapter attached), or ``merged`` into the base, where the method merges."""
    speeds = rec.get("inference") or {}
    if merged:
        return speeds.get("merged_tokens_per_second")
    return speeds.get("tokens_per_second", speeds.get("adapter_tokens_per_second"))


BUSY_MARK = "†"  # a time measured while other work ran on the machine (tunelab.contention)


def wait_shares(rec: dict[str, Any]) -> dict[str, float | None]:
    """What share of their runnable time a run's threads waited for a core while it was timed, per timing."""
    return {"training": rec.get("train_cpu_wait_share"),
            "generation": (rec.get("inference") or {}).get("cpu_wait_share")}


def timed_busy(row: Row, timing: str = "training") -> list[dict[str, Any]]:
    """The row's runs whose ``timing`` shared the CPU with other work: those times do not measure the method."""
    return [r for r in row.records if contention.busy(wait_shares(r)[timing])]


def mark_busy(text: str, row: Row, timing: str = "training") -> str:
    return f"{text} {BUSY_MARK}" if timed_busy(row, timing) else text


RUN_COLUMNS = ("label", "method", "seed", "status", "trainable_params", "trainable_percent", "train_seconds",
               "peak_memory_bytes", "peak_tensor_bytes", "checkpoint_bytes", "final_train_loss", "headline_metric",
               "headline_value", "train_cpu_wait_share", "error")


def run_values(rec: dict[str, Any]) -> dict[str, Any]:
    """One run's values, unformatted, by column: its costs, task metrics and, per retention probe, the KL from the
    base (``PROBE_kl``) or the score after tuning and its retention ratio (``PROBE_after``, ``PROBE_retention``):
    the numbers the report's table shows, one run at a time (``tunelab.Comparison.table``)."""
    values = {k: rec.get(k) for k in RUN_COLUMNS}
    values.update(generation_tokens_per_second=generation_speed(rec),
                  merged_generation_tokens_per_second=generation_speed(rec, merged=True))
    values.update(rec.get("task_metrics") or {})
    for probe, p in (rec.get("retention") or {}).items():
        if is_drift(p):
            values[f"{probe}_kl"] = retention_value(rec, probe)
        else:
            values[f"{probe}_after"] = retention_value(rec, probe)
            values[f"{probe}_retention"] = retention_ratio(rec, probe)
    return values


# --- formatting ----------------------------------------------------------------------------------------------

def fmt_seconds(s: float | None) -> str:
    if s is None:
        return "–"
    if s < 60:
        return f"{s:.1f} s"
    return f"{int(s // 60)}m {s % 60:04.1f}s"


def fmt_params(n: float | None) -> str:
    if n is None:
        return "–"
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.2f}{unit}"
    return f"{n:.0f}"


def fmt_rate(x: float | None) -> str:
    return "–" if x is None else f"{x:.1f}"


def fmt_num(x: float | None, digits: int = 4) -> str:
    if x is None:
        return "–"
    if x != 0 and abs(x) < 10 ** -(digits - 2):  # small values (a KL of 3e-6) keep their significant digits
        return f"{x:.{digits - 1}g}"
    return f"{x:.{digits}f}"


def probe_title(name: str) -> str:
    """Built-in probe names as they are; TASK:PATH probes as TASK:filename."""
    task, sep, path = name.partition(":")
    return f"{task}:{Path(path).name}" if sep else name


def fmt_stat(stat: Stat, fmt=fmt_num) -> str:
    if stat.mean is None:
        return "–"
    if stat.half_width is None:
        return fmt(stat.mean)
    return f"{fmt(stat.mean)} ± {fmt(stat.half_width)}"
