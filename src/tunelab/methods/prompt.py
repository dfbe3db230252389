"""Prompt-based methods from peft: prompt tuning, prefix tuning and LLaMA-Adapter (adaption prompts)."""

from __future__ import annotations

from tunelab.errors import TunelabError
from tunelab.methods import register
from tunelab.methods.base import MODULES_TO_SAVE, Method, MethodFlag, task_type

NUM_VIRTUAL_TOKENS = MethodFlag("num_virtual_tokens", 20, "virtual tokens of the soft prompt or prefix "
                                                          "(llama_adapter: the adapter length)")
PROMPT_TUNING_INIT = MethodFlag("prompt_tuning_init", "random", "initialise the soft prompt randomly or from text",
                                choices=("random", "text"))
PROMPT_TUNING_INIT_TEXT = MethodFlag("prompt_tuning_init_text", None, "the text for --prompt_tuning_init text")


class PromptTuning(Method):
    def check(self, opts, model_config, ctx):
        super().check(opts, model_config, ctx)
        if opts.prompt_tuning_init == "text" and not opts.prompt_tuning_init_text:
            raise TunelabError("--prompt_tuning_init text needs --prompt_tuning_init_text 'some words'")

    def peft_config(self, opts, model, ctx):
        from peft import PromptTuningConfig, PromptTuningInit

        kwargs = {}
        if opts.prompt_tuning_init == "text":
            kwargs = dict(prompt_tuning_init=PromptTuningInit.TEXT, prompt_tuning_init_text=opts.prompt_tuning_init_text,
                          tokenizer_name_or_path=ctx.model_path)
        return PromptTuningConfig(task_type=task_type(ctx), num_virtual_tokens=opts.num_virtual_tokens,
                                  modules_to_save=opts.modules_to_save, **kwargs)


class PrefixTuning(Method):
    def check(self, opts, model_config, ctx):
        super().check(opts, model_config, ctx)
        if opts.gradient_checkpointing:
            raise TunelabError("--method prefix_tuning cannot use --gradient_checkpointing: checkpointed layers drop "
                               "the prefix cache in transformers; drop the flag or choose another method")

    def peft_config(self, opts, model, ctx):
        from peft import PrefixTuningConfig

        return PrefixTuningConfig(task_type=task_type(ctx), num_virtual_tokens=opts.num_virtual_tokens,
                                  modules_to_save=opts.modules_to_save)


class LlamaAdapter(Method):
    def check(self, opts, model_config, ctx):
        super().check(opts, model_config, ctx)
        from peft.tuners.adaption_prompt.config import TRANSFORMERS_MODEL_CONFIG

        if model_config.model_type not in TRANSFORMERS_MODEL_CONFIG:
            raise TunelabError(f"--method llama_adapter supports the model types "
                               f"{', '.join(TRANSFORMERS_MODEL_CONFIG)} in peft, not {model_config.model_type!r}; "
                               "choose another method")

    def peft_config(self, opts, model, ctx):
        from peft import AdaptionPromptConfig

        layers = model.config.num_hidden_layers
        # LLaMA-Adapter inserts prompts into the top layers only (the paper uses the top 30 of 32).
        return AdaptionPromptConfig(task_type=task_type(ctx), adapter_len=opts.num_virtual_tokens,
                                    adapter_layers=max(1, min(layers, (layers * 30) // 32)))


# Soft prompts need much larger steps than LoRA; they add inputs, so nothing merges and nothing packs.
_PROMPTS = dict(learning_rate_range=(1e-3, 1e-1), virtual_tokens=True, mergeable=False, supports_packing=False)
register(PromptTuning(name="prompt_tuning", summary="trained soft-prompt embeddings prepended to the input "
                                                    "(Lester et al. 2021)", peft_type="PROMPT_TUNING",
                      default_learning_rate=3e-2, default_learning_rate_why="peft's prompt-tuning guides",
                      options=(NUM_VIRTUAL_TOKENS, PROMPT_TUNING_INIT, PROMPT_TUNING_INIT_TEXT,
                               MODULES_TO_SAVE),
                      hyperparameters=(("virtual tokens", "num_virtual_tokens"),), identity_at_start=False,
                      **_PROMPTS))
register(PrefixTuning(name="prefix_tuning", summary="trained key/value prefixes in every layer (Li & Liang 2021)",
                      peft_type="PREFIX_TUNING",
                      default_learning_rate=1e-2, default_learning_rate_why="peft's prefix-tuning guides",
                      task_kinds=("causal_lm", "seq2seq_lm"),
                      task_kinds_why="peft feeds the prefixes to the model as past_key_values, which transformers 5 "
                                     "encoders with a classification head (BERT, RoBERTa...) no longer accept",
                      options=(NUM_VIRTUAL_TOKENS, MODULES_TO_SAVE),
                      hyperparameters=(("virtual tokens", "num_virtual_tokens"),), identity_at_start=False,
                      **_PROMPTS))
register(LlamaAdapter(name="llama_adapter", summary="zero-init gated adaption prompts in the top layers "
                                                    "(peft adaption_prompt; Zhang et al. 2023)",
                      peft_type="ADAPTION_PROMPT",
                      default_learning_rate=9e-3, default_learning_rate_why="LLaMA-Adapter (Zhang et al. 2023)",
                      task_kinds=("causal_lm",), options=(NUM_VIRTUAL_TOKENS,),
                      hyperparameters=(("adapter length", "adapter_len"), ("adapter layers", "adapter_layers")),
                      **_PROMPTS))
