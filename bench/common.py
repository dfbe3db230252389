"""Shared by the benchmarks: the machine's description and atomic result files under bench/results/."""

from __future__ import annotations

import datetime as _dt
import os
import platform
import sys
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from tunelab.logs import quiet_library_notices  # (a benchmark is a program: it silences what the CLI does)

quiet_library_notices()


def machine() -> dict:
    import torch
    import transformers
    import peft

    info = {"python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
            "peft": peft.__version__, "cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "date": _dt.datetime.now(_dt.timezone.utc).isoformat()}
    try:
        mem = [l for l in Path("/proc/meminfo").read_text().splitlines() if l.startswith("MemTotal")][0]
        info["memory"] = " ".join(mem.split()[1:])
    except (OSError, IndexError):
        pass
    # which CPU, beyond its architecture: bf16 matrix kernels round differently from one CPU model to another, so a
    # bf16 benchmark re-run on another host can answer a question differently (the VM's model name alone says little)
    from tunelab.precision import cpuinfo_fields

    cpu = cpuinfo_fields()
    if cpu:
        info["cpu_model"] = (f"{cpu.get('model name', '?')} (family {cpu.get('cpu family', '?')}, model "
                             f"{cpu.get('model', '?')}, stepping {cpu.get('stepping', '?')}, microcode "
                             f"{cpu.get('microcode', '?')})")
    info["cpu_capability"] = torch.backends.cpu.get_cpu_capability()
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def write_result(name: str, payload: dict) -> Path:
    from tunelab.fileio import atomic_write_json

    from tunelab.evaluation.retention import PROBE_PROMPTING

    # how retention probes were asked (files written before 2026-12-06 lack it: under the recipe's system prompt)
    payload = {"benchmark": name, "machine": machine(), "probe_prompting": PROBE_PROMPTING, **payload}
    path = atomic_write_json(RESULTS / f"{name}.json", payload)
    print(f"wrote {path}")
    return path


def cpu_peak_flops(threads: int | None = None) -> dict:
    """The CPU's peak FLOP/s for float32 and for bf16 matrix products, from core count, clock and vector width, with
    how it was derived (the figures are an upper bound: no run reaches them).

    FLOPs per cycle per core = FMA units x lanes x 2 (an FMA is two FLOPs). Lanes = datapath bits / 32 for float32;
    AVX-512 (avx512f) is a 512-bit datapath on Intel and on AMD Zen 5 (family 26), but AMD Zen 4 (family 25) executes
    it as two 256-bit halves. Two FMA units per core (Intel server cores since Skylake-SP, AMD Zen 2-5). bf16:
    avx512_bf16's VDPBF16PS does two bf16 products per float32 lane, twice the float32 rate; AMX (amx_bf16) tiles
    do 1024 bf16 FLOPs per cycle per core (Sapphire Rapids). Clock: /proc/cpuinfo's 'cpu MHz' (in a VM, the host's
    nominal clock; boost is not counted, so a boosting CPU can exceed this "peak")."""
    import torch

    from tunelab.precision import cpuinfo_fields

    info = cpuinfo_fields()
    flags = set(info.get("flags", "").split())
    vendor, family = info.get("vendor_id", "?"), int(info.get("cpu family", "0") or 0)
    mhz = float(info.get("cpu mhz", "0") or 0)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    used = min(cores, threads or torch.get_num_threads())
    if "avx512f" in flags:
        bits = 256 if vendor == "AuthenticAMD" and family == 25 else 512
        isa = "avx512f" + (" (executed as 2 x 256-bit on AMD Zen 4)" if bits == 256 else "")
    elif "avx2" in flags and "fma" in flags:
        bits, isa = 256, "avx2+fma"
    else:
        bits, isa = 128, "sse (no FMA assumed: 128-bit, 2 units)"
    fma_units = 2
    fp32_per_cycle = fma_units * (bits // 32) * 2
    if "amx_bf16" in flags:
        bf16_per_cycle, bf16_how = 1024, "amx_bf16 tiles: 1024 bf16 FLOPs/cycle/core"
    elif "avx512_bf16" in flags:
        bf16_per_cycle, bf16_how = 2 * fp32_per_cycle, "avx512_bf16 (VDPBF16PS): 2 x the float32 rate"
    else:
        bf16_per_cycle, bf16_how = fp32_per_cycle, "no bf16 instructions: at most the float32 rate"
    hz = mhz * 1e6
    return {
        "cpu": info.get("model name", "?"), "vendor": vendor, "family": family, "clock_mhz": mhz,
        "cores_used": used, "datapath_bits": bits, "fma_units_per_core": fma_units,
        "fp32_flops_per_cycle_per_core": fp32_per_cycle, "bf16_flops_per_cycle_per_core": bf16_per_cycle,
        "fp32_peak_flops": used * hz * fp32_per_cycle, "bf16_peak_flops": used * hz * bf16_per_cycle,
        "derivation": (f"{used} core(s) x {mhz:.0f} MHz (/proc/cpuinfo, nominal; boost not counted) x "
                       f"{fp32_per_cycle} float32 FLOPs/cycle ({isa}: {bits // 32} float32 lanes x {fma_units} FMA "
                       f"units x 2); bf16: {bf16_per_cycle} FLOPs/cycle ({bf16_how})"),
    }


def training_flops_per_token(model, context_tokens: float) -> dict:
    """Useful training FLOPs per token: 6 per trained weight of a linear layer (forward 2, backward 4), 4 per frozen
    one (forward 2, input gradient 2: the 4N of LoRA), plus attention's 12 x layers x heads x head_dim x context
    (PaLM's appendix B: QK^T and AV, forward and backward; the full context, not halved for causality). Linear layers
    include the output head (tied to the embedding or not); the embedding lookup costs no FLOPs. LoRA's A and B are
    linear layers of their own, counted as trained."""
    import torch

    trained = frozen = 0
    for module in model.modules():
        if isinstance(module, torch.nn.Linear):
            n = module.weight.numel()
            if module.weight.requires_grad:
                trained += n
            else:
                frozen += n
    cfg = model.config
    layers, heads = cfg.num_hidden_layers, cfg.num_attention_heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
    attention = 12 * layers * heads * head_dim * context_tokens
    return {"trained_linear_params": trained, "frozen_linear_params": frozen, "context_tokens": context_tokens,
            "attention_flops_per_token": attention,
            "flops_per_token": 6 * trained + 4 * frozen + attention,
            "formula": "6 x trained + 4 x frozen linear-layer weights + 12 x layers x heads x head_dim x context"}
