"""The figures of a comparison's report: matplotlib Figures outside pyplot (no global state), the trade-off plot's
axes and its Pareto front. Below report.py, trajectories.py and weights.py, which draw with them."""

from __future__ import annotations

import io

from tunelab.comparison.rows import is_drift_probe, probes_of, probe_title, retention_ratio


def figure(**kwargs):
    """A matplotlib Figure outside pyplot: no global state or backend switch, so reports can be drawn anywhere; it
    shows itself as a PNG when it is the value of a notebook cell."""
    from matplotlib.figure import Figure

    class ReportFigure(Figure):
        def _repr_png_(self) -> bytes:
            return png(self)

    return ReportFigure(**kwargs)


def tradeoff_axes(records) -> tuple[str | None, str, bool]:
    """(probe, axis label, higher-is-better) for the retention axis of the trade-off plot."""
    ok = [r for r in records if r["status"] == "ok"]
    probes = probes_of(ok)
    task_probe = next((p for p in probes if not is_drift_probe(ok, p)
                       and any(retention_ratio(r, p) is not None for r in ok)), None)
    if task_probe:
        return task_probe, f"{probe_title(task_probe)} retention (after / before)", True
    if probes:
        return probes[0], f"{probe_title(probes[0])} KL from base (lower is better)", False
    return None, "", True


def pareto_front(points: list[tuple[float, float]], x_higher: bool, y_higher: bool) -> list[int]:
    """Indices of points no other point beats on both axes."""
    def better_eq(a, b, higher):
        return a >= b if higher else a <= b

    front = []
    for i, (x, y) in enumerate(points):
        dominated = any(better_eq(x2, x, x_higher) and better_eq(y2, y, y_higher) and (x2, y2) != (x, y)
                        for j, (x2, y2) in enumerate(points) if j != i)
        if not dominated:
            front.append(i)
    return front


def png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    return buf.getvalue()
