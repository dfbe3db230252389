"""The checks of a training run's options that need nothing loaded: ``tunelab train`` makes them first, and
``tunelab estimate`` makes the same ones (without importing the training loop).
"""

from __future__ import annotations

from pathlib import Path

from tunelab import distributed, lifecycle
from tunelab.config import TrainOptions
from tunelab.data import sources
from tunelab.errors import TunelabError
from tunelab.ica import training as ica_training
from tunelab.methods import get_method


def check_options(opts: TrainOptions) -> None:
    """Flag combinations that cannot work, reported before anything is loaded."""
    import torch

    if opts.bf16 and opts.fp16:
        raise TunelabError("--bf16 and --fp16 cannot be combined; choose one")
    if opts.fp16 and (opts.use_cpu or not torch.cuda.is_available()):
        raise TunelabError("--fp16 needs a CUDA GPU; on the CPU use --bf16 or neither")
    if opts.use_4bit and opts.use_8bit:
        raise TunelabError("--use_4bit and --use_8bit cannot be combined; choose one")
    if not get_method(opts.method).peft and (opts.use_4bit or opts.use_8bit):
        raise TunelabError(f"--method {opts.method} cannot train quantized weights; drop --use_4bit/--use_8bit or "
                           "use a PEFT method such as qlora")
    if opts.max_steps == 0 or (opts.max_steps < 0 and opts.num_train_epochs <= 0):
        raise TunelabError("nothing to train: set --max_steps > 0 or --num_train_epochs > 0")
    for name in ("per_device_train_batch_size", "per_device_eval_batch_size", "gradient_accumulation_steps",
                 "max_seq_length", "logging_steps", "save_steps", "lora_r", "num_virtual_tokens"):
        if getattr(opts, name) < 1:
            raise TunelabError(f"--{name} must be at least 1, got {getattr(opts, name)}")
    if not 0.0 <= opts.validation_split < 1.0:
        raise TunelabError(f"--validation_split {opts.validation_split}: must be a fraction in [0, 1)")
    if not 0.0 <= opts.lora_dropout < 1.0:
        raise TunelabError(f"--lora_dropout {opts.lora_dropout}: must be in [0, 1)")
    if opts.learning_rate is not None and opts.learning_rate <= 0:
        raise TunelabError(f"--learning_rate {opts.learning_rate}: must be positive")
    if opts.packing and opts.group_by_length:
        raise TunelabError("--packing leaves no padding to save; drop --group_by_length")
    if opts.packing and not get_method(opts.method).supports_packing:
        why = ": its virtual tokens would be shared across the packed examples" \
            if get_method(opts.method).virtual_tokens else ""
        raise TunelabError(f"--packing cannot be used with --method {opts.method}{why}; drop --packing")
    if opts.early_stopping_patience is not None and not opts.eval_steps:
        raise TunelabError("--early_stopping_patience needs --eval_steps (and a validation set) to measure progress")
    from tunelab import tracking

    tracking.check_options(opts)  # --track_retention / --max_forgetting
    sources.check_local(opts.dataset_name_or_path)
    ica_training.check_options(opts)
    lifecycle.check(opts)  # --merge_adapter_with_base / --convert_to_gguf
    distributed.check_options(opts)  # --fsdp / --fsdp_config / --deepspeed
    if opts.resume_from_checkpoint not in (None, "latest") and not Path(opts.resume_from_checkpoint).is_dir():
        raise TunelabError(f"--resume_from_checkpoint {opts.resume_from_checkpoint}: no such checkpoint directory; "
                           "pass a checkpoint-N folder or 'latest'")
