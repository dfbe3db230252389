"""`tunelab train` against TRL's SFTTrainer on the same DialogSum subset, model, method (LoRA r=16) and budget.

Reports real (non-padding) tokens per second, the share of processed positions that were padding, peak memory, and
achieved FLOP/s against the CPU's peak (bench/common.py: useful FLOPs per real token = 4 per frozen weight + 6 per
LoRA weight + attention over each example's own length, against the peak for the run's precision). Each run is a
subprocess of its own so that peak memory is clean. TRL is needed only here: `make bench-install` (or
`.venv/bin/pip install trl`).

The variants: TRL's SFTConfig defaults (bf16 autocast, gradient checkpointing, padded batches, fused AdamW), TRL
with packing (its padding-free BFD packing) with and without gradient checkpointing, tunelab's defaults and
tunelab at its best on a CPU with bf16 instructions (--bf16 --packing). The headline is the ratio of tunelab's
best to TRL's defaults (issue 17 §4 target: >= 1.3) and to TRL's best variant measured.

    .venv/bin/python bench/trl_compare.py                            # all variants, 16 steps (~30 min on 2 cores)
    .venv/bin/python bench/trl_compare.py --variants "trl (defaults),tunelab --bf16 --packing"   # the target (~6 min)
    .venv/bin/python bench/trl_compare.py --rows 16 --steps 2 --max_len 256 --repeats 1          # pipeline check
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from common import REPO, RESULTS, cpu_peak_flops, training_flops_per_token, write_result

SYSTEM = "Summarize the dialogue in one or two sentences."
LORA = dict(r=16, lora_alpha=32, lora_dropout=0.0)  # peft's default dropout (TRL's with a LoraConfig), tunelab's
LEARNING_RATE = 2e-4

# name -> (side, flags of `--one`); "trl best" is whichever TRL variant measures fastest
VARIANTS = {
    "trl (defaults)": ("trl", []),
    "trl --packing": ("trl", ["--packing"]),
    "trl --packing (no gradient checkpointing)": ("trl", ["--packing", "--no_gradient_checkpointing"]),
    "tunelab (defaults)": ("tunelab", []),
    "tunelab --bf16 --packing": ("tunelab", ["--bf16", "--packing"]),
}
BEST_TUNELAB = "tunelab --bf16 --packing"


def conversations(data_dir: Path, rows: int) -> list[dict]:
    lines = (data_dir / "dialogsum" / "dialogsum.train.jsonl").read_text(encoding="utf-8").splitlines()[:rows]
    out = []
    for line in lines:
        r = json.loads(line)
        out.append({"messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": r["dialogue"]},
                                 {"role": "assistant", "content": r["summary"]}]})
    return out


class Counting:
    """Counts processed token positions and real tokens of every training batch a collator makes."""

    def __init__(self, inner):
        self.inner, self.positions, self.real = inner, 0, 0

    def __call__(self, features):
        batch = self.inner(features)
        self.positions += int(batch["input_ids"].numel())
        mask = batch.get("attention_mask")
        self.real += int(mask.sum()) if mask is not None else int(batch["input_ids"].numel())
        return batch


def run_trl(data: Path, out: Path, steps: int, batch: int, max_len: int, packing: bool,
            gradient_checkpointing: bool) -> dict:
    import time

    import datasets
    from peft import LoraConfig
    from trl import SFTConfig, SFTTrainer

    from tunelab.memory.tracker import peak_memory, reset_peak
    from tunelab.methods.base import default_target_modules
    from tunelab.models import resolve_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = resolve_model("smollm2-135m")
    model = AutoModelForCausalLM.from_pretrained(path)
    tok = AutoTokenizer.from_pretrained(path)
    ds = datasets.load_dataset("json", data_files=str(data))["train"]
    cfg = SFTConfig(output_dir=str(out), max_steps=steps, per_device_train_batch_size=batch, max_length=max_len,
                    learning_rate=LEARNING_RATE, logging_steps=10, save_strategy="no", report_to="none",
                    use_cpu=True, packing=packing, seed=0, dataloader_pin_memory=False,
                    **({} if gradient_checkpointing else {"gradient_checkpointing": False}))
    peft_config = LoraConfig(**LORA, target_modules=default_target_modules(model), task_type="CAUSAL_LM")
    trainer = SFTTrainer(model=model, args=cfg, train_dataset=ds, processing_class=tok, peft_config=peft_config)
    trainer.data_collator = counter = Counting(trainer.data_collator)
    reset_peak()
    t0 = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - t0
    peak, kind = peak_memory()
    return {"seconds": seconds, "real_tokens": counter.real, "positions": counter.positions,
            "peak_memory_bytes": peak, "peak_memory_kind": kind, "bf16": bool(cfg.bf16),
            "gradient_checkpointing": bool(cfg.gradient_checkpointing), "optim": str(cfg.optim)}


def run_tunelab(data: Path, out: Path, steps: int, batch: int, max_len: int, packing: bool,
                group_by_length: bool, bf16: bool | None) -> dict:
    import yaml

    from tunelab.config import TrainOptions
    from tunelab.training import train

    extra = {} if bf16 is None else {"bf16": bf16}  # None: tunelab's default
    opts = TrainOptions(model_name_or_path="smollm2-135m", dataset_name_or_path=str(data), output_dir=str(out),
                        method="lora", max_steps=steps, per_device_train_batch_size=batch, max_seq_length=max_len,
                        learning_rate=LEARNING_RATE, lora_r=LORA["r"], lora_alpha=LORA["lora_alpha"],
                        lora_dropout=LORA["lora_dropout"], logging_steps=10, save_steps=10**9, use_cpu=True, seed=0,
                        packing=packing, group_by_length=group_by_length, **extra)
    r = train(opts, {"learning_rate"}).results
    saved = yaml.safe_load((out / "tunelab_config.yaml").read_text(encoding="utf-8"))
    positions = r["processed_token_positions"]
    real = round(positions * (1 - r["padding_fraction"]))
    return {"seconds": r["train_seconds"], "real_tokens": real, "positions": positions,
            "peak_memory_bytes": r["peak_memory_bytes"], "peak_memory_kind": r["peak_memory_kind"],
            "bf16": bool(saved.get("bf16")), "gradient_checkpointing": bool(saved.get("gradient_checkpointing")),
            "optim": saved.get("optim")}


def lora_flops(data: Path, max_len: int) -> dict:
    """Useful training FLOPs per real token of LoRA r=16 on smollm2-135m for these examples: linear layers from the
    adapted model, attention over each example's own (chat-templated, truncated) length, weighted by its tokens."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tunelab.methods.base import default_target_modules
    from tunelab.models import resolve_model

    path = resolve_model("smollm2-135m")
    tok = AutoTokenizer.from_pretrained(path)
    # (return_dict=False: transformers 5 returns a dict by default, whose len() is its 2 keys, not the tokens)
    lengths = [min(max_len, len(tok.apply_chat_template(json.loads(l)["messages"], tokenize=True,
                                                        return_dict=False)))
               for l in data.read_text(encoding="utf-8").splitlines()]
    model = AutoModelForCausalLM.from_pretrained(path)
    model = get_peft_model(model, LoraConfig(**LORA, target_modules=default_target_modules(model),
                                             task_type="CAUSAL_LM"))
    context = sum(n * n for n in lengths) / sum(lengths)  # a token attends over its own example
    return training_flops_per_token(model, context)


def memory_estimates(batch: int, max_len: int) -> dict:
    """`tunelab estimate` for the LoRA run at full length, with tunelab's defaults and with the two defaults of
    TRL's SFTConfig that tunelab leaves off (gradient checkpointing, bf16): where the memory gap comes from."""
    from tunelab.config import TrainOptions
    from tunelab.memory.estimator import estimate

    out = {}
    for name, extra in (("tunelab defaults", {}), ("--gradient_checkpointing --bf16",
                                                    {"gradient_checkpointing": True, "bf16": True})):
        opts = TrainOptions(model_name_or_path="smollm2-135m", dataset_name_or_path="-", output_dir="-",
                            method="lora", per_device_train_batch_size=batch, max_seq_length=max_len, use_cpu=True,
                            **extra)
        out[name] = {"peak_bytes": estimate(opts, device="cpu").peak_bytes,
                     "command": "tunelab estimate --model_name_or_path smollm2-135m --method lora "
                                f"--per_device_train_batch_size {batch} --max_seq_length {max_len} --device cpu"
                                + (f" {name}" if extra else "")}
    return out


def one(args) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "out"
        if args.one == "trl":
            res = run_trl(Path(args.data), out, args.steps, args.batch, args.max_len, args.packing,
                          not args.no_gradient_checkpointing)
        else:
            res = run_tunelab(Path(args.data), out, args.steps, args.batch, args.max_len, args.packing,
                              args.group_by_length, True if args.bf16 else None)
    print("RESULT " + json.dumps(res))


def summarize(runs: dict, flops: dict, peak: dict) -> dict:
    """Median real tokens/s per variant over its repeats, achieved FLOP/s against the peak of its precision, and
    the ratios of tunelab's best to TRL's defaults and to TRL's fastest variant."""
    out = {}
    for name, reps in runs.items():
        ok = [r for r in reps if "error" not in r]
        if not ok:
            continue
        tps = statistics.median(r["real_tokens_per_second"] for r in ok)
        bf16 = ok[0]["bf16"]
        achieved = tps * flops["flops_per_token"]
        out[name] = {"median_real_tokens_per_second": tps, "repeats": len(ok),
                     "real_tokens_per_second": [r["real_tokens_per_second"] for r in ok], "bf16": bf16,
                     "flops_per_second": achieved,
                     "fraction_of_peak": achieved / peak["bf16_peak_flops" if bf16 else "fp32_peak_flops"]}
    trl = {k: v for k, v in out.items() if k.startswith("trl")}
    ratios = {}
    if BEST_TUNELAB in out and "trl (defaults)" in out:
        ratios["tunelab_best_over_trl_defaults"] = (out[BEST_TUNELAB]["median_real_tokens_per_second"]
                                                    / out["trl (defaults)"]["median_real_tokens_per_second"])
    if BEST_TUNELAB in out and trl:
        best = max(trl, key=lambda k: trl[k]["median_real_tokens_per_second"])
        ratios["trl_best_variant"] = best
        ratios["tunelab_best_over_trl_best"] = (out[BEST_TUNELAB]["median_real_tokens_per_second"]
                                                / trl[best]["median_real_tokens_per_second"])
    return {"variants": out, "ratios": ratios}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=64)
    ap.add_argument("--steps", type=int, default=16)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--max_len", type=int, default=1024)
    ap.add_argument("--repeats", type=int, default=1, help="runs per variant, interleaved; the median is reported")
    ap.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated, of: " + ", ".join(VARIANTS))
    ap.add_argument("--data_dir", default=str(REPO.parent / "shared" / "data"))
    ap.add_argument("--load", default=None, help="a note on how busy the machine was, saved with the results")
    ap.add_argument("--estimates_only", action="store_true",
                    help="only recompute the memory estimates into the existing bench/results/trl_compare.json")
    ap.add_argument("--one", choices=["trl", "tunelab"], help=argparse.SUPPRESS)
    ap.add_argument("--data", help=argparse.SUPPRESS)
    ap.add_argument("--packing", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--group_by_length", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--bf16", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--no_gradient_checkpointing", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        return one(args)
    settings = {k: v for k, v in vars(args).items()
                if k not in ("one", "data", "estimates_only", "packing", "group_by_length", "bf16",
                             "no_gradient_checkpointing")}
    if args.estimates_only:
        previous = json.loads((RESULTS / "trl_compare.json").read_text(encoding="utf-8"))
        if previous["settings"] != settings:
            raise SystemExit(f"bench/results/trl_compare.json was measured with {previous['settings']}; "
                             "pass the same flags or re-run without --estimates_only")
        write_result("trl_compare", {**previous, "estimates": memory_estimates(args.batch, args.max_len)})
        return None
    names = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        raise SystemExit(f"--variants: unknown {unknown}; choose from {list(VARIANTS)}")
    runs: dict[str, list] = {n: [] for n in names}
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "dialogsum.jsonl"
        data.write_text("".join(json.dumps(r) + "\n" for r in conversations(Path(args.data_dir), args.rows)))
        for rep in range(args.repeats):
            for name in (names if rep % 2 == 0 else names[::-1]):  # interleaved; the order alternates
                side, extra = VARIANTS[name]
                cmd = [sys.executable, __file__, "--data", str(data), "--steps", str(args.steps), "--batch",
                       str(args.batch), "--max_len", str(args.max_len), "--one", side, *extra]
                done = subprocess.run(cmd, capture_output=True, text=True)
                line = next((l for l in done.stdout.splitlines() if l.startswith("RESULT ")), None)
                if line is None:
                    print(f"{name}: failed\n{done.stderr[-2000:]}")
                    runs[name].append({"error": done.stderr[-500:]})
                    continue
                r = json.loads(line[len("RESULT "):])
                r["real_tokens_per_second"] = r["real_tokens"] / r["seconds"]
                r["padding_fraction"] = 1 - r["real_tokens"] / r["positions"] if r["positions"] else None
                runs[name].append(r)
                print(f"{name:<42} {r['real_tokens_per_second']:7.1f} real tok/s  padding "
                      f"{100 * r['padding_fraction']:5.1f}%  peak {r['peak_memory_bytes'] / 2**30:.2f} GiB  "
                      f"bf16={r['bf16']}", flush=True)
        flops = lora_flops(data, args.max_len)
    peak = cpu_peak_flops()
    summary = summarize(runs, flops, peak)
    for name, v in summary["variants"].items():
        print(f"{name:<42} median {v['median_real_tokens_per_second']:7.1f} real tok/s = "
              f"{v['flops_per_second'] / 1e9:5.1f} GFLOP/s, {100 * v['fraction_of_peak']:4.1f}% of peak")
    for k, v in summary["ratios"].items():
        print(f"{k}: {v if isinstance(v, str) else f'{v:.2f}'}")
    write_result("trl_compare", {"settings": settings, "runs": runs, "summary": summary, "flops": flops,
                                 "cpu_peak": peak, "target_ratio": 1.3,
                                 "estimates": memory_estimates(args.batch, args.max_len)})


if __name__ == "__main__":
    main()
