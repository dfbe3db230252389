"""Configs of well-known architectures, shipped so that ``tunelab estimate`` works offline.

Each entry is the model's published ``config.json`` (the fields that decide shapes and the layer code: hidden size,
layers, heads, key-value heads, intermediate size, vocabulary, tied embeddings, model type, and the options that
change which modules exist), keyed by its Hugging Face Hub id. Only shapes matter to the estimator: no weights are
involved. A model can be named by its Hub id or by the short alias, case-insensitively.
"""

from __future__ import annotations

from typing import Any

_LLAMA2 = dict(model_type="llama", architectures=["LlamaForCausalLM"], hidden_act="silu", vocab_size=32000,
               max_position_embeddings=4096, rms_norm_eps=1e-5, rope_theta=10000.0, tie_word_embeddings=False,
               bos_token_id=1, eos_token_id=2, attention_bias=False, mlp_bias=False)
_LLAMA3 = dict(model_type="llama", architectures=["LlamaForCausalLM"], hidden_act="silu", vocab_size=128256,
               rms_norm_eps=1e-5, rope_theta=500000.0, bos_token_id=128000, eos_token_id=128001,
               attention_bias=False, mlp_bias=False)
_LLAMA32_ROPE = {"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                 "original_max_position_embeddings": 8192}
_QWEN25 = dict(model_type="qwen2", architectures=["Qwen2ForCausalLM"], hidden_act="silu", rms_norm_eps=1e-6,
               rope_theta=1000000.0, bos_token_id=151643, eos_token_id=151643, use_sliding_window=False,
               max_window_layers=28)
_T5 = dict(model_type="t5", architectures=["T5ForConditionalGeneration"], vocab_size=32128, d_kv=64,
           feed_forward_proj="gated-gelu", relative_attention_num_buckets=32, relative_attention_max_distance=128,
           layer_norm_epsilon=1e-6, dropout_rate=0.1, is_encoder_decoder=True, tie_word_embeddings=False,
           decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)

ARCHITECTURES: dict[str, dict[str, Any]] = {
    "meta-llama/Llama-2-7b-hf": dict(_LLAMA2, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                                     num_attention_heads=32, num_key_value_heads=32),
    "meta-llama/Llama-2-13b-hf": dict(_LLAMA2, hidden_size=5120, intermediate_size=13824, num_hidden_layers=40,
                                      num_attention_heads=40, num_key_value_heads=40),
    "meta-llama/Llama-2-70b-hf": dict(_LLAMA2, hidden_size=8192, intermediate_size=28672, num_hidden_layers=80,
                                      num_attention_heads=64, num_key_value_heads=8),
    "meta-llama/Meta-Llama-3-8B": dict(_LLAMA3, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                                       num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=8192,
                                       tie_word_embeddings=False),
    "meta-llama/Meta-Llama-3-70B": dict(_LLAMA3, hidden_size=8192, intermediate_size=28672, num_hidden_layers=80,
                                        num_attention_heads=64, num_key_value_heads=8, max_position_embeddings=8192,
                                        tie_word_embeddings=False),
    "meta-llama/Llama-3.2-1B": dict(_LLAMA3, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                                    num_attention_heads=32, num_key_value_heads=8, head_dim=64,
                                    max_position_embeddings=131072, tie_word_embeddings=True,
                                    rope_scaling=_LLAMA32_ROPE),
    "meta-llama/Llama-3.2-3B": dict(_LLAMA3, hidden_size=3072, intermediate_size=8192, num_hidden_layers=28,
                                    num_attention_heads=24, num_key_value_heads=8, head_dim=128,
                                    max_position_embeddings=131072, tie_word_embeddings=True,
                                    rope_scaling=_LLAMA32_ROPE),
    "huggyllama/llama-30b": dict(_LLAMA2, hidden_size=6656, intermediate_size=17920, num_hidden_layers=60,
                                 num_attention_heads=52, num_key_value_heads=52, max_position_embeddings=2048,
                                 rms_norm_eps=1e-6),
    "mistralai/Mistral-7B-v0.1": dict(model_type="mistral", architectures=["MistralForCausalLM"], hidden_act="silu",
                                      hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                                      num_attention_heads=32, num_key_value_heads=8, vocab_size=32000,
                                      max_position_embeddings=32768, sliding_window=4096, rms_norm_eps=1e-5,
                                      rope_theta=10000.0, tie_word_embeddings=False, bos_token_id=1,
                                      eos_token_id=2),
    "Qwen/Qwen2.5-0.5B": dict(_QWEN25, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                              num_attention_heads=14, num_key_value_heads=2, vocab_size=151936,
                              max_position_embeddings=32768, sliding_window=32768, max_window_layers=24,
                              tie_word_embeddings=True),
    "Qwen/Qwen2.5-7B": dict(_QWEN25, hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
                            num_attention_heads=28, num_key_value_heads=4, vocab_size=152064,
                            max_position_embeddings=131072, sliding_window=131072, tie_word_embeddings=False),
    "Qwen/Qwen2.5-32B": dict(_QWEN25, hidden_size=5120, intermediate_size=27648, num_hidden_layers=64,
                             num_attention_heads=40, num_key_value_heads=8, vocab_size=152064,
                             max_position_embeddings=131072, sliding_window=131072, max_window_layers=64,
                             tie_word_embeddings=False),
    "google/gemma-2-2b": dict(model_type="gemma2", architectures=["Gemma2ForCausalLM"],
                              hidden_activation="gelu_pytorch_tanh", hidden_size=2304, intermediate_size=9216,
                              num_hidden_layers=26, num_attention_heads=8, num_key_value_heads=4, head_dim=256,
                              vocab_size=256000, max_position_embeddings=8192, rms_norm_eps=1e-6,
                              rope_theta=10000.0, query_pre_attn_scalar=256, sliding_window=4096,
                              final_logit_softcapping=30.0, attn_logit_softcapping=50.0, tie_word_embeddings=True,
                              pad_token_id=0, bos_token_id=2, eos_token_id=1),
    "google/flan-t5-base": dict(_T5, d_model=768, d_ff=2048, num_heads=12, num_layers=12, num_decoder_layers=12),
    "google/flan-t5-large": dict(_T5, d_model=1024, d_ff=2816, num_heads=16, num_layers=24, num_decoder_layers=24),
    "openai-community/gpt2": dict(model_type="gpt2", architectures=["GPT2LMHeadModel"], vocab_size=50257,
                                  n_positions=1024, n_embd=768, n_layer=12, n_head=12,
                                  activation_function="gelu_new", resid_pdrop=0.1, embd_pdrop=0.1, attn_pdrop=0.1,
                                  layer_norm_epsilon=1e-5, bos_token_id=50256, eos_token_id=50256,
                                  tie_word_embeddings=True),
    "google-bert/bert-base-uncased": dict(model_type="bert", architectures=["BertForMaskedLM"], vocab_size=30522,
                                          hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                                          intermediate_size=3072, hidden_act="gelu", hidden_dropout_prob=0.1,
                                          attention_probs_dropout_prob=0.1, max_position_embeddings=512,
                                          type_vocab_size=2, layer_norm_eps=1e-12, pad_token_id=0,
                                          tie_word_embeddings=True),
}

ALIASES: dict[str, str] = {
    "llama-2-7b": "meta-llama/Llama-2-7b-hf", "llama-2-13b": "meta-llama/Llama-2-13b-hf",
    "llama-2-70b": "meta-llama/Llama-2-70b-hf", "llama-3-8b": "meta-llama/Meta-Llama-3-8B",
    "llama-3-70b": "meta-llama/Meta-Llama-3-70B", "llama-3.2-1b": "meta-llama/Llama-3.2-1B",
    "llama-3.2-3b": "meta-llama/Llama-3.2-3B", "llama-30b": "huggyllama/llama-30b",
    "mistral-7b": "mistralai/Mistral-7B-v0.1", "qwen2.5-0.5b": "Qwen/Qwen2.5-0.5B", "qwen2.5-7b": "Qwen/Qwen2.5-7B",
    "qwen2.5-32b": "Qwen/Qwen2.5-32B", "gemma-2-2b": "google/gemma-2-2b", "flan-t5-base": "google/flan-t5-base",
    "flan-t5-large": "google/flan-t5-large", "gpt2": "openai-community/gpt2",
    "bert-base-uncased": "google-bert/bert-base-uncased", "bert-base": "google-bert/bert-base-uncased",
    # Hub ids that name the same architecture (chat / instruct variants share the base model's shapes)
    "meta-llama/llama-2-7b-chat-hf": "meta-llama/Llama-2-7b-hf",
    "meta-llama/llama-2-13b-chat-hf": "meta-llama/Llama-2-13b-hf",
    "meta-llama/llama-2-70b-chat-hf": "meta-llama/Llama-2-70b-hf",
    "meta-llama/meta-llama-3-8b-instruct": "meta-llama/Meta-Llama-3-8B",
    "meta-llama/llama-3.1-8b": "meta-llama/Meta-Llama-3-8B",
    "mistralai/mistral-7b-instruct-v0.1": "mistralai/Mistral-7B-v0.1",
    "qwen/qwen2.5-0.5b-instruct": "Qwen/Qwen2.5-0.5B", "qwen/qwen2.5-7b-instruct": "Qwen/Qwen2.5-7B",
    "google/gemma-2-2b-it": "google/gemma-2-2b",
}

# The --table rows: a representative architecture per size.
TABLE_SIZES: dict[str, str] = {
    "0.5B": "Qwen/Qwen2.5-0.5B", "1B": "meta-llama/Llama-3.2-1B", "3B": "meta-llama/Llama-3.2-3B",
    "7B": "meta-llama/Llama-2-7b-hf", "13B": "meta-llama/Llama-2-13b-hf", "30B": "huggyllama/llama-30b",
    "70B": "meta-llama/Llama-2-70b-hf",
}


def canonical_name(name: str) -> str | None:
    """The table's Hub id for ``name`` (a Hub id or alias, any case), or None."""
    low = name.strip().lower()
    for key in ARCHITECTURES:
        if key.lower() == low:
            return key
    return ALIASES.get(low)


def config_dict(name: str) -> dict[str, Any] | None:
    key = canonical_name(name)
    return None if key is None else dict(ARCHITECTURES[key], _name_or_path=key)


def known_names() -> list[str]:
    """Short names of the table's architectures (each also answers to its Hub id)."""
    short = {}
    for alias, key in ALIASES.items():
        if "/" not in alias:
            short.setdefault(key, alias)
    return [short.get(key, key) for key in ARCHITECTURES]


def build_config(name: str):
    """A transformers config for a table entry (None when ``name`` is not in the table)."""
    d = config_dict(name)
    if d is None:
        return None
    from transformers import AutoConfig

    d = dict(d)
    model_type = d.pop("model_type")
    return AutoConfig.for_model(model_type, **d)
