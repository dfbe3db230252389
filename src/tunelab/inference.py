"""Load a base model (optionally with a PEFT adapter, or a fully fine-tuned directory) the way it was trained, and
run it: batched greedy generation, per-token losses, embeddings, class predictions.

Evaluation, `tunelab generate` and the compare runner all go through here, so a model is always prompted exactly
as it was trained (same template, same system prompt, same quantization of the base).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import itertools
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from tunelab.data.encode import IGNORE_INDEX, adds_bos, encode_causal
from tunelab.data.formats import Example
from tunelab.data.templates import Template, resolve_template
from tunelab.errors import TunelabError
from tunelab.model_setup import label_kwargs
from tunelab.models import (detect_task_kind, load_config, load_model, load_tokenizer, quantization_config,
                            resolve_model)
from tunelab import run_files

log = logging.getLogger(__name__)



def read_run_config(directory: str | Path | None) -> dict[str, Any]:
    """The effective training options saved next to an adapter or a fully fine-tuned model (empty if none)."""
    if directory is None:
        return {}
    path = Path(directory) / run_files.TRAIN_CONFIG
    if not path.is_file():
        return {}
    return run_files.read_yaml_mapping(path, fix="re-run the training that wrote it, or remove the file")


def base_for(model_name_or_path: str | None, adapter: str | None) -> str:
    """``--model_name_or_path``, or, left out beside ``--adapter``, the base that adapter was trained on, as peft's
    AutoPeftModel finds it: the run's own ``model_name_or_path`` (tunelab_config.yaml: a built-in name stays one),
    else peft's ``base_model_name_or_path`` (adapter_config.json)."""

    from tunelab.models import BUILTIN_MODELS

    if model_name_or_path:
        return model_name_or_path
    if not adapter:
        raise TunelabError("missing required option(s): --model_name_or_path (or --adapter DIR, whose base it is then)")
    folder = Path(adapter).expanduser()
    if not folder.is_dir():
        raise TunelabError(f"--adapter {adapter}: no such directory; pass the output_dir of a PEFT run")
    peft_base = run_files.read_adapter_config(folder).get("base_model_name_or_path") \
        if (folder / run_files.ADAPTER_CONFIG).is_file() else None
    names = [n for n in (read_run_config(folder).get("model_name_or_path"), peft_base) if n]
    # a run trained from a relative path saved that path: it may not lead anywhere from here
    usable = [n for n in names if n in BUILTIN_MODELS or Path(n).expanduser().exists()] or \
        [n for n in names if not n.startswith((".", "/", "~"))]
    if not usable:
        raise TunelabError(f"--adapter {adapter}: names no base model that can be found here "
                           f"({', '.join(names) or 'none saved'}); pass --model_name_or_path")
    log.info("--model_name_or_path %s: the base --adapter %s was trained on", usable[0], adapter)
    return usable[0]


def read_label_names(directory: str | Path) -> list[str] | None:
    """Label names of a classification run, from its train_results.json."""
    from tunelab.records import TrainRecord

    record = TrainRecord.read(Path(directory) / run_files.TRAIN_RESULTS)
    return record.label_names if record is not None else None


@dataclass
class LoadedModel:
    model: Any
    tokenizer: Any
    task_kind: str
    template: Template
    model_path: str
    adapters: dict[str, str] = field(default_factory=dict)   # name -> adapter dir
    run_config: dict[str, Any] = field(default_factory=dict)
    dtype: Any = None   # of the weights that are not quantized (torch.float32, torch.bfloat16 ...)

    @property
    def is_peft(self) -> bool:
        return bool(self.adapters)

    @property
    def device(self):
        return next(self.model.parameters()).device


def _device(use_cpu: bool):
    import torch

    return torch.device("cuda" if torch.cuda.is_available() and not use_cpu else "cpu")


DTYPES = ("auto", "float32", "bfloat16", "float16")


def run_dtype(run_config: dict[str, Any], *, use_cpu: bool = False):
    """The dtype a model is run in for inference ("auto" of --torch_dtype) on this machine: :func:`decide_dtype`
    for the device it runs on here."""
    import torch

    from tunelab import precision

    on_gpu = torch.cuda.is_available() and not use_cpu
    return decide_dtype(run_config, on_gpu=on_gpu, gpu_bf16=precision.gpu_supports_bf16() if on_gpu else None,
                        cpu_flags=() if on_gpu else precision.cpu_flags())


def decide_dtype(run_config: dict[str, Any], *, on_gpu: bool, gpu_bf16: bool | None = None,
                 cpu_flags=()):
    """The dtype of the weights (those not quantized) a run's model is evaluated, served and merged in: as the run
    computed in training, read from its saved options (``run_config``: tunelab_config.yaml).

    - a PEFT run's base was loaded in ``--torch_dtype``, or in bf16/fp16 under mixed precision
      (``model_setup.weights_dtype``): the same dtype here, so the adapter sees the base it was trained on;
    - a quantized (QLoRA) run's non-quantized tensors were upcast to float32 by peft's k-bit preparation: float32
      (the quantized weights stay 4/8-bit: ``quantization_config``);
    - a full fine-tuning run trained float32 master weights under bf16/fp16 autocast: its forward passes ran in the
      half dtype, so it is evaluated in it (half the memory: a 7B model needs 14 GB, not 28);
    - a run in float32: float32, on a GPU and on the CPU alike (it is what the run computed in);
    - a model that is no tunelab run (a base): the precision tunelab trains in on this device
      (``tunelab.precision``: bf16 on a GPU or CPU that runs it fast), so that a comparison's base is scored as its
      runs are.
    fp16 needs a GPU, bf16 a GPU that supports it (``gpu_bf16`` None: assumed) or any CPU: else float32."""
    import torch

    from tunelab import precision

    explicit = run_config.get("torch_dtype")
    if explicit not in (None, "auto"):
        wanted = getattr(torch, explicit)
    elif run_config.get("use_4bit") or run_config.get("use_8bit"):
        wanted = torch.float32
    elif run_config:
        wanted = torch.bfloat16 if run_config.get("bf16") is True else (
            torch.float16 if run_config.get("fp16") is True else torch.float32)
    else:
        choice = precision.decide(bf16=None, fp16=False, on_gpu=on_gpu, gpu_bf16=gpu_bf16, cpu_flags=cpu_flags)
        wanted = torch.bfloat16 if choice.bf16 else torch.float32
    if wanted == torch.float16 and not on_gpu:
        return torch.float32
    if wanted == torch.bfloat16 and on_gpu and gpu_bf16 is False:
        return torch.float32
    return wanted


def inference_dtype(torch_dtype: str, run_config: dict[str, Any], *, use_cpu: bool = False):
    """``--torch_dtype`` as a torch dtype: "auto" is :func:`run_dtype`."""
    import torch

    if torch_dtype not in DTYPES:
        raise TunelabError(f"--torch_dtype {torch_dtype}: choose one of {', '.join(DTYPES)}")
    return run_dtype(run_config, use_cpu=use_cpu) if torch_dtype == "auto" else getattr(torch, torch_dtype)


def _four_bit_compute_dtype(run_config: dict[str, Any], use_cpu: bool):
    """The 4-bit matmul dtype the run trained with, chosen by the one rule training uses."""
    import torch

    from tunelab import precision

    on_gpu = torch.cuda.is_available() and not use_cpu
    return precision.four_bit_compute_dtype(run_config.get("bnb_4bit_compute_dtype", "auto"),
                                            bf16=run_config.get("bf16") is True, on_gpu=on_gpu)


def reference_dtype(run_config: dict[str, Any], dtype, *, on_gpu: bool):
    """The dtype the untouched base is scored in beside a run's model (the retention probes' "before"): the model's
    own dtype; for a quantized (QLoRA) run, the dtype its matmuls computed in (the 4-bit compute dtype), not the
    float32 of its few non-quantized tensors: a float32 copy of a 7B base would take 28 GB to score a 4-bit model."""
    from tunelab import precision

    if run_config.get("use_4bit") or run_config.get("use_8bit"):
        return precision.four_bit_compute_dtype(run_config.get("bnb_4bit_compute_dtype", "auto"),
                                                bf16=run_config.get("bf16") is True, on_gpu=on_gpu)
    return dtype


def load(model_name_or_path: str, adapter: str | None = None, *, use_cpu: bool = False, task_type: str = "auto",
         template: str | None = None, system_prompt: str | None = None, quantize_like_training: bool = True,
         adapter_name: str = "default", torch_dtype: str = "float32") -> LoadedModel:
    """Load for inference. ``adapter`` is a PEFT adapter directory; the base is quantized as it was in training.
    ``torch_dtype``: the dtype of the (non-quantized) weights; "auto" runs the model as its run trained
    (:func:`run_dtype`). Evaluation, generation and merging pass the user's ``--torch_dtype`` (default auto); the
    float32 default here keeps callers that compare weights exactly (diagnostics) at full precision."""
    if adapter is not None:
        check_adapter_dir(adapter)
    model_path = resolve_model(model_name_or_path)
    run_config = read_run_config(adapter) or read_run_config(model_path)
    config = load_config(model_path)
    task_kind = task_type if task_type != "auto" else run_config.get("task_type") or "auto"
    task_kind = detect_task_kind(config) if task_kind == "auto" else task_kind
    # a tunelab run saves its tokenizer beside the adapter (chat template included); an adapter folder without one
    # (peft's save_pretrained alone) is read with its base's
    own = adapter is not None and (Path(adapter) / "tokenizer_config.json").is_file()
    tokenizer = load_tokenizer(adapter if own else model_path, task_kind=task_kind,
                               flag="--adapter" if own else "--model_name_or_path")
    quant = None
    if adapter is not None and quantize_like_training:
        quant = quantization_config(use_4bit=bool(run_config.get("use_4bit")),
                                    use_8bit=bool(run_config.get("use_8bit")),
                                    quant_type=run_config.get("bnb_4bit_quant_type", "nf4"),
                                    compute_dtype=_four_bit_compute_dtype(run_config, use_cpu),
                                    double_quant=run_config.get("bnb_4bit_use_double_quant", True))
    # (a quantized run's "auto" is float32: also the full-precision base its adapter is merged into, merge.py)
    dtype = inference_dtype(torch_dtype, run_config, use_cpu=use_cpu)
    device = _device(use_cpu)
    extra: dict[str, Any] = {}
    labels = read_label_names(adapter) if adapter is not None and task_kind == "seq_cls" else None
    if labels:  # the base's config does not know the head an adapter was trained with
        extra = label_kwargs(labels)
    model = load_model(model_path, task_kind, dtype=dtype, quantization=quant,
                       device_map="cpu" if quant and use_cpu else None, supplied=_trained_in_full(adapter), **extra)
    if quant is None:
        model.to(device)
    adapters = {}
    if adapter is not None:
        model = attach_adapter(model, adapter, adapter_name, model_path)
        adapters[adapter_name] = str(adapter)
    model.eval()
    tmpl = resolve_template(template or run_config.get("template", "auto"), tokenizer,
                            system_prompt if system_prompt is not None else run_config.get("system_prompt"),
                            task_kind=task_kind)
    return LoadedModel(model, tokenizer, task_kind, tmpl, model_path, adapters, run_config, dtype)


def _trained_in_full(adapter: str | None) -> tuple[str, ...]:
    """The modules an adapter brings whole (modules_to_save: a classification head, say): the base's checkpoint
    need not hold them."""
    return tuple(run_files.read_adapter_config(adapter).get("modules_to_save") or ()) if adapter else ()


def _adapter_dtypes(model, adapter_name: str) -> None:
    """An adapter's own tensors as training kept and computed them beside a half-precision base: peft's adapter
    weights (LoRA and kin) in float32, their inputs cast by peft itself; the modules trained in full (a
    classification head, --modules_to_save copies) in the dtype of the base module they replace, which training's
    autocast computed them in (in float32 they would refuse the base's half-precision hidden states)."""
    import torch
    from peft.utils.other import ModulesToSaveWrapper

    half = (torch.bfloat16, torch.float16)
    copies = set()
    for module in model.modules():
        if isinstance(module, ModulesToSaveWrapper) and adapter_name in module.modules_to_save:
            copy = module.modules_to_save[adapter_name]
            base = next((p.dtype for p in module.original_module.parameters() if p.is_floating_point()), None)
            for p in copy.parameters():
                copies.add(id(p))
                if base in half and p.is_floating_point() and p.dtype != base:
                    p.data = p.data.to(base)
    marker = f".{adapter_name}."
    for name, p in model.named_parameters():
        if marker in f".{name}" and id(p) not in copies and p.dtype in half:
            p.data = p.data.float()


def from_trained(model, tokenizer, run_dir: str | Path, *, model_path: str, use_cpu: bool = False,
                 template: str | None = None, system_prompt: str | None = None) -> LoadedModel:
    """The model a training run returned (``TrainResult.model``), ready for inference in memory, as :func:`load`
    would load it from ``run_dir``: in the run's dtype (:func:`run_dtype`), in eval mode, prompted as trained. Saves
    loading the weights again after training; evaluation of the saved run gives the same numbers."""
    from accelerate.utils import extract_model_from_parallel
    from peft import PeftModel

    # Under mixed precision accelerate wrapped the model's forward in autocast for training: unwrapped, it computes
    # as the saved run loads (the half-precision base, a float32 adapter)
    model = extract_model_from_parallel(model, keep_fp32_wrapper=False)
    run_config = read_run_config(run_dir)
    task_kind = run_config.get("task_type") or "auto"
    task_kind = detect_task_kind(model.config) if task_kind == "auto" else task_kind
    is_peft = isinstance(model, PeftModel)
    dtype = run_dtype(run_config, use_cpu=use_cpu)
    if not is_peft:
        # Full fine-tuning kept float32 master weights under autocast; load() reads them in dtype. Parameters only:
        # buffers (rotary frequencies) keep the dtype loading gives them, as model.to() would not.
        for p in model.parameters():
            if p.is_floating_point() and p.dtype != dtype:
                p.data = p.data.to(dtype)
    else:  # the base is already in the run's dtype (model_setup.weights_dtype)
        _adapter_dtypes(model, model.active_adapter)
    if hasattr(model, "disable_input_require_grads"):
        with contextlib.suppress(AttributeError):  # hooks for training with checkpointing: none at inference
            model.disable_input_require_grads()
    model.eval()
    tmpl = resolve_template(template or run_config.get("template", "auto"), tokenizer,
                            system_prompt if system_prompt is not None else run_config.get("system_prompt"),
                            task_kind=task_kind)
    adapters = {model.active_adapter: str(run_dir)} if is_peft else {}
    return LoadedModel(model, tokenizer, task_kind, tmpl, model_path if is_peft else str(run_dir), adapters,
                       run_config, dtype)


def check_adapter_dir(adapter: str) -> None:
    """A PEFT adapter folder, checked before anything is loaded: errors name --adapter, the flag the user gave."""
    path = Path(adapter)
    run_files.read_adapter_config(adapter)
    hint = "pass the output_dir of a finished PEFT run"
    if not any((path / name).is_file() for name in ("adapter_model.safetensors", "adapter_model.bin")):
        raise TunelabError(f"--adapter {adapter}: no adapter weights (adapter_model.safetensors) beside "
                           f"adapter_config.json; {hint}")


def attach_adapter(model, adapter: str, name: str, model_path: str):
    """Load an adapter onto a base (or add one more to a PeftModel). A mismatched base is a user error."""
    from peft import PeftModel
    from safetensors import SafetensorError

    try:
        if isinstance(model, PeftModel):
            model.load_adapter(adapter, adapter_name=name)
        else:
            model = PeftModel.from_pretrained(model, adapter, adapter_name=name)
    except SafetensorError as e:
        raise TunelabError(f"--adapter {adapter}: cannot read its weights (adapter_model.safetensors: {e}); the file "
                           "is damaged or was not fully written: pass the output_dir of a finished PEFT run") from None
    except (RuntimeError, ValueError, KeyError) as e:
        text = str(e)
        trained_on = _adapter_base(adapter)
        if "size mismatch" in text or "not found in the base model" in text or "Target module" in text \
                or "target_modules" in text or "Error(s) in loading" in text:
            raise TunelabError(f"--adapter {adapter}: made for another base model ({trained_on}), not "
                               f"{model_path}; pass the base model it was trained on") from None
        raise
    _adapter_dtypes(model, name)
    return model


def _adapter_base(adapter: str) -> str:
    try:
        return run_files.read_adapter_config(adapter).get("base_model_name_or_path") or "unknown"
    except TunelabError:
        return "unknown"


@contextlib.contextmanager
def adapter_disabled(lm: LoadedModel) -> Iterator[LoadedModel]:
    """The model with its active adapter switched off, for scoring the base through the tuned model.

    peft 0.21's ``disable_adapter()`` raises UnboundLocalError for a prompt-learning adapter on a model that cannot
    generate (an encoder classifier): it saves ``prepare_inputs_for_generation``, which such a model lacks. A
    prompt-learning adapter only adds virtual tokens in front of the input, so without it the model is exactly the
    wrapped base model, which is then used directly."""
    model = lm.model
    prompt_learning = model.peft_config[model.active_adapter].is_prompt_learning
    if prompt_learning and not hasattr(model.get_base_model(), "prepare_inputs_for_generation"):
        yield dataclasses.replace(lm, model=model.get_base_model(), adapters={})
        return
    with model.disable_adapter():
        yield lm


def batches(items: list, size: int) -> Iterator[list]:
    for i in range(0, len(items), size):
        yield items[i:i + size]


@dataclass
class GenerationStats:
    seconds: float = 0.0
    new_tokens: int = 0

    @property
    def tokens_per_second(self) -> float | None:
        return self.new_tokens / self.seconds if self.seconds > 0 else None


def prompt_text(lm: LoadedModel, messages: list[dict[str, str]]) -> str:
    if lm.task_kind == "seq2seq_lm":
        return lm.template.source(messages)
    text = lm.template.prompt(messages, lm.tokenizer)
    if lm.template.name != "chat" and adds_bos(lm.tokenizer):
        text = lm.tokenizer.bos_token + text
    return text


def generate(lm: LoadedModel, prompts: list[list[dict[str, str]]], *, max_new_tokens: int = 128,
             batch_size: int = 8, max_prompt_tokens: int = 1024, desc: str = "generating",
             adapter_names: list[str] | None = None, strip: bool = True,
             min_new_tokens: int | None = None, stop_strings: tuple[str, ...] | list[str] | None = None,
             stop_when: Callable[[str], bool] | None = None) -> tuple[list[str], GenerationStats]:
    """Greedy answers to conversations (each a list of messages ending before the answer).

    An answer ends at the end of the model's turn (its end-of-sequence / end-of-turn tokens), at ``max_new_tokens``,
    at the first of ``stop_strings`` it writes (transformers' StopStringCriteria), or as soon as ``stop_when`` is
    true of its text so far (the task's natural end, such as a complete SQL statement: :func:`answer_end`). The
    answer is what was generated up to there, the token that ended it included: nothing generated is cut away, and
    a row that stops early waits, padded, for the rest of its batch."""
    import torch
    from tqdm.auto import tqdm

    if lm.task_kind == "seq_cls":
        raise TunelabError("this is a classification model: it predicts labels, it does not generate text; score it "
                           "with `tunelab eval --task classification`")
    tok = lm.tokenizer
    tok.padding_side = "left" if lm.task_kind == "causal_lm" else "right"
    texts = [prompt_text(lm, p) for p in prompts]
    names = adapter_names or [None] * len(texts)
    stats = GenerationStats()
    answers = [""] * len(texts)
    eos_ids = _stop_ids(tok)
    bar = tqdm(total=len(texts), desc=desc, leave=False)
    for chunk in _generation_batches(lm, texts, batch_size, max_prompt_tokens):
        enc = tok([texts[i] for i in chunk], return_tensors="pt", padding=True, truncation=True,
                  max_length=max_prompt_tokens, add_special_tokens=lm.task_kind != "causal_lm").to(lm.device)
        kwargs: dict[str, Any] = dict(max_new_tokens=max_new_tokens, do_sample=False, num_beams=1,
                                      pad_token_id=tok.pad_token_id, eos_token_id=eos_ids)
        if min_new_tokens:
            kwargs["min_new_tokens"] = min_new_tokens
        if stop_strings:
            kwargs.update(stop_strings=list(stop_strings), tokenizer=tok)
        if stop_when is not None:
            answer_start = enc["input_ids"].shape[1] if lm.task_kind == "causal_lm" else 0
            kwargs["stopping_criteria"] = [answer_end(tok, answer_start, stop_when)]
        if any(names[i] is not None for i in chunk):
            kwargs["adapter_names"] = [names[i] or "__base__" for i in chunk]
        t0 = time.perf_counter()
        with torch.inference_mode(), prompt_learning_cache_bridge(lm.model):
            out = lm.model.generate(**enc, **kwargs)
        stats.seconds += time.perf_counter() - t0
        new = out[:, enc["input_ids"].shape[1]:] if lm.task_kind == "causal_lm" else out
        for i, row in zip(chunk, new):
            ids = [int(t) for t in row if int(t) != tok.pad_token_id]
            ids = ids[:_first_stop(ids, eos_ids)]
            stats.new_tokens += len(ids)
            text = tok.decode(ids, skip_special_tokens=True)
            answers[i] = text.strip() if strip else text
        bar.update(len(chunk))
    bar.close()
    return answers, stats


def _generation_batches(lm: LoadedModel, texts: list[str], size: int, max_prompt_tokens: int) -> list[list[int]]:
    """The prompts' indices in batches of similar length (characters stand in for tokens): less padding to attend
    over. A causal LM with a prompt-tuning adapter gets batches of prompts of one token length, never padded: peft
    drops the position ids of prompt-tuning models, so left padding would move a short prompt's tokens away from
    the soft prompt, and its answer would not be the one it gets alone
    (tests/evaluation/test_adapter_generation.py)."""
    if not padding_moves_soft_prompt(lm.model):
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        return list(batches(order, size))
    lengths = [min(len(ids), max_prompt_tokens)
               for ids in lm.tokenizer(texts, add_special_tokens=False)["input_ids"]]
    order = sorted(range(len(texts)), key=lambda i: lengths[i])
    same_length = [list(group) for _, group in itertools.groupby(order, key=lambda i: lengths[i])]
    return [chunk for group in same_length for chunk in batches(group, size)]


@contextlib.contextmanager
def prompt_learning_cache_bridge(model) -> Iterator[None]:
    """Let peft's prompt-learning generation find the key/value cache.

    transformers 5.x passes the cache to ``prepare_inputs_for_generation`` as ``cache``; peft 0.21's prompt-learning
    code reads and writes ``past_key_values``. Left alone, a causal LM's soft prompt is injected again at every step
    (the cache looks empty to peft) and a prefix-tuning prefix never reaches the model, so the answers are not the
    adapter's (tests/evaluation/test_adapter_generation.py). Around peft's step the cache goes by the name
    peft reads, and back to the name transformers reads; other models are left as they are."""
    if _active_prompt_learning(model) is None or not hasattr(model, "base_model_prepare_inputs_for_generation"):
        yield
        return
    base_prepare, peft_prepare = model.base_model_prepare_inputs_for_generation, model.prepare_inputs_for_generation

    def renaming(prepare, old: str, new: str):
        @functools.wraps(prepare)  # the same signature: transformers checks generate's arguments against it
        def prepare_renamed(*args, **kwargs):
            inputs = prepare(*args, **kwargs)
            if old in inputs:
                inputs[new] = inputs.pop(old)
            return inputs
        return prepare_renamed

    model.base_model_prepare_inputs_for_generation = renaming(base_prepare, "cache", "past_key_values")
    model.prepare_inputs_for_generation = renaming(peft_prepare, "past_key_values", "cache")
    try:
        yield
    finally:  # back to peft's own methods (the instance attribute goes, the class's method shows again)
        model.base_model_prepare_inputs_for_generation = base_prepare
        del model.prepare_inputs_for_generation


def padding_moves_soft_prompt(model) -> bool:
    """Whether ``model`` answers a left-padded prompt differently than the prompt alone: a causal LM with an active
    prompt-tuning adapter, whose position ids peft drops (for prefix tuning it offsets them, as
    ``PeftModel._adjust_prompt_learning_kwargs`` does, and the answers are the same)."""
    config = _active_prompt_learning(model)
    return (config is not None and config.task_type == "CAUSAL_LM"
            and config.peft_type not in ("PREFIX_TUNING", "CARTRIDGE"))


def _active_prompt_learning(model):
    """The peft config of ``model``'s prompt-learning adapter while it is on, else None: inside peft's
    ``disable_adapter()`` the model generates as its base does (peft puts the base's methods in place)."""
    config = getattr(model, "active_peft_config", None)
    if config is None or not config.is_prompt_learning or getattr(model, "_adapters_disabled", False):
        return None
    return config


def answer_end(tokenizer, start: int, done: Callable[[str], bool]):
    """A transformers StoppingCriteria: a row is done once ``done(text)`` is true of the text it has generated
    (decoded from position ``start`` on, special tokens skipped). For ends that a fixed stop string cannot say, such
    as "a SELECT statement, then its ';'", where an earlier ';' (after a CREATE TABLE the model echoes) is no end."""
    import torch
    from transformers import StoppingCriteria

    class AnswerEnd(StoppingCriteria):
        def __init__(self):
            self.finished: set[int] = set()

        def __call__(self, input_ids, scores, **kwargs):
            for row, ids in enumerate(input_ids):
                if row not in self.finished and done(tokenizer.decode(ids[start:], skip_special_tokens=True)):
                    self.finished.add(row)
            return torch.tensor([row in self.finished for row in range(len(input_ids))], device=input_ids.device,
                                dtype=torch.bool)

    return AnswerEnd()


def _stop_ids(tok) -> list[int]:
    ids = {tok.eos_token_id}
    for special in ("<|im_end|>", "<|eot_id|>", "<|end|>"):
        tid = tok.convert_tokens_to_ids(special) if special in tok.get_vocab() else None
        if tid is not None:
            ids.add(tid)
    return sorted(i for i in ids if i is not None)


def _first_stop(ids: list[int], stops: list[int]) -> int:
    for i, t in enumerate(ids):
        if t in stops:
            return i
    return len(ids)


def input_positions(outputs, width: int):
    """The positions of the input itself in a model's per-position outputs: peft's prompt-learning methods (prompt
    tuning, P-tuning) prepend their virtual tokens' positions to the logits and hidden states."""
    return outputs[:, outputs.shape[1] - width:]


def response_losses(lm: LoadedModel, examples: list[Example], *, batch_size: int = 8, max_seq_length: int = 1024,
                    return_logits: bool = False) -> list[dict[str, Any]]:
    """Per example: summed cross-entropy over target tokens and their count (logits shifted against labels)."""
    import torch
    import torch.nn.functional as F

    if lm.task_kind != "causal_lm":
        raise TunelabError("per-token losses are computed for causal language models only")
    tok = lm.tokenizer
    tok.padding_side = "right"
    # In the caller's order, not by length as generate batches: which rows share a batch moves the logits slightly
    # (batched by length, the demo's drift KL moved by up to 1%: 0.3826 -> 0.3803 for QLoRA), and the recorded drift
    # figures were measured in this order; length batching saved about 3 s of the demo's 6 minutes.
    feats = []
    for ex in examples:
        f, _ = encode_causal(ex, lm.template, tok, max_seq_length, bos=adds_bos(tok))
        feats.append(f)
    results: list[dict[str, Any]] = []
    for chunk in batches(feats, batch_size):
        width = max(len(f["input_ids"]) for f in chunk if f) if any(chunk) else 1
        ids = torch.full((len(chunk), width), tok.pad_token_id, dtype=torch.long)
        labels = torch.full((len(chunk), width), IGNORE_INDEX, dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for i, f in enumerate(chunk):
            if f:
                n = len(f["input_ids"])
                ids[i, :n] = torch.tensor(f["input_ids"])
                labels[i, :n] = torch.tensor(f["labels"])
                mask[i, :n] = 1
        with torch.inference_mode():
            logits = lm.model(input_ids=ids.to(lm.device), attention_mask=mask.to(lm.device)).logits.float().cpu()
        logits = input_positions(logits, width)
        # Position t predicts token t+1: shift logits left against labels.
        shift_logits, shift_labels = logits[:, :-1], labels[:, 1:]
        nll = F.cross_entropy(shift_logits.transpose(1, 2), shift_labels, ignore_index=IGNORE_INDEX,
                              reduction="none")
        valid = shift_labels != IGNORE_INDEX
        for i in range(len(chunk)):
            row = {"nll_sum": float(nll[i][valid[i]].sum()), "tokens": int(valid[i].sum())}
            if return_logits:
                row["logits"] = shift_logits[i][valid[i]]
            results.append(row)
    return results


def embed(lm: LoadedModel, texts: list[str], *, batch_size: int = 32, max_length: int = 256):
    """Mean-pooled last hidden states (padding excluded), as sentence-transformers does for MiniLM."""
    import torch

    tok = lm.tokenizer
    tok.padding_side = "right"
    out = []
    for chunk in batches(texts, batch_size):
        enc = tok(chunk, return_tensors="pt", padding=True, truncation=True, max_length=max_length).to(lm.device)
        with torch.inference_mode():
            hidden = lm.model(**enc, output_hidden_states=True).hidden_states[-1].float()
        hidden = input_positions(hidden, enc["input_ids"].shape[1])
        mask = enc["attention_mask"].unsqueeze(-1).float()
        out.append(((hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)).cpu())
    return torch.cat(out) if out else torch.zeros(0)


def classify(lm: LoadedModel, examples: list[Example], *, batch_size: int = 32, max_length: int = 512) -> list[str]:
    """Predicted label names of a sequence-classification model."""
    import torch

    tok = lm.tokenizer
    tok.padding_side = "right"
    id2label = lm.model.config.id2label
    preds = []
    for chunk in batches(examples, batch_size):
        firsts = [ex.texts[0] for ex in chunk]
        seconds = [ex.texts[1] for ex in chunk] if all(len(ex.texts) > 1 for ex in chunk) else None
        enc = tok(firsts, seconds, return_tensors="pt", padding=True, truncation=True,
                  max_length=max_length).to(lm.device)
        with torch.inference_mode():
            logits = lm.model(**enc).logits
        preds.extend(str(id2label[int(i)]) for i in logits.argmax(-1))
    return preds
