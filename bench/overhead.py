"""Framework overhead: `tunelab train` tokens/s against a minimal hand-written torch + peft loop.

Both sides do the same work: same model, batch, sequence length, steps, optimizer (AdamW, fused kernel: tunelab's
default --optim adamw_torch_fused), linear schedule without warmup, gradient clipping at 1.0, KV cache off in
training (the Trainer sets use_cache=False), LoRA r=16 alpha=32 dropout 0 on the same layers, and under --bf16 the
same autocast (PEFT methods with a bf16 base, as tunelab loads it). Inputs are fixed-length so padding cannot
differ. tunelab's time is its train_seconds (all of Trainer.train(): set-up, steps, end), the loop's its steps.

Every (method, precision) pair is measured --repeats times, interleaved (repeat after repeat over all pairs, the
side that goes first alternating, so that an even number of repeats puts each side first equally often), in this one
process, after one untimed plain-loop run of each pair (on a 2-core Xeon the first run of a kind in a process, and
often the first of a pair, was up to 15% slower than the next: warm-up that neither side should be charged with); the
summary is the median ratio and its range, so a noisy shared machine moves both sides of a ratio together. It also reports achieved FLOP/s against the CPU's peak
(bench/common.py: cpu_peak_flops, training_flops_per_token).

    .venv/bin/python bench/overhead.py                         # 4 repeats x full,lora x fp32,bf16, 12 steps (~15 min)
    .venv/bin/python bench/overhead.py --steps 4 --repeats 1   # a pipeline check (~3 min)
    .venv/bin/python bench/overhead.py --methods full --precisions bf16 --repeats 5
"""

from __future__ import annotations

import argparse
import gc
import json
import random
import statistics
import tempfile
import time
from pathlib import Path

from common import cpu_peak_flops, training_flops_per_token, write_result

LORA = dict(r=16, lora_alpha=32, lora_dropout=0.0)
LEARNING_RATE = {"full": 5e-5, "lora": 2e-4}


def fixed_length_data(path: Path, n: int, seq: int, seed: int = 0) -> Path:
    rng = random.Random(seed)
    words = ["the", "model", "learns", "a", "query", "over", "books", "and", "authors", "with", "care"]
    with open(path, "w") as f:
        for _ in range(n):
            f.write(json.dumps({"text": " ".join(rng.choice(words) for _ in range(seq * 2))}) + "\n")
    return path


def token_rows(model_path: str, data: Path, seq: int) -> list[list[int]]:
    """The fixed-length rows, tokenized as tunelab tokenizes them (text + EOS)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_path)
    texts = [json.loads(l)["text"] for l in data.read_text().splitlines()]
    ids = [tok(t + tok.eos_token, add_special_tokens=False)["input_ids"][:seq] for t in texts]
    assert all(len(x) == seq for x in ids)
    return ids


def plain_model(model_path: str, method: str, bf16: bool):
    """The plain loop's model, in training mode, set up as tunelab sets it up."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from tunelab.methods.base import default_target_modules

    torch.manual_seed(0)
    # tunelab loads a PEFT method's frozen base in bf16 under --bf16 (model_setup.weights_dtype); full keeps float32
    dtype = torch.bfloat16 if (bf16 and method == "lora") else torch.float32
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=dtype)
    model.config.use_cache = False  # as the Trainer does (TrainingArguments.use_cache=False)
    if method == "lora":
        model = get_peft_model(model, LoraConfig(task_type="CAUSAL_LM", **LORA,
                                                 target_modules=default_target_modules(model)))
    model.train()
    return model


def plain_loop(model_path: str, method: str, bf16: bool, data: Path, steps: int, batch: int, seq: int) -> dict:
    import contextlib

    import torch
    from transformers import get_linear_schedule_with_warmup

    ids = token_rows(model_path, data, seq)
    model = plain_model(model_path, method, bf16)
    flops = training_flops_per_token(model, seq)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=LEARNING_RATE[method], weight_decay=0.0, fused=True)
    sched = get_linear_schedule_with_warmup(opt, 0, steps)
    autocast = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if bf16 else contextlib.nullcontext
    order = list(range(len(ids)))
    random.Random(0).shuffle(order)
    started, cpu = time.perf_counter(), time.process_time()
    for step in range(steps):
        rows = [ids[order[(step * batch + i) % len(order)]] for i in range(batch)]
        x = torch.tensor(rows)
        with autocast():
            loss = model(input_ids=x, attention_mask=torch.ones_like(x), labels=x).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
    seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
    tokens = steps * batch * seq
    return {"seconds": seconds, "cpu_seconds": cpu, "tokens": tokens, "tokens_per_second": tokens / seconds,
            "flops": flops}


def tunelab_run(model_path: str, method: str, bf16: bool, data: Path, steps: int, batch: int, seq: int,
                out: Path) -> dict:
    from tunelab.config import TrainOptions
    from tunelab.training import train

    opts = TrainOptions(model_name_or_path=model_path, dataset_name_or_path=str(data), output_dir=str(out),
                        method=method, max_steps=steps, per_device_train_batch_size=batch, max_seq_length=seq,
                        learning_rate=LEARNING_RATE[method], lora_r=LORA["r"], lora_alpha=LORA["lora_alpha"],
                        lora_dropout=LORA["lora_dropout"], warmup_ratio=0.0, logging_steps=10, save_steps=10**9,
                        use_cpu=True, seed=0, bf16=bf16, optim="adamw_torch_fused")
    from transformers import Trainer

    cpu = {}
    inner = Trainer.train

    def measured(self, *a, **k):  # the process CPU time of the span train_seconds covers (Trainer.train)
        start = time.process_time()
        try:
            return inner(self, *a, **k)
        finally:
            cpu["seconds"] = time.process_time() - start

    Trainer.train = measured
    try:
        r = train(opts, {"warmup_ratio", "learning_rate"}).results
    finally:
        Trainer.train = inner
    assert r["padding_fraction"] == 0.0, "inputs must be fixed-length"
    return {"seconds": r["train_seconds"], "cpu_seconds": cpu["seconds"], "tokens": r["train_tokens"],
            "tokens_per_second": r["train_tokens_per_second"]}


def _settle() -> None:
    """Between runs: free the previous run's model and give its heap back, so that neither side inherits it."""
    import ctypes

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass


def summarize(rows: list[dict], peak: dict) -> dict:
    summary = {}
    for key in dict.fromkeys((r["method"], r["precision"]) for r in rows):
        cell = [r for r in rows if (r["method"], r["precision"]) == key]
        ratios = [r["ratio"] for r in cell]
        cpu_ratios = [r["cpu_ratio"] for r in cell]
        flops = cell[0]["plain_loop"]["flops"]["flops_per_token"]
        peak_flops = peak["bf16_peak_flops" if key[1] == "bf16" else "fp32_peak_flops"]
        plain = statistics.median(r["plain_loop"]["tokens_per_second"] for r in cell)
        ours = statistics.median(r["tunelab"]["tokens_per_second"] for r in cell)
        summary[f"{key[0]} {key[1]}"] = {
            "method": key[0], "precision": key[1], "repeats": len(cell), "ratios": ratios,
            "median_ratio": statistics.median(ratios), "min_ratio": min(ratios), "max_ratio": max(ratios),
            "spread": max(ratios) - min(ratios), "cpu_ratios": cpu_ratios,
            "median_cpu_ratio": statistics.median(cpu_ratios),
            "median_plain_loop_tokens_per_second": plain, "median_tunelab_tokens_per_second": ours,
            "flops_per_token": flops,
            "tunelab_flops_per_second": ours * flops, "tunelab_fraction_of_peak": ours * flops / peak_flops,
            "plain_loop_fraction_of_peak": plain * flops / peak_flops,
        }
    return summary


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=4)
    ap.add_argument("--methods", default="full,lora")
    ap.add_argument("--precisions", default="fp32,bf16", help="fp32 and/or bf16 (autocast)")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch threads (default: torch's, one per core); 1 makes CPU-time ratios cleaner on a busy "
                         "machine")
    ap.add_argument("--load", default=None,
                    help="a note on how busy the machine was, saved with the results (e.g. 'quiet', 'shared')")
    args = ap.parse_args()
    import os

    from tunelab.models import resolve_model

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    model_path = resolve_model(args.model)
    pairs = [(m, p) for m in args.methods.split(",") for p in args.precisions.split(",")]
    peak = cpu_peak_flops()
    rows = []
    load_before = os.getloadavg()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        data = fixed_length_data(Path(tmp) / "fixed.jsonl", args.steps * args.batch, args.seq)
        for method, precision in pairs:  # warm-up, not recorded
            _settle()
            plain_loop(model_path, method, precision == "bf16", data, args.steps, args.batch, args.seq)
        for rep in range(args.repeats):
            for i, (method, precision) in enumerate(pairs):
                bf16 = precision == "bf16"
                sides = ["plain_loop", "tunelab"] if (rep + i) % 2 == 0 else ["tunelab", "plain_loop"]
                row = {"method": method, "precision": precision, "repeat": rep, "first": sides[0]}
                for side in sides:
                    _settle()
                    if side == "plain_loop":
                        row[side] = plain_loop(model_path, method, bf16, data, args.steps, args.batch, args.seq)
                    else:
                        row[side] = tunelab_run(model_path, method, bf16, data, args.steps, args.batch, args.seq,
                                                Path(tmp) / f"{method}-{precision}-{rep}")
                row["ratio"] = row["tunelab"]["tokens_per_second"] / row["plain_loop"]["tokens_per_second"]
                # the same work in CPU seconds: less sensitive to other processes than wall time (not immune: they
                # share caches and memory bandwidth, and waiting OpenMP threads spin)
                row["cpu_ratio"] = row["plain_loop"]["cpu_seconds"] / row["tunelab"]["cpu_seconds"]
                row["load_average_1min"] = os.getloadavg()[0]
                print(f"{method} {precision} repeat {rep}: plain loop {row['plain_loop']['tokens_per_second']:.1f} "
                      f"tok/s, tunelab {row['tunelab']['tokens_per_second']:.1f} tok/s, ratio {row['ratio']:.3f} "
                      f"(CPU-time ratio {row['cpu_ratio']:.3f}; load {row['load_average_1min']:.1f})", flush=True)
                rows.append(row)
    summary = summarize(rows, peak)
    for name, s in summary.items():
        print(f"{name}: median ratio {s['median_ratio']:.3f} (range {s['min_ratio']:.3f}-{s['max_ratio']:.3f}, "
              f"{s['repeats']} repeats; CPU-time ratio {s['median_cpu_ratio']:.3f}); tunelab {s['median_tunelab_tokens_per_second']:.1f} tok/s = "
              f"{s['tunelab_flops_per_second'] / 1e9:.1f} GFLOP/s, {100 * s['tunelab_fraction_of_peak']:.0f}% of peak")
    write_result("overhead", {"settings": vars(args), "runs": rows, "summary": summary, "target_ratio": 0.97,
                              "cpu_peak": peak, "wall_seconds": time.perf_counter() - started,
                              "load_average_1min": {"start": load_before[0], "end": os.getloadavg()[0]}})


if __name__ == "__main__":
    main()
