"""Which precision a run trains in, and why: bf16 autocast where the hardware runs it fast, else float32.

``decide`` is the rule, a pure function of what it is told (the flags, the device, what the GPU supports, the CPU's
instruction-set flags), so it can be tested for any machine. ``for_options`` asks this machine and applies it.

bf16 is the default on a CUDA GPU that supports it and on a CPU with native bf16 instructions: AVX512-BF16
(``avx512_bf16``) or AMX (``amx_bf16``). A CPU without them emulates bf16 matmuls, which is slower than float32, so
the default there stays float32. The vendor tells nothing: the flags are read, never guessed.

Master weights stay float32 under autocast (as the Trainer's ``bf16=True`` does); ``model_setup.weights_dtype`` keeps
a PEFT method's frozen base in bf16, its trainable tensors in float32.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Collection

# CPU flags (Linux /proc/cpuinfo names) of native bf16 arithmetic.
CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16")

RULE = ("on where the hardware runs bf16 fast (a CUDA GPU that supports it, or a CPU with avx512_bf16 or AMX "
        "instructions), else off")


@dataclass(frozen=True)
class Precision:
    """The effective choice: ``name`` is bf16, fp16 or fp32; ``reason`` says why, in words a log line can carry."""

    bf16: bool
    fp16: bool
    reason: str

    @property
    def name(self) -> str:
        return "bf16" if self.bf16 else ("fp16" if self.fp16 else "fp32")

    def record(self) -> dict[str, str]:
        """The keys saved with a run (tunelab_config.yaml, train_results.json)."""
        return {"precision": self.name, "precision_reason": self.reason}


def decide(*, bf16: bool | None, fp16: bool, on_gpu: bool, gpu_bf16: bool | None = None,
           cpu_flags: Collection[str] = ()) -> Precision:
    """The rule. ``bf16``: the user's answer (None = not asked: decide); ``on_gpu``: the run trains on a CUDA GPU;
    ``gpu_bf16``: whether that GPU supports bf16 (None: not known, assumed, as for a GPU of the Ampere generation or
    newer); ``cpu_flags``: the CPU's instruction-set flags (a CPU run)."""
    if bf16 is True:
        return Precision(True, False, "--bf16 asked")
    if bf16 is False:
        return Precision(False, fp16, "--fp16 asked" if fp16 else "--no_bf16 (bf16 turned off)")
    if fp16:
        return Precision(False, True, "fp16 asked (--fp16)")
    if on_gpu:
        if gpu_bf16 is None:
            return Precision(True, False, "auto: a CUDA GPU that supports bf16 is assumed (none here to ask)")
        return Precision(True, False, "auto: this GPU supports bf16") if gpu_bf16 \
            else Precision(False, False, "auto: this GPU does not support bf16")
    found = [f for f in CPU_BF16_FLAGS if f in set(cpu_flags)]
    if found:
        return Precision(True, False, f"auto: this CPU has {' and '.join(found)}")
    return Precision(False, False, "CPU without bf16 instructions (avx512_bf16 / amx_bf16): float32 is faster")


# --- this machine ---------------------------------------------------------------------------------------------------

def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> frozenset[str]:
    """The CPU's instruction-set flags: /proc/cpuinfo's on Linux; elsewhere what PyTorch's cpuinfo reports for the
    bf16 flags (``torch.cpu._is_avx512_bf16_supported``, ``_is_amx_tile_supported``; private, so looked up)."""
    try:
        for line in cpuinfo.read_text(encoding="utf-8", errors="replace").splitlines():
            if line.startswith("flags"):
                return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    import torch

    flags = set()
    for flag, probe in (("avx512_bf16", "_is_avx512_bf16_supported"), ("amx_bf16", "_is_amx_tile_supported")):
        fn = getattr(torch.cpu, probe, None)
        try:
            if fn is not None and fn():
                flags.add(flag)
        except Exception:  # a probe this torch build lacks or cannot run: the flag is not claimed
            pass
    return frozenset(flags)


def cpuinfo_fields(cpuinfo: Path = Path("/proc/cpuinfo")) -> dict[str, str]:
    """The first processor's fields of /proc/cpuinfo, lower-cased names; {} where there is no such file."""
    try:
        block = cpuinfo.read_text(encoding="utf-8", errors="replace").split("\n\n")[0]
    except OSError:
        return {}
    return {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in block.splitlines())
            if k.strip()}


def cpu_model(cpuinfo: Path = Path("/proc/cpuinfo")) -> str | None:
    """The CPU's model as /proc/cpuinfo names it, with its family and model numbers (a VM's name alone, "AMD EPYC",
    says little): bf16 kernels round differently from one CPU model to another, so greedy answers may differ."""
    fields = cpuinfo_fields(cpuinfo)
    name = fields.get("model name")
    if not name:
        return None
    numbers = [f"{label} {fields[key]}" for key, label in (("cpu family", "family"), ("model", "model"))
               if fields.get(key)]
    return f"{name} ({', '.join(numbers)})" if numbers else name


def gpu_supports_bf16() -> bool | None:
    """Whether this machine's CUDA GPU does bf16 (None: no GPU here to ask)."""
    import torch

    if not torch.cuda.is_available():
        return None
    return bool(torch.cuda.is_bf16_supported())


def for_options(opts: Any, *, target: str | None = None) -> Precision:
    """The precision of the run ``opts`` describes (TrainOptions: bf16, fp16, use_cpu). ``target``: cpu or cuda when
    the run is for another device than this machine would pick (``tunelab estimate --device``); None: the run trains
    here, on the GPU unless --use_cpu or there is none."""
    gpu_bf16 = gpu_supports_bf16()
    if target is None:
        target = "cuda" if gpu_bf16 is not None and not opts.use_cpu else "cpu"
    on_gpu = target == "cuda"
    return decide(bf16=opts.bf16, fp16=opts.fp16, on_gpu=on_gpu, gpu_bf16=gpu_bf16 if on_gpu else None,
                  cpu_flags=() if on_gpu else cpu_flags())


def settle(opts: Any, *, target: str | None = None) -> tuple[Any, Precision]:
    """``opts`` with ``bf16`` decided (True/False, never None), and the decision."""
    p = for_options(opts, target=target)
    return dataclasses.replace(opts, bf16=p.bf16), p


def help_line() -> str:
    """What --bf16's default is on this machine, for --help."""
    from types import SimpleNamespace

    p = for_options(SimpleNamespace(bf16=None, fp16=False, use_cpu=False))
    return f"bf16 {RULE}; on this machine: {'on' if p.bf16 else 'off'} ({p.reason})"


# --- bitsandbytes' 4-bit compute dtype ----------------------------------------------------------------------------

def four_bit_compute_dtype(name: str, *, bf16: bool, on_gpu: bool, gpu_bf16: bool | None = None):
    """The dtype bitsandbytes dequantizes 4-bit weights to for each matmul (``--bnb_4bit_compute_dtype``), for
    training, inference and the estimator alike. ``auto``: bfloat16 on a GPU that supports it (``gpu_bf16`` None:
    ask this machine's GPU, or assume it does when there is none) and on a CPU run that trains in bf16 (autocast
    would cast a float32 dequantized weight to bf16 anyway: a second copy); float32 otherwise."""
    import torch

    if name != "auto":
        return getattr(torch, name)
    if on_gpu:
        if gpu_bf16 is None:
            gpu_bf16 = gpu_supports_bf16()
        return torch.bfloat16 if gpu_bf16 is not False else torch.float32
    return torch.bfloat16 if bf16 else torch.float32
