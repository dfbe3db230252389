"""A training run, top to bottom: options -> data -> model -> method -> Trainer -> saved output + train_results.json.

Everything that can be wrong with the user's input is checked before the output directory is touched.
"""

from __future__ import annotations

import dataclasses
import gc
import logging
import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tunelab import __version__
from tunelab.config import TrainOptions, identity, resolve
from tunelab.data.prepare import PreparedData, prepare
from tunelab.errors import TunelabError
from tunelab.fileio import atomic_write_json, atomic_write_text, make_shared
from tunelab import contention, distributed, lifecycle, precision
from tunelab.ica import training as ica_training
from tunelab.memory.tracker import (TENSOR_PEAK_STEPS, device_description, peak_memory, reset_peak,
                                    tensor_peak_callback)
from tunelab.methods import ApplyContext, get_method
from tunelab.model_setup import count_parameters, label_kwargs, prepare_model, weights_dtype
from tunelab.models import (detect_task_kind, load_config, load_model, load_tokenizer, quantization_config,
                            resolve_model)
from tunelab.options import to_dict
from tunelab import run_files
from tunelab.train_checks import check_options  # noqa: F401  (callers import it from here too)
from tunelab.records import TrainRecord

log = logging.getLogger(__name__)



@dataclass
class TrainResult:
    output_dir: Path
    record: TrainRecord     # what train_results.json holds
    skipped: bool = False   # True when the output dir already held this finished run
    model: Any = dataclasses.field(default=None, repr=False)      # the trained model, in memory (not when skipped)
    tokenizer: Any = dataclasses.field(default=None, repr=False)

    @property
    def results(self) -> dict[str, Any]:
        """train_results.json's contents, as a dict (the API's long-standing view of ``record``)."""
        return self.record.to_json()

    @property
    def results_path(self) -> Path:
        return self.output_dir / run_files.TRAIN_RESULTS


def _output_state(out: Path, opts: TrainOptions) -> str:
    """'empty', 'same-finished', 'same-unfinished' or 'different' (a run with other options, or unknown files)."""
    if not out.exists() or not any(out.iterdir()):
        return "empty"
    if not out.is_dir():
        raise TunelabError(f"--output_dir {out}: exists and is a file; pass a directory path")
    saved = out / run_files.TRAIN_CONFIG
    if saved.is_file():
        try:
            previous = yaml.safe_load(saved.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError:
            return "different"
        if {k: previous.get(k) for k in identity(opts)} == _plain(identity(opts)):
            return "same-finished" if (out / run_files.TRAIN_RESULTS).is_file() else "same-unfinished"
    return "different"


def _plain(d: dict) -> dict:
    return yaml.safe_load(yaml.safe_dump(d))


def total_training_steps(opts: TrainOptions, n_rows: int, world_size: int = 1) -> int:
    if opts.max_steps > 0:
        return opts.max_steps
    per_epoch = math.ceil(n_rows / (opts.per_device_train_batch_size * world_size))
    return max(1, math.ceil(per_epoch / opts.gradient_accumulation_steps * opts.num_train_epochs))


def checkpoint_bytes(directory: Path) -> int:
    """Bytes of the saved weights (model or adapter), not of tokenizer or training-argument files."""
    return sum(f.stat().st_size for f in Path(directory).iterdir()
               if f.is_file() and (f.suffix == ".safetensors" or f.name.startswith(("pytorch_model", "adapter_model"))
                                   and f.suffix == ".bin"))


def build_model(opts: TrainOptions, model_path: str, task_kind: str, tokenizer, label_names, total_steps: int):
    """Load the base model (quantized if asked) and wrap it with the method. Returns (model, method)."""
    from transformers import set_seed

    method = get_method(opts.method)
    quant = quantization_config(use_4bit=opts.use_4bit, use_8bit=opts.use_8bit,
                                quant_type=opts.bnb_4bit_quant_type,
                                compute_dtype=precision.four_bit_compute_dtype(
                                    opts.bnb_4bit_compute_dtype, bf16=opts.bf16, on_gpu=_on_gpu(opts)),
                                double_quant=opts.bnb_4bit_use_double_quant,
                                # [distributed] QLoRA under FSDP / ZeRO-3: 4-bit weights stored as the others are
                                quant_storage=weights_dtype(opts) if distributed.shards_weights(opts) else None)
    extra = label_kwargs(label_names) if task_kind == "seq_cls" else {}
    set_seed(opts.seed)
    model = load_model(model_path, task_kind, quantization=quant, trust_remote_code=opts.trust_remote_code,
                       device_map="cpu" if (quant is not None and opts.use_cpu) else distributed.device_map(quant, opts),
                       dtype=weights_dtype(opts),
                       **extra)
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    set_seed(opts.seed)  # the adapter's initialisation depends on the seed, not on how loading used the RNG
    model = prepare_model(model, opts, method, ApplyContext(task_kind=task_kind, model_path=model_path,
                                                            total_steps=total_steps))
    return model, method


def training_arguments(opts: TrainOptions, has_eval: bool, task_kind: str, tracking_every: int | None = None):
    from transformers import Seq2SeqTrainingArguments, TrainingArguments

    args_cls = Seq2SeqTrainingArguments if task_kind == "seq2seq_lm" else TrainingArguments
    # (retention tracking's steps, when --eval_steps is not given, are validation steps too)
    eval_every = (opts.eval_steps or tracking_every) if has_eval else None
    early = opts.early_stopping_patience is not None
    kwargs = dict(
        output_dir=opts.output_dir, num_train_epochs=opts.num_train_epochs, max_steps=opts.max_steps,
        per_device_train_batch_size=opts.per_device_train_batch_size,
        per_device_eval_batch_size=opts.per_device_eval_batch_size,
        gradient_accumulation_steps=opts.gradient_accumulation_steps, learning_rate=opts.learning_rate,
        lr_scheduler_type=opts.lr_scheduler_type, warmup_steps=float(opts.warmup_ratio),
        weight_decay=opts.weight_decay, max_grad_norm=opts.max_grad_norm, optim=opts.optim,
        # (k-bit models got checkpointing from prepare_model_for_kbit_training already)
        activation_checkpointing=opts.gradient_checkpointing and not (opts.use_4bit or opts.use_8bit),
        activation_checkpointing_kwargs={"use_reentrant": False} if opts.gradient_checkpointing else None,
        bf16=opts.bf16, fp16=opts.fp16, seed=opts.seed, data_seed=opts.seed,
        logging_steps=opts.logging_steps, logging_first_step=True,
        eval_strategy="steps" if eval_every else "no", eval_steps=eval_every,
        save_strategy="steps", save_steps=eval_every if early else opts.save_steps,
        save_total_limit=opts.save_total_limit, report_to=opts.report_to,
        # without an accelerator the run is on the CPU anyway, and transformers refuses --bf16 there unless told so
        use_cpu=opts.use_cpu or not _accelerator_present(),
        include_num_input_tokens_seen="non_padding", disable_tqdm=False,
        load_best_model_at_end=early, metric_for_best_model="eval_loss" if early else None,
        greater_is_better=False if early else None, remove_unused_columns=True, label_names=["labels"],
        train_sampling_strategy="group_by_length" if opts.group_by_length else "random",
        dataloader_num_workers=0, dataloader_pin_memory=_on_gpu(opts),
    )
    kwargs.update(distributed.training_arguments(opts))  # [distributed] fsdp, deepspeed; gloo for CPU processes
    if eval_every is None and early:
        raise TunelabError("--early_stopping_patience needs a validation set: the dataset has none; pass "
                           "--validation_split 0.1")
    try:
        return args_cls(**kwargs)
    except ValueError as e:  # [distributed] what transformers/accelerate refuse in --fsdp / --fsdp_config / --deepspeed
        if not (opts.fsdp or opts.deepspeed):
            raise
        flag = f"--fsdp {opts.fsdp!r}" + (f" --fsdp_config {opts.fsdp_config}" if opts.fsdp_config else "") \
            if opts.fsdp else f"--deepspeed {opts.deepspeed}"
        raise TunelabError(f"{flag}: {e}; see examples/distributed/README.md") from None


def _accelerator_present() -> bool:
    import torch

    return torch.accelerator.is_available()


def _on_gpu(opts: TrainOptions) -> bool:
    import torch

    return torch.cuda.is_available() and not opts.use_cpu


class PaddingCounter:
    """Wraps a collator and counts the token positions it produces against the real (non-padding) tokens, so a run
    reports how much of its training compute went to padding (validation batches: :func:`trainer_class`)."""

    def __init__(self, collator):
        self.collator = collator
        self.positions = 0
        self.real_tokens = 0

    def __call__(self, features):
        batch = self.collator(features)
        self.positions += int(batch["input_ids"].numel())
        self.real_tokens += sum(len(f["input_ids"]) for f in features)
        return batch


def trainer_class(task_kind: str):
    """The Trainer for the task, with two changes to validation:

    - its loss is the mean loss per predicted token over the whole validation set. The Trainer's own figure is a
      mean of per-batch means, each repeated by the first batch's size, so it depends on how the rows are batched
      and ordered (a short last batch counts as a full one); the search, early stopping and the loss curves compare
      runs by this figure, which should not move with --per_device_eval_batch_size. A batch's share is its loss (a
      mean over its predicted tokens: labels not -100, shifted for a causal LM as the loss shifts them) times their
      number (its own: under several processes the Trainer would divide every process's loss by all processes'
      tokens). Across processes the rows accelerate repeats to give every process an equal last batch are left out
      (as the Trainer leaves them out of its own figure): exactly where such a batch is all repeats, and a last batch
      that mixes repeated and real rows counts its real rows at that batch's mean. A packed batch (--packing) is one
      row of several examples, so there the repeats count.
    - its batches bypass the :class:`PaddingCounter`: the Trainer collates them with the training collator, and a
      run's padding fraction is its training batches' (the model's train/eval mode cannot tell them apart: the
      Trainer collates a step's batches before it switches the model back to training)."""
    import torch
    from transformers import DataCollatorWithFlattening, Seq2SeqTrainer, Trainer

    base = Seq2SeqTrainer if task_kind == "seq2seq_lm" else Trainer

    class TunelabTrainer(base):
        _token_loss = None  # during an evaluation: [loss summed over predicted tokens, their number], all processes

        def get_eval_dataloader(self, eval_dataset=None):
            counted = self.data_collator
            self.data_collator = getattr(counted, "collator", counted)
            try:
                return super().get_eval_dataloader(eval_dataset)
            finally:
                self.data_collator = counted

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            if self._token_loss is not None:
                # evaluating: the batch's mean over its own tokens, which prediction_step weighs by their number
                # (across processes the Trainer passes all processes' count, and scales the loss to match)
                num_items_in_batch = None
            return super().compute_loss(model, inputs, return_outputs=return_outputs,
                                        num_items_in_batch=num_items_in_batch)

        def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
            loss, logits, labels = super().prediction_step(model, inputs, prediction_loss_only, ignore_keys=ignore_keys)
            targets = inputs.get("labels")
            if loss is not None and self._token_loss is not None and torch.is_tensor(targets):
                targets = targets[..., 1:] if self._loss_shifts_labels else targets
                counts = targets.ne(-100).reshape(len(targets), -1).sum(-1).to(loss.device, torch.float32)
                # the batch's loss shared out by each row's predicted tokens: the rows sum to the batch's share
                rows = torch.stack([loss.detach().float() * counts, counts], dim=1)
                if self.args.world_size > 1:
                    # gather_for_metrics drops the rows accelerate repeated to even out the processes' last
                    # batches, as the Trainer drops them from its own losses; a packed row cannot be split
                    packed = isinstance(getattr(self.data_collator, "collator", self.data_collator),
                                        DataCollatorWithFlattening)
                    rows = self.accelerator.gather(rows) if packed else self.accelerator.gather_for_metrics(rows)
                self._token_loss += rows.sum(0).to(self._token_loss.device)
            return loss, logits, labels

        def evaluation_loop(self, dataloader, description, prediction_loss_only=None, ignore_keys=None,
                            metric_key_prefix="eval"):
            self._token_loss = torch.zeros(2, device=self.args.device)
            try:
                output = super().evaluation_loop(dataloader, description, prediction_loss_only, ignore_keys,
                                                 metric_key_prefix)
                total, count = self._token_loss
            finally:
                self._token_loss = None
            key = f"{metric_key_prefix}_loss"
            # a non-finite batch leaves the Trainer's figure, which drops such batches (--logging_nan_inf_filter)
            if key in output.metrics and count > 0 and torch.isfinite(total):
                output.metrics[key] = (total / count).item()
            return output

    return TunelabTrainer


def validation_dataset(rows: list[dict]):
    """The validation rows as the Trainer evaluates them: in this order, in batches padded to their longest row.
    Longest first, so that each batch holds rows of about one length (a random order pads most batches to their
    longest outlier; bench/validation_order.py measures what it costs) and a batch too large to fit fails at the
    first evaluation, as --group_by_length orders training batches. The validation loss does not depend on the order
    (:func:`trainer_class`)."""
    from datasets import Dataset

    return Dataset.from_list(sorted(rows, key=lambda row: len(row["input_ids"]), reverse=True))


def _collator(tokenizer, task_kind: str, model, packing: bool = False):
    from transformers import DataCollatorForSeq2Seq, DataCollatorWithFlattening, DataCollatorWithPadding

    if packing:
        if task_kind != "causal_lm":
            raise TunelabError(f"--packing is for causal language models; this is a {task_kind} model")
        return PaddingCounter(DataCollatorWithFlattening(return_position_ids=True, separator_id=-100))
    if task_kind == "seq_cls":
        return PaddingCounter(DataCollatorWithPadding(tokenizer))
    return PaddingCounter(DataCollatorForSeq2Seq(tokenizer, model=model if task_kind == "seq2seq_lm" else None,
                                                 label_pad_token_id=-100, padding=True))


def _final_step_logger():
    from transformers import TrainerCallback

    class LogFinalStep(TrainerCallback):
        """Make sure the last step's loss reaches the loss curve whatever --logging_steps is; skip the Trainer's
        extra checkpoint of the last step.

        The Trainer checkpoints the last step (weights, optimizer and scheduler state) even when --save_steps does
        not fall on it; train() saves the finished model into the output directory right after, and a finished run
        is never resumed, so that copy only costs time and disk (full fine-tuning of smollm2-135m: 1.6 GB written,
        about 3 s of CPU, 5% of a 20-step run; bench/overhead.py). Checkpoints --save_steps asks for are kept, and a
        callback after this one may still ask for the save (--max_forgetting does, within its budget)."""

        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step >= state.max_steps:
                control.should_log = True
                if args.save_strategy == "steps" and state.save_steps and state.global_step % state.save_steps:
                    control.should_save = False
            return control

    return LogFinalStep()


def drop_fp32_output_cast(model) -> bool:
    """Keep mixed precision's autocast on ``model``'s forward, drop accelerate's cast of its outputs to float32.

    Under --bf16 accelerate wraps the forward twice: autocast, then ``convert_outputs_to_fp32``, which copies every
    half-precision output to float32. For a language model that is the whole logits tensor, batch x length x vocab
    (100 MB a step for smollm2-135m at batch 4 x 128, 8 GB for a 128k vocabulary at 8 x 2048), copied after the
    model has computed its loss in float32 and thrown away by the Trainer, which reads only the loss. Full
    fine-tuning in bf16 spent about 2% of each step on it (issue 22). Readers of logits that need float32 cast them
    where they read them (inference.response_losses does). Returns whether there was such a cast to drop."""
    from types import MethodType

    from accelerate.utils.operations import ConvertOutputsToFp32

    forward = model.__dict__.get("forward")  # (set on the instance by accelerate's prepare_model)
    convert = getattr(getattr(forward, "__func__", forward), "__wrapped__", None)
    if not isinstance(convert, ConvertOutputsToFp32):
        return False
    # accelerate's extract_model_from_parallel(keep_fp32_wrapper=False) still unwraps what is left, through __wrapped__
    model.forward = MethodType(convert.model_forward, model) if hasattr(forward, "__func__") else convert.model_forward
    return True


def _outputs_in_compute_dtype():
    from transformers import TrainerCallback

    class OutputsInComputeDtype(TrainerCallback):
        """accelerate prepares the model inside Trainer.train(), before on_train_begin."""

        def on_train_begin(self, args, state, control, model=None, **kwargs):
            if model is not None:
                drop_fp32_output_cast(model)

    return OutputsInComputeDtype()


def _count_flops_once(trainer) -> None:
    """The Trainer adds each batch's FLOPs to total_flos (trainer_state.json) as 6 x tokens x the model's
    non-embedding parameters, counting those by walking every module and parameter again at each step (10 ms a step
    for smollm2-135m with LoRA, 1% of a bf16 step on 2 cores); they do not change during training, so count once."""
    model = trainer.model
    if not hasattr(model, "num_parameters"):
        return
    params = model.num_parameters(exclude_embeddings=True)
    name = getattr(model, "main_input_name", "input_ids")
    trainer.floating_point_ops = lambda inputs: 6 * inputs[name].numel() * params if name in inputs else 0


def train(opts: TrainOptions, explicit: set[str] | frozenset[str] = frozenset(), *,
          extra_callbacks: tuple = (), save_weights: bool = True) -> TrainResult:
    """Run one training job and return where its outputs are. Raises TunelabError for user errors.
    ``extra_callbacks``: Trainer callbacks of the caller's (a comparison's learning-rate search reports each
    evaluation step's validation loss to Optuna from one, and stops a pruned trial). ``save_weights=False``: the
    caller uses the returned model and record only (a search trial): neither the weights (a full model is hundreds
    of MB) nor train_results.json are written, so the folder does not pass for a finished run."""
    from transformers import EarlyStoppingCallback
    from transformers.trainer_utils import get_last_checkpoint

    prec = precision.for_options(opts)  # bf16 unless asked otherwise where the hardware runs it fast; and why
    opts, chosen = resolve(opts, set(explicit))
    opts = distributed.settle_options(opts, explicit)  # [distributed] num_processes = the launch's world size
    check_options(opts)
    out = Path(opts.output_dir)
    state = _output_state(out, opts)
    if state == "same-finished" and not opts.overwrite_output_dir:
        log.info("%s already holds this finished run; nothing to do (pass --overwrite_output_dir to retrain)", out)
        finished = TrainRecord.read(out / run_files.TRAIN_RESULTS)
        if distributed.is_main_process():  # [distributed]
            # exports asked for now that the finished run lacks
            lifecycle.run(opts, out, finished, out / run_files.TRAIN_RESULTS)
        return TrainResult(out, finished, skipped=True)
    if state == "different" and not opts.overwrite_output_dir:
        raise TunelabError(f"--output_dir {out}: holds a different run (or other files); choose a new directory or "
                           "pass --overwrite_output_dir to replace it")
    if state == "different" and not (out / run_files.TRAIN_CONFIG).is_file():
        raise TunelabError(f"--output_dir {out}: holds files that are not a tunelab run, which "
                           "--overwrite_output_dir will not delete; choose an empty or new directory")

    model_path = resolve_model(opts.model_name_or_path)
    model_config = load_config(model_path, trust_remote_code=opts.trust_remote_code)
    task_kind = detect_task_kind(model_config) if opts.task_type == "auto" else opts.task_type
    method = get_method(opts.method)
    method.check(opts, model_config, ApplyContext(task_kind=task_kind, model_path=model_path))
    tokenizer = load_tokenizer(model_path, task_kind=task_kind, trust_remote_code=opts.trust_remote_code)
    tokenizer.padding_side = "right"
    data = prepare(opts, tokenizer, task_kind)
    # The configuration is printed once the inputs are checked (flags, output directory, model, data): an error in
    # them is then the last line the user sees, not one below some 80 lines of configuration.
    log.info("effective configuration (defaults chosen for --method %s: %s):\n%s", opts.method,
             ", ".join(f"{k}={v}" for k, v in chosen.items()) or "none",
             yaml.safe_dump(_plain(to_dict(opts)), sort_keys=False).rstrip())
    log.info("precision: %s (%s)", prec.name, prec.reason)
    log.info("data: %s", data.summary(opts.dataset_name_or_path))
    total_steps = total_training_steps(opts, len(data.train), opts.num_processes)
    from tunelab import tracking

    tracker = tracking.tracker(opts, data=data, tokenizer=tokenizer, model_path=model_path, task_kind=task_kind,
                               total_steps=total_steps)  # --track_retention / --max_forgetting, or None
    # [distributed] the TrainingArguments set the processes up (each its own GPU; DeepSpeed ZeRO-3's partitioned
    # loading) before the model is loaded
    args = training_arguments(opts, bool(data.eval), task_kind, tracker.every if tracker else None)
    main = distributed.is_world_main(args)
    model, method = build_model(opts, model_path, task_kind, tokenizer, data.label_names, total_steps)
    # ICA masking (--mask_mode): templates loaded or built from the training rows; hooks go on in the Trainer.
    masking = ica_training.setup(model, opts, task_kind=task_kind, sequences=[r["input_ids"] for r in data.train],
                                 pad_token_id=tokenizer.pad_token_id, out=out, reuse=state == "same-unfinished")
    trainable, total = count_parameters(model)

    # From here on the output directory is written to, by the main process only; the others wait for it.
    resume = opts.resume_from_checkpoint
    distributed.wait_for_everyone(args)  # [distributed] every process has read the directory's state
    if state in ("same-finished", "different") and opts.overwrite_output_dir:
        if main:  # [distributed]
            shutil.rmtree(out)
        distributed.wait_for_everyone(args)  # [distributed]
    elif state == "same-unfinished" and resume is None and get_last_checkpoint(str(out)):
        resume = "latest"
        log.info("resuming the unfinished run in %s from its last checkpoint", out)
    if resume == "latest":
        resume = get_last_checkpoint(str(out)) if out.is_dir() else None
        if resume is None:
            raise TunelabError(f"--resume_from_checkpoint latest: {out} holds no checkpoint-N folder to resume from")
    if main:  # [distributed]
        out.mkdir(parents=True, exist_ok=True)
        effective = {**to_dict(opts), **prec.record()}  # (the record keys: --config takes the file back)
        atomic_write_text(out / run_files.TRAIN_CONFIG, yaml.safe_dump(_plain(effective), sort_keys=False))
        if masking is not None:
            masking.save_templates(out)
    distributed.wait_for_everyone(args)  # [distributed]

    from datasets import Dataset

    train_ds = Dataset.from_list(data.train)
    eval_ds = validation_dataset(data.eval) if data.eval else None
    callbacks = [_final_step_logger(), _outputs_in_compute_dtype(), *method.callbacks(model),
                 *([masking.callback()] if masking else []),
                 *extra_callbacks]
    if opts.early_stopping_patience is not None:
        callbacks.append(EarlyStoppingCallback(early_stopping_patience=opts.early_stopping_patience))
    if tracker is not None:
        callbacks.append(tracker.callback())
    # --tensor_peak: on the CPU, the live tensor bytes of the first steps beside the resident set size
    # (memory.tracker); asked for, since counting slows those steps (issue 22)
    tensor_peak = tensor_peak_callback(model) if opts.tensor_peak and not _on_gpu(opts) else None
    callbacks += [tensor_peak] if tensor_peak is not None else []
    collator = _collator(tokenizer, task_kind, model, opts.packing)
    trainer = trainer_class(task_kind)(model=model, args=args, train_dataset=train_ds, eval_dataset=eval_ds,
                                       data_collator=collator, processing_class=tokenizer, callbacks=callbacks)
    _count_flops_once(trainer)
    if tracker is not None:
        tracker.prepare(trainer, masking)  # the base's side of the retention signals, before any step
    reset_peak()
    # The objects alive now (model modules, tokenizer, data) live through training: frozen, the garbage collector
    # skips them. accelerate's free_memory() at the start of Trainer.train() runs a full gc.collect(), and Python
    # may run more as steps allocate; over ~570k objects (smollm2-135m LoRA) each costs ~0.3 s of CPU (issue 22).
    gc.freeze()
    threads_before = contention.snapshot()
    started = time.perf_counter()
    try:
        output = trainer.train(resume_from_checkpoint=resume)
    finally:
        gc.unfreeze()
        if tensor_peak is not None:
            tensor_peak.stop()
    train_seconds = time.perf_counter() - started
    # on the CPU, whether other work slowed the loop (on a GPU the threads wait on the device, not on each other)
    wait_share = None if _on_gpu(opts) else contention.wait_share(threads_before, contention.snapshot())
    if contention.busy(wait_share):
        log.warning("training took %.0f s, but %s: %s; its time measures that as well as the method", train_seconds,
                    contention.describe(wait_share), contention.cause())
    peak_bytes, peak_kind = peak_memory()
    peak_tensor_bytes = None if tensor_peak is None or tensor_peak.peak_bytes is None else \
        distributed.max_over_processes(tensor_peak.peak_bytes, trainer)  # [distributed] the busiest process's
    # [distributed] per process; the busiest process's peak is the figure (what each device must hold)
    peak_bytes = distributed.max_over_processes(peak_bytes, trainer)
    # (training batches only: trainer_class hands validation batches the unwrapped collator) [distributed] summed
    # over processes
    positions, real_tokens = distributed.sum_over_processes([collator.positions, collator.real_tokens], trainer)
    padding_fraction = 1.0 - real_tokens / positions if positions else None
    eval_loss = None
    if eval_ds is not None:
        # The validation loss where training stopped: when the loop evaluated at that step and kept that model
        # (no best or in-budget checkpoint restored), it is not evaluated again.
        kept_last = not args.load_best_model_at_end and not getattr(opts, "max_forgetting", None)
        eval_loss = next((h["eval_loss"] for h in reversed(trainer.state.log_history)
                          if "eval_loss" in h and h.get("step") == trainer.state.global_step), None) \
            if kept_last else None
        if eval_loss is None:
            eval_loss = trainer.evaluate()["eval_loss"]

    if masking is not None:
        masking.remove()  # (the callback did so at train end already): no hook or parametrization is saved
    if save_weights:
        trainer.save_model(str(out))  # (every process: FSDP and ZeRO-3 gather the weights; the main one writes)
    results = None
    if main:  # [distributed]
        if save_weights:
            tokenizer.save_pretrained(str(out))
            make_shared(out)  # the weights, kept checkpoints and trajectory points readable as the results are
        results = _results(opts, chosen, data, trainer, output, model_path, task_kind, method, trainable, total,
                           train_seconds, peak_bytes, peak_kind, eval_loss,
                           checkpoint_bytes=checkpoint_bytes(out) if save_weights else None,
                           padding_fraction=padding_fraction, processed_token_positions=positions,
                           # the precision and why; the tensor-level peak of the first optimizer steps (CPU runs)
                           **prec.record(), peak_tensor_bytes=peak_tensor_bytes, train_cpu_wait_share=wait_share,
                           peak_tensor_steps=TENSOR_PEAK_STEPS if peak_tensor_bytes is not None else None,
                           ica_masking=masking.summary() if masking is not None else None,
                           curves=tracker.curves(trainer.state.log_history) if tracker is not None else None,
                           tracking=tracker.summary(trainer.state.log_history, train_seconds)
                           if tracker is not None else None)
        if save_weights:
            # written last: its presence marks a finished run
            atomic_write_json(out / run_files.TRAIN_RESULTS, results.to_json())
            # --merge_adapter_with_base, --convert_to_gguf (recorded under "exports")
            lifecycle.run(opts, out, results, out / run_files.TRAIN_RESULTS)
    results = distributed.broadcast(results, args)  # [distributed] every process returns the main one's results
    model = trainer.model
    if not (opts.fsdp or opts.deepspeed):
        # the plain model: accelerate wrapped its forward in the mixed-precision autocast for training
        from accelerate.utils import extract_model_from_parallel

        model = extract_model_from_parallel(model, keep_fp32_wrapper=False)
    return TrainResult(out, results, model=model, tokenizer=tokenizer)


def _results(opts, chosen, data: PreparedData, trainer, output, model_path, task_kind, method, trainable, total,
             train_seconds, peak_bytes, peak_kind, eval_loss, **measured) -> TrainRecord:
    """The run's train_results.json; ``measured``: the record's fields measured around the loop (padding, precision,
    tensor peak, ICA masking, retention tracking, the saved weights' size)."""
    history = trainer.state.log_history
    curve = [{"step": h["step"], "loss": h["loss"]} for h in history if "loss" in h]
    eval_curve = [{"step": h["step"], "eval_loss": h["eval_loss"]} for h in history if "eval_loss" in h]
    tokens = int(trainer.state.num_input_tokens_seen or 0)
    world = trainer.args.world_size
    return TrainRecord(
        tunelab_version=__version__,
        method=opts.method,
        peft=method.peft,
        model_name_or_path=opts.model_name_or_path,
        base_model_path=model_path,
        task_kind=task_kind,
        dataset_name_or_path=opts.dataset_name_or_path,
        trainable_params=trainable,
        total_params=total,
        trainable_percent=100.0 * trainable / total if total else 0.0,
        train_seconds=train_seconds,
        train_tokens=tokens,
        train_tokens_per_second=tokens / train_seconds if train_seconds > 0 else None,
        train_samples=len(data.train),
        global_step=trainer.state.global_step,
        epochs=trainer.state.epoch,
        effective_batch_size=opts.per_device_train_batch_size * opts.gradient_accumulation_steps * world,
        world_size=world,
        peak_memory_bytes=peak_bytes,
        peak_memory_kind=peak_kind,
        **device_description(),
        final_train_loss=curve[-1]["loss"] if curve else None,
        mean_train_loss=output.training_loss,
        final_eval_loss=eval_loss,
        loss_curve=curve,
        eval_curve=eval_curve,
        data=data.report(),
        defaults_chosen=chosen,
        **measured,
    )

