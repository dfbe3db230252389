"""Predict the peak memory of a training run before it starts, and prove the prediction against real runs.

How a prediction is made (the same way for a 4-layer toy and for a 70B model):

1. The model's config comes from a local folder, a built-in model, the table of well-known architectures shipped
   with tunelab (``architectures.py``), or the Hub when it is reachable. No weights are read.
2. The model is built on the meta device, quantized layers are put in place by transformers' own bitsandbytes
   quantizer, and every parameter and buffer becomes a fake tensor (``FakeTensorMode``: shapes, dtypes and devices
   without data). 4-bit weights are quantized *on the fake tensors* by bitsandbytes' own code, so the packed uint8
   data and the absmax / nested-absmax constants have exactly the sizes of a loaded checkpoint.
3. The model is prepared exactly as ``tunelab train`` prepares it (k-bit preparation, input gradients, the method's
   ``apply`` through peft, activation checkpointing as the Trainer enables it), and the optimizer is the one the
   Trainer would build (its class and kwargs from ``Trainer.get_optimizer_cls_and_kwargs``, its two parameter
   groups, bitsandbytes' fp32 override for embeddings).
4. One training step (forward with labels, backward, gradient clipping, optimizer step, zero_grad) runs on the fake
   tensors under a live-byte counter (``trace.LiveBytes``). Its peak, by phase, is the prediction. The optimizer
   states created in that first step persist, so the steady-state peak of every later step is the first step's peak
   plus the states that did not exist yet at that moment.
5. Weights, gradients and optimizer states are also counted from the parameters (their numbers and dtypes), and the
   textbook formulas (16 bytes per trainable parameter for fp32 AdamW; Korthikanti et al. 2022 for activations)
   are reported beside the traced figures as a cross-check.

``validate`` runs the same step with real weights and real tensors and compares: on CUDA with
``torch.cuda.max_memory_allocated``; on the CPU with the same live-byte counter on the real tensors (what an
allocator would hold without caching).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import math
import os
import socket
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from tunelab import precision
from tunelab.errors import TunelabError
from tunelab.memory import architectures
from tunelab.model_setup import count_parameters, label_kwargs, prepare_model, weights_dtype
from tunelab.memory.trace import (CUDA_BLOCK_BYTES, StepTrace, materialize_fake, new_fake_mode, quantize_on_meta,
                                  quantized_kind, resident_tensors, storage_bytes, trace_step, weight_count)

GIB = 1024 ** 3
PARTS = ("weights_bytes", "gradients_bytes", "optimizer_states_bytes", "activations_bytes", "temporaries_bytes",
         "cuda_workspace_bytes")
TINY_MODEL = "tiny-llama"


def cuda_workspace_bytes() -> int:
    """cuBLAS workspaces, which come from the caching allocator (max_memory_allocated counts them).

    One per (thread, stream) that runs matmuls, and the autograd engine runs backward on a thread of its own: two.
    Each is CUBLAS_WORKSPACE_CONFIG's size when set (":SIZE_KIB:COUNT" pairs), else PyTorch's default: 8 x 4 MiB on
    Hopper and newer, 2 x 4 MiB + 8 x 16 KiB before. Without a GPU to ask, a Hopper-class GPU is assumed.
    """
    import re

    import torch

    config = os.environ.get("CUBLAS_WORKSPACE_CONFIG", "")
    pairs = re.findall(r":(\d+):(\d+)", config)
    if pairs:
        each = sum(int(size) * 1024 * int(count) for size, count in pairs)
    else:
        major = torch.cuda.get_device_capability()[0] if torch.cuda.is_available() else 9
        each = 4096 * 1024 * 8 if major >= 9 else 4096 * 1024 * 2 + 16 * 1024 * 8
    return 2 * each


# --- which model -------------------------------------------------------------------------------------------------

@dataclass
class ModelSpec:
    name: str                # as the user gave it
    source: str              # builtin, local, table or hub
    path: str | None         # a folder with weights (builtin/local), else None
    config: Any              # a transformers config
    task_kind: str


def _hub_reachable(timeout: float = 3.0) -> bool:
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        return False
    host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname or "huggingface.co"
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False


def resolve_spec(name: str, *, task_type: str = "auto", trust_remote_code: bool = False) -> ModelSpec:
    """Find a model's config without loading weights: built-in name, local folder, shipped table, then the Hub."""
    from tunelab.models import BUILTIN_MODELS, detect_task_kind, load_config, resolve_model

    path: str | None = None
    if name == TINY_MODEL:
        path, source = str(tiny_model_dir()), "builtin"
    elif name in BUILTIN_MODELS or Path(name).expanduser().exists():
        path = resolve_model(name)
        source = "builtin" if name in BUILTIN_MODELS else "local"
    if path is not None:
        config = load_config(path, trust_remote_code=trust_remote_code)
    elif (config := _table_config(name)) is not None:
        source = "table"
    else:
        known = ", ".join(architectures.known_names())
        if "/" not in name or name.startswith((".", "/", "~")):
            raise TunelabError(f"--model_name_or_path {name}: unknown architecture; pass a local model folder, a "
                               f"built-in name ({', '.join(BUILTIN_MODELS)}), a Hub id, or one of the architectures "
                               f"tunelab knows offline: {known}")
        if not _hub_reachable():
            raise TunelabError(f"--model_name_or_path {name}: not in tunelab's table of architectures and the Hub "
                               f"cannot be reached to read its config.json; pass a local folder holding its "
                               f"config.json, or one of: {known}")
        config = load_config(name, trust_remote_code=trust_remote_code)
        source = "hub"
    task_kind = detect_task_kind(config) if task_type == "auto" else task_type
    return ModelSpec(name=name, source=source, path=path, config=config, task_kind=task_kind)


def _table_config(name: str):
    """A config from the shipped table (None when the name is not in it)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return architectures.build_config(name)


def tiny_model_dir() -> Path:
    """A tiny randomly initialised Llama (the built-in smollm2-135m's architecture, scaled down), saved once."""
    from tunelab.models import cache_dir

    target = cache_dir() / "models" / TINY_MODEL
    if (target / "config.json").is_file():
        return target
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    config = LlamaConfig(hidden_size=128, intermediate_size=384, num_hidden_layers=4, num_attention_heads=4,
                         num_key_value_heads=2, head_dim=32, vocab_size=2048, max_position_embeddings=2048,
                         tie_word_embeddings=True, pad_token_id=2, bos_token_id=1, eos_token_id=2,
                         architectures=["LlamaForCausalLM"])
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{TINY_MODEL}.", dir=target.parent))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        os.replace(tmp, target)
    except OSError:
        if not (target / "config.json").is_file():
            raise
    finally:
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
    return target


# --- run settings derived from the options ------------------------------------------------------------------------

@dataclass
class RunSettings:
    target: str              # the device the run is for: cuda or cpu
    trace_device: str        # the device of the fake tensors (cuda only where this torch has CUDA)
    compute_dtype: Any       # bitsandbytes 4-bit compute dtype
    autocast: tuple[str, Any] | None
    granularity: int
    micro_batches: int


def run_settings(opts, *, device: str = "auto") -> RunSettings:
    import torch

    target = "cpu" if (opts.use_cpu or device == "cpu") else "cuda"
    trace_device = "cuda" if target == "cuda" and torch.cuda.is_available() else "cpu"
    # as tunelab train picks it; a GPU is assumed to support bf16 (Ampere or newer) unless this machine has one to ask
    compute = precision.four_bit_compute_dtype(opts.bnb_4bit_compute_dtype, bf16=bool(opts.bf16),
                                               on_gpu=target == "cuda")
    autocast = None
    if opts.bf16:
        autocast = (trace_device, torch.bfloat16)
    elif opts.fp16:
        autocast = (trace_device, torch.float16)
    return RunSettings(target=target, trace_device=trace_device, compute_dtype=compute, autocast=autocast,
                       granularity=CUDA_BLOCK_BYTES if target == "cuda" else 1,
                       micro_batches=min(max(opts.gradient_accumulation_steps, 1), 2))


def settle_precision(opts, device: str = "auto"):
    """``opts`` with bf16 decided as ``tunelab train`` decides it, for the device the run is for (a GPU is assumed
    to support bf16 when there is none here to ask), and the decision (tunelab.precision)."""
    target = "cpu" if (opts.use_cpu or device == "cpu") else "cuda"
    return precision.settle(opts, target=target)


def check_estimate_options(opts, spec: ModelSpec) -> Any:
    """The checks ``tunelab train`` makes before loading anything, then the method's own; returns the method."""
    from tunelab.methods import ApplyContext, get_method
    from tunelab.train_checks import check_options

    if opts.bf16 and opts.fp16:
        raise TunelabError("--bf16 and --fp16 cannot be combined; choose one")
    if opts.fp16 and opts.use_cpu:
        raise TunelabError("--fp16 needs a CUDA GPU; on the CPU use --bf16 or neither")
    # (fp16 is fine for an estimate of a GPU run made on a machine without one)
    # The run is not started: its data need not exist yet, nor a checkpoint to resume from.
    check_options(dataclasses.replace(opts, fp16=False, resume_from_checkpoint=None, dataset_name_or_path=None))
    method = get_method(opts.method)
    # (the method's own check refuses what it cannot train: prefix tuning with --gradient_checkpointing, say)
    method.check(opts, spec.config, ApplyContext(task_kind=spec.task_kind, model_path=spec.path or spec.name))
    return method


# --- building the model as tunelab train does -----------------------------------------------------------------------

def _quantization(opts, spec: ModelSpec, settings: RunSettings):
    from tunelab.models import quantization_config

    return quantization_config(use_4bit=opts.use_4bit, use_8bit=opts.use_8bit, quant_type=opts.bnb_4bit_quant_type,
                               compute_dtype=settings.compute_dtype, double_quant=opts.bnb_4bit_use_double_quant)


def build_model(opts, spec: ModelSpec, settings: RunSettings, *, fake_mode=None, num_labels: int = 2):
    """The model ``tunelab train`` would train: fake (``fake_mode`` given, nothing allocated) or with real weights."""
    import torch

    from tunelab.methods import get_method
    from tunelab.models import auto_class, load_model

    method = get_method(opts.method)
    quant = _quantization(opts, spec, settings)
    extra = label_kwargs([f"label_{i}" for i in range(num_labels)]) if spec.task_kind == "seq_cls" else {}
    device = settings.trace_device
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if fake_mode is None:
            if spec.path is None:
                raise TunelabError(f"{spec.name}: measuring needs the model's weights; pass a local folder or a "
                                   "built-in model")
            model = load_model(spec.path, spec.task_kind, quantization=quant, dtype=weights_dtype(opts),
                               device_map="cpu" if (quant is not None and device == "cpu") else None, **extra)
            if quant is None:
                model.to(device)
        else:
            config = copy.deepcopy(spec.config)
            for k, v in extra.items():
                setattr(config, k, v)
            # Everything up to the method's adapters is built on the meta device (peft cannot move modules whose
            # parameters are fake tensors); then every tensor becomes a fake one at once.
            dtype = weights_dtype(opts)
            with torch.device("meta"):
                model = auto_class(spec.task_kind).from_config(config, dtype=dtype)
                if quant is not None:
                    from transformers.quantizers import AutoHfQuantizer

                    quantizer = AutoHfQuantizer.from_config(quant, pre_quantized=False)
                    quantizer.preprocess_model(model, device_map={"": device}, dtype=dtype)
                    quantize_on_meta(model)
                    quantizer.postprocess_model(model)
                    model.hf_quantizer = quantizer
    _set_pad_token(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if fake_mode is None:
            model = prepare_like_train(model, opts, method, spec)
        else:
            with torch.device("meta"):
                model = prepare_like_train(model, opts, method, spec)
            materialize_fake(model, fake_mode, device)
    return model, method


def _set_pad_token(model) -> None:
    if model.config.pad_token_id is None:
        # train.py copies the tokenizer's pad id here; any id will do for shapes (and sequence classification
        # needs one to find each row's last token).
        eos = model.config.eos_token_id
        model.config.pad_token_id = (eos[0] if isinstance(eos, list) else eos) if eos is not None else 0


def prepare_like_train(model, opts, method, spec: ModelSpec):
    """What ``tunelab.training.build_model`` does after loading (through the same function), plus the Trainer's
    activation checkpointing."""
    from tunelab.methods import ApplyContext

    ctx = ApplyContext(task_kind=spec.task_kind, model_path=spec.path or spec.name,
                       total_steps=opts.max_steps if opts.max_steps > 0 else 1000)
    quantized = opts.use_4bit or opts.use_8bit
    model = prepare_model(model, opts, method, ctx)
    if opts.gradient_checkpointing and not quantized:
        # Trainer(activation_checkpointing=True, activation_checkpointing_kwargs={"use_reentrant": False})
        enable = getattr(model, "activation_checkpointing_enable", None)
        if enable is not None:
            enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return model


def build_optimizer(model, opts, settings: RunSettings, *, fake: bool):
    """The optimizer transformers' Trainer creates for ``--optim`` (class, kwargs and parameter groups)."""
    import torch
    from transformers import Trainer, TrainingArguments

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        args = TrainingArguments(output_dir=tempfile.gettempdir(), optim=opts.optim, report_to="none",
                                 learning_rate=opts.learning_rate or 1e-4, weight_decay=opts.weight_decay,
                                 use_cpu=True)
    cls, kwargs = Trainer.get_optimizer_cls_and_kwargs(args, model)
    kwargs = dict(kwargs)
    decay = set(Trainer.get_decay_parameter_names(None, model))
    groups = [
        {"params": [p for n, p in model.named_parameters() if n in decay and p.requires_grad],
         "weight_decay": opts.weight_decay},
        {"params": [p for n, p in model.named_parameters() if n not in decay and p.requires_grad],
         "weight_decay": 0.0},
    ]
    if cls.__module__.startswith("torch.optim") and "fused" not in kwargs and "foreach" not in kwargs:
        # torch picks the multi-tensor (foreach) implementation for CUDA tensors and the per-tensor one on the CPU;
        # it cannot tell on fake tensors, so say which.
        kwargs["foreach"] = settings.target == "cuda"
    if fake and kwargs.get("is_paged"):
        kwargs["is_paged"] = False  # paged states live in CUDA unified memory; they take the same bytes
    optimizer = cls(groups, **kwargs)
    if "bitsandbytes" in str(cls) and kwargs.get("optim_bits") == 8:
        import bitsandbytes

        manager = bitsandbytes.optim.GlobalOptimManager.get_instance()
        for module in model.modules():
            if isinstance(module, torch.nn.Embedding):
                manager.register_module_override(module, "weight", {"optim_bits": 32})
    return optimizer


def make_batch_fn(spec: ModelSpec, model, batch_size: int, seq_len: int, device: str, num_labels: int):
    """Fixed-length batches of random token ids (no padding, so no attention mask: the Trainer's all-ones mask
    reduces to none in SDPA)."""
    import torch

    vocab = int(getattr(model.config, "vocab_size", None) or spec.config.vocab_size)

    def make() -> dict:
        ids = torch.randint(0, vocab, (batch_size, seq_len), device=device)
        if spec.task_kind == "seq_cls":
            labels = torch.randint(0, num_labels, (batch_size,), device=device)
        else:
            labels = torch.randint(0, vocab, (batch_size, seq_len), device=device)
        return {"input_ids": ids, "labels": labels}

    return make


@contextlib.contextmanager
def fake_run_shims():
    """Give a fake run the answers a real run gets where a library looks at values or at a tensor's Python class.

    1. Without an attention mask transformers looks at the position ids' *values* to see whether a row packs several
       sequences. Fake tensors have no values, so it assumes packing and builds a dense [batch, 1, seq, seq] mask that
       the real run never builds (it finds one sequence per row and lets SDPA apply causality). Batches here are
       never packed: the fake run gets the real run's answer.
    2. peft dequantizes a bitsandbytes weight (DoRA's weight norm) only when its class is ``Params4bit`` /
       ``Int8Params``; the fake model's stand-ins carry the same data and constants in a plain parameter
       (``trace.quantized_kind``), so they are dequantized the same way.
    """
    import importlib

    from torch._subclasses.fake_tensor import FakeTensor

    patches: list[tuple[Any, str, Any]] = []
    masking = importlib.import_module("transformers.masking_utils")
    find_packed = getattr(masking, "find_packed_sequence_indices", None)
    if find_packed is not None:
        def find_packed_sequence_indices(position_ids):
            return None if isinstance(position_ids, FakeTensor) else find_packed(position_ids)

        patches.append((masking, "find_packed_sequence_indices", find_packed_sequence_indices))
    integrations = importlib.import_module("peft.utils.integrations")
    dequantize = getattr(integrations, "dequantize_module_weight", None)
    if dequantize is not None:
        def dequantize_module_weight(module):
            weight = getattr(module, "weight", None)
            kind = quantized_kind(weight) if isinstance(weight, FakeTensor) else None
            if kind == "4bit":
                import bitsandbytes as bnb

                return bnb.functional.dequantize_4bit(weight, weight.quant_state)
            if kind == "8bit":
                import bitsandbytes as bnb

                state = getattr(module, "state", None)
                scb = getattr(state, "SCB", None)
                return bnb.functional.int8_vectorwise_dequant(weight, scb if scb is not None else weight.SCB)
            return dequantize(module)

        for name in ("peft.utils.integrations", "peft.tuners.lora.dora", "peft.tuners.lora.layer",
                     "peft.tuners.lora.variants"):
            try:
                mod = importlib.import_module(name)
            except ImportError:
                continue
            if getattr(mod, "dequantize_module_weight", None) is dequantize:
                patches.append((mod, "dequantize_module_weight", dequantize_module_weight))
    saved = [(mod, name, getattr(mod, name)) for mod, name, _ in patches]
    for mod, name, value in patches:
        setattr(mod, name, value)
    try:
        yield
    finally:
        for mod, name, value in saved:
            setattr(mod, name, value)


# --- the estimate ------------------------------------------------------------------------------------------------

@dataclass
class Estimate:
    model: str
    model_source: str
    method: str
    task_kind: str
    target_device: str
    trace_device: str
    settings: dict[str, Any]
    total_params: int
    trainable_params: int
    peak_bytes: int
    peak_phase: str
    breakdown: dict[str, int]
    weights_detail: dict[str, int]
    phases: dict[str, dict[str, Any]]
    largest_temporaries: list[dict[str, Any]]   # the largest allocations of the peak's phase
    totals: dict[str, int]         # weights, all gradients (end of backward), optimizer states (after the step)
    checkpoint_bytes: int
    analytic: dict[str, Any]
    trace_seconds: float
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["peak_gib"] = self.peak_bytes / GIB
        return d


def _count_parameters(model) -> tuple[int, int]:
    """(trainable, total) as ``tunelab train`` reports them (peft's count; 4-bit weights count two per byte)."""
    trainable, _ = count_parameters(model)
    total = sum(weight_count(p) for p in _unique(model.parameters()))
    return trainable, total


def _weights_detail(model, granularity: int) -> dict[str, int]:
    """Weight bytes by kind: packed quantized data, quantization constants, and everything else."""
    packed, constants, other, adapters = [], [], [], []
    for p in _unique(list(model.parameters()) + list(model.buffers())):
        if quantized_kind(p):
            packed.append(p)
        elif getattr(p, "requires_grad", False):
            adapters.append(p)
        else:
            other.append(p)
    for t in resident_tensors(model):
        if not quantized_kind(t) and not any(t is x for x in packed + adapters + other):
            constants.append(t)
    return {"quantized_weights_bytes": storage_bytes(packed, granularity),
            "quantization_constants_bytes": storage_bytes(constants, granularity),
            "frozen_weights_bytes": storage_bytes(other, granularity),
            "trainable_weights_bytes": storage_bytes(adapters, granularity)}


def _unique(items):
    seen = set()
    for x in items:
        if id(x) not in seen:
            seen.add(id(x))
            yield x


def _phase_breakdown(trace: StepTrace, phase: str) -> tuple[int, dict[str, int]]:
    """The steady-state peak of a phase (every step after the first holds all optimizer states from its start) and
    its split into parts that sum to it."""
    p = trace.peaks[phase]
    grads = sum(b for ev, b in trace.grad_events if ev <= p.event)
    states_then = sum(b for ev, b in trace.state_events if ev <= p.event)
    weights = p.by_phase.get("weights", 0)
    activations = p.by_phase.get("forward", 0)
    temporaries = p.nbytes - weights - activations - grads - states_then
    parts = {"weights_bytes": weights, "gradients_bytes": grads, "optimizer_states_bytes": trace.state_bytes,
             "activations_bytes": activations, "temporaries_bytes": temporaries}
    return p.nbytes - states_then + trace.state_bytes, parts


def _config_dims(config) -> dict[str, int]:
    get = lambda *names: next((int(getattr(config, n)) for n in names if getattr(config, n, None)), 0)  # noqa: E731
    return {"hidden": get("hidden_size", "d_model", "n_embd"), "layers": get("num_hidden_layers", "num_layers",
                                                                             "n_layer"),
            "heads": get("num_attention_heads", "num_heads", "n_head"), "vocab": get("vocab_size")}


def _analytic(opts, spec: ModelSpec, trainable: int, trace: StepTrace) -> dict[str, Any]:
    """Textbook figures beside the traced ones: the cross-check."""
    b, s = opts.per_device_train_batch_size, opts.max_seq_length
    d = _config_dims(spec.config)
    h, L, a, v = d["hidden"], d["layers"], d["heads"], d["vocab"]
    if spec.task_kind == "seq2seq_lm":
        L = L + int(getattr(spec.config, "num_decoder_layers", None) or L)
    # Korthikanti et al. 2022, eq. 2: bytes per layer with 16-bit activations, dropout masks and the a*s*s
    # attention scores materialised; with full recomputation only each layer's 16-bit input stays (2sbh).
    korthikanti = L * s * b * h * (34 + 5 * a * s / h) if h else 0
    state_bytes_per_param = {"adamw_torch": 8, "adamw_torch_fused": 8, "sgd": 0,
                             "adamw_8bit": 2, "paged_adamw_8bit": 2}.get(opts.optim)
    out: dict[str, Any] = {
        "gradients_formula_bytes": 4 * trainable,
        "gradients_traced_bytes": trace.grad_bytes,
        "optimizer_states_formula_bytes": None if state_bytes_per_param is None else state_bytes_per_param * trainable,
        "optimizer_states_traced_bytes": trace.state_bytes,
        "weights_gradients_states_formula_bytes": None,
        "korthikanti_activations_bytes": int(korthikanti),
        "korthikanti_recompute_activations_bytes": int(2 * s * b * h * L),
        "logits_bytes": 4 * b * s * v if spec.task_kind != "seq_cls" else 0,
        "formula_notes": "gradients: 4 bytes per trainable fp32 parameter; AdamW: 8 (two fp32 moments), 8-bit "
                         "AdamW: 2 (plus an fp32 absmax per 256 values); full fine-tuning with fp32 AdamW: 16 "
                         "bytes per parameter; Korthikanti: 16-bit activations, dropout masks and materialised "
                         "attention scores (SDPA/flash attention drops the 5as/h term, fp32 training doubles the "
                         "rest); logits: one fp32 copy of the output layer",
    }
    from tunelab.methods import get_method

    if not get_method(opts.method).peft and state_bytes_per_param is not None:
        out["weights_gradients_states_formula_bytes"] = (8 + state_bytes_per_param) * trainable
    return out


def _checkpoint_bytes(model, method) -> int:
    """What save_model writes: the adapter's trainable tensors for PEFT, every (untied) weight for full."""
    params = [p for p in model.parameters() if p.requires_grad] if method.peft else list(model.parameters())
    return storage_bytes(params)


def estimate(opts, *, device: str = "auto", num_labels: int = 2) -> Estimate:
    """Predict the peak memory of the run ``opts`` describes (TrainOptions fields; resolved method defaults)."""
    from tunelab.config import resolve

    opts, prec = settle_precision(opts, device)
    opts, _ = resolve(opts, set())
    spec = resolve_spec(opts.model_name_or_path, task_type=opts.task_type, trust_remote_code=opts.trust_remote_code)
    method = check_estimate_options(opts, spec)
    settings = run_settings(opts, device=device)
    started = time.perf_counter()
    fake_mode = new_fake_mode()
    # A soft prompt initialised from text has the same shape as a random one; only the values need a tokenizer.
    build_opts = dataclasses.replace(opts, prompt_tuning_init="random")
    model, method = build_model(build_opts, spec, settings, fake_mode=fake_mode, num_labels=num_labels)
    trainable, total = _count_parameters(model)
    if trainable == 0:
        raise TunelabError(f"--method {opts.method} leaves nothing to train in {spec.name}")
    optimizer = build_optimizer(model, opts, settings, fake=True)  # allocates nothing until its first step
    make_batch = make_batch_fn(spec, model, opts.per_device_train_batch_size, opts.max_seq_length,
                               settings.trace_device, num_labels)
    with warnings.catch_warnings(), fake_run_shims():
        warnings.simplefilter("ignore")
        trace = trace_step(model, optimizer, make_batch, modes=[fake_mode], granularity=settings.granularity,
                           device_type="cuda" if settings.trace_device == "cuda" else None, steps=1,
                           micro_batches=settings.micro_batches, autocast=settings.autocast,
                           max_grad_norm=opts.max_grad_norm, clip_foreach=True if settings.target == "cuda" else None)
    elapsed = time.perf_counter() - started
    return _assemble(opts, spec, method, settings, model, trace, trainable, total, elapsed, prec)


def _assemble(opts, spec, method, settings, model, trace: StepTrace, trainable, total, elapsed,
              prec: precision.Precision) -> Estimate:
    phases: dict[str, dict[str, Any]] = {}
    best_phase, best = "", -1
    for phase in ("forward", "backward", "optimizer"):
        if phase not in trace.peaks:
            continue
        peak, parts = _phase_breakdown(trace, phase)
        workspace = cuda_workspace_bytes() if settings.target == "cuda" else 0
        parts["cuda_workspace_bytes"] = workspace
        phases[phase] = {"peak_bytes": peak + workspace, **parts}
        if peak + workspace > best:
            best_phase, best = phase, peak + workspace
    breakdown = {k: phases[best_phase][k] for k in PARTS}
    assert sum(breakdown.values()) == best, (breakdown, best)
    weights_detail = _weights_detail(model, settings.granularity)
    notes = []
    if settings.target == "cuda" and settings.trace_device == "cpu":
        notes.append("traced on CPU fake tensors for a CUDA run (this torch has no CUDA): CUDA's foreach optimizer, "
                     "512-byte allocation blocks and cuBLAS workspaces are modelled; the attention kernel is the CPU "
                     "SDPA one, which like CUDA's flash / memory-efficient kernels keeps no seq x seq matrix")
    if opts.optim == "paged_adamw_8bit":
        notes.append("paged optimizer states live in CUDA unified memory: counted here, though "
                     "torch.cuda.max_memory_allocated does not see them")
    if opts.gradient_accumulation_steps > 2:
        notes.append("two micro-batches traced; later ones repeat the second")
    max_positions = getattr(spec.config, "max_position_embeddings", None) or getattr(spec.config, "n_positions", None)
    if max_positions and opts.max_seq_length > max_positions:
        notes.append(f"--max_seq_length {opts.max_seq_length} is longer than the model's {max_positions} positions")
    return Estimate(
        model=spec.name, model_source=spec.source, method=opts.method, task_kind=spec.task_kind,
        target_device=settings.target, trace_device=settings.trace_device,
        settings={"per_device_train_batch_size": opts.per_device_train_batch_size,
                  "max_seq_length": opts.max_seq_length,
                  "gradient_accumulation_steps": opts.gradient_accumulation_steps,
                  "gradient_checkpointing": opts.gradient_checkpointing, "use_4bit": opts.use_4bit,
                  "use_8bit": opts.use_8bit, "bf16": opts.bf16, "fp16": opts.fp16, **prec.record(),
                  "optim": opts.optim,
                  # (the key says lora_r for compatibility: the rank of whichever method has one)
                  "lora_r": getattr(opts, method.rank_option) if method.rank_option else None,
                  "weights_dtype": str(weights_dtype(opts)).replace("torch.", ""),
                  "bnb_4bit_compute_dtype": str(settings.compute_dtype).replace("torch.", "")},
        total_params=total, trainable_params=trainable, peak_bytes=best, peak_phase=best_phase,
        breakdown=breakdown, weights_detail=weights_detail, phases=phases,
        largest_temporaries=[a.to_dict() for a in trace.largest.get(best_phase, [])][:5],
        totals={"weights_bytes": trace.weights_bytes, "gradients_bytes": trace.grad_bytes,
                "optimizer_states_bytes": trace.state_bytes},
        checkpoint_bytes=_checkpoint_bytes(model, method),
        analytic=_analytic(opts, spec, trainable, trace), trace_seconds=elapsed, notes=notes)


# --- measuring (validation) -------------------------------------------------------------------------------------

def measure(opts, *, device: str = "auto", num_labels: int = 2, steps: int = 2) -> int:
    """The real peak of ``steps`` training steps with real weights: torch.cuda.max_memory_allocated on CUDA, the
    live-byte counter on real tensors on the CPU."""
    import torch

    from tunelab.config import resolve

    opts, _ = settle_precision(opts, device)
    opts, _ = resolve(opts, set())
    spec = resolve_spec(opts.model_name_or_path, task_type=opts.task_type, trust_remote_code=opts.trust_remote_code)
    check_estimate_options(opts, spec)
    settings = run_settings(opts, device=device)
    if settings.target == "cuda" and not torch.cuda.is_available():
        raise TunelabError("measuring a CUDA run needs a CUDA GPU; pass --device cpu")
    torch.manual_seed(opts.seed)
    model, _ = build_model(opts, spec, settings, fake_mode=None, num_labels=num_labels)
    optimizer = build_optimizer(model, opts, settings, fake=False)
    make_batch = make_batch_fn(spec, model, opts.per_device_train_batch_size, opts.max_seq_length,
                               settings.trace_device, num_labels)
    cuda = settings.trace_device == "cuda"
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trace = trace_step(model, optimizer, make_batch, modes=[], granularity=settings.granularity,
                           device_type="cuda" if cuda else None, steps=steps,
                           micro_batches=settings.micro_batches, autocast=settings.autocast,
                           max_grad_norm=opts.max_grad_norm, clip_foreach=True if cuda else None)
    if cuda:
        torch.cuda.synchronize()
        return int(torch.cuda.max_memory_allocated())
    return trace.measured_peak


@dataclass
class ValidationCase:
    model: str
    method: str
    gradient_checkpointing: bool
    max_seq_length: int
    batch_size: int = 2
    predicted_bytes: int = 0
    measured_bytes: int = 0
    seconds: float = 0.0

    @property
    def error(self) -> float:
        return (self.predicted_bytes - self.measured_bytes) / self.measured_bytes if self.measured_bytes else math.inf

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "error": self.error}


def validation_cases(models=(TINY_MODEL, "smollm2-135m"), methods=("full", "lora", "qlora"),
                     seq_lengths: dict[str, tuple[int, int]] | None = None) -> list[ValidationCase]:
    seq_lengths = seq_lengths or {TINY_MODEL: (64, 256), "smollm2-135m": (64, 256)}
    cases = []
    for model in models:
        for method in methods:
            for gc in (False, True):
                for t in seq_lengths.get(model, (64, 256)):
                    cases.append(ValidationCase(model=model, method=method, gradient_checkpointing=gc,
                                                max_seq_length=t))
    return cases


def validate_case(case: ValidationCase, base_opts=None, *, device: str = "auto") -> ValidationCase:
    """Predict (fake tensors, one step) and measure (real weights, two steps) one case."""
    from tunelab.config import TrainOptions

    fields = dict(model_name_or_path=case.model, dataset_name_or_path="-", output_dir="-", method=case.method,
                  gradient_checkpointing=case.gradient_checkpointing, max_seq_length=case.max_seq_length,
                  per_device_train_batch_size=case.batch_size, lora_dropout=0.05)
    opts = dataclasses.replace(base_opts, **fields) if base_opts is not None else TrainOptions(**fields)
    started = time.perf_counter()
    case.predicted_bytes = estimate(opts, device=device).peak_bytes
    case.measured_bytes = measure(opts, device=device)
    case.seconds = time.perf_counter() - started
    return case


# --- what fits ----------------------------------------------------------------------------------------------------

def fits(peak_bytes: int, gpu_gb: float, headroom_gb: float) -> bool:
    """A run fits a GPU of ``gpu_gb`` GiB when its peak plus a headroom (CUDA context, allocator fragmentation)
    does."""
    return peak_bytes + headroom_gb * GIB <= gpu_gb * GIB


def propose_fit(opts, gpu_gb: float, *, headroom_gb: float = 1.0, device: str = "auto",
                num_labels: int = 2) -> dict[str, Any]:
    """Settings under which the run fits ``gpu_gb``.

    Changes are added in the order of what they cost in speed and quality (gradient checkpointing, a smaller batch
    with gradient accumulation keeping the effective batch, an 8-bit optimizer, a 4-bit base) until the run fits;
    then the ones the last change made unnecessary are given back (the original optimizer, no checkpointing, larger
    batches), each only if the run still fits.
    """
    from tunelab.config import resolve

    opts, prec = settle_precision(opts, device)
    opts, _ = resolve(opts, set())
    tried: list[dict[str, Any]] = []
    # Each setting is estimated and listed once: giving a batch back can reach one already found too big.
    seen: dict[str, tuple[Any, bool]] = {}

    def attempt(o, change: str):
        key = repr(dataclasses.asdict(o))
        if key in seen:
            return seen[key]
        est = estimate(o, device=device, num_labels=num_labels)
        ok = fits(est.peak_bytes, gpu_gb, headroom_gb)
        tried.append({"change": change, "peak_bytes": est.peak_bytes, "fits": ok, "method": o.method,
                      **est.settings})
        seen[key] = est, ok
        return est, ok

    def batch(o, b: int):
        effective = opts.per_device_train_batch_size * opts.gradient_accumulation_steps
        return dataclasses.replace(o, per_device_train_batch_size=b,
                                   gradient_accumulation_steps=max(1, math.ceil(effective / b)))

    ladder: list[tuple[str, Any]] = []
    if not opts.gradient_checkpointing:
        ladder.append(("--gradient_checkpointing", lambda o: dataclasses.replace(o, gradient_checkpointing=True)))
    b = opts.per_device_train_batch_size
    while b > 1:
        b = max(b // 2, 1)
        ladder.append((f"--per_device_train_batch_size {b}", lambda o, b=b: batch(o, b)))
    if opts.optim not in ("adamw_8bit", "paged_adamw_8bit", "sgd", "adafactor"):
        ladder.append(("--optim adamw_8bit", lambda o: dataclasses.replace(o, optim="adamw_8bit")))
    if not opts.use_4bit and opts.method in ("full", "lora", "dora"):
        ladder.append(("--method qlora", lambda o: resolve(dataclasses.replace(
            o, method="qlora", use_8bit=False, learning_rate=None, warmup_ratio=None), set())[0]))

    est, ok = attempt(opts, "as given")
    current = opts
    for change, apply in ladder:
        if ok:
            break
        current = apply(current)
        est, ok = attempt(current, change)
    if ok and current is not opts:
        def give_back(change: str, trial) -> bool:
            nonlocal current, est
            trial_est, trial_ok = attempt(trial, change)
            if trial_ok:
                current, est = trial, trial_est
            return trial_ok

        if current.optim != opts.optim:
            give_back(f"back to --optim {opts.optim}", dataclasses.replace(current, optim=opts.optim))
        while current.per_device_train_batch_size < opts.per_device_train_batch_size:
            b = min(current.per_device_train_batch_size * 2, opts.per_device_train_batch_size)
            if not give_back(f"back to --per_device_train_batch_size {b}", batch(current, b)):
                break
        if current.gradient_checkpointing and not opts.gradient_checkpointing:
            give_back("back to no gradient checkpointing", dataclasses.replace(current, gradient_checkpointing=False))
    return {"gpu_gb": gpu_gb, "headroom_gb": headroom_gb, "fits": ok,
            "changes": _changed_flags(opts, current) if ok else [], "peak_bytes": est.peak_bytes,
            "settings": {**est.settings, **prec.record()}, "method": current.method, "tried": tried}


def _changed_flags(before, after) -> list[str]:
    flags = []
    if after.method != before.method:
        flags.append(f"--method {after.method}")
    if after.gradient_checkpointing != before.gradient_checkpointing:
        flags.append("--gradient_checkpointing" if after.gradient_checkpointing else "--gradient_checkpointing false")
    for name in ("per_device_train_batch_size", "gradient_accumulation_steps", "optim"):
        if getattr(after, name) != getattr(before, name):
            flags.append(f"--{name} {getattr(after, name)}")
    return flags


def size_table(opts, *, sizes: list[str] | None = None, methods: list[str] | None = None,
               gpus: list[float] | None = None, headroom_gb: float = 1.0, device: str = "auto",
               progress=None) -> dict[str, Any]:
    """Methods x model sizes: the predicted peak of each, and which of the given GPU sizes it fits."""
    sizes = sizes or list(architectures.TABLE_SIZES)
    methods = methods or ["full", "lora", "qlora"]
    gpus = gpus or [16.0, 24.0, 40.0, 80.0]
    unknown = [s for s in sizes if s not in architectures.TABLE_SIZES and architectures.canonical_name(s) is None]
    if unknown:
        raise TunelabError(f"--table_sizes {','.join(unknown)}: unknown; choose from "
                           f"{', '.join(architectures.TABLE_SIZES)} or a known architecture")
    opts, prec = settle_precision(opts, device)
    rows = []
    for size in sizes:
        model = architectures.TABLE_SIZES.get(size, size)
        for m in methods:
            o = dataclasses.replace(opts, model_name_or_path=model, method=m, learning_rate=None, warmup_ratio=None,
                                    use_4bit=False, use_8bit=False)
            est = estimate(o, device=device)
            rows.append({"size": size, "model": model, "method": m, "peak_bytes": est.peak_bytes,
                         "trainable_params": est.trainable_params, "total_params": est.total_params,
                         "fits": {f"{g:g}": fits(est.peak_bytes, g, headroom_gb) for g in gpus}})
            if progress:
                progress(rows[-1])
    return {"gpus_gb": gpus, "headroom_gb": headroom_gb, "rows": rows,
            "settings": {"per_device_train_batch_size": opts.per_device_train_batch_size,
                         "max_seq_length": opts.max_seq_length,
                         "gradient_checkpointing": opts.gradient_checkpointing, "optim": opts.optim,
                         "bf16": opts.bf16, **prec.record()}}
