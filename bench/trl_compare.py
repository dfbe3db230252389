"""`tunelab train` against TRL's SFTTrainer (its defaults) on the same DialogSum subset, model, method and budget.

Reports real (non-padding) tokens per second, the share of processed positions that were padding, and peak
memory. Each run is a subprocess of its own so that peak memory is clean. TRL is needed only here:
`make bench-install` (or `.venv/bin/pip install trl`).

    .venv/bin/python bench/trl_compare.py [--rows 64] [--steps 16] [--batch 4] [--data_dir ../shared/data]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from common import REPO, RESULTS, write_result

SYSTEM = "Summarize the dialogue in one or two sentences."


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


def run_trl(data: Path, out: Path, steps: int, batch: int, max_len: int, packing: bool) -> dict:
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
                    learning_rate=2e-4, logging_steps=10, save_strategy="no", report_to="none", use_cpu=True,
                    packing=packing, seed=0, dataloader_pin_memory=False)
    peft_config = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05, target_modules=default_target_modules(model),
                             task_type="CAUSAL_LM")
    trainer = SFTTrainer(model=model, args=cfg, train_dataset=ds, processing_class=tok, peft_config=peft_config)
    trainer.data_collator = counter = Counting(trainer.data_collator)
    reset_peak()
    t0 = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - t0
    peak, kind = peak_memory()
    return {"seconds": seconds, "real_tokens": counter.real, "positions": counter.positions,
            "peak_memory_bytes": peak, "peak_memory_kind": kind}


def run_tunelab(data: Path, out: Path, steps: int, batch: int, max_len: int, packing: bool,
                group_by_length: bool) -> dict:
    from tunelab.config import TrainOptions
    from tunelab.training import train

    opts = TrainOptions(model_name_or_path="smollm2-135m", dataset_name_or_path=str(data), output_dir=str(out),
                        method="lora", max_steps=steps, per_device_train_batch_size=batch, max_seq_length=max_len,
                        learning_rate=2e-4, logging_steps=10, save_steps=10**9, use_cpu=True, seed=0,
                        packing=packing, group_by_length=group_by_length)
    r = train(opts, {"learning_rate"}).results
    positions = r["processed_token_positions"]
    real = round(positions * (1 - r["padding_fraction"]))
    return {"seconds": r["train_seconds"], "real_tokens": real, "positions": positions,
            "peak_memory_bytes": r["peak_memory_bytes"], "peak_memory_kind": r["peak_memory_kind"]}


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
            res = run_trl(Path(args.data), out, args.steps, args.batch, args.max_len, args.packing)
        else:
            res = run_tunelab(Path(args.data), out, args.steps, args.batch, args.max_len, args.packing,
                              args.group_by_length)
    print("RESULT " + json.dumps(res))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=64)
    ap.add_argument("--steps", type=int, default=16)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--max_len", type=int, default=1024)
    ap.add_argument("--data_dir", default=str(REPO.parent / "shared" / "data"))
    ap.add_argument("--estimates_only", action="store_true",
                    help="only recompute the memory estimates into the existing bench/results/trl_compare.json")
    ap.add_argument("--one", choices=["trl", "tunelab"], help=argparse.SUPPRESS)
    ap.add_argument("--data", help=argparse.SUPPRESS)
    ap.add_argument("--packing", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--group_by_length", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        return one(args)
    settings = {k: v for k, v in vars(args).items() if k not in ("one", "data", "estimates_only")}
    if args.estimates_only:
        previous = json.loads((RESULTS / "trl_compare.json").read_text(encoding="utf-8"))
        if previous["settings"] != settings:
            raise SystemExit(f"bench/results/trl_compare.json was measured with {previous['settings']}; "
                             "pass the same flags or re-run without --estimates_only")
        write_result("trl_compare", {**previous, "estimates": memory_estimates(args.batch, args.max_len)})
        return None
    runs = {}
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "dialogsum.jsonl"
        data.write_text("".join(json.dumps(r) + "\n" for r in conversations(Path(args.data_dir), args.rows)))
        variants = [("trl (defaults)", ["--one", "trl"]), ("trl --packing", ["--one", "trl", "--packing"]),
                    ("tunelab", ["--one", "tunelab"]),
                    ("tunelab --group_by_length", ["--one", "tunelab", "--group_by_length"]),
                    ("tunelab --packing", ["--one", "tunelab", "--packing"])]
        for name, extra in variants:
            cmd = [sys.executable, __file__, "--data", str(data), "--steps", str(args.steps), "--batch",
                   str(args.batch), "--max_len", str(args.max_len), *extra]
            done = subprocess.run(cmd, capture_output=True, text=True)
            line = next((l for l in done.stdout.splitlines() if l.startswith("RESULT ")), None)
            if line is None:
                print(f"{name}: failed\n{done.stderr[-2000:]}")
                runs[name] = {"error": done.stderr[-500:]}
                continue
            r = json.loads(line[len("RESULT "):])
            r["real_tokens_per_second"] = r["real_tokens"] / r["seconds"]
            r["padding_fraction"] = 1 - r["real_tokens"] / r["positions"] if r["positions"] else None
            runs[name] = r
            print(f"{name:<28} {r['real_tokens_per_second']:7.1f} real tok/s  padding "
                  f"{100 * r['padding_fraction']:5.1f}%  peak {r['peak_memory_bytes'] / 2**30:.2f} GiB", flush=True)
    write_result("trl_compare", {"settings": settings, "runs": runs,
                                 "estimates": memory_estimates(args.batch, args.max_len)})


if __name__ == "__main__":
    main()
