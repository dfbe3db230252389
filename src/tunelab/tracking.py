"""What a run forgets while it trains: `tunelab train --track_retention SIGNAL...` and `--max_forgetting SIGNAL=VALUE`.

At every tracked step (each --eval_steps, by default ten times over the run, and the last step) a Trainer callback
compares the model with its base on small fixed sets of texts (:mod:`tunelab.evaluation.divergence`):
- ``general_text``: change in mean per-token cross-entropy on general text (--track_text, else the drift prompts'
  base continuations);
- ``drift``: mean per-token KL(base || tuned) on the same text (the `tunelab eval` drift probe, on the same prompts);
- ``task_kl``: mean per-token KL(base || tuned) at the response positions of the task's own examples (the
  validation rows, else the training rows).
The Trainer's validation loss, where the run has a validation set, is evaluated at the same steps. The base's side
is computed once before training (peft's disable_adapter() for PEFT methods; the untouched weights for full
fine-tuning), so each tracked step costs one forward pass over the sets. The values go through ``Trainer.log``:
into the trainer state (kept across a resume), and to the --report_to trackers as eval/retention_<signal>.

A forgetting budget saves a checkpoint at every tracked step within it, stops training at the first step beyond it,
and loads the last checkpoint within it, as the Trainer's load_best_model_at_end does (its own loader).
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunelab.errors import TunelabError
from tunelab import run_files

log = logging.getLogger(__name__)

SIGNALS = {
    "general_text": "change in mean cross-entropy on general text, nats/token",
    "drift": "mean KL(base || tuned) on the base's own continuations of general prompts, nats/token",
    "task_kl": "mean KL(base || tuned) at the response positions of the task's examples, nats/token",
}
MAX_EVALUATIONS = 10       # tracked steps over a run when --eval_steps is not given, at most ...
COST_TARGET = 0.15         # ... and as many as fit this share of the training compute (the issue allows 20%)
DRIFT_NEW_TOKENS = 48      # (retention.DRIFT_NEW_TOKENS: the base's continuations' length)
LOG_PREFIX = "eval_retention_"
CURVE_DIR = "curve"           # OUTPUT_DIR/curve/step-N: --curve_points' saved models (adapters)


def parse_budgets(specs: list[str] | None) -> dict[str, float]:
    """``["drift=0.05", ...]`` -> {"drift": 0.05}; a user error names the flag and the accepted form."""
    budgets: dict[str, float] = {}
    for spec in specs or []:
        name, sep, value = spec.partition("=")
        if not sep or name not in SIGNALS:
            raise TunelabError(f"--max_forgetting {spec}: expected SIGNAL=VALUE with a signal among "
                               f"{', '.join(SIGNALS)}, e.g. drift=0.05")
        try:
            budgets[name] = float(value)
        except ValueError:
            raise TunelabError(f"--max_forgetting {spec}: {value!r} is not a number") from None
        if not math.isfinite(budgets[name]) or budgets[name] < 0:
            raise TunelabError(f"--max_forgetting {spec}: the budget must be a finite number >= 0")
    return budgets


def tracked_signals(opts) -> list[str]:
    """The signals to compute: those asked for, and those a budget needs (all of them for --curve_points when
    none is named)."""
    asked = list(opts.track_retention or ([] if not opts.curve_points or opts.max_forgetting else SIGNALS))
    for name in asked:
        if name not in SIGNALS:
            raise TunelabError(f"--track_retention {name}: unknown signal; choose among {', '.join(SIGNALS)}")
    return list(dict.fromkeys([*asked, *parse_budgets(opts.max_forgetting)]))


def check_options(opts) -> None:
    """Before anything is loaded."""
    signals = tracked_signals(opts)
    if not signals:
        return
    if opts.track_text is not None and not Path(opts.track_text).is_file():
        raise TunelabError(f"--track_text {opts.track_text}: no such file; pass a .jsonl/.json/.csv/.parquet file of "
                           "general text (a 'text' column, or conversations)")
    if opts.track_samples < 1:
        raise TunelabError(f"--track_samples must be at least 1, got {opts.track_samples}")
    if opts.curve_points < 0:
        raise TunelabError(f"--curve_points must be 0 (off) or more, got {opts.curve_points}")
    if opts.curve_points and opts.eval_steps:
        raise TunelabError("--curve_points places the tracked steps evenly itself; drop --eval_steps")
    if opts.fsdp or opts.deepspeed:
        raise TunelabError("--track_retention / --max_forgetting compare the model with its base on one device; "
                           "they do not run with --fsdp or --deepspeed yet")
    if opts.max_forgetting and opts.early_stopping_patience is not None:
        raise TunelabError("--max_forgetting and --early_stopping_patience both choose the checkpoint to keep; "
                           "use one of them")
    from tunelab.methods import get_method

    if opts.max_forgetting and get_method(opts.method).virtual_tokens:
        # the Trainer's best-checkpoint loader cannot reload prompt-learning adapters (peft issue 2256)
        raise TunelabError(f"--max_forgetting cannot reload a --method {opts.method} checkpoint during training; "
                           "track with --track_retention and pick the checkpoint from the curves instead")


def _mean(values) -> float:
    values = list(values)
    return sum(values) / len(values) if values else 0.0


def estimate_cost(opts, data, tokenizer, signals: list[str], text_examples, *, peft: bool) -> tuple[float, float]:
    """(token positions one tracked step runs forward, forward-equivalent positions of one training step), from
    the run's own encoded data: what the default frequency is chosen by. A training step costs ~3 forward passes
    (forward, backward through activations and weights), ~2 for a PEFT method (no weight gradients of the base)."""
    n = opts.track_samples
    per_eval = 0.0
    if "task_kl" in signals:
        rows = data.eval or data.train
        per_eval += min(n, len(rows)) * _mean(len(r["input_ids"]) for r in rows)
    own_text = "general_text" in signals and text_examples is not None
    if "drift" in signals or ("general_text" in signals and not own_text):
        from tunelab.evaluation.probes import ProbeContext, drift_prompts

        prompts = drift_prompts(ProbeContext(None, n, opts.seed))
        asked = data.template.without_system_prompt()  # as the drift reference asks (retention.general_view)
        per_eval += len(prompts) * (DRIFT_NEW_TOKENS + _mean(len(tokenizer(asked.prompt(p.messages, tokenizer))
                                                                     ["input_ids"]) for p in prompts))
    if own_text:
        texts = text_examples[:n]
        per_eval += len(texts) * _mean(len(tokenizer(t.text or " ".join(m["content"] for m in t.messages or []))
                                           ["input_ids"]) for t in texts)
    if data.eval:  # the Trainer's validation loss, evaluated at the same steps
        per_eval += len(data.eval) * _mean(len(r["input_ids"]) for r in data.eval)
    batch = opts.per_device_train_batch_size * opts.gradient_accumulation_steps * max(1, opts.num_processes)
    per_step = (2.0 if peft else 3.0) * batch * _mean(len(r["input_ids"]) for r in data.train)
    return per_eval, per_step


def default_every(total_steps: int, per_eval: float, per_step: float, *, step_zero: bool) -> int:
    """As many tracked steps as fit COST_TARGET of the training compute (the base references, one more evaluation,
    and step 0 where it is measured, included), at most MAX_EVALUATIONS and at least the last step."""
    affordable = COST_TARGET * total_steps * per_step / per_eval if per_eval else MAX_EVALUATIONS
    evaluations = max(1, min(MAX_EVALUATIONS, int(affordable) - 1 - int(step_zero)))
    return max(1, math.ceil(total_steps / evaluations))


@dataclass
class RetentionTracker:
    signals: list[str]
    budgets: dict[str, float]
    every: int
    lm: Any                           # inference.LoadedModel around the model being trained
    task_examples: list             # Examples for task_kl
    task_examples_split: str        # "validation" or "train"
    text_examples: list | None        # general text for general_text (None: the drift prompts' base continuations)
    samples: int
    seed: int
    batch_size: int
    max_seq_length: int
    mixed_precision: str | None = None  # "bf16", "fp16" or None: forward passes run under the training's autocast
    unmask: Any = None              # ICA masking's remove(): signals are measured on the model that is saved
    measure_step_zero: bool = False   # else step 0 is written as 0: the method starts as the identity
    estimated_overhead_fraction: float | None = None  # what the frequency was chosen by (tracked forward passes)
    checkpoint_dir: Path | None = None  # --curve_points: the model (adapter) of every tracked step is saved here
    references: dict[str, Any] = field(default_factory=dict)
    reference_seconds: float = 0.0
    signal_seconds: float = 0.0
    chosen_step: int | None = None
    stopped_at_step: int | None = None
    trainer: Any = None
    history_end: int | None = None  # log-history entries written during training (a later evaluate() adds more)
    _started: float = 0.0
    _seconds_offset: float = 0.0

    # --- the base's side, once -----------------------------------------------------------------------------------

    def prepare(self, trainer, masking=None) -> None:
        """Compute the base's references on the model as the Trainer placed it, before any step (and before a
        resumed run's checkpoint is loaded, so that full fine-tuning's base is the untouched weights). With ICA
        masking, signals are measured with the masks off: on the model that is saved."""
        from tunelab.evaluation import retention
        from tunelab.evaluation.divergence import BaseReference, base_view
        from tunelab.evaluation.probes import ProbeContext, drift_prompts, sample_examples

        self.trainer = trainer
        # the training's mixed precision, as the Trainer was given it (the run's decided precision)
        self.mixed_precision = "bf16" if trainer.args.bf16 else "fp16" if trainer.args.fp16 else None
        self.unmask = masking.remove if masking is not None else None
        self.lm.model = trainer.model
        started = time.perf_counter()
        side = self.lm.tokenizer.padding_side  # generation pads left; training pads right
        with self._evaluating(self.lm.model), base_view(self.lm) as base:
            own_text = "general_text" in self.signals and self.text_examples is not None
            if "drift" in self.signals or ("general_text" in self.signals and not own_text):
                # asked as the evaluation's drift probe asks, without the run's system prompt
                prompts = drift_prompts(ProbeContext(None, self.samples, self.seed))
                continuations = retention.drift_references(retention.general_view(base), prompts,
                                                           batch_size=self.batch_size)
                self.references["drift"] = BaseReference.of(base, continuations, batch_size=self.batch_size,
                                                            max_seq_length=self.max_seq_length,
                                                            asks=retention.general_view)
            if own_text:
                self.references["general_text"] = BaseReference.of(
                    base, sample_examples(self.text_examples, self.samples, self.seed), batch_size=self.batch_size,
                    max_seq_length=self.max_seq_length)
            if "task_kl" in self.signals:
                examples = sample_examples(self.task_examples, self.samples, self.seed)
                self.references["task_kl"] = BaseReference.of(base, examples, batch_size=self.batch_size,
                                                              max_seq_length=self.max_seq_length)
        self.lm.tokenizer.padding_side = side
        self.reference_seconds = time.perf_counter() - started
        for name, ref in self.references.items():
            if not ref.tokens:
                log.warning("retention tracking: the %s texts have no tokens to score (the base continues every "
                            "drift prompt with an empty answer, or --track_text is empty); its signals are None", name)
        log.info("retention tracking: base references for %s computed in %.1fs (%.0f MiB of base log-probs)",
                 ", ".join(self.signals), self.reference_seconds,
                 sum(r.nbytes for r in self.references.values()) / 2**20)

    @contextlib.contextmanager
    def _evaluating(self, model):
        """Eval mode (no dropout) and the training's autocast; the model's mode is restored afterwards."""
        import torch

        was_training = model.training
        model.eval()
        device = next(model.parameters()).device.type
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.mixed_precision or "")
        autocast = torch.autocast(device, dtype=dtype) if dtype is not None else contextlib.nullcontext()
        try:
            with autocast:
                yield
        finally:
            model.train(was_training)

    # --- at a tracked step ---------------------------------------------------------------------------------------

    def measure(self, model) -> dict[str, float | None]:
        """The signals of ``model`` against the base references."""
        if self.unmask is not None:
            self.unmask()  # (ICA masking installs its hooks again at the next step's start)
        self.lm.model = model
        values: dict[str, float | None] = {}
        with self._evaluating(model):
            compared = {name: ref.compare(self.lm, batch_size=self.batch_size, max_seq_length=self.max_seq_length)
                        for name, ref in self.references.items()}
        if "general_text" in self.signals:
            values["general_text"] = compared.get("general_text", compared.get("drift"))["delta_cross_entropy"]
        if "drift" in self.signals:
            values["drift"] = compared["drift"]["kl_divergence"]
        if "task_kl" in self.signals:
            values["task_kl"] = compared["task_kl"]["kl_divergence"]
        return values

    def record(self, model) -> dict[str, float | None]:
        """Measure, and log the values through the Trainer (its state, and the --report_to trackers)."""
        started = time.perf_counter()
        values = self.measure(model)
        spent = time.perf_counter() - started
        self.signal_seconds += spent
        elapsed = self._seconds_offset + time.perf_counter() - self._started
        logs = {f"{LOG_PREFIX}{k}": v for k, v in values.items() if v is not None}
        self.trainer.log({**logs, "retention_elapsed_seconds": elapsed, "retention_seconds": spent})
        return values

    def save_point(self, step: int) -> None:
        """The model (or adapter) as it is at ``step``, weights only, with the tokenizer and the run's options:
        a directory `tunelab eval` loads like the run's own output."""
        import shutil


        where = self.checkpoint_dir / f"step-{step}"
        self.trainer.save_model(str(where))
        config = Path(self.trainer.args.output_dir) / run_files.TRAIN_CONFIG
        if config.is_file() and self.trainer.is_world_process_zero():
            shutil.copy2(config, where / run_files.TRAIN_CONFIG)

    def within_budget(self, values: dict[str, float | None]) -> bool:
        return all(values.get(name) is not None and values[name] <= limit for name, limit in self.budgets.items())

    def callback(self):
        from transformers import TrainerCallback

        tracker = self

        class RetentionTracking(TrainerCallback):
            def on_train_begin(self, args, state, control, **kwargs):
                tracker._started = time.perf_counter()
                # a resumed run goes on from the seconds its restored log history reached
                tracker._seconds_offset = max((h.get("retention_elapsed_seconds", 0.0) for h in state.log_history),
                                              default=0.0)
                if state.global_step == 0:  # the curves start at the base (0, or an adapter's initial effect)
                    if tracker.measure_step_zero:
                        tracker.record(kwargs["model"])
                    else:
                        tracker.trainer.log({**{f"{LOG_PREFIX}{k}": 0.0 for k in tracker.signals},
                                             "retention_elapsed_seconds": tracker._seconds_offset,
                                             "retention_seconds": 0.0})
                return control

            def on_step_end(self, args, state, control, model=None, **kwargs):
                step = state.global_step
                if step % tracker.every and step < state.max_steps:
                    return control
                should_log = control.should_log
                values = tracker.record(model)
                # (Trainer.log() clears should_log: the step's own loss, logged after the callbacks, would be lost)
                control.should_log = should_log
                if tracker.checkpoint_dir is not None and step < state.max_steps:  # (the end is the run's output)
                    tracker.save_point(step)
                if tracker.budgets:
                    if tracker.within_budget(values):
                        # the Trainer records this checkpoint as the best one when it saves it just after
                        state.best_global_step = step
                        state.best_metric = values[next(iter(tracker.budgets))]
                        control.should_save = True
                    else:
                        tracker.stopped_at_step = step
                        control.should_training_stop = True
                        log.info("--max_forgetting: step %d is beyond the budget (%s); stopping", step,
                                 ", ".join(f"{k} {values.get(k)} > {v}" for k, v in tracker.budgets.items()
                                           if values.get(k) is None or values[k] > v))
                return control

            def on_train_end(self, args, state, control, **kwargs):
                tracker.history_end = len(state.log_history)
                if not tracker.budgets:
                    return control
                tracker.chosen_step = state.best_global_step or None
                if tracker.chosen_step is None:
                    log.warning("--max_forgetting: no tracked step was within the budget; the model kept is that of "
                                "step %d; track more often (--eval_steps) or raise the budget", state.global_step)
                elif tracker.chosen_step != state.global_step and state.best_model_checkpoint:
                    log.info("--max_forgetting: loading step %d, the last within the budget (%s)",
                             tracker.chosen_step, state.best_model_checkpoint)
                    tracker.trainer._load_best_model()  # the loader load_best_model_at_end uses (PEFT or full)
                return control

        return RetentionTracking()

    # --- the record ------------------------------------------------------------------------------------------

    def curves(self, log_history: list[dict]) -> list[dict[str, Any]]:
        """One point per tracked step: step, seconds since training began, each signal, and the validation loss
        where it was evaluated at that step."""
        log_history = log_history[:self.history_end]
        eval_loss = {h["step"]: h["eval_loss"] for h in log_history if "eval_loss" in h}
        points = []
        for h in log_history:
            if "retention_elapsed_seconds" not in h:
                continue
            point = {"step": h["step"], "seconds": h["retention_elapsed_seconds"]}
            point.update({name: h.get(f"{LOG_PREFIX}{name}") for name in self.signals})
            if h["step"] in eval_loss:
                point["eval_loss"] = eval_loss[h["step"]]
            points.append(point)
        return points

    def summary(self, log_history: list[dict], train_seconds: float) -> dict[str, Any]:
        """What was tracked and what it cost: the signals' forward passes, the validation evaluations at the
        tracked steps and the base references, against the training time without them."""
        log_history = log_history[:self.history_end]
        validation_seconds = sum(h.get("eval_runtime", 0.0) for h in log_history if "eval_loss" in h)
        in_training = self.signal_seconds + validation_seconds
        overhead = in_training + self.reference_seconds
        pure = train_seconds - in_training
        result: dict[str, Any] = {
            "signals": {name: SIGNALS[name] for name in self.signals},
            "every_steps": self.every,
            "step_0": "measured" if self.measure_step_zero else "the base: the method starts as the identity",
            "estimated_overhead_fraction": self.estimated_overhead_fraction,
            "task_kl_examples": self.task_examples_split if "task_kl" in self.signals else None,
            "general_text_source": ("--track_text" if "general_text" in self.references
                                    else "drift prompts' base continuations") if "general_text" in self.signals
            else None,
            "examples": {name: len(ref.examples) for name, ref in self.references.items()},
            "tokens": {name: ref.tokens for name, ref in self.references.items()},
            "reference_bytes": sum(r.nbytes for r in self.references.values()),
            "reference_seconds": self.reference_seconds,
            "signal_seconds": self.signal_seconds,
            "validation_seconds": validation_seconds,
            "overhead_seconds": overhead,
            "overhead_fraction": overhead / pure if pure > 0 else None,
        }
        if self.checkpoint_dir is not None:
            # (from the directory: a resumed run's earlier points are there too)
            result["curve_checkpoints"] = sorted(({"step": int(d.name.split("-")[1]), "path": str(d)}
                                                  for d in self.checkpoint_dir.glob("step-*") if d.is_dir()),
                                                 key=lambda c: c["step"])
        if self.budgets:
            result["max_forgetting"] = {"budgets": dict(self.budgets), "chosen_step": self.chosen_step,
                                        "stopped_at_step": self.stopped_at_step,
                                        "within_budget": self.chosen_step is not None}
        return result


def require_causal_lm(task_kind: str, model: str, flag: str) -> None:
    """Tracking compares next-token distributions: the one rule for a run (tracker) and for a comparison, which
    checks it before any run (comparison/runner.py)."""
    if task_kind != "causal_lm":
        raise TunelabError(f"{flag}: retention tracking compares next-token distributions and needs a causal "
                           f"language model; {model} is a {task_kind} model: drop {flag}")


def tracker(opts, *, data, tokenizer, model_path: str, task_kind: str, total_steps: int) -> RetentionTracker | None:
    """The run's tracker, or None when nothing is tracked. ``data`` is the PreparedData of the run."""
    from tunelab import inference
    from tunelab.methods import get_method

    signals = tracked_signals(opts)
    if not signals:
        return None
    require_causal_lm(task_kind, opts.model_name_or_path,
                      "--track_retention / --max_forgetting" if opts.track_retention or opts.max_forgetting
                      else f"--curve_points {opts.curve_points}")
    lm = inference.LoadedModel(model=None, tokenizer=tokenizer, task_kind=task_kind, template=data.template,
                               model_path=model_path)
    split = "validation" if data.eval_examples else "train"
    text = None
    if opts.track_text is not None:
        from tunelab.evaluation.probes import load_task_examples

        text = load_task_examples("language_modeling", opts.track_text, flag="--track_text")
    method = get_method(opts.method)
    # A method whose fresh adapter already changes the outputs has its step 0 measured; every other starts as the
    # identity, so at step 0 its signals are 0 and are written as such (Method.identity_at_start).
    step_zero = not method.identity_at_start
    per_eval, per_step = estimate_cost(opts, data, tokenizer, signals, text, peft=method.peft)
    every = opts.eval_steps or (math.ceil(total_steps / opts.curve_points) if opts.curve_points else
                                default_every(total_steps, per_eval, per_step, step_zero=step_zero))
    tracked_steps = total_steps // every + int(total_steps % every > 0)
    estimate = (tracked_steps + 1 + int(step_zero)) * per_eval / (total_steps * per_step) if per_step else None
    return RetentionTracker(
        signals=signals, budgets=parse_budgets(opts.max_forgetting), every=every, lm=lm,
        task_examples=data.eval_examples or data.train_examples, task_examples_split=split, text_examples=text,
        samples=opts.track_samples, seed=opts.seed, batch_size=opts.per_device_eval_batch_size,
        max_seq_length=opts.max_seq_length,
        measure_step_zero=step_zero, estimated_overhead_fraction=estimate,
        checkpoint_dir=Path(opts.output_dir) / CURVE_DIR if opts.curve_points and opts.curve_checkpoints else None)
