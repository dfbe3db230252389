"""A learning-rate search trial, inside its worker process: train on the search's training split at the trial's
rate, report each validation evaluation to the Optuna study (whose pruner may stop it) and return the objective.
The driver's side, which plans trials and reads the studies, is search.py."""

from __future__ import annotations

import shutil
import time
from typing import Any

REDUCTION_FACTOR = 3  # successive halving keeps the best third of the trials at each rung


def open_storage(url: str):
    import optuna

    # SQLite serialises writers; parallel trials report at the same moments, so wait for the lock instead of
    # failing ("database is locked").
    return optuna.storages.RDBStorage(url, engine_kwargs={"connect_args": {"timeout": 120}})


def pruner(min_resource: int):
    import optuna

    return optuna.pruners.SuccessiveHalvingPruner(min_resource=min_resource, reduction_factor=REDUCTION_FACTOR)


def reporting_callback(trial, *, negate: bool, stop_at_step: int | None):
    """A Trainer callback that reports each evaluation's validation loss to the Optuna trial (negated in a study
    that maximizes a metric, so the pruner compares in the study's direction) and stops training when the pruner
    says so, or where the search's step allowance ends."""
    from transformers import TrainerCallback

    class ReportToOptuna(TrainerCallback):
        def __init__(self):
            self.pruned_at_step: int | None = None
            self.stopped_by: str | None = None
            self.reported: set[int] = set()

        def on_evaluate(self, args, state, control, metrics=None, **kwargs):
            loss = (metrics or {}).get("eval_loss")
            step = state.global_step
            # (train() evaluates once more after the loop: the step it stopped at is reported already)
            if loss is None or self.pruned_at_step is not None or step in self.reported:
                return control
            self.reported.add(step)
            trial.report(-loss if negate else loss, step=step)
            # The run's last evaluation is its objective, not a rung to be pruned at.
            if step < state.max_steps and trial.should_prune():
                self.pruned_at_step, self.stopped_by = state.global_step, "pruner"
                control.should_training_stop = True
            return control

        def on_step_end(self, args, state, control, **kwargs):
            if stop_at_step is not None and state.global_step >= stop_at_step and self.pruned_at_step is None:
                self.pruned_at_step, self.stopped_by = state.global_step, "budget"
                control.should_training_stop = True
            return control

    return ReportToOptuna()


def run_trial(spec: dict[str, Any]) -> dict[str, Any]:
    """One trial, in its worker: train on the search's training split with the trial's rate, report to the study,
    and return the objective (validation loss, or the headline metric on the validation split)."""
    import optuna

    from tunelab.config import EvalOptions, TrainOptions
    from tunelab.evaluation.run import evaluate, evaluation_of, needs_saved_weights
    from tunelab.training import train

    started = time.perf_counter()
    s = spec["search"]
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    # The sampler is the driver's business: this process only reports, through the study's pruner.
    study = optuna.load_study(study_name=s["study_name"], storage=open_storage(s["storage"]),
                              sampler=optuna.samplers.RandomSampler(), pruner=pruner(s["min_resource"]))
    trial = optuna.trial.Trial(study, s["trial_id"])
    negate = s["objective"] == "metric" and s["direction"] == "maximize"
    callback = reporting_callback(trial, negate=negate, stop_at_step=s.get("stop_at_step"))
    topts = TrainOptions(**spec["train_options"])
    # The trial's weights are read in memory if at all: a full model written only to be deleted is hundreds of MB
    evaluated_on_disk = s["objective"] == "metric" and needs_saved_weights(spec["eval_options"])
    trained = train(topts, set(spec.get("explicit", [])), extra_callbacks=(callback,),
                    save_weights=evaluated_on_disk)
    results = trained.record
    # The last logged step: train() evaluates again after a stop, which is the loss at the step it stopped at.
    outcome: dict[str, Any] = {"status": "pruned" if callback.pruned_at_step is not None else "finished",
                               "pruned_at_step": callback.pruned_at_step, "stopped_by": callback.stopped_by,
                               "global_step": results.global_step, "train_seconds": results.train_seconds,
                               "final_eval_loss": results.final_eval_loss,
                               "train_cpu_wait_share": results.train_cpu_wait_share}
    if outcome["status"] == "finished":
        if s["objective"] == "loss":
            outcome["value"] = results.final_eval_loss
        else:
            values, model = evaluation_of(trained, topts, spec["eval_options"])
            del trained
            evaluated = evaluate(EvalOptions(**values), model=model).record
            outcome["metric"], outcome["value"] = evaluated.headline_metric, evaluated.headline_value
    shutil.rmtree(topts.output_dir, ignore_errors=True)  # its configuration and logs
    outcome["elapsed_seconds"] = time.perf_counter() - started
    return {"kind": "trial", "train_results": {k: v for k, v in results.to_json().items() if k != "data"},
            "trial": outcome}
