"""Fold a PEFT adapter into its base model (peft's ``merge_and_unload``) and save a standalone model.

The result is a plain transformers folder (safetensors + tokenizer) whose logits equal the adapter model's within
float tolerance. The base is loaded in the dtype the run trained it in (``inference.run_dtype``: bfloat16 for a PEFT
run trained with --bf16, else float32; ``--torch_dtype`` overrides), and in full precision for QLoRA adapters
(trained on a 4-bit base): merging into 4-bit weights would round the update away.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunelab import __version__
from tunelab.errors import TunelabError
from tunelab.fileio import atomic_write_json, make_shared
from tunelab import run_files

log = logging.getLogger(__name__)

@dataclass
class MergeResult:
    output_dir: Path
    info: dict[str, Any]


def check_mergeable(adapter: str | os.PathLike, method: str | None = None) -> str:
    """The adapter's peft type; a clear error when its method cannot be folded into the weights: the method's
    declaration (``Method.mergeable``), or for a peft type no tunelab method makes, peft's own (prompt-learning
    adapters add inputs, not weight updates)."""
    from tunelab.inference import read_run_config
    from tunelab.methods import method_of_adapter

    config = run_files.read_adapter_config(adapter)
    peft_type = str(config.get("peft_type", "")).upper()
    method = method or read_run_config(adapter).get("method")
    known = method_of_adapter(config, method)
    mergeable = known.mergeable if known is not None else not _prompt_learning(peft_type)
    if not mergeable:
        what = method or peft_type.lower()
        raise TunelabError(f"--adapter {adapter}: {what} adapters cannot be merged: they add learned prompt or "
                           "prefix inputs rather than weight updates, so there is nothing to fold into the base; "
                           "serve them with `tunelab generate --adapter` (or plain PeftModel) instead")
    return peft_type


def _prompt_learning(peft_type: str) -> bool:
    from peft.config import PromptLearningConfig
    from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING

    config_class = PEFT_TYPE_TO_CONFIG_MAPPING.get(peft_type)
    return config_class is not None and issubclass(config_class, PromptLearningConfig)


def load_merged(model_name_or_path: str, adapter: str, *, use_cpu: bool = True, torch_dtype: str = "float32"):
    """The base with the adapter merged in, in memory, as a LoadedModel (template and tokenizer as trained), its
    weights in ``torch_dtype`` ("auto": as the run trained)."""
    from tunelab import inference

    check_mergeable(adapter)
    run = inference.read_run_config(adapter)
    if run.get("use_4bit") or run.get("use_8bit"):
        log.info("%s was trained on a %s-bit base; merging into the full-precision base (the merged model is "
                 "close to, not identical with, the quantized adapter model)", adapter,
                 4 if run.get("use_4bit") else 8)
    lm = inference.load(model_name_or_path, adapter, use_cpu=use_cpu, quantize_like_training=False,
                        torch_dtype=torch_dtype)
    try:
        lm.model = lm.model.merge_and_unload(safe_merge=True)
    except ValueError as e:  # NaNs after merging, or peft refusing the layer kind
        raise TunelabError(f"--adapter {adapter}: peft could not merge it ({str(e).splitlines()[0]})") from None
    lm.adapters = {}
    return lm


def merge(model_name_or_path: str | None, adapter: str, output_dir: str | os.PathLike, *,
          overwrite_output_dir: bool = False, use_cpu: bool = True, torch_dtype: str = "auto") -> MergeResult:
    """merge_and_unload ADAPTER into MODEL (None: the base it was trained on) and save the standalone model in
    OUTPUT_DIR (written atomically)."""
    out = Path(output_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        if not overwrite_output_dir:
            raise TunelabError(f"--output_dir {out}: exists and is not empty; choose a new directory or pass "
                               "--overwrite_output_dir")
        if not (out / run_files.MERGE_INFO).is_file():
            raise TunelabError(f"--output_dir {out}: holds files that are not a tunelab merge, which "
                               "--overwrite_output_dir will not delete; choose an empty or new directory")
    check_mergeable(adapter)
    from tunelab.inference import base_for

    model_name_or_path = base_for(model_name_or_path, adapter)
    lm = load_merged(model_name_or_path, adapter, use_cpu=use_cpu, torch_dtype=torch_dtype)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        lm.model.save_pretrained(tmp, safe_serialization=True)
        lm.tokenizer.save_pretrained(tmp)
        info = _merge_info(model_name_or_path, lm.model_path, adapter, tmp)
        if (Path(adapter) / run_files.TRAIN_CONFIG).is_file():  # the template and system prompt it was trained with
            shutil.copy2(Path(adapter) / run_files.TRAIN_CONFIG, tmp / run_files.TRAIN_CONFIG)
        atomic_write_json(tmp / run_files.MERGE_INFO, info)
        make_shared(tmp)
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return MergeResult(out, info)


def _merge_info(model_name_or_path: str, model_path: str, adapter: str, directory: Path) -> dict[str, Any]:
    from tunelab.inference import read_run_config

    config = run_files.read_adapter_config(adapter)
    return {
        "tunelab_version": __version__,
        "base_model_name_or_path": model_name_or_path,
        "base_model_path": model_path,
        "adapter": str(adapter),
        "method": read_run_config(adapter).get("method") or str(config.get("peft_type", "")).lower(),
        "peft_type": config.get("peft_type"),
        "model_bytes": sum(f.stat().st_size for f in directory.iterdir() if f.suffix == ".safetensors"),
        # the adapter run's results travel with the merged model (its model card is built from them)
        "adapter_train_results": run_files.read_json(Path(adapter) / run_files.TRAIN_RESULTS),
    }
