"""GGUF export for Llama-family models, written with the ``gguf`` package (llama.cpp's own Python writer).

Tensor names come from gguf's tensor-name map, q8_0 blocks from ``gguf.quants``, the vocabulary's merges, special
ids and chat template from ``gguf.SpecialVocab``. What tunelab adds is the part llama.cpp's convert script does
around them: the q/k row permutation Llama's rotary embedding needs in GGUF layout, the choice of tensor type per
tensor, and the tokenizer's token list and types. A file written here loads back with
``AutoModelForCausalLM.from_pretrained(dir, gguf_file=...)`` and gives the same logits (exactly for f32).
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunelab.errors import TunelabError

log = logging.getLogger(__name__)

OUTTYPES = ("f32", "f16", "q8_0")
# model_type -> the GGUF architecture it is written as. llama.cpp's "llama" covers the Llama family (Llama 1-3,
# SmolLM/SmolLM2, TinyLlama, OpenLLaMA ...); other architectures need their own tensor layouts and keys.
SUPPORTED_ARCHITECTURES = {"llama": "llama"}
# GGUF's pre-tokenizer names, recognised from the fast tokenizer's pre_tokenizer (what llama.cpp hashes for).
_LLAMA3_REGEX_START = "(?i:'s|'t|'re|'ve|'m|'ll|'d)"


@dataclass
class GgufResult:
    path: Path
    outtype: str
    architecture: str
    tensors: int
    file_bytes: int
    tensor_types: dict[str, int]     # ggml type name -> tensor count

    def as_dict(self) -> dict[str, Any]:
        return {"gguf_file": str(self.path), "gguf_outtype": self.outtype, "gguf_architecture": self.architecture,
                "gguf_tensors": self.tensors, "gguf_file_bytes": self.file_bytes,
                "gguf_tensor_types": self.tensor_types}


def check_exportable(config, where: str = "--model_name_or_path") -> str:
    """The GGUF architecture a model config is written as; a clear error for the others."""
    model_type = getattr(config, "model_type", None)
    if model_type not in SUPPORTED_ARCHITECTURES:
        raise TunelabError(f"{where}: GGUF export supports the Llama family (model_type "
                           f"{', '.join(SUPPORTED_ARCHITECTURES)}: Llama 1-3, SmolLM2 including the built-in "
                           f"smollm2-135m, TinyLlama), not model_type {model_type!r}; convert it with llama.cpp's "
                           "convert_hf_to_gguf.py instead")
    rope = dict(getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {})
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type not in (None, "default"):
        raise TunelabError(f"{where}: rope scaling {rope_type!r} is not written by tunelab's GGUF export (it writes "
                           "the default rotary embedding); use llama.cpp's convert_hf_to_gguf.py for this model")
    if getattr(config, "attention_bias", False) or getattr(config, "mlp_bias", False):
        raise TunelabError(f"{where}: this Llama variant has attention/MLP biases, which tunelab's GGUF export does "
                           "not write; use llama.cpp's convert_hf_to_gguf.py")
    return SUPPORTED_ARCHITECTURES[model_type]


def export_gguf(model_name_or_path: str | None, output: str | os.PathLike, *, adapter: str | None = None,
                outtype: str = "f16", overwrite: bool = False, use_cpu: bool = True) -> GgufResult:
    """Write MODEL (with ADAPTER merged into it, if given; None: the base ADAPTER was trained on) to a GGUF file.
    Raises TunelabError for user errors."""
    from tunelab.inference import base_for
    from tunelab.models import load_config, resolve_model

    model_name_or_path = base_for(model_name_or_path, adapter)

    output = Path(output)
    _check_output(output, overwrite)
    if outtype not in OUTTYPES:
        raise TunelabError(f"--outtype {outtype}: choose one of {', '.join(OUTTYPES)}")
    check_exportable(load_config(resolve_model(model_name_or_path)))
    if adapter is not None:
        from tunelab.merge import load_merged

        lm = load_merged(model_name_or_path, adapter, use_cpu=use_cpu)
    else:
        from tunelab import inference

        lm = inference.load(model_name_or_path, None, use_cpu=use_cpu)
    if lm.task_kind != "causal_lm":
        raise TunelabError(f"--model_name_or_path {model_name_or_path}: GGUF export writes causal language models; "
                           f"this is a {lm.task_kind} model")
    name = Path(adapter).name if adapter else Path(lm.model_path).name
    return write_gguf(lm.model, lm.tokenizer, output, outtype=outtype, name=name,
                      chat_template=_template_for(lm))


def _check_output(output: Path, overwrite: bool) -> None:
    if output.suffix != ".gguf":
        raise TunelabError(f"--output {output}: name the file with a .gguf extension")
    if output.is_dir():
        raise TunelabError(f"--output {output}: is a directory; pass a file path such as {output}/model.gguf")
    if output.exists() and not overwrite:
        raise TunelabError(f"--output {output}: already exists; choose another name or pass --overwrite")


def _template_for(lm) -> str | None:
    """The chat template to store: the one the model was trained with, so llama.cpp prompts it the same way."""
    from tunelab.data.templates import CHATML_TEMPLATE

    if lm.template.name == "chatml":
        return CHATML_TEMPLATE
    template = getattr(lm.tokenizer, "chat_template", None)
    if lm.template.name in ("alpaca", "plain"):
        log.warning("the model was trained with the %s prompt format, which has no chat template; the GGUF keeps "
                    "the tokenizer's own template (%s), so prompt it in the %s format yourself",
                    lm.template.name, "none" if not template else "present", lm.template.name)
    if lm.template.system_prompt:
        log.warning("the run's system prompt is not part of the chat template; pass it as the system message "
                    "when you prompt the GGUF model")
    return template if isinstance(template, str) else None


def write_gguf(model, tokenizer, output: str | os.PathLike, *, outtype: str = "f16", name: str = "model",
               chat_template: str | None = None) -> GgufResult:
    """Write an in-memory Llama-family model and its tokenizer to ``output`` (atomically)."""
    import gguf
    import numpy as np
    import torch

    config = model.config
    arch = check_exportable(config)
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{output.name}.", suffix=".tmp", dir=output.parent)
    os.close(fd)
    writer = gguf.GGUFWriter(tmp, arch)
    try:
        n_vocab = int(config.vocab_size)
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        n_head, n_kv = int(config.num_attention_heads), int(config.num_key_value_heads or config.num_attention_heads)
        rope = dict(getattr(config, "rope_parameters", None) or {})
        rope_theta = rope.get("rope_theta", getattr(config, "rope_theta", 10000.0))

        writer.add_type(gguf.GGUFType.MODEL)
        writer.add_name(name)
        writer.add_file_type({"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
                              "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}[outtype])
        if outtype == "q8_0":
            writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
        writer.add_vocab_size(n_vocab)
        writer.add_context_length(int(config.max_position_embeddings))
        writer.add_embedding_length(int(config.hidden_size))
        writer.add_block_count(int(config.num_hidden_layers))
        writer.add_feed_forward_length(int(config.intermediate_size))
        writer.add_head_count(n_head)
        writer.add_head_count_kv(n_kv)
        writer.add_rope_dimension_count(int(head_dim))
        writer.add_rope_freq_base(float(rope_theta))
        writer.add_layer_norm_rms_eps(float(config.rms_norm_eps))
        if head_dim != config.hidden_size // n_head:
            writer.add_key_length(int(head_dim))
            writer.add_value_length(int(head_dim))
        _add_tokenizer(writer, tokenizer, n_vocab, chat_template)

        name_map = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, int(config.num_hidden_layers))
        tied = bool(getattr(config, "tie_word_embeddings", False))
        counts: dict[str, int] = {}
        n_tensors = 0
        for hf_name, tensor in model.state_dict().items():
            if tied and hf_name == "lm_head.weight":
                continue  # llama.cpp reuses token_embd; its absence is how a reader knows the head is tied
            base, _, suffix = hf_name.rpartition(".")
            mapped = name_map.get_name(base)
            if mapped is None:
                raise TunelabError(f"GGUF export: tensor {hf_name} has no name in gguf's Llama tensor map; "
                                   "this model is not a plain Llama-family checkpoint")
            data = tensor.detach().to(torch.float32).cpu().numpy()
            if mapped.endswith("attn_q"):
                data = _permute(data, n_head, n_head)
            elif mapped.endswith("attn_k"):
                data = _permute(data, n_head, n_kv)
            data, qtype = _convert(data, outtype, gguf, np)
            writer.add_tensor(f"{mapped}.{suffix}", data, raw_dtype=qtype)
            counts[qtype.name] = counts.get(qtype.name, 0) + 1
            n_tensors += 1

        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        mask = os.umask(0)
        os.umask(mask)
        os.chmod(tmp, 0o666 & ~mask)  # mkstemp makes 0600 files; an export is meant to be shared
        os.replace(tmp, output)
    except BaseException:
        writer.close()
        Path(tmp).unlink(missing_ok=True)
        raise
    return GgufResult(output, outtype, arch, n_tensors, output.stat().st_size, counts)


def _permute(weights, n_head: int, n_head_kv: int):
    """llama.cpp's row order for q/k projections (rotary pairs interleaved); transformers' loader reverses it."""
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    return (weights.reshape(n_head, 2, weights.shape[0] // n_head // 2, *weights.shape[1:])
            .swapaxes(1, 2).reshape(weights.shape))


def _convert(data, outtype: str, gguf, np):
    """(array, ggml type) as llama.cpp's converter chooses: norms and other 1-D tensors stay f32; matrices take
    the requested type (q8_0 falls back to f16 for rows that are not a whole number of 32-value blocks)."""
    F32, F16, Q8_0 = gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16, gguf.GGMLQuantizationType.Q8_0
    if data.ndim < 2 or outtype == "f32":
        return np.ascontiguousarray(data, dtype=np.float32), F32
    if outtype == "q8_0":
        block = gguf.GGML_QUANT_SIZES[Q8_0][0]
        if data.shape[-1] % block == 0:
            return gguf.quants.quantize(np.ascontiguousarray(data, dtype=np.float32), Q8_0), Q8_0
    return np.ascontiguousarray(data, dtype=np.float16), F16


# --- tokenizer ---------------------------------------------------------------------------------------------------

def _add_tokenizer(writer, tokenizer, n_vocab: int, chat_template: str | None) -> None:
    """Byte-level BPE vocabularies (GPT-2 style: Llama 3, SmolLM2) as llama.cpp writes them: tokens, token types,
    merges, special ids, whether BOS/EOS are added, and the chat template."""
    import gguf

    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise TunelabError("GGUF export needs a fast (tokenizers-backed) tokenizer; this one is "
                           f"{type(tokenizer).__name__}")
    spec = json.loads(backend.to_str())
    model = spec.get("model") or {}
    decoder = (spec.get("decoder") or {}).get("type")
    if model.get("type") != "BPE" or model.get("byte_fallback") or decoder != "ByteLevel":
        raise TunelabError("GGUF export writes byte-level BPE tokenizers (GPT-2 style, as in Llama 3 and SmolLM2); "
                           f"this one is a {model.get('type')} model with a {decoder} decoder"
                           f"{' and byte fallback (sentencepiece style)' if model.get('byte_fallback') else ''}; "
                           "use llama.cpp's convert_hf_to_gguf.py for it")
    tokens: list[str | None] = [None] * n_vocab
    types = [gguf.TokenType.NORMAL] * n_vocab
    for text, index in model["vocab"].items():
        if index < n_vocab:
            tokens[index] = text
    for added in spec.get("added_tokens") or []:
        if added["id"] < n_vocab:
            tokens[added["id"]] = added["content"]
            types[added["id"]] = gguf.TokenType.CONTROL if added.get("special") else gguf.TokenType.USER_DEFINED
    if len(tokenizer) > n_vocab:
        raise TunelabError(f"the tokenizer has {len(tokenizer)} tokens but the model's vocabulary only "
                           f"{n_vocab}; resize the model's embeddings before exporting")
    for index, text in enumerate(tokens):
        if text is None:  # embedding rows beyond the tokenizer (vocabularies padded to a round size)
            tokens[index] = f"[PAD{index}]"
            types[index] = gguf.TokenType.UNUSED

    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(_pre_tokenizer_name(spec.get("pre_tokenizer")))
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer.save_pretrained(tmp)
        special = gguf.SpecialVocab(tmp, load_merges=True, n_vocab=n_vocab)
    for kind in ("bos", "eos", "unk", "pad"):
        token_id = getattr(tokenizer, f"{kind}_token_id", None)
        if token_id is not None and token_id < n_vocab:
            special.special_token_ids[kind] = int(token_id)
    probe = tokenizer("a", add_special_tokens=True)["input_ids"]
    special.add_special_token["bos"] = tokenizer.bos_token_id is not None and probe[:1] == [tokenizer.bos_token_id]
    special.add_special_token["eos"] = tokenizer.eos_token_id is not None and probe[-1:] == [tokenizer.eos_token_id]
    special.chat_template = chat_template
    special.add_to_gguf(writer, quiet=True)


def _pre_tokenizer_name(pre: dict | None) -> str:
    """The name llama.cpp knows this pre-tokenization by (transformers' GGUF loader reads it back)."""
    if not pre:
        return "default"
    parts = pre.get("pretokenizers") if pre.get("type") == "Sequence" else [pre]
    kinds = [p.get("type") for p in parts]
    if kinds == ["ByteLevel"] and parts[0].get("use_regex", True):
        return "gpt-2"
    if kinds == ["Split", "ByteLevel"]:
        pattern = (parts[0].get("pattern") or {}).get("Regex", "")
        if pattern.startswith(_LLAMA3_REGEX_START):
            return "llama-bpe"
    if kinds == ["Digits", "ByteLevel"] and parts[0].get("individual_digits"):
        return "smollm"
    log.warning("unrecognised pre-tokenizer %s; writing 'default' (llama.cpp may split text differently)", kinds)
    return "default"
