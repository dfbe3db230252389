"""What every fine-tuning method provides. A method is one object in the registry; peft does the real work."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from tunelab.errors import TunelabError
from tunelab.models import HEAD_MODULES

ALL_TASK_KINDS = ("causal_lm", "seq2seq_lm", "seq_cls")
PEFT_TASK_TYPES = {"causal_lm": "CAUSAL_LM", "seq2seq_lm": "SEQ_2_SEQ_LM", "seq_cls": "SEQ_CLS"}
# the heads, and out_proj: the last layer of BART-style classification heads (classification_head.out_proj)
_HEAD_NAMES = (*HEAD_MODULES, "out_proj")


@dataclass
class ApplyContext:
    """What a method may need to know beyond the options: the task kind, the model path, the step budget."""

    task_kind: str
    model_path: str
    total_steps: int = 0


@dataclass(frozen=True)
class MethodOption:
    """An option a method brings of its own (not one of tunelab's flags): given as ``--method_options NAME=VALUE``
    (or a mapping in a --config file or the Python API), converted to the type of its default, and listed under
    --method_options in --help and in the README's method table."""

    name: str
    default: Any
    help: str = ""

    def convert(self, text: Any, method: str) -> Any:
        kind = type(self.default)
        try:
            if kind is bool:
                low = str(text).strip().lower()
                if low not in ("true", "false", "1", "0", "yes", "no"):
                    raise ValueError
                return low in ("true", "1", "yes")
            return kind(text) if self.default is not None else text
        except (TypeError, ValueError):
            raise TunelabError(f"--method_options {self.name}={text}: --method {method}'s option {self.name} expects "
                               f"{kind.__name__} (default {self.default!r})") from None


@dataclass(frozen=True)
class MethodFlag:
    """An option that methods read and tunelab exposes as a flag of its own (``--lora_r``): the method module that
    owns it declares its name, default, help and choices; TrainOptions holds its value under that name
    (config.method_flag), so every flag users know stays a flag and its help follows the declaration. Methods that
    read another family's option (VeRA reads LoRA's rank) name the same declaration."""

    name: str
    default: Any
    help: str
    choices: tuple[str, ...] | None = None


# Options nearly every adapter reads: declared here, beside target_modules() which reads the first.
TARGET_MODULES = MethodFlag("lora_target_modules", None,
                            "module names to adapt (default: chosen by architecture: the linear layers of attention "
                            "and MLP); 'all-linear' targets every linear layer but the output head")
MODULES_TO_SAVE = MethodFlag("modules_to_save", None, "extra modules trained in full and saved with the adapter (a "
                                                      "classification head is added automatically)")


@dataclass
class Method:
    """A fine-tuning method and everything tunelab knows about it: code outside the registry asks the method (its
    capabilities below) instead of testing its name."""

    name: str
    summary: str
    peft: bool = True
    # The peft_type its adapters save in adapter_config.json (peft.PeftType): maps a saved adapter back to a method.
    peft_type: str | None = None
    default_learning_rate: float = 2e-4
    default_learning_rate_why: str = ""  # where the default comes from (a paper, peft's guides), for --help
    # The log-uniform range `tunelab compare --search learning_rate` searches (its family's: the LoRA family's by
    # default). Biderman et al. 2024 found LoRA's best rate about 10x full fine-tuning's; vectors and soft prompts
    # (IA3, VeRA, prompt/prefix tuning) need 10x more again.
    learning_rate_range: tuple[float, float] = (3e-5, 3e-3)
    default_warmup_ratio: float = 0.03
    task_kinds: tuple[str, ...] = ALL_TASK_KINDS
    task_kinds_why: str = ""            # why the others are missing, where a user would expect them
    mergeable: bool = True              # can merge_and_unload fold the adapter into the base weights?
    implied_options: dict[str, Any] = field(default_factory=dict)  # e.g. qlora implies --use_4bit
    # Adds learned inputs (soft prompt, prefixes, adaption prompts) instead of changing weights: nothing to merge,
    # and with --packing the virtual tokens would be shared across the packed examples.
    virtual_tokens: bool = False
    supports_packing: bool = True
    # A fresh adapter leaves the outputs unchanged (LoRA's zero B, IA3's ones, OFT's identity rotation, LLaMA-Adapter's
    # zero gate); a soft prompt or prefix changes them from step 0, so retention tracking measures its step 0.
    identity_at_start: bool = True
    rank_option: str | None = None      # the TrainOptions field that holds its rank (lora_r), if it has one
    # Its update of down_proj is the weight itself (full) or a LoRA B matrix, whose rows ICA's --anti_drift can
    # restrict to the functional networks' channels (ica/masks.py)
    anti_drift: bool = False
    # (label, adapter_config.json key) of the hyper-parameters a model card shows: what peft actually used
    hyperparameters: tuple[tuple[str, str], ...] = ()
    # The flags its peft_config reads (declared by the method family that owns each, shown under its name in --help)
    options: tuple[MethodFlag, ...] = ()
    # Options of its own that no tunelab flag holds (a method added as a plugin): --method_options NAME=VALUE
    own_options: tuple[MethodOption, ...] = ()

    def option_values(self, opts) -> dict[str, Any]:
        """Its own options' values: --method_options over the declared defaults; an unknown name is one line."""
        declared = {o.name: o for o in self.own_options}
        values = {name: o.default for name, o in declared.items()}
        for item in getattr(opts, "method_options", None) or []:
            name, sep, text = str(item).partition("=")
            name = name.strip()
            if not sep or not name:
                raise TunelabError(f"--method_options {item}: expected NAME=VALUE, e.g. "
                                   f"{next(iter(declared), 'rank')}=4")
            if name not in declared:
                known = ", ".join(declared) if declared else "none (its options are tunelab flags: see --help)"
                raise TunelabError(f"--method_options {item}: --method {self.name} has no option {name!r}; its own "
                                   f"options: {known}")
            values[name] = declared[name].convert(text.strip(), self.name)
        return values

    def peft_config(self, opts, model, ctx: ApplyContext):
        raise NotImplementedError

    def check(self, opts, model_config, ctx: ApplyContext) -> None:
        """Refuse combinations that cannot work, before any weight is loaded."""
        self.option_values(opts)
        if ctx.task_kind not in self.task_kinds:
            why = f": {self.task_kinds_why}" if self.task_kinds_why else " in peft"
            raise TunelabError(f"--method {self.name} does not support {ctx.task_kind} models{why} (it supports "
                               f"{', '.join(self.task_kinds)}); choose another method or --task_type")

    def apply(self, model, opts, ctx: ApplyContext):
        """Wrap the model for training; returns the model the Trainer gets."""
        from peft import get_peft_model

        config = self.peft_config(opts, model, ctx)
        try:
            return get_peft_model(model, config)
        except ValueError as e:
            text = str(e)
            if "not found in the base model" in text or "Target module" in text or "target_modules" in text:
                raise TunelabError(f"--lora_target_modules {','.join(opts.lora_target_modules or [])}: "
                                   f"matches no module of {ctx.model_path} that --method {self.name} can adapt; "
                                   f"its linear layers are {', '.join(linear_layer_names(model)) or 'none'}") \
                    from None
            raise

    def describe(self, adapter_config: dict[str, Any]) -> dict[str, Any]:
        """The hyper-parameters the saved adapter was built with (its adapter_config.json), by label."""
        return {label: adapter_config[key] for label, key in self.hyperparameters
                if adapter_config.get(key) is not None}

    def callbacks(self, model) -> list:
        """Trainer callbacks the method needs (AdaLoRA's rank allocation, say)."""
        return []


def task_type(ctx: ApplyContext) -> str:
    return PEFT_TASK_TYPES[ctx.task_kind]


def _is_linear(module) -> bool:
    import torch  # (here, not at import: the options' help text reads the registry without loading torch)
    from transformers.pytorch_utils import Conv1D

    return isinstance(module, (torch.nn.Linear, Conv1D))


def linear_layer_names(model) -> list[str]:
    """Short names of the linear layers inside the repeated blocks (attention and MLP), heads excluded."""
    names = set()
    for full, module in model.named_modules():
        if _is_linear(module) and re.search(r"\.\d+\.", f".{full}") and not full.split(".")[-1] in _HEAD_NAMES:
            names.add(full.split(".")[-1])
    return sorted(names)


def default_target_modules(model) -> list[str]:
    """Full names of the linear layers of attention and MLP in every block: exact, so that a pooler or an output
    head that shares a short name (BERT's pooler.dense) is not adapted by accident."""
    targets = []
    for full, module in model.named_modules():
        if not _is_linear(module) or full.split(".")[-1] in _HEAD_NAMES:
            continue
        if re.search(r"\.\d+\.", f".{full}"):
            targets.append(full)
    if not targets:
        raise TunelabError("found no linear layers inside the model's blocks to adapt; pass --lora_target_modules")
    return targets


def target_modules(opts, model):
    if opts.lora_target_modules:
        mods = list(opts.lora_target_modules)
        return "all-linear" if mods == ["all-linear"] else mods
    return default_target_modules(model)
