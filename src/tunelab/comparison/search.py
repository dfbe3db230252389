"""The learning-rate search of a comparison: before methods are compared, each one's learning rate is tuned on a
validation split carved from the training data, so that a gap between two methods is not a gap between two
hand-picked rates (Biderman et al. 2024 found a per-method sweep decides the answer).

- The engine is Optuna: one study per method entry, a seeded TPE (or grid) sampler over a log-uniform range that
  the method declares (``Method.learning_rate_range``; a recipe entry may give its own ``learning_rate_range``).
- The studies live in ``search.db`` (SQLite, Optuna's RDB storage) in the comparison's directory, so a killed
  search resumes where it stopped, and ``--parallel N`` or Ray workers share them.
- Each trial is a run like any other: a worker subprocess (``kind: trial``) trains through ``training.train``
  with validation-loss evaluations every ``budget / evaluations`` steps; a Trainer callback reports each to the
  trial, and Optuna's successive-halving pruner stops the trials that fall behind (``should_training_stop``).
- The whole search of a method trains at most ``max_cost`` (3) full budgets of steps: a trial started when less
  than a full budget is left is stopped where the allowance ends.
- Each trial is recorded in results.jsonl (``kind: trial``) with its number, learning rate, status (finished,
  pruned at step N, failed) and cost; the study, not the results file, is the source of truth, so a record lost
  to a kill is rebuilt from the study on the next run and no finished trial is run twice.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

from tunelab.comparison.search_settings import SearchSettings, status_text
from tunelab.comparison.search_trial import open_storage, pruner
from tunelab import contention, run_files
from tunelab.records import ComparisonRecord, TrialRecord

if TYPE_CHECKING:
    from tunelab.comparison.data import ComparisonData, SearchData
    from tunelab.comparison.recipe import MethodEntry, Recipe
    from tunelab.comparison.results import ResultsFile

log = logging.getLogger(__name__)

PARAMETERS = ("learning_rate",)
SAMPLERS = ("tpe", "grid")
OBJECTIVES = ("loss", "metric")
SEARCH_KEYS = {"parameter", "trials", "sampler", "objective", "validation_fraction", "group_by", "seed",
               "evaluations", "max_cost"}


def search_range(entry: "MethodEntry") -> tuple[float, float]:
    """The log-uniform range an entry's learning rate is searched in: the entry's own, else its method family's."""
    from tunelab.methods import get_method

    return entry.learning_rate_range or get_method(entry.method).learning_rate_range


def family_ranges() -> dict[tuple[float, float], list[str]]:
    """Method names by the range they declare (for --help, the README and their test)."""
    from tunelab.methods import get_method, method_names

    out: dict[tuple[float, float], list[str]] = {}
    for name in method_names():
        out.setdefault(get_method(name).learning_rate_range, []).append(name)
    return out


# --- one study per method entry ----------------------------------------------------------------------------------

def storage_url(out: Path) -> str:
    return f"sqlite:///{Path(out).resolve() / run_files.SEARCH_STUDY}"


def direction(recipe: "Recipe", settings: SearchSettings) -> str:
    if settings.objective == "loss":
        return "minimize"
    from tunelab.evaluation.metrics import HEADLINE
    from tunelab.evaluation.tasks import HIGHER_IS_BETTER

    return "maximize" if HIGHER_IS_BETTER.get(HEADLINE.get(recipe.task, ""), True) else "minimize"


def grid(low: float, high: float, n: int, seed: int) -> list[float]:
    """``n`` log-spaced rates from ``low`` to ``high``, in a seeded order: in rising order each trial could beat
    the last at every rung, and successive halving would prune none."""
    import random

    if n == 1:
        return [math.sqrt(low * high)]
    points = [math.exp(math.log(low) + i * (math.log(high) - math.log(low)) / (n - 1)) for i in range(n)]
    points[0], points[-1] = low, high  # exactly: the distribution refuses a rounding error outside it
    random.Random(seed).shuffle(points)
    return points


@dataclass
class MethodStudy:
    """One method entry's search: its Optuna study and what its trials may spend."""

    entry: "MethodEntry"
    name: str
    low: float
    high: float
    total_steps: int          # one full training budget (the comparison's runs train this many steps)
    eval_every: int           # steps between the trials' validation evaluations
    budget_steps: int         # max_cost full budgets
    full_steps: int = 0       # the steps of one of the comparison's runs (on all the training rows)
    study: Any = None
    asked: dict[int, int] = field(default_factory=dict)   # trial number -> its step allowance, while it runs

    def trials(self) -> list:
        return self.study.get_trials(deepcopy=False)

    def counted(self) -> list:
        """Trials that count towards ``trials``: finished, pruned or failed (not those a kill interrupted)."""
        return [t for t in self.trials() if t.state.is_finished() and t.user_attrs.get("status") != "interrupted"]

    def steps_spent(self) -> int:
        return sum(int(t.user_attrs.get("steps") or 0) for t in self.counted()) + sum(self.asked.values())


def study_name(recipe: "Recipe", entry: "MethodEntry", settings: SearchSettings, low: float, high: float,
               seed: int) -> str:
    """The study of an entry under these settings: a changed recipe, entry or setting starts a new one."""
    method = {k: v for k, v in entry.as_dict().items() if k not in ("learning_rate", "learning_rate_range")}
    shared = recipe.shared_content()
    if settings.objective == "loss":  # trials judged by the validation loss never evaluate the task or the probes
        shared = {k: v for k, v in shared.items() if k not in ("eval", "retention")}
    blob = json.dumps({"shared": shared, "method": method, "search": settings.identity(),
                       "range": [low, high], "seed": seed}, sort_keys=True, default=str)
    return f"{run_files.slug(entry.label, empty='method')}-{hashlib.sha256(blob.encode()).hexdigest()[:12]}"


def full_budget_steps(recipe: "Recipe", train_rows: int) -> int:
    """Optimizer steps of one of the comparison's runs (max_steps, else epochs over the training rows)."""
    from tunelab.config import TrainOptions
    from tunelab.training import total_training_steps

    b = recipe.budget
    opts = TrainOptions(model_name_or_path="-", dataset_name_or_path="-", output_dir="-",
                        **{k: b[k] for k in ("max_steps", "num_train_epochs", "per_device_train_batch_size",
                                             "gradient_accumulation_steps") if k in b})
    return total_training_steps(opts, train_rows)


# --- trial records -----------------------------------------------------------------------------------------------

def trial_key(study: str, number: int) -> str:
    return f"trial:{study}:{number}"


def trial_record(ms: MethodStudy, trial, settings: SearchSettings, seed: int) -> TrialRecord:
    """The results.jsonl record of a finished trial, built from the study alone."""
    attrs = trial.user_attrs
    status = attrs.get("status") or {"COMPLETE": "finished", "PRUNED": "pruned"}.get(trial.state.name, "failed")
    intermediate = sorted(trial.intermediate_values.items())
    sign = -1.0 if settings.objective == "metric" and ms.study.direction.name == "MAXIMIZE" else 1.0
    return TrialRecord(
        key=trial_key(ms.name, trial.number), label=ms.entry.label, method=ms.entry.method,
        seed=seed, study=ms.name, trial=trial.number, learning_rate=trial.params.get("learning_rate"),
        status=status, pruned_at_step=attrs.get("pruned_at_step"), stopped_by=attrs.get("stopped_by"),
        objective="validation_loss" if settings.objective == "loss" else attrs.get("metric"),
        objective_value=trial.value if trial.state.name == "COMPLETE" else None,
        # the validation loss at each evaluation step, as the pruner saw it (un-negated)
        validation_loss_curve=[{"step": s, "eval_loss": sign * v} for s, v in intermediate],
        steps=attrs.get("steps"), total_steps=ms.total_steps, cost_seconds=attrs.get("cost_seconds"),
        train_seconds=None, error=attrs.get("error"), run_dir=attrs.get("run_dir"),
        retry_of=attrs.get("retry_of"), range=[ms.low, ms.high],
    )


# --- the search --------------------------------------------------------------------------------------------------

@dataclass
class SearchOutcome:
    """One method entry's search, as the comparison's runs and the report use it."""

    label: str
    study: str
    chosen_learning_rate: float | None
    low: float
    high: float
    trials: int
    finished: int
    pruned: int
    failed: int
    tuning_seconds: float
    tuning_steps: int
    budget_steps: int
    full_budget_steps: int
    # how it searched, for the report: sampler, objective, the validation split
    sampler: str = "tpe"
    objective: str = "loss"
    trials_asked: int = 0
    eval_every_steps: int = 0
    max_cost: float = 3.0
    validation_fraction: float = 0.1
    validation_rows: int = 0
    search_train_rows: int = 0
    grouped_by: str | None = None
    seed: int = 0
    error: str | None = None      # why no rate was chosen
    busy_trials: int = 0          # trials whose training shared the CPU with other work (tunelab.contention)

    def summary(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class Search:
    """The studies of one comparison and the trials they run (``run()``), then their outcomes."""

    def __init__(self, recipe: "Recipe", out: Path, *, data: "ComparisonData", device: str,
                 gpu_bf16: bool | None, data_dir: Path | None, results: "ResultsFile", force: bool = False):
        import optuna

        from tunelab.comparison.data import prepare_search_data
        from tunelab.data import sources

        optuna.logging.set_verbosity(optuna.logging.WARNING)  # our own log line per trial says what it did
        self.recipe, self.out, self.data = recipe, Path(out), data
        self.settings: SearchSettings = recipe.search
        self.device, self.gpu_bf16, self.data_dir, self.results = device, gpu_bf16, data_dir, results
        self.search_data: SearchData = prepare_search_data(recipe, data, self.out,
                                                           fraction=float(self.settings.validation_fraction),
                                                           group_by=self.settings.group_by, seed=self.settings.seed)
        self.seed = recipe.seeds[0]  # trials train with the comparison's first seed
        self.url = storage_url(self.out)
        self.storage = open_storage(self.url)
        total = full_budget_steps(recipe, len(sources.read_file(Path(data.train))))
        trial_total = full_budget_steps(recipe, self.search_data.train_rows)
        eval_every = max(1, trial_total // self.settings.evaluations)
        self.studies: list[MethodStudy] = []
        for entry in recipe.methods:
            low, high = search_range(entry)
            name = study_name(recipe, entry, self.settings, low, high, self.seed)
            ms = MethodStudy(entry, name, low, high, trial_total, eval_every,
                             int(self.settings.max_cost * total), total)
            if force:
                try:
                    optuna.delete_study(study_name=name, storage=self.storage)
                except KeyError:
                    pass
            ms.study = optuna.create_study(study_name=name, storage=self.storage, sampler=self._sampler(ms),
                                           pruner=pruner(eval_every), direction=direction(recipe, self.settings),
                                           load_if_exists=True)
            self._enqueue_grid(ms)
            self.studies.append(ms)

    def _sampler(self, ms: MethodStudy):
        import optuna

        # A 1-D search of six trials: half random start-up trials, then TPE's guided ones; constant_liar keeps
        # parallel workers from proposing the same rate. (The grid: see _enqueue_grid.)
        return optuna.samplers.TPESampler(seed=self.settings.seed, n_startup_trials=max(1, self.settings.trials // 2),
                                          constant_liar=True)

    def _enqueue_grid(self, ms: MethodStudy) -> None:
        """The grid's rates, queued in the new study (Optuna's GridSampler stops the study from inside
        ``optimize()``, which this ask-and-tell driver does not run); each trial asked takes the next."""
        if self.settings.sampler == "grid" and not ms.trials():
            for lr in grid(ms.low, ms.high, self.settings.trials, self.settings.seed):
                ms.study.enqueue_trial({"learning_rate": lr})

    # --- resuming -----------------------------------------------------------------------------------------------
    def reconcile(self) -> None:
        """After a kill: a trial the study still holds as running either finished (its worker wrote its result:
        told now, not run again) or was interrupted (failed in the study, its rate queued again); and a finished
        trial whose record did not reach results.jsonl gets it."""
        from optuna.trial import TrialState

        for ms in self.studies:
            for t in ms.trials():
                if t.state == TrialState.RUNNING:
                    run_dir = t.user_attrs.get("run_dir")
                    result = _read_result(Path(run_dir)) if run_dir else None
                    if result is not None:
                        self._tell(ms, t.number, t._trial_id, result, error=None,
                                   cost=result["trial"].get("elapsed_seconds"))
                    else:
                        self.storage.set_trial_user_attr(t._trial_id, "status", "interrupted")
                        self.storage.set_trial_user_attr(t._trial_id, "error", "the comparison "
                                                         "stopped while it ran; its rate is tried again")
                        ms.study.tell(t.number, state=TrialState.FAIL)
                        ms.study.enqueue_trial(dict(t.params), user_attrs={"retry_of": t.number})
                        log.info("%s trial %d was interrupted; its rate %.3g is queued again", ms.entry.label,
                                 t.number, t.params.get("learning_rate", float("nan")))
            have = self.results.by_key()
            for t in ms.trials():
                if t.state.is_finished() and trial_key(ms.name, t.number) not in have:
                    self.results.put(trial_record(ms, ms.study.get_trials(deepcopy=False)[t.number],
                                                  self.settings, self.seed))

    # --- running ------------------------------------------------------------------------------------------------
    def pending(self) -> list[MethodStudy]:
        """Studies that want another trial and can afford one that reaches its first evaluation."""
        return [ms for ms in self.studies
                if len(ms.counted()) + len(ms.asked) < self.settings.trials
                and ms.budget_steps - ms.steps_spent() >= ms.eval_every]

    def wave(self, size: int) -> list:
        """Up to ``size`` new trials, one method after another, each with its step allowance."""
        from optuna.distributions import FloatDistribution

        from tunelab.comparison.processes import PlannedRun

        planned = []
        while len(planned) < size:
            ready = self.pending()
            if not ready:
                break
            for ms in ready:
                if len(planned) >= size:
                    break
                allowance = min(ms.total_steps, ms.budget_steps - ms.steps_spent())
                trial = ms.study.ask({"learning_rate": FloatDistribution(ms.low, ms.high, log=True)})
                lr = float(trial.params["learning_rate"])
                slug = run_files.slug(ms.entry.label, empty="method")
                run_dir = self.out / "search" / f"{slug}-trial{trial.number}-{ms.name[-8:]}"
                trial.set_user_attr("run_dir", str(run_dir))
                ms.asked[trial.number] = allowance
                spec = self._spec(ms, trial, lr, run_dir, allowance)
                planned.append(PlannedRun(trial_key(ms.name, trial.number), ms.entry.label, ms.entry.method,
                                          self.seed, run_dir, spec))
        return planned

    def _spec(self, ms: MethodStudy, trial, lr: float, run_dir: Path, allowance: int) -> dict[str, Any]:
        from tunelab.comparison.recipe import MethodEntry
        from tunelab.options import to_dict

        entry = MethodEntry(ms.entry.label, ms.entry.method, {**ms.entry.overrides, "learning_rate": lr})
        topts = self.recipe.train_options(entry, self.seed, train_file=self.search_data.directory,
                                          output_dir=str(run_dir / "model"), device=self.device,
                                          gpu_bf16=self.gpu_bf16)
        # a trial needs only its validation loss: no trajectory points or retention tracking (recipe curve_points)
        topts = dataclasses.replace(topts, eval_steps=ms.eval_every, max_eval_samples=None, curve_points=0,
                                    track_retention=None, max_forgetting=None,
                                    per_device_eval_batch_size=self.recipe.eval.get("per_device_eval_batch_size",
                                                                                    topts.per_device_eval_batch_size))
        spec: dict[str, Any] = {
            "kind": "trial", "run_dir": str(run_dir), "train_options": to_dict(topts),
            "explicit": sorted(set(entry.overrides) | {"method", "learning_rate"}),
            "search": {"storage": self.url, "study_name": ms.name, "trial_id": trial._trial_id,
                       "trial_number": trial.number, "min_resource": ms.eval_every,
                       "objective": self.settings.objective, "direction": ms.study.direction.name.lower(),
                       "stop_at_step": allowance if allowance < ms.total_steps else None},
        }
        if self.settings.objective == "metric":
            validation = str(Path(self.search_data.directory) / "validation.jsonl")
            eopts = self.recipe.eval_options(eval_file=validation, output_dir=str(run_dir / "eval"),
                                             model=self.recipe.model, adapter=None, baseline=None,
                                             data_dir=str(self.data_dir) if self.data_dir else None,
                                             sql_database=self.data.sql_database, device=self.device)
            spec["eval_options"] = to_dict(dataclasses.replace(eopts, retention=[]))
        return spec

    def finish(self, run, record: ComparisonRecord) -> TrialRecord:
        """A trial's worker ended (``record``: how, as processes.outcome tells it): tell its study how (finished with
        its objective, pruned, failed) and record it."""
        ms = next(m for m in self.studies if run.key.startswith(f"trial:{m.name}:"))
        number = int(run.key.rsplit(":", 1)[1])
        ms.asked.pop(number, None)
        trial_id = ms.study.get_trials(deepcopy=False)[number]._trial_id
        result = _read_result(run.run_dir) if record.status == "ok" else None
        return self._tell(ms, number, trial_id, result, error=record.error, cost=record.wall_seconds)

    def _tell(self, ms: MethodStudy, number: int, trial_id: int, result: dict[str, Any] | None, *,
              error: str | None, cost: float | None) -> TrialRecord:
        from optuna.trial import TrialState

        attrs: dict[str, Any] = {"cost_seconds": cost}
        state, value = TrialState.FAIL, None
        if result is not None:
            outcome = result["trial"]
            attrs.update(steps=outcome["global_step"], pruned_at_step=outcome.get("pruned_at_step"),
                         stopped_by=outcome.get("stopped_by"), metric=outcome.get("metric"),
                         train_seconds=outcome.get("train_seconds"),
                         cpu_wait_share=outcome.get("train_cpu_wait_share"))
            value = outcome.get("value")
            if outcome["status"] == "pruned":
                state = TrialState.PRUNED
            elif value is not None and math.isfinite(value):
                state = TrialState.COMPLETE
            else:
                error = f"the objective is {value} (the run diverged)"
        attrs["status"] = {TrialState.COMPLETE: "finished", TrialState.PRUNED: "pruned"}.get(state, "failed")
        if state == TrialState.FAIL:
            attrs["error"] = error or "failed"
            if result is None:  # a crash: its steps are unknown; count a full budget against the allowance
                attrs["steps"] = ms.total_steps
        for key, v in attrs.items():
            self.storage.set_trial_user_attr(trial_id, key, v)
        ms.study.tell(number, value if state == TrialState.COMPLETE else None, state=state)
        record = trial_record(ms, ms.study.get_trials(deepcopy=False)[number], self.settings, self.seed)
        record.train_seconds = attrs.get("train_seconds")
        self.results.put(record)
        log.info("%s trial %d: learning rate %.3g, %s%s", ms.entry.label, number, record.learning_rate,
                 status_text(record.to_json()), f", validation {str(record.objective).replace('validation_', '')} "
                 f"{value:.4g}" if state == TrialState.COMPLETE else "")
        return record

    # --- outcomes -----------------------------------------------------------------------------------------------
    def outcomes(self) -> dict[str, SearchOutcome]:
        from optuna.trial import TrialState

        out = {}
        for ms in self.studies:
            counted = ms.counted()
            complete = [t for t in counted if t.state == TrialState.COMPLETE]
            chosen, error = None, None
            if complete:
                pick = min if ms.study.direction.name == "MINIMIZE" else max
                chosen = float(pick(complete, key=lambda t: t.value).params["learning_rate"])
            else:
                error = (f"no trial of the learning-rate search finished ({len(counted)} ran: "
                         f"{', '.join(str(t.user_attrs.get('error') or t.state.name.lower()) for t in counted[:3])})")
            out[ms.entry.label] = SearchOutcome(
                ms.entry.label, ms.name, chosen, ms.low, ms.high, len(counted), len(complete),
                sum(t.state == TrialState.PRUNED for t in counted), sum(t.state == TrialState.FAIL for t in counted),
                float(sum(t.user_attrs.get("cost_seconds") or 0.0 for t in counted)),
                int(sum(t.user_attrs.get("steps") or 0 for t in counted)), ms.budget_steps,
                ms.full_steps, self.settings.sampler, self.settings.objective,
                self.settings.trials, ms.eval_every, self.settings.max_cost, self.settings.validation_fraction,
                self.search_data.validation_rows, self.search_data.train_rows, self.search_data.grouped_by,
                self.settings.seed, error,
                sum(contention.busy(t.user_attrs.get("cpu_wait_share")) for t in counted))
        return out


def run_search(recipe: "Recipe", out: Path, *, data: "ComparisonData", launch, device: str,
               gpu_bf16: bool | None, data_dir: Path | None, results: "ResultsFile", wave_size: int,
               timeout: float | None = None, force: bool = False) -> dict[str, SearchOutcome]:
    """Every method entry's search, run to its number of trials (or its step budget): waves of up to
    ``wave_size`` trials through the comparison's launcher, each told to its study the moment it ends."""
    search = Search(recipe, out, data=data, device=device, gpu_bf16=gpu_bf16, data_dir=data_dir, results=results,
                    force=force)
    search.reconcile()
    while True:
        runs = search.wave(wave_size)
        if not runs:
            break
        for run, record in launch.run(runs, timeout=timeout):
            search.finish(run, record)
    return search.outcomes()


def _read_result(run_dir: Path) -> dict[str, Any] | None:
    path = Path(run_dir) / run_files.WORKER_RESULT
    if not path.is_file():
        return None
    result = json.loads(path.read_text(encoding="utf-8"))
    return result if result.get("kind") == "trial" else None


def chosen_rates(outcomes: dict[str, SearchOutcome]) -> Iterator[tuple[str, float]]:
    for label, o in outcomes.items():
        if o.chosen_learning_rate is not None:
            yield label, o.chosen_learning_rate
