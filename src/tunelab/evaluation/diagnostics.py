"""Why a run forgot: what fine-tuning did to the weights (`tunelab diagnose RUN_DIR`).

From ΔW = W_tuned − W_base of every adapted matrix (every linear layer but the output head for full fine-tuning;
every adapted layer of a mergeable PEFT method):
- ‖ΔW‖_F, and the share of Σ‖ΔW‖_F² held by attention and MLP matrices and by each layer depth;
- the effective rank of ΔW: the fewest singular values holding 90% of its energy Σσ² (Biderman et al. 2024 found
  full fine-tuning's ΔW needs 10-100x the rank of a typical LoRA);
- intruder dimensions (Shuttleworth et al. 2024, arXiv 2410.21228, as their code and peft's
  ``reduce_intruder_dimension`` count them): among the top k = 10 left singular vectors of W_tuned, those whose
  largest |cosine| with every left singular vector of W_base is below ε = 0.5. The count saturates, so the
  distribution of that largest cosine is reported too.

ΔW comes from peft: a LoRA layer's ``get_delta_weight`` (exact), and for the other methods (DoRA, IA3, LoHa, LoKr,
VeRA, OFT...) the layer's own ``merge`` minus the base weight. A quantized base (QLoRA) is loaded unquantized: ΔW is
the adapter's, and W_base the float weights it was trained against (up to the quantization error).

``mitigate`` applies peft's ``reduce_intruder_dimension`` to a saved LoRA adapter and saves the result as an adapter
`tunelab eval` loads like any other.
"""

from __future__ import annotations

import logging
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from tunelab.errors import TunelabError
from tunelab.fileio import atomic_write_json, make_shared
from tunelab import run_files

log = logging.getLogger(__name__)

MITIGATED_DIR = "intruder_reduced"
_ATTENTION = re.compile(r"attn|attention|q_proj|k_proj|v_proj|o_proj|qkv|query|key|value|out_proj|c_proj_attn")
_MLP = re.compile(r"mlp|ffn|feed_forward|gate_proj|up_proj|down_proj|fc\d|c_fc|intermediate|w[123]\b|dense_h")
_DEPTH = re.compile(r"\.(\d+)\.")


@dataclass(frozen=True)
class Settings:
    energy: float = 0.9      # effective rank: singular values holding this share of Σσ²
    top_k: int = 10          # intruders: top left singular vectors of W_tuned examined
    epsilon: float = 0.5     # intruders: largest |cos| with the base's singular vectors below this


# --- the measures, on one matrix ------------------------------------------------------------------------------

def effective_rank(singular_values, energy: float = 0.9) -> int:
    """The fewest singular values whose squares hold ``energy`` of the total (0 for a zero matrix)."""
    import torch

    power = singular_values.double() ** 2
    total = float(power.sum())
    if total == 0.0:
        return 0
    cumulative = torch.cumsum(power, 0) / total
    # (a tolerance so that exact shares such as 0.9 of a constructed matrix count as reached)
    return int(torch.searchsorted(cumulative, torch.tensor(energy - 1e-9, dtype=cumulative.dtype))) + 1


def largest_cosines(w_base, w_tuned, top_k: int = 10):
    """For each of the top ``top_k`` left singular vectors of W_tuned, its largest |cosine| with any left singular
    vector of W_base."""
    import torch

    u_base = torch.linalg.svd(_wide(w_base), full_matrices=False).U
    u_tuned = torch.linalg.svd(_wide(w_tuned), full_matrices=False).U[:, :top_k]
    return (u_tuned.T @ u_base).abs().max(dim=1).values


def _wide(w):
    """float32 at least: SVD has no half-precision kernels (a float64 matrix stays float64)."""
    import torch

    return w if w.dtype in (torch.float32, torch.float64) else w.float()


def matrix_diagnostics(w_base, delta, settings: Settings = Settings()) -> dict[str, Any]:
    import torch

    delta, w_base = _wide(delta), _wide(w_base).to(_wide(delta).dtype)
    singular = torch.linalg.svdvals(delta)
    cosines = largest_cosines(w_base, w_base + delta, settings.top_k)
    return {"frobenius_norm": float(torch.linalg.matrix_norm(delta)),
            "effective_rank": effective_rank(singular, settings.energy),
            "full_rank": min(delta.shape),
            "intruders": int((cosines < settings.epsilon).sum()),
            "largest_cosines": [round(float(c), 6) for c in cosines]}


def layer_type(name: str) -> str:
    low = name.lower()
    if _ATTENTION.search(low):
        return "attention"
    if _MLP.search(low):
        return "mlp"
    return "other"


def depth(name: str) -> int | None:
    match = _DEPTH.search(f".{name}.")
    return int(match.group(1)) if match else None


# --- ΔW of a saved run ----------------------------------------------------------------------------------------

def _run_config(run_dir: Path) -> dict[str, Any]:
    from tunelab.inference import read_run_config

    config = read_run_config(run_dir)
    if not config:
        raise TunelabError(f"{run_dir}: no tunelab_config.yaml; pass the output_dir of a `tunelab train` run")
    return config


def _peft_deltas(model, adapter: str) -> Iterator[tuple[str, Any, Any]]:
    """(name, W_base, ΔW) per adapted layer of a PeftModel, from peft."""
    import torch
    from peft.tuners.lora import LoraLayer
    from peft.tuners.tuners_utils import BaseTunerLayer

    for name, module in model.named_modules():
        if not isinstance(module, BaseTunerLayer) or adapter not in getattr(module, "active_adapters", [adapter]):
            continue
        base = module.get_base_layer()
        weight = getattr(base, "weight", None)
        if weight is None or weight.dim() != 2:
            continue
        w_base = weight.detach().float().clone()
        with torch.no_grad():
            if isinstance(module, LoraLayer) and adapter in getattr(module, "lora_A", {}) \
                    and not module.use_dora.get(adapter, False):
                delta = module.get_delta_weight(adapter).float()
            else:
                module.merge(adapter_names=[adapter])  # the method's own merge; this model is thrown away after
                delta = base.weight.detach().float() - w_base
        yield _clean(name), w_base, delta


def _full_deltas(base_model, tuned_model) -> Iterator[tuple[str, Any, Any]]:
    import torch

    head = tuned_model.get_output_embeddings()
    tuned_modules = dict(tuned_model.named_modules())
    for name, module in base_model.named_modules():
        if not isinstance(module, torch.nn.Linear) or name not in tuned_modules:
            continue
        tuned = tuned_modules[name]
        if tuned is head:
            continue
        yield name, module.weight.detach().float(), (tuned.weight.detach().float() - module.weight.detach().float())


def _clean(name: str) -> str:
    """peft's module path without its wrappers: base_model.model.model.layers.0... -> model.layers.0..."""
    return name.removeprefix("base_model.model.")


def deltas(run_dir: Path, *, base_model: str | None = None, use_cpu: bool = True) -> tuple[dict, Iterator]:
    """The run's description and an iterator of (matrix name, W_base, ΔW)."""
    from tunelab import inference
    from tunelab.methods import get_method

    config = _run_config(run_dir)
    method = get_method(config.get("method", "full"))
    if method.peft and not method.mergeable:
        raise TunelabError(f"{run_dir}: --method {method.name} adds virtual tokens or activations, not weight "
                           "updates; there is no ΔW to diagnose")
    base_name = base_model or config.get("model_name_or_path")
    info = {"run_dir": str(run_dir), "method": method.name, "base_model": base_name}
    if method.peft:
        lm = inference.load(base_name, str(run_dir), use_cpu=use_cpu, quantize_like_training=False)
        return info, _peft_deltas(lm.model, "default")
    base = inference.load(base_name, None, use_cpu=use_cpu)
    tuned = inference.load(str(run_dir), None, use_cpu=use_cpu)
    return info, _full_deltas(base.model, tuned.model)


# --- the report ---------------------------------------------------------------------------------------------

def summarise(per_matrix: dict[str, dict[str, Any]], settings: Settings) -> dict[str, Any]:
    """Totals and distributions over the matrices."""
    import numpy as np

    energy = {name: m["frobenius_norm"] ** 2 for name, m in per_matrix.items()}
    total = sum(energy.values())

    def shares(key) -> dict:
        groups: dict[Any, float] = {}
        for name, e in energy.items():
            groups[key(name)] = groups.get(key(name), 0.0) + e
        return {str(k): {"frobenius_norm": v ** 0.5, "energy_share": v / total if total else None}
                for k, v in sorted(groups.items(), key=lambda kv: (kv[0] is None, kv[0]))}

    ranks = np.array([m["effective_rank"] for m in per_matrix.values()])
    cosines = np.array([c for m in per_matrix.values() for c in m["largest_cosines"]])
    intruders = np.array([m["intruders"] for m in per_matrix.values()])
    edges = np.linspace(0.0, 1.0, 11)
    counts, _ = np.histogram(cosines, bins=edges)
    return {
        "matrices": len(per_matrix),
        "frobenius_norm": total ** 0.5,
        "by_layer_type": shares(lambda n: layer_type(n)),
        "by_depth": shares(lambda n: depth(n)),
        "effective_rank": {"energy": settings.energy, "median": float(np.median(ranks)), "mean": float(ranks.mean()),
                           "max": int(ranks.max()),
                           "by_layer_type": {t: float(np.median([m["effective_rank"] for n, m in per_matrix.items()
                                                                 if layer_type(n) == t]))
                                             for t in sorted({layer_type(n) for n in per_matrix})}},
        "intruders": {"top_k": settings.top_k, "epsilon": settings.epsilon, "total": int(intruders.sum()),
                      "matrices_with_any": int((intruders > 0).sum()),
                      "per_matrix_mean": float(intruders.mean()),
                      "largest_cosine_quantiles": {q: float(np.quantile(cosines, float(q)))
                                                   for q in ("0.05", "0.25", "0.5", "0.75")},
                      "largest_cosine_histogram": {"edges": [round(float(e), 2) for e in edges],
                                                   "counts": [int(c) for c in counts]}},
    }


def diagnose(run_dir: str | Path, *, base_model: str | None = None, settings: Settings = Settings(),
             use_cpu: bool = True, write: bool = True) -> dict[str, Any]:
    """Diagnostics of a training run's output dir; written to RUN_DIR/diagnostics.json."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise TunelabError(f"{run_dir}: no such directory; pass the output_dir of a `tunelab train` run")
    started = time.perf_counter()
    info, matrices = deltas(run_dir, base_model=base_model, use_cpu=use_cpu)
    per_matrix = {name: matrix_diagnostics(w_base, delta, settings) for name, w_base, delta in matrices}
    if not per_matrix:
        raise TunelabError(f"{run_dir}: no adapted weight matrix found to diagnose")
    result = {**info, "settings": settings.__dict__, **summarise(per_matrix, settings), "per_matrix": per_matrix,
              "seconds": time.perf_counter() - started}
    if write:
        atomic_write_json(run_dir / run_files.DIAGNOSTICS, result)
    return result


# --- mitigation -----------------------------------------------------------------------------------------------

def mitigate(run_dir: str | Path, *, output_dir: str | Path | None = None, base_model: str | None = None,
             mitigation_lambda: float = 0.75, settings: Settings = Settings(), use_cpu: bool = True,
             overwrite: bool = False) -> Path:
    """peft's ``reduce_intruder_dimension`` on a saved LoRA adapter; the result is saved as an adapter directory
    (adapter, tokenizer, the run's tunelab_config.yaml) for `tunelab eval --adapter`."""
    from peft.tuners.lora.intruders import reduce_intruder_dimension

    from tunelab import inference

    run_dir = Path(run_dir)
    config = _run_config(run_dir)
    from tunelab.methods import get_method

    if get_method(config.get("method") or "full").peft_type != "LORA":
        raise TunelabError(f"--mitigate: peft's intruder-dimension reduction is for LoRA adapters; {run_dir} holds a "
                           f"--method {config.get('method')} run")
    out = Path(output_dir) if output_dir else run_dir / MITIGATED_DIR
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise TunelabError(f"--output_dir {out}: already holds files; pass --overwrite to replace them")
    lm = inference.load(base_model or config["model_name_or_path"], str(run_dir), use_cpu=use_cpu,
                        quantize_like_training=False)
    reduce_intruder_dimension(lm.model, old_adapter_name="default", new_adapter_name=MITIGATED_DIR,
                              top_k=settings.top_k, threshold_epsilon=settings.epsilon,
                              mitigation_lambda=mitigation_lambda, logging_sink=log.debug)
    staging = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(staging, ignore_errors=True)
    lm.model.save_pretrained(str(staging), selected_adapters=[MITIGATED_DIR])
    saved = staging / MITIGATED_DIR  # peft writes a non-default adapter into a folder of its name
    for f in saved.iterdir():
        f.replace(staging / f.name)
    saved.rmdir()
    lm.tokenizer.save_pretrained(str(staging))
    shutil.copy2(run_dir / run_files.TRAIN_CONFIG, staging / run_files.TRAIN_CONFIG)
    atomic_write_json(staging / "mitigation.json", {"source_adapter": str(run_dir), "method":
                                                     "peft reduce_intruder_dimension",
                                                     "mitigation_lambda": mitigation_lambda,
                                                     "top_k": settings.top_k, "epsilon": settings.epsilon})
    make_shared(staging)
    if out.exists():
        shutil.rmtree(out)
    staging.replace(out)
    return out
