"""Framework overhead: `tunelab train` tokens/s against a minimal hand-written torch + peft loop.

Same model, batch, sequence length, steps, optimizer (AdamW), schedule (linear, no warmup) and gradient clipping;
inputs are fixed-length so padding cannot differ. Both are measured in this one process, alternating, so the
ratio is robust to a noisy shared machine.

    .venv/bin/python bench/overhead.py [--steps 20] [--batch 4] [--seq 128] [--repeats 2]
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
from pathlib import Path

from common import write_result


def fixed_length_data(path: Path, n: int, seq: int, seed: int = 0) -> Path:
    rng = random.Random(seed)
    words = ["the", "model", "learns", "a", "query", "over", "books", "and", "authors", "with", "care"]
    with open(path, "w") as f:
        for _ in range(n):
            f.write(json.dumps({"text": " ".join(rng.choice(words) for _ in range(seq * 2))}) + "\n")
    return path


def plain_loop(model_path: str, method: str, data: Path, steps: int, batch: int, seq: int) -> dict:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer, get_linear_schedule_with_warmup

    from tunelab.methods.base import default_target_modules

    tok = AutoTokenizer.from_pretrained(model_path)
    texts = [json.loads(l)["text"] for l in data.read_text().splitlines()]
    ids = [tok(t + tok.eos_token, add_special_tokens=False)["input_ids"][:seq] for t in texts]
    assert all(len(x) == seq for x in ids)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
    if method == "lora":
        model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05,
                                                 target_modules=default_target_modules(model)))
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=2e-4 if method == "lora" else 5e-5, weight_decay=0.0)
    sched = get_linear_schedule_with_warmup(opt, 0, steps)
    order = list(range(len(ids)))
    random.Random(0).shuffle(order)
    started = time.perf_counter()
    for step in range(steps):
        rows = [ids[order[(step * batch + i) % len(order)]] for i in range(batch)]
        x = torch.tensor(rows)
        loss = model(input_ids=x, attention_mask=torch.ones_like(x), labels=x).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
    seconds = time.perf_counter() - started
    return {"seconds": seconds, "tokens": steps * batch * seq, "tokens_per_second": steps * batch * seq / seconds}


def tunelab_run(model_path: str, method: str, data: Path, steps: int, batch: int, seq: int, out: Path) -> dict:
    from tunelab.config import TrainOptions
    from tunelab.training import train

    opts = TrainOptions(model_name_or_path=model_path, dataset_name_or_path=str(data), output_dir=str(out),
                        method=method, max_steps=steps, per_device_train_batch_size=batch, max_seq_length=seq,
                        lora_r=16, lora_alpha=32, lora_dropout=0.05, warmup_ratio=0.0, logging_steps=10,
                        save_steps=10**9, use_cpu=True, seed=0)
    r = train(opts, {"warmup_ratio"}).results
    assert r["padding_fraction"] == 0.0, "inputs must be fixed-length"
    return {"seconds": r["train_seconds"], "tokens": r["train_tokens"], "tokens_per_second":
            r["train_tokens_per_second"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--methods", default="full,lora")
    args = ap.parse_args()
    from tunelab.models import resolve_model

    model_path = resolve_model(args.model)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        data = fixed_length_data(Path(tmp) / "fixed.jsonl", args.steps * args.batch, args.seq)
        for method in args.methods.split(","):
            for rep in range(args.repeats):
                loop = plain_loop(model_path, method, data, args.steps, args.batch, args.seq)
                ours = tunelab_run(model_path, method, data, args.steps, args.batch, args.seq,
                                   Path(tmp) / f"{method}-{rep}")
                ratio = ours["tokens_per_second"] / loop["tokens_per_second"]
                print(f"{method} repeat {rep}: plain loop {loop['tokens_per_second']:.1f} tok/s, tunelab "
                      f"{ours['tokens_per_second']:.1f} tok/s, ratio {ratio:.3f}", flush=True)
                rows.append({"method": method, "repeat": rep, "plain_loop": loop, "tunelab": ours, "ratio": ratio})
    summary = {}
    for method in args.methods.split(","):
        ratios = [r["ratio"] for r in rows if r["method"] == method]
        summary[method] = {"mean_ratio": sum(ratios) / len(ratios), "ratios": ratios}
    write_result("overhead", {"settings": vars(args), "runs": rows, "summary": summary, "target_ratio": 0.97})


if __name__ == "__main__":
    main()
