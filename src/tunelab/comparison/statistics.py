"""Differences between two methods of a comparison, with 95% intervals from a paired bootstrap.

Two methods of one comparison answer the same test examples, so their difference is measured on each example:
resampling the examples (one resample for both methods) keeps the examples' own difficulty out of the interval,
which two separate intervals would count twice. Where a method ran several seeds, its seeds are resampled too,
each method's on their own. ``scipy.stats.bootstrap`` resamples every sample it is given independently, so the
samples (example indices, method A's seed indices, method B's seed indices) give that two-level bootstrap in one
call; the statistic reads both methods' scores at the same example indices, which is what pairs them.

Each measure (the task's headline metric, each retention probe) is recomputed from its per-example rows in the
runs' predictions.jsonl: a mean of per-example scores (accuracy, ROUGE-L, execution accuracy), or the corpus
statistic itself where the headline is not a mean (corpus BLEU from summed n-gram counts, perplexity and drift KL
weighted by tokens, Spearman's rho over the resampled pairs).
"""

from __future__ import annotations

import logging
import math
import warnings
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from tunelab import run_files

log = logging.getLogger(__name__)

CONFIDENCE = 0.95
N_RESAMPLES = 2000
POWER = 0.8                 # for the sample size that would separate a given difference
SEPARATE_POINTS = 2.0       # the difference that sample size is quoted for, in points
# Metrics already on a 0-100 scale; the others in [0, 1] (or [-1, 1]) are shown as points (x100). Perplexity and
# KL are not proportions and keep their own units.
HUNDRED_SCALE = {"bleu", "chrf"}
OWN_UNITS = {"perplexity", "cross_entropy", "kl_divergence"}

# A function of example indices (drawn with replacement) giving the measure on those examples.
Resampler = Callable[[np.ndarray], float]


@dataclass
class Difference:
    """Method A minus method B on one measure (in the metric's own units), with its 95% paired interval."""

    measure: str                  # the task metric's name, or the retention probe's
    metric: str                   # the metric it is computed with (e.g. contains_answer, kl_divergence)
    estimate: float
    low: float | None
    high: float | None
    standard_error: float | None
    n_examples: int
    n_seeds: tuple[int, int]
    # the bootstrap's two-sided p-value: twice the share of resampled differences on the far side of 0 (the level
    # at which the percentile interval would just reach 0); for false-discovery control over a report's intervals
    p_value: float | None = None

    @property
    def scale(self) -> float:
        """Points per unit of the metric: 100 for proportions, 1 for 0-100 scores and for own units."""
        return 1.0 if self.metric in HUNDRED_SCALE | OWN_UNITS else 100.0

    @property
    def unit(self) -> str:
        return "" if self.metric in OWN_UNITS else "points"

    @property
    def excludes_zero(self) -> bool:
        """True only when the whole interval lies on one side of 0: the one case a verdict may call a difference."""
        return self.low is not None and self.high is not None and (self.low > 0 or self.high < 0)

    @property
    def identical(self) -> bool:
        return self.low == 0.0 and self.high == 0.0 and self.estimate == 0.0

    def examples_to_separate(self, points: float = SEPARATE_POINTS) -> int | None:
        """About how many test examples would make a true difference of ``points`` exclude 0 with 80% power.

        The bootstrap standard error s at n examples says the per-example spread is s·sqrt(n); an interval at n'
        examples excludes 0 for a difference d with power 1-β when d = (z_{1-α/2} + z_{1-β})·s·sqrt(n/n'), so
        n' = n·((z_{0.975} + z_{0.8})·s / d)². (Seed-to-seed spread does not shrink with more examples; with several
        seeds this is a lower bound.) None for measures without points or without spread."""
        if self.unit != "points" or not self.standard_error:
            return None
        from scipy.stats import norm

        z = norm.ppf(1 - (1 - CONFIDENCE) / 2) + norm.ppf(POWER)
        return math.ceil(self.n_examples * (z * self.standard_error * self.scale / points) ** 2)

    def format(self) -> str:
        """E.g. "-2.1 points [-4.0, -0.3]" or "-0.012 [-0.020, -0.004]"."""
        def num(x: float) -> str:
            x *= self.scale
            if self.unit == "points":
                return f"{x:+.1f}"
            return f"{x:+.3g}" if x else "0"
        if self.low is None or self.high is None:
            return f"{num(self.estimate)}{' ' + self.unit if self.unit else ''} (no interval)"
        return f"{num(self.estimate)}{' ' + self.unit if self.unit else ''} [{num(self.low)}, {num(self.high)}]"


def paired_difference(a: Sequence[Resampler], b: Sequence[Resampler], n_examples: int, *, measure: str = "",
                      metric: str = "", seed: int = 0, n_resamples: int = N_RESAMPLES) -> Difference:
    """Mean over A's seeds minus mean over B's seeds of a measure, with its paired bootstrap interval.

    ``a`` and ``b``: one resampler per seed of each method, all over the same ``n_examples`` examples in the same
    order. The interval is scipy's percentile bootstrap: the percentile method gives [0, 0] for identical scores,
    where BCa has no answer."""
    from scipy.stats import bootstrap

    if not a or not b:
        raise ValueError("paired_difference needs at least one run of each method")
    everything = np.arange(n_examples)

    def diff(examples: np.ndarray, seeds_a: np.ndarray, seeds_b: np.ndarray) -> float:
        return (float(np.mean([a[int(s)](examples) for s in seeds_a]))
                - float(np.mean([b[int(s)](examples) for s in seeds_b])))

    estimate = diff(everything, np.arange(len(a)), np.arange(len(b)))
    # scipy needs two observations per sample: a method with one seed has no seed sample to resample.
    samples: list[np.ndarray] = [everything]
    slots = []
    for runs in (a, b):
        if len(runs) > 1:
            slots.append(len(samples))
            samples.append(np.arange(len(runs)))
        else:
            slots.append(None)

    def statistic(*drawn: np.ndarray) -> float:
        seeds = [drawn[i] if i is not None else np.zeros(1, dtype=int) for i in slots]
        return diff(drawn[0].astype(int), seeds[0].astype(int), seeds[1].astype(int))

    if n_examples < 2:
        return Difference(measure, metric, estimate, None, None, None, n_examples, (len(a), len(b)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a resample where Spearman's rho is undefined
        result = bootstrap(tuple(samples), statistic, n_resamples=n_resamples, vectorized=False, paired=False,
                           confidence_level=CONFIDENCE, method="percentile", rng=np.random.default_rng(seed))
    low, high = float(result.confidence_interval.low), float(result.confidence_interval.high)
    se = float(result.standard_error)
    drawn = np.asarray(result.bootstrap_distribution, dtype=float)
    drawn = drawn[~np.isnan(drawn)]
    p_value = min(1.0, 2 * min(float(np.mean(drawn <= 0)), float(np.mean(drawn >= 0)))) if drawn.size else None
    if any(math.isnan(x) for x in (low, high)):
        low = high = p_value = None
        se = None if math.isnan(se) else se
    return Difference(measure, metric, estimate, low, high, se, n_examples, (len(a), len(b)), p_value)


def false_discovery_kept(diffs: Sequence[Difference]) -> list[bool]:
    """Which of a report's differences stay claimed when the false discovery rate over all of them is held at
    1 - CONFIDENCE (Benjamini-Hochberg, scipy.stats.false_discovery_control): each interval alone excludes 0 for 5%
    of measures that do not differ, so a report of many intervals claims some differences by chance. A difference
    whose interval does not exclude 0 is never kept; one without an interval counts as p = 1."""
    from scipy.stats import false_discovery_control

    if not diffs:
        return []
    adjusted = false_discovery_control([1.0 if d.p_value is None else d.p_value for d in diffs])
    return [d.excludes_zero and float(q) < 1 - CONFIDENCE for d, q in zip(diffs, adjusted)]


# --- per-example rows -> resamplers ---------------------------------------------------------------------------

def _mean_of_scores(rows: list[dict]) -> Resampler | None:
    scores = np.array([r.get("score") for r in rows], dtype=float)
    if np.isnan(scores).any():
        return None
    return lambda idx: float(scores[idx].mean())


def _corpus_bleu(rows: list[dict]) -> Resampler | None:
    from tunelab.evaluation.metrics import corpus_bleu_resampler

    return corpus_bleu_resampler([r["prediction"] for r in rows], [r["reference"] for r in rows])


def _perplexity(rows: list[dict]) -> Resampler | None:
    if any("tokens" not in r for r in rows):
        return None
    tokens = np.array([r["tokens"] for r in rows], dtype=float)
    nll = np.array([r["score"] for r in rows], dtype=float) * tokens  # rows hold cross-entropy per token
    return lambda idx: float(math.exp(nll[idx].sum() / max(tokens[idx].sum(), 1.0)))


def _kl(rows: list[dict]) -> Resampler | None:
    if any("kl_sum" not in r for r in rows):
        return None
    kl = np.array([r["kl_sum"] for r in rows], dtype=float)
    tokens = np.array([r["tokens"] for r in rows], dtype=float)
    return lambda idx: float(max(kl[idx].sum() / max(tokens[idx].sum(), 1.0), 0.0))


def _spearman(rows: list[dict]) -> Resampler | None:
    from scipy.stats import spearmanr

    try:
        predicted = np.array([float(r["prediction"]) for r in rows])
        gold = np.array([float(r["reference"]) for r in rows])
    except (TypeError, ValueError):
        return None
    return lambda idx: float(spearmanr(predicted[idx], gold[idx]).statistic)


# How each metric is recomputed on resampled examples; every other metric is the mean of the rows' scores.
RESAMPLERS: dict[str, Callable[[list[dict]], Resampler | None]] = {
    "bleu": _corpus_bleu, "perplexity": _perplexity, "kl_divergence": _kl, "spearman": _spearman,
}


@lru_cache(maxsize=256)
def _read_rows(path: str, mtime_ns: int) -> tuple[dict, ...]:
    return tuple(row for _, row in run_files.read_jsonl(path))


def prediction_rows(record: dict[str, Any]) -> list[dict]:
    """The rows of a run's predictions.jsonl (task and retention probes), or [] when it has none."""
    eval_dir = record.get("eval_dir")
    path = Path(eval_dir) / run_files.EVAL_PREDICTIONS if eval_dir else None
    if path is None or not path.is_file():
        if path is not None:
            _missing(str(path))
        return []
    return list(_read_rows(str(path), path.stat().st_mtime_ns))


@lru_cache(maxsize=256)
def _missing(path: str) -> None:
    """Said once per file: without it a run has no paired intervals, and the report shows '–' where they go."""
    log.warning("%s: not found, so this run's paired differences cannot be computed; was the comparison's folder "
                "moved, or its runs/ deleted?", path)


@dataclass
class MeasureData:
    metric: str
    inputs: tuple[str, ...]       # which examples, in which order: two runs pair only on the same ones
    resampler: Resampler


def run_measures(record: dict[str, Any]) -> dict[str, MeasureData]:
    """Each measure of a finished run that its per-example rows allow: the task's headline metric (keyed by the
    metric's name) and each retention probe (keyed by the probe's name)."""
    rows = prediction_rows(record)
    if not rows:
        return {}
    by_source: dict[str, list[dict]] = {}
    for row in rows:
        by_source.setdefault(row.get("source", ""), []).append(row)
    wanted = {}
    if record.get("headline_metric") and record.get("task"):
        wanted[record["headline_metric"]] = (record["headline_metric"], by_source.get(record["task"], []))
    for probe, result in (record.get("retention") or {}).items():
        metric = result.get("metric")
        if metric:
            wanted[probe] = (metric, by_source.get(f"retention:{probe}", []))
    out = {}
    for name, (metric, probe_rows) in wanted.items():
        if not probe_rows:
            continue
        resampler = RESAMPLERS.get(metric, _mean_of_scores)(probe_rows)
        if resampler is not None:
            out[name] = MeasureData(metric, tuple(str(r.get("input")) for r in probe_rows), resampler)
    return out


def compare_runs(a: list[dict[str, Any]], b: list[dict[str, Any]], *, seed: int = 0) -> dict[str, Difference]:
    """A minus B on every measure both methods' runs (their seeds) have on the same examples."""
    measures_a = [run_measures(r) for r in a]
    measures_b = [run_measures(r) for r in b]
    if not measures_a or not measures_b:
        return {}
    names = [n for n in measures_a[0] if all(n in m for m in measures_a + measures_b)]
    out = {}
    for name in names:
        runs = [m[name] for m in measures_a + measures_b]
        if len({r.inputs for r in runs}) != 1 or len({r.metric for r in runs}) != 1:
            continue  # not the same examples (runs of different evaluation settings): nothing to pair
        out[name] = paired_difference([m[name].resampler for m in measures_a],
                                      [m[name].resampler for m in measures_b], len(runs[0].inputs),
                                      measure=name, metric=runs[0].metric, seed=seed)
    return out
