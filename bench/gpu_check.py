"""Every GPU check of issue 17 in one call, under 8 minutes on one H100/H200; results in bench/results/gpu.json.

    python bench/gpu_check.py                    # on the GPU machine (see "On the lent GPU machine" below)
    python bench/gpu_check.py --cpu-smoke        # anywhere: the same plumbing on the CPU, tiny settings (~1-2 min)
    python bench/gpu_check.py --only overhead,qlora

The checks, in order (each in a child process of its own, timed, with its failure recorded; the others go on):

- estimate_validate: `tunelab estimate --validate` on CUDA, predicted peak against torch.cuda.max_memory_allocated,
  full / LoRA / QLoRA with and without gradient checkpointing (the target: every |error| <= 10%).
- overhead: the framework-overhead ratio (tunelab train's tokens/s over a minimal torch + peft loop's, the same
  work as bench/overhead.py's CPU loop, on the GPU) and tokens/s in bf16, for full fine-tuning and LoRA.
- qlora: `tunelab train --method qlora` on CUDA (bitsandbytes' 4-bit kernels), loss finite and falling.
- fsdp: a single-process FSDP run (torchrun, examples/distributed/fsdp_full_shard.json), full fine-tuning.
- deepspeed: a single-process DeepSpeed ZeRO-2 run (examples/distributed/ds_zero2.json); skipped without deepspeed.
- demo: `tunelab compare --recipe demo --device cuda`, wall time and the runs' figures.

The model is smollm2-135m when its weights are installed; otherwise a randomly initialised model of the same
architecture (SmolLM2-135M's config, a small BPE tokenizer), which serves every check but the demo's quality:
memory, speed and plumbing do not depend on the weights' values. gpu.json says which ("weights").

On the lent GPU machine (nothing can be fetched there; its image has torch, transformers, peft, accelerate): the
packages tunelab needs beyond the image travel as wheels (~59 MB; bench/gpu_wheels.sh fetches them into .whl/,
once, here), then one call:

    run(carry=[".whl"], timeout_s=600, command="python3 -m pip install -q --no-index --no-deps --no-compile
        --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:src &&
        PYTHONUNBUFFERED=1 python3 bench/gpu_check.py")

The result is also copied to $OUT/gpu.json when $OUT is set (the device tool brings $OUT back).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(BENCH))

CHECKS = ("estimate_validate", "overhead", "qlora", "fsdp", "deepspeed", "demo")
BUDGET_S = 470           # all checks together (the 8 minutes, less start-up)
TIMEOUT_S = {"estimate_validate": 110, "overhead": 110, "qlora": 50, "fsdp": 50, "deepspeed": 50, "demo": 200}
SMOLLM2_135M = dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                    num_key_value_heads=3, vocab_size=49152, max_position_embeddings=8192, rope_theta=100000.0,
                    rms_norm_eps=1e-5, tie_word_embeddings=True)
TINY = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, vocab_size=512, max_position_embeddings=512, tie_word_embeddings=True)
CHATML = ("{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + "
          "'<|im_end|>' + '\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")


# --- settings of each mode -------------------------------------------------------------------------------------

def settings(cpu_smoke: bool) -> dict:
    """What each check runs: the GPU's sizes, or the smallest that still exercises the same code on the CPU."""
    if cpu_smoke:
        return {"device": "cpu", "validate": dict(methods="lora", seq="32", batch=1, checkpointing=False),
                "overhead": dict(steps=2, batch=2, seq=32, repeats=1),
                "train": dict(steps=2, batch=2, seq=64), "demo": dict(steps=1, eval_samples=2, probe_samples=2,
                                                                       new_tokens=4, methods="lora")}
    return {"device": "cuda", "validate": dict(methods="full,lora,qlora", seq="512", batch=2, checkpointing=True),
            "overhead": dict(steps=40, batch=8, seq=512, repeats=2),
            "train": dict(steps=30, batch=4, seq=256), "demo": dict()}


# --- the model and the data ------------------------------------------------------------------------------------

def model_dir(work: Path, cpu_smoke: bool, given: str | None = None) -> tuple[str, str]:
    """(path, what it is): ``given`` (--model), else the real smollm2-135m where installed (not in --cpu-smoke),
    else random weights of its architecture (or of a tiny Llama for --cpu-smoke) with a small BPE tokenizer, saved
    once in ``work``."""
    if given:
        return given, f"as given (--model {given})"
    if not cpu_smoke:
        try:
            from tunelab.models import resolve_model

            return resolve_model("smollm2-135m"), "real (smollm2-135m)"
        except Exception as e:  # not installed here (its package is 98 MB: too big to carry to a lent GPU)
            why = f"{type(e).__name__}: {str(e)[:200]}"
    else:
        why = "--cpu-smoke"
    target = work / "model"
    if not (target / "config.json").is_file():
        import torch
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
        from transformers import AutoModelForCausalLM, LlamaConfig, PreTrainedTokenizerFast

        tok = Tokenizer(models.BPE(unk_token=None))
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        from tunelab.builtin.text2sql import builtin_text2sql_dir

        corpus = [line for name in ("train.jsonl", "test.jsonl")
                  for line in (builtin_text2sql_dir() / name).read_text().splitlines()]
        specials = ["<pad>", "<|endoftext|>", "<|im_start|>", "<|im_end|>"]
        tok.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=500, special_tokens=specials,
                                                            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                                            show_progress=False))
        fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<|im_end|>",
                                       bos_token="<|endoftext|>", unk_token=None)
        fast.chat_template = CHATML
        dims = TINY if cpu_smoke else SMOLLM2_135M
        config = LlamaConfig(**dims, pad_token_id=0, bos_token_id=1, eos_token_id=3, architectures=["LlamaForCausalLM"])
        torch.manual_seed(0)
        AutoModelForCausalLM.from_config(config, dtype=torch.float32).save_pretrained(target)
        fast.save_pretrained(target)
    arch = "a tiny Llama" if cpu_smoke else "SmolLM2-135M's architecture"
    return str(target), f"random weights, {arch} ({why})"


def text2sql_file() -> str:
    from tunelab.builtin.text2sql import builtin_text2sql_dir

    return str(builtin_text2sql_dir() / "train.jsonl")


# --- the checks (each runs in a child process; returns a JSON-able dict or raises) ----------------------------------

def _tunelab(args: list[str], *, timeout: float, launcher: list[str] | None = None):
    """Run ``tunelab ARGS`` (or ``LAUNCHER ARGS``), a little inside the check's own time limit."""
    cmd = (launcher or [sys.executable, "-m", "tunelab"]) + args
    try:
        return cmd, subprocess.run(cmd, capture_output=True, text=True, timeout=max(timeout - 5, 1))
    except subprocess.TimeoutExpired as e:  # say where it was when time ran out
        err = e.stderr.decode("utf-8", "replace") if isinstance(e.stderr, bytes) else (e.stderr or "")
        raise RuntimeError(f"timed out after {e.timeout:.0f}s: {' '.join(map(str, cmd))}\n{err[-2500:]}") from None


def _fail(cmd, done) -> None:
    raise RuntimeError(f"exit {done.returncode}: {' '.join(map(str, cmd))}\n{(done.stderr or '')[-2500:]}")


def check_estimate_validate(ctx: dict) -> dict:
    s = ctx["settings"]["validate"]
    args = ["estimate", "--validate", "--device", ctx["settings"]["device"], "--validate_models", ctx["model"],
            "--validate_methods", s["methods"], "--validate_seq_lengths", s["seq"], "--validate_batch_size",
            str(s["batch"]), "--json"]
    cmd, done = _tunelab(args, timeout=ctx["timeout"])
    if done.returncode not in (0, 1):  # 1: a case outside the tolerance (still a result)
        _fail(cmd, done)
    result = json.loads(done.stdout)
    cases = result["cases"]
    if not s["checkpointing"]:
        cases = [c for c in cases if not c["gradient_checkpointing"]]
    return {"command": "tunelab " + " ".join(args), "target": "every |error| <= 10%",
            "passed": all(abs(c["error"]) <= 0.10 for c in cases),
            "worst_error": max(abs(c["error"]) for c in cases), "cases": cases,
            "measured_with": "torch.cuda.max_memory_allocated" if ctx["settings"]["device"] == "cuda"
            else "live tensor bytes (CPU)"}


def _plain_loop(model_path: str, method: str, data: Path, steps: int, batch: int, seq: int, device: str) -> dict:
    """bench/overhead.py's minimal loop, on ``device``: the same model, optimizer (fused AdamW), schedule, clipping,
    LoRA, and bf16 autocast with a bf16 base for LoRA as tunelab loads it."""
    import random

    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer, get_linear_schedule_with_warmup

    from overhead import LEARNING_RATE, LORA
    from tunelab.methods.base import default_target_modules

    tok = AutoTokenizer.from_pretrained(model_path)
    texts = [json.loads(line)["text"] for line in data.read_text().splitlines()]
    ids = [tok(t + tok.eos_token, add_special_tokens=False)["input_ids"][:seq] for t in texts]
    assert all(len(x) == seq for x in ids), "fixed-length inputs"
    torch.manual_seed(0)
    dtype = torch.bfloat16 if method == "lora" else torch.float32
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=dtype).to(device)
    model.config.use_cache = False
    if method == "lora":
        model = get_peft_model(model, LoraConfig(task_type="CAUSAL_LM", **LORA,
                                                 target_modules=default_target_modules(model)))
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=LEARNING_RATE[method], weight_decay=0.0, fused=True)
    sched = get_linear_schedule_with_warmup(opt, 0, steps)
    order = list(range(len(ids)))
    random.Random(0).shuffle(order)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    sync()
    started = time.perf_counter()
    for step in range(steps):
        x = torch.tensor([ids[order[(step * batch + i) % len(order)]] for i in range(batch)], device=device)
        with torch.autocast(device, dtype=torch.bfloat16):
            loss = model(input_ids=x, attention_mask=torch.ones_like(x), labels=x).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
    sync()
    seconds = time.perf_counter() - started
    return {"seconds": seconds, "tokens_per_second": steps * batch * seq / seconds}


def _tunelab_run(model_path: str, method: str, data: Path, steps: int, batch: int, seq: int, out: Path,
                 device: str) -> dict:
    from overhead import LEARNING_RATE, LORA
    from tunelab.config import TrainOptions
    from tunelab.training import train

    opts = TrainOptions(model_name_or_path=model_path, dataset_name_or_path=str(data), output_dir=str(out),
                        method=method, max_steps=steps, per_device_train_batch_size=batch, max_seq_length=seq,
                        learning_rate=LEARNING_RATE[method], lora_r=LORA["r"], lora_alpha=LORA["lora_alpha"],
                        lora_dropout=LORA["lora_dropout"], warmup_ratio=0.0, logging_steps=10, save_steps=10**9,
                        use_cpu=device == "cpu", seed=0, bf16=True, optim="adamw_torch_fused")
    r = train(opts, {"warmup_ratio", "learning_rate"}).results
    return {"seconds": r["train_seconds"], "tokens_per_second": r["train_tokens_per_second"],
            "peak_memory_bytes": r["peak_memory_bytes"], "peak_memory_kind": r["peak_memory_kind"],
            "precision": r.get("precision"), "final_train_loss": r["final_train_loss"]}


def check_overhead(ctx: dict) -> dict:
    """tunelab train against the minimal loop, bf16, interleaved (the side that goes first alternates), after a
    warm-up run that pays CUDA's and cuBLAS's start-up."""
    import gc
    import statistics

    from overhead import fixed_length_data

    s, device, work = ctx["settings"]["overhead"], ctx["settings"]["device"], Path(ctx["work"])
    data = fixed_length_data(work / "fixed.jsonl", s["steps"] * s["batch"], s["seq"])
    _plain_loop(ctx["model"], "lora", data, 2, s["batch"], s["seq"], device)  # warm-up
    rows = []
    for rep in range(s["repeats"]):
        for i, method in enumerate(("full", "lora")):
            sides = ("plain_loop", "tunelab") if (rep + i) % 2 == 0 else ("tunelab", "plain_loop")
            row = {"method": method, "repeat": rep, "first": sides[0]}
            for side in sides:
                gc.collect()
                if side == "plain_loop":
                    row[side] = _plain_loop(ctx["model"], method, data, s["steps"], s["batch"], s["seq"], device)
                else:
                    row[side] = _tunelab_run(ctx["model"], method, data, s["steps"], s["batch"], s["seq"],
                                             work / f"overhead-{method}-{rep}", device)
            row["ratio"] = row["tunelab"]["tokens_per_second"] / row["plain_loop"]["tokens_per_second"]
            rows.append(row)
    summary = {}
    for method in ("full", "lora"):
        cell = [r for r in rows if r["method"] == method]
        summary[method] = {"median_ratio": statistics.median(r["ratio"] for r in cell),
                           "ratios": [r["ratio"] for r in cell],
                           "tunelab_tokens_per_second": statistics.median(r["tunelab"]["tokens_per_second"]
                                                                          for r in cell),
                           "plain_loop_tokens_per_second": statistics.median(r["plain_loop"]["tokens_per_second"]
                                                                             for r in cell)}
    return {"precision": "bf16 autocast", "settings": s, "summary": summary, "runs": rows,
            "note": "tunelab's time is its train_seconds (all of Trainer.train: set-up, steps, end), the loop's its "
                    "steps; the ratio is tokens/s, tunelab over the loop (1.0 = no overhead)"}


def _train_args(ctx: dict, out: Path, method: str) -> list[str]:
    s = ctx["settings"]["train"]
    return ["--model_name_or_path", ctx["model"], "--dataset_name_or_path", text2sql_file(), "--output_dir",
            str(out), "--method", method, "--max_steps", str(s["steps"]), "--per_device_train_batch_size",
            str(s["batch"]), "--max_seq_length", str(s["seq"]), "--logging_steps", "1", "--save_steps", "100000",
            *(["--use_cpu"] if ctx["settings"]["device"] == "cpu" else [])]


def _train_summary(out: Path) -> dict:
    r = json.loads((out / "train_results.json").read_text())
    curve = [p["loss"] for p in r["loss_curve"]]
    keep = ("method", "precision", "precision_reason", "train_seconds", "train_tokens_per_second",
            "peak_memory_bytes", "peak_memory_kind", "peak_tensor_bytes", "world_size", "device", "device_name",
            "trainable_params", "global_step")
    return {**{k: r.get(k) for k in keep}, "first_loss": curve[0] if curve else None,
            "last_loss": curve[-1] if curve else None,
            "loss_finite": all(x == x and abs(x) < float("inf") for x in curve),
            "loss_fell": bool(curve) and curve[-1] < curve[0]}


def check_qlora(ctx: dict) -> dict:
    import importlib.util

    if importlib.util.find_spec("bitsandbytes") is None:
        return {"skipped": "bitsandbytes is not installed (carry its wheel: bench/gpu_wheels.sh)"}
    out = Path(ctx["work"]) / "qlora"
    cmd, done = _tunelab(["train", *_train_args(ctx, out, "qlora")], timeout=ctx["timeout"])
    if done.returncode != 0:
        _fail(cmd, done)
    config = (out / "tunelab_config.yaml").read_text()
    return {"command": " ".join(cmd[2:]), **_train_summary(out),
            "bnb_4bit_compute_dtype_option": next((line.split(":", 1)[1].strip() for line in config.splitlines()
                                                   if line.startswith("bnb_4bit_compute_dtype")), None)}


def _distributed(ctx: dict, name: str, flags: list[str]) -> dict:
    """One process under torchrun (its world size 1), the Trainer's FSDP / DeepSpeed set up as on several GPUs."""
    out = Path(ctx["work"]) / name
    if ctx["settings"]["device"] == "cpu":
        return {"skipped": "needs a CUDA GPU (--cpu-smoke)",
                "command": " ".join(["torchrun", "--standalone", "--nproc_per_node", "1", "-m", "tunelab", "train",
                                     *_train_args(ctx, out, "full"), *flags])}
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "1", "-m",
                "tunelab", "train"]
    cmd, done = _tunelab([*_train_args(ctx, out, "full"), *flags], timeout=ctx["timeout"], launcher=launcher)
    if done.returncode != 0:
        _fail(cmd, done)
    return {"command": " ".join(["torchrun", *cmd[3:]]), **_train_summary(out)}


def check_fsdp(ctx: dict) -> dict:
    return _distributed(ctx, "fsdp", ["--fsdp", "true", "--fsdp_config",
                                      str(REPO / "examples" / "distributed" / "fsdp_full_shard.json")])


def check_deepspeed(ctx: dict) -> dict:
    import importlib.util

    if importlib.util.find_spec("deepspeed") is None:
        return {"skipped": "deepspeed is not installed (PyPI has only its source distribution, which must be built "
                           "where it runs)"}
    return _distributed(ctx, "deepspeed", ["--deepspeed", str(REPO / "examples" / "distributed" / "ds_zero2.json")])


def check_demo(ctx: dict) -> dict:
    s = ctx["settings"]["demo"]
    out = Path(ctx["work"]) / "demo"
    args = ["compare", "--recipe", "demo", "--output_dir", str(out), "--device", ctx["settings"]["device"]]
    if not ctx["weights"].startswith("real"):
        args += ["--model_name_or_path", ctx["model"]]
    if s:
        args += ["--max_steps", str(s["steps"]), "--max_eval_samples", str(s["eval_samples"]), "--probe_samples",
                 str(s["probe_samples"]), "--max_new_tokens", str(s["new_tokens"]), "--methods", s["methods"]]
    started = time.perf_counter()
    cmd, done = _tunelab(args, timeout=ctx["timeout"])
    wall = time.perf_counter() - started
    if done.returncode != 0:
        _fail(cmd, done)
    records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines() if line.strip()]
    keep = ("label", "status", "precision", "train_seconds", "train_tokens_per_second", "peak_memory_bytes",
            "headline_metric", "headline_value", "wall_seconds", "device_name")
    runs = [{k: r.get(k) for k in keep} for r in records]
    training = sum(r.get("train_seconds") or 0 for r in records)
    return {"command": "tunelab " + " ".join(args), "wall_seconds": wall, "sum_train_seconds": training,
            "wall_over_training": wall / training if training else None, "runs": runs,
            "quality_meaningful": ctx["weights"].startswith("real")}


# --- running them -----------------------------------------------------------------------------------------------

def preflight() -> dict:
    """Versions of what the checks need, the device and the precision tunelab picks on it."""
    import importlib.metadata as md

    info: dict = {"python": sys.version.split()[0]}
    for pkg in ("torch", "transformers", "peft", "accelerate", "datasets", "bitsandbytes", "deepspeed",
                "tokenizers", "safetensors"):
        try:
            info[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            info[pkg] = None
    import torch

    info["cuda_available"] = torch.cuda.is_available()
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
        info["gpu_memory_bytes"] = torch.cuda.get_device_properties(0).total_memory
    from types import SimpleNamespace

    from tunelab import precision

    p = precision.for_options(SimpleNamespace(bf16=None, fp16=False, use_cpu=not torch.cuda.is_available()))
    info["default_precision"] = p.record()
    return info


def run_child(name: str, ctx_file: Path, result_file: Path, timeout: float) -> dict:
    """Run one check in a child process; its outcome: ok (with its result), skipped, failed or timeout."""
    import signal

    started = time.perf_counter()
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", name, "--ctx", str(ctx_file), "--result",
           str(result_file)]
    log = result_file.with_suffix(".log")
    with open(log, "w") as sink:
        # a session of its own: on a timeout the check's whole process group goes (its tunelab subprocesses too)
        proc = subprocess.Popen(cmd, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            status = "ok" if proc.wait(timeout=timeout) == 0 else "failed"
        except subprocess.TimeoutExpired:
            status = "timeout"
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    tail = log.read_text(errors="replace")[-3000:]
    seconds = time.perf_counter() - started
    outcome: dict = {"status": status, "seconds": round(seconds, 1), "timeout_s": round(timeout, 1)}
    if result_file.is_file():
        payload = json.loads(result_file.read_text())
        if "error" in payload:
            outcome["status"] = "failed"
            outcome["error"] = payload["error"]
        else:
            outcome["result"] = payload
            if "skipped" in payload:
                outcome["status"] = "skipped"
    if outcome["status"] in ("failed", "timeout") and "error" not in outcome:
        outcome["error"] = tail
    return outcome


def child(name: str, ctx_file: Path, result_file: Path) -> int:
    ctx = json.loads(ctx_file.read_text())
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        result = globals()[f"check_{name}"](ctx)
    except Exception as e:
        result = {"error": f"{type(e).__name__}: {e}"[-3000:], "traceback": traceback.format_exc()[-3000:]}
    result_file.write_text(json.dumps(result, indent=2, default=str))
    return 0 if "error" not in result else 1


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cpu-smoke", "--dry-run", dest="cpu_smoke", action="store_true",
                    help="run every check's plumbing on the CPU with tiny settings (no GPU needed)")
    ap.add_argument("--only", default=None, help=f"comma-separated checks (default: all of {', '.join(CHECKS)})")
    ap.add_argument("--out", default=None, help="result file (default: bench/results/gpu.json; "
                                                "bench/results/gpu-cpu-smoke.json with --cpu-smoke)")
    ap.add_argument("--budget_s", type=float, default=None,
                    help=f"seconds for all checks together (default: {BUDGET_S}; 1800 with --cpu-smoke)")
    ap.add_argument("--model", default=None, help="a model folder to use instead (default: smollm2-135m if "
                                                  "installed, else random weights of its architecture)")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--ctx", help=argparse.SUPPRESS)
    ap.add_argument("--result", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        return child(args.child, Path(args.ctx), Path(args.result))

    budget = args.budget_s if args.budget_s is not None else (1800.0 if args.cpu_smoke else BUDGET_S)
    names = [n.strip() for n in args.only.split(",")] if args.only else list(CHECKS)
    unknown = [n for n in names if n not in CHECKS]
    if unknown:
        ap.error(f"unknown check(s) {', '.join(unknown)}; choose from {', '.join(CHECKS)}")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # the checks' tunelab subprocesses import this checkout's tunelab
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO / "src"), os.environ.get("PYTHONPATH")]))
    started = time.perf_counter()
    info = preflight()
    if not args.cpu_smoke and not info["cuda_available"]:
        print("error: no CUDA GPU here; run with --cpu-smoke to check the plumbing on the CPU", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="tunelab-gpu-check-"))
    report: dict = {"benchmark": "gpu_check", "mode": "cpu-smoke" if args.cpu_smoke else "gpu", "machine": info,
                    "checks": {}}
    try:
        model, weights = model_dir(work, args.cpu_smoke, args.model)
        report["model"], report["weights"] = model, weights
        ctx = {"settings": settings(args.cpu_smoke), "work": str(work), "model": model, "weights": weights}
        for name in names:
            left = budget - (time.perf_counter() - started)
            if left < 10:
                report["checks"][name] = {"status": "not run", "error": "the time budget was spent"}
                continue
            timeout = min(TIMEOUT_S[name], left) if not args.cpu_smoke else left
            ctx_file = work / f"ctx-{name}.json"
            ctx_file.write_text(json.dumps({**ctx, "timeout": timeout}))
            outcome = run_child(name, ctx_file, work / f"result-{name}.json", timeout)
            report["checks"][name] = outcome
            print(f"[gpu_check] {name}: {outcome['status']} in {outcome['seconds']}s"
                  + (f" ({outcome['error'].strip().splitlines()[-1][:200]})" if outcome.get("error") else ""),
                  flush=True)
    finally:
        report["wall_seconds"] = round(time.perf_counter() - started, 1)
        shutil.rmtree(work, ignore_errors=True)
    out = Path(args.out) if args.out else BENCH / "results" / ("gpu-cpu-smoke.json" if args.cpu_smoke else "gpu.json")
    from tunelab.fileio import atomic_write_json

    atomic_write_json(out, report)
    if os.environ.get("OUT"):
        shutil.copy(out, Path(os.environ["OUT"]) / out.name)
    print(f"wrote {out} ({report['wall_seconds']}s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
