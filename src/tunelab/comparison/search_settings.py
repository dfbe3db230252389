"""A comparison's ``search:`` settings (the recipe section, or ``--search learning_rate``): parsed and checked when
the recipe is read, before anything runs. The search itself is search.py; a trial's side of it, search_trial.py."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from tunelab.errors import TunelabError

PARAMETERS = ("learning_rate",)
SAMPLERS = ("tpe", "grid")
OBJECTIVES = ("loss", "metric")
SEARCH_KEYS = {"parameter", "trials", "sampler", "objective", "validation_fraction", "group_by", "seed",
               "evaluations", "max_cost"}


@dataclass
class SearchSettings:
    """A recipe's ``search:`` section (or ``--search learning_rate`` with these defaults)."""

    parameter: str = "learning_rate"
    trials: int = 6                   # per method entry
    sampler: str = "tpe"              # tpe (seeded; its first half of the trials are random) or grid (log-spaced)
    objective: str = "loss"           # validation loss, or the task's headline metric on the validation split
    validation_fraction: float = 0.1  # of the training rows (whole groups of group_by)
    group_by: str | None = None       # a column whose groups stay whole (default: data.holdout's column)
    seed: int = 0                     # sampler and split
    evaluations: int = 4              # validation evaluations per trial: where the pruner may stop it
    max_cost: float = 3.0             # full training budgets (in steps) the search of one method may spend

    def identity(self) -> dict[str, Any]:
        """What a study's trials depend on (max_cost only limits how many run)."""
        return {k: v for k, v in dataclasses.asdict(self).items() if k != "max_cost"}


def parse_search(raw: Any, *, source: str, holdout_column: str | None = None) -> SearchSettings | None:
    """The recipe's ``search:`` value: a mapping of settings, ``learning_rate`` (every default), or nothing."""
    if raw in (None, False, "none"):
        return None
    if raw in (True, "learning_rate"):
        raw = {}
    if not isinstance(raw, dict):
        raise TunelabError(f"recipe {source}: search must be a mapping of settings (e.g. trials: 6) or "
                           f"'learning_rate', got {raw!r}")
    extra = set(raw) - SEARCH_KEYS
    if extra:
        raise TunelabError(f"recipe {source}: search has unknown key(s) {', '.join(sorted(extra))}; allowed: "
                           f"{', '.join(sorted(SEARCH_KEYS))}")
    values = {"group_by": holdout_column, **raw}
    try:
        settings = SearchSettings(**values)
    except TypeError as e:
        raise TunelabError(f"recipe {source}: search: {e}") from None
    check_settings(settings, where=f"recipe {source}: search")
    return settings


def check_settings(s: SearchSettings, *, where: str) -> None:
    for name, allowed in (("parameter", PARAMETERS), ("sampler", SAMPLERS), ("objective", OBJECTIVES)):
        if getattr(s, name) not in allowed:
            raise TunelabError(f"{where}: {name} {getattr(s, name)!r} is not one of {', '.join(allowed)}")
    for name in ("trials", "evaluations", "seed"):
        if not isinstance(getattr(s, name), int) or getattr(s, name) < (0 if name == "seed" else 1):
            raise TunelabError(f"{where}: {name} must be a positive integer, got {getattr(s, name)!r}")
    if not 0 < float(s.validation_fraction) < 1:
        raise TunelabError(f"{where}: validation_fraction {s.validation_fraction!r} must be a fraction in (0, 1), "
                           "e.g. 0.1")
    if not float(s.max_cost) >= 1:
        raise TunelabError(f"{where}: max_cost {s.max_cost!r} must be at least 1 (full training budgets)")


def check_range(value: Any, *, where: str) -> tuple[float, float]:
    try:
        low, high = (float(v) for v in value)
    except (TypeError, ValueError):
        raise TunelabError(f"{where}: learning_rate_range must be two numbers [low, high], e.g. [1.0e-4, 1.0e-2]; "
                           f"got {value!r}") from None
    if not 0 < low < high:
        raise TunelabError(f"{where}: learning_rate_range [{low:g}, {high:g}] must have 0 < low < high")
    return low, high


def status_text(rec: dict[str, Any]) -> str:
    """finished / pruned at step N / failed (why), as the report and the logs say it."""
    if rec["status"] == "pruned":
        why = " (search budget spent)" if rec.get("stopped_by") == "budget" else ""
        return f"pruned at step {rec.get('pruned_at_step')}{why}"
    if rec["status"] in ("failed", "interrupted"):
        return f"{rec['status']} ({rec.get('error')})"
    return rec["status"]
