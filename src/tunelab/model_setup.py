"""A model set up for training, shared by training.py and the memory estimator (which builds its fake-tensor model
through the same functions, so that it traces what training runs): the dtype of the base weights, a classifier's
labels, the preparation for the method, and the parameter counts."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # (imported where used: tunelab.methods imports torch, and inference needs only label_kwargs)
    from tunelab.methods import ApplyContext


def weights_dtype(opts):
    """The dtype the base weights are loaded in. PEFT methods train few parameters, so their frozen base can live in
    the mixed-precision dtype (its trainable tensors are float32: ``prepare_model``); full fine-tuning keeps float32
    master weights (the Trainer autocasts)."""
    import torch

    from tunelab.methods import get_method

    if opts.torch_dtype != "auto":
        return getattr(torch, opts.torch_dtype)
    if get_method(opts.method).peft and (opts.bf16 or opts.fp16):
        return torch.bfloat16 if opts.bf16 else torch.float16
    return torch.float32


def label_kwargs(label_names) -> dict[str, Any]:
    """The config overrides that give a sequence-classification model a head for these labels."""
    names = list(label_names)
    # (the label count follows from id2label; num_labels beside a checkpoint's own id2label of another length made
    # transformers warn that the two disagree)
    return dict(id2label=dict(enumerate(names)), label2id={n: i for i, n in enumerate(names)})


def prepare_model(model, opts, method, ctx: ApplyContext):
    """After loading: k-bit preparation, input gradients for checkpointing, then the method. The memory estimator
    prepares its fake-tensor model through here too, so that it traces what training runs."""
    import torch

    if opts.use_4bit or opts.use_8bit:
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=opts.gradient_checkpointing,
                                                gradient_checkpointing_kwargs={"use_reentrant": False})
    elif opts.gradient_checkpointing and method.peft and hasattr(model, "enable_input_require_grads"):
        model.enable_input_require_grads()
    model = method.apply(model, opts, ctx)
    half = weights_dtype(opts)
    if method.peft and half in (torch.bfloat16, torch.float16) and not (opts.use_4bit or opts.use_8bit):
        # A half-precision base: peft upcasts its adapters to float32, not the modules it trains in full (a
        # classification head, --modules_to_save); AdamW updates in their dtype, so those become float32 too.
        # (k-bit preparation did the same for quantized bases.)
        from peft.utils.other import cast_mixed_precision_params

        cast_mixed_precision_params(model, half)
    return model


def count_parameters(model) -> tuple[int, int]:
    if hasattr(model, "get_nb_trainable_parameters"):
        return tuple(int(x) for x in model.get_nb_trainable_parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return int(trainable), int(total)
