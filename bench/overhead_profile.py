"""Where a training step's time goes: `tunelab train` against bench/overhead.py's plain loop, per component.

Wraps (for measurement only, in this process) the Trainer's per-step pieces (the batch fetch, forward + backward,
FLOP counting, token counting, gradient clipping, the optimizer and scheduler steps, zero_grad, callbacks, logging and
checkpointing) and times the same pieces of the plain loop, in wall and in this thread's CPU seconds. Set-up (train()
to the first step) and end (the last step to train()'s return) are reported apart. One torch thread by default, so
that the CPU time of each piece is the work it does (on a busy machine wall time is mostly waiting).

    .venv/bin/python bench/overhead_profile.py [--method full] [--steps 6] [--bf16] [--threads 1]

With --bf16 it also times forward + backward with and without accelerate's cast of the outputs to float32 (the
whole logits tensor every step, which tunelab drops), alternating step by step on one model.

Writes bench/results/overhead-profile-<method>-<precision>.json.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import random
import tempfile
import time
from pathlib import Path

from common import write_result
from overhead import LEARNING_RATE, fixed_length_data, plain_model, token_rows, tunelab_run

TIMES: dict[str, list[tuple[float, float]]] = collections.defaultdict(list)
MARKS: dict[str, tuple[float, float]] = {}


def _clock() -> tuple[float, float]:
    return time.perf_counter(), time.thread_time()


@contextlib.contextmanager
def timing(key: str):
    start = _clock()
    try:
        yield
    finally:
        end = _clock()
        TIMES[key].append((end[0] - start[0], end[1] - start[1]))


def _wrap(owner, name: str, key: str) -> None:
    inner = getattr(owner, name)

    def timed(*a, **k):
        with timing(key):
            return inner(*a, **k)

    setattr(owner, name, timed)


def instrument_trainer() -> None:
    import torch
    from transformers import Trainer, TrainerCallback
    from transformers.trainer_callback import CallbackHandler

    for name, key in [("get_batch_samples", "batch fetch + collate"), ("training_step", "forward + backward"),
                      ("floating_point_ops", "FLOP counting (floating_point_ops)"),
                      ("_track_num_input_tokens", "token counting (include_num_input_tokens_seen)"),
                      ("_clip_grad_norm", "gradient clipping"), ("_maybe_log_save_evaluate", "log / save / evaluate"),
                      ("_save_checkpoint", "  of which checkpoint saving")]:
        _wrap(Trainer, name, key)
    for name in ("on_step_begin", "on_pre_optimizer_step", "on_optimizer_step", "on_step_end"):
        _wrap(CallbackHandler, name, "callbacks (step events)")
    _wrap(torch.nn.Module, "zero_grad", "zero_grad")
    create_optimizer, create_scheduler = Trainer.create_optimizer, Trainer.create_scheduler

    def optimizer_wrapped(self, *a, **k):
        optimizer = create_optimizer(self, *a, **k)
        if not getattr(optimizer.step, "_timed", False):
            _wrap(optimizer, "step", "optimizer step")
            optimizer.step._timed = True
        return optimizer

    def scheduler_wrapped(self, *a, **k):
        scheduler = create_scheduler(self, *a, **k)
        if not getattr(scheduler.step, "_timed", False):
            _wrap(scheduler, "step", "scheduler step")
            scheduler.step._timed = True
        return scheduler

    Trainer.create_optimizer, Trainer.create_scheduler = optimizer_wrapped, scheduler_wrapped

    class Marks(TrainerCallback):
        def on_train_begin(self, *a, **k):
            MARKS["train_begin"] = _clock()

        def on_step_begin(self, *a, **k):
            MARKS.setdefault("first_step", _clock())

        def on_step_end(self, *a, **k):
            MARKS["last_step_end"] = _clock()

    init, train = Trainer.__init__, Trainer.train

    def init_with_marks(self, *a, **k):
        init(self, *a, **k)
        self.add_callback(Marks())

    def train_with_marks(self, *a, **k):
        MARKS["train_call"] = _clock()
        try:
            return train(self, *a, **k)
        finally:
            MARKS["train_return"] = _clock()

    Trainer.__init__, Trainer.train = init_with_marks, train_with_marks


def plain_loop_profile(model_path: str, method: str, bf16: bool, data: Path, steps: int, batch: int,
                       seq: int) -> dict:
    """bench/overhead.py's plain loop, each piece timed."""
    import torch
    from transformers import get_linear_schedule_with_warmup

    ids = token_rows(model_path, data, seq)
    model = plain_model(model_path, method, bf16)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=LEARNING_RATE[method], weight_decay=0.0, fused=True)
    sched = get_linear_schedule_with_warmup(opt, 0, steps)
    autocast = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if bf16 else contextlib.nullcontext
    order = list(range(len(ids)))
    random.Random(0).shuffle(order)
    start = _clock()
    for step in range(steps):
        with timing("batch fetch + collate"):
            x = torch.tensor([ids[order[(step * batch + i) % len(order)]] for i in range(batch)])
        with timing("forward + backward"):
            with autocast():
                loss = model(input_ids=x, attention_mask=torch.ones_like(x), labels=x).loss
            loss.backward()
        with timing("gradient clipping"):
            torch.nn.utils.clip_grad_norm_(params, 1.0)
        with timing("optimizer step"):
            opt.step()
        with timing("scheduler step"):
            sched.step()
        with timing("zero_grad"):
            opt.zero_grad(set_to_none=True)
    end = _clock()
    return {"total": (end[0] - start[0], end[1] - start[1])}


def output_cast_cost(model_path: str, method: str, data: Path, batch: int, seq: int, rounds: int) -> dict:
    """Forward + backward under bf16 autocast with and without accelerate's cast of the outputs to float32 (the
    whole logits tensor; what tunelab drops since issue 22), alternating step by step on one model, in CPU ms."""
    import statistics
    import types

    import torch
    from accelerate.utils.operations import convert_outputs_to_fp32

    x = torch.tensor(token_rows(model_path, data, seq)[:batch])
    model = plain_model(model_path, method, bf16=True)
    casting = types.MethodType(convert_outputs_to_fp32(type(model).forward), model)
    forwards = {"outputs as computed (tunelab)": model.forward, "outputs cast to float32 (accelerate)": casting}
    cpu_ms: dict[str, list[float]] = {name: [] for name in forwards}
    for round_ in range(rounds + 1):  # round 0 warms up
        for name in (list(forwards) if round_ % 2 == 0 else list(forwards)[::-1]):
            model.zero_grad(set_to_none=True)
            start = time.process_time()
            with torch.autocast("cpu", dtype=torch.bfloat16):
                loss = forwards[name](input_ids=x, attention_mask=torch.ones_like(x), labels=x)["loss"]
            loss.backward()
            if round_:
                cpu_ms[name].append(1000 * (time.process_time() - start))
    return {name: {"median_cpu_ms": statistics.median(v), "cpu_ms": [round(t, 1) for t in v]}
            for name, v in cpu_ms.items()}


def _table(times: dict, steps: int) -> dict:
    return {k: {"calls": len(v), "wall_ms_per_step": 1000 * sum(w for w, _ in v) / steps,
                "cpu_ms_per_step": 1000 * sum(c for _, c in v) / steps,
                "cpu_ms_per_call": [round(1000 * c, 1) for _, c in v]} for k, v in times.items()}


def _span(a: str, b: str) -> dict:
    return {"wall_ms": 1000 * (MARKS[b][0] - MARKS[a][0]), "cpu_ms": 1000 * (MARKS[b][1] - MARKS[a][1])}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--method", default="full", choices=["full", "lora"])
    ap.add_argument("--bf16", action="store_true")
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--cast_rounds", type=int, default=6,
                    help="with --bf16: steps of each side of the output-cast comparison (0: skip it)")
    args = ap.parse_args()
    import torch

    from tunelab.models import resolve_model

    torch.set_num_threads(args.threads)
    model_path = resolve_model(args.model)
    with tempfile.TemporaryDirectory() as tmp:
        data = fixed_length_data(Path(tmp) / "fixed.jsonl", args.steps * args.batch, args.seq)
        total = plain_loop_profile(model_path, args.method, args.bf16, data, args.steps, args.batch, args.seq)
        plain = {**_table(TIMES, args.steps), "all steps": {
            "wall_ms_per_step": 1000 * total["total"][0] / args.steps,
            "cpu_ms_per_step": 1000 * total["total"][1] / args.steps}}
        TIMES.clear()
        instrument_trainer()
        result = tunelab_run(model_path, args.method, args.bf16, data, args.steps, args.batch, args.seq,
                             Path(tmp) / "out")
        # read before the output-cast comparison, whose zero_grad calls the wrapped Module.zero_grad would add
        ours = _table(TIMES, args.steps)
        cast = output_cast_cost(model_path, args.method, data, args.batch, args.seq, args.cast_rounds) \
            if args.bf16 and args.cast_rounds else None
    spans = {"set-up (train() to the first step)": _span("train_call", "first_step"),
             "end (the last step to train()'s return)": _span("last_step_end", "train_return"),
             "all of Trainer.train()": _span("train_call", "train_return")}
    print(f"{args.method} {'bf16' if args.bf16 else 'fp32'}, {args.steps} steps, {args.threads} thread(s): "
          "ms per step, wall / CPU")
    for name, table in (("plain loop", plain), ("tunelab", ours)):
        print(f"  {name}")
        for k, v in table.items():
            print(f"    {k:<50} {v['wall_ms_per_step']:9.1f} / {v['cpu_ms_per_step']:9.1f}")
        print(f"    forward + backward, CPU ms per step: {table['forward + backward']['cpu_ms_per_call']}")
    for k, v in spans.items():
        print(f"  tunelab {k:<42} {v['wall_ms']:9.1f} / {v['cpu_ms']:9.1f} ms (once)")
    for k, v in (cast or {}).items():
        print(f"  forward + backward, {k:<40} {v['median_cpu_ms']:9.1f} CPU ms (median of {args.cast_rounds})")
    precision = "bf16" if args.bf16 else "fp32"
    write_result(f"overhead-profile-{args.method}-{precision}",
                 {"settings": vars(args), "plain_loop_ms_per_step": plain, "tunelab_ms_per_step": ours,
                  "tunelab_once_ms": spans, "tunelab_train_seconds": result["seconds"], "output_cast": cast})


if __name__ == "__main__":
    main()
