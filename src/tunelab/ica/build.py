"""Find a model's functional networks: MLP-output activations over sample sequences -> z-score -> PCA -> FastICA.

1. Forward hooks on every decoder block's ``mlp`` write its output at the non-padding positions straight into one
   preallocated float32 matrix (tokens x layers*hidden), batch by batch: the activations are never held twice,
   and the memory the whole build needs is computed, logged and checked before the first forward pass.
2. Each column is z-scored in place (in column chunks, so temporaries stay small).
3. When there are more columns than ``max_pca_components``, randomized PCA reduces them to that many.
4. scikit-learn's FastICA finds ``components`` independent components; their mixing weights are mapped back to
   the (layer, channel) columns through the PCA basis.
5. Each component becomes the set of (layer, channel) pairs whose absolute mixing weight is at or above the
   ``percentile``-th percentile of that component's absolute weights over all pairs.
"""

from __future__ import annotations

import contextlib
import logging
import random
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tunelab.errors import TunelabError
from tunelab.ica.masks import decoder_blocks, model_layout
from tunelab.ica.templates import IcaTemplates

log = logging.getLogger(__name__)

GIB = 2**30


@dataclass(frozen=True)
class BuildSettings:
    samples: int = 100
    components: int = 10
    percentile: float = 98.0
    max_pca_components: int = 1000
    seed: int = 0
    batch_size: int = 8

    def check(self, flags: dict[str, str]) -> None:
        """``flags`` names the option behind each setting (they differ between `ica build` and `train`)."""
        if self.samples < 1:
            raise TunelabError(f"{flags['samples']} must be at least 1, got {self.samples}")
        if self.components < 1:
            raise TunelabError(f"{flags['components']} must be at least 1, got {self.components}")
        if not 0.0 <= self.percentile < 100.0:
            raise TunelabError(f"{flags['percentile']} {self.percentile}: must be in [0, 100)")
        if self.max_pca_components < self.components:
            raise TunelabError(f"{flags['max_pca_components']} {self.max_pca_components}: must be at least "
                               f"{flags['components']} ({self.components})")
        if self.batch_size < 1:
            raise TunelabError(f"batch size must be at least 1, got {self.batch_size}")


def choose_sequences(sequences: list[list[int]], samples: int, seed: int) -> list[list[int]]:
    """Up to ``samples`` sequences, chosen with ``seed``, kept in their original order."""
    if len(sequences) <= samples:
        return list(sequences)
    order = sorted(random.Random(seed).sample(range(len(sequences)), samples))
    return [sequences[i] for i in order]


def memory_needed_bytes(tokens: int, features: int, max_pca_components: int) -> int:
    """Peak bytes of a build: the activation matrix plus the largest working set after it."""
    activations = tokens * features * 4
    if features > max_pca_components:
        k = min(max_pca_components, tokens, features) + 10
        work = 3 * tokens * k * 4 + 2 * features * k * 8   # randomized SVD's range finder and the basis
    else:
        work = 2 * tokens * features * 8                    # FastICA's copy and its whitening SVD
    zscore = 64 * 2**20
    return activations + max(work, zscore)


def _check_memory(needed: int, hint: str) -> None:
    import psutil

    available = psutil.virtual_memory().available
    if needed > 0.9 * available:
        raise TunelabError(f"ICA template building needs about {needed / GIB:.1f} GiB of memory but only "
                           f"{available / GIB:.1f} GiB is free; {hint}")


def collect_activations(model, sequences: list[list[int]], *, pad_token_id: int, batch_size: int = 8) -> np.ndarray:
    """tokens x (layers * hidden) float32: each decoder block's MLP output at every non-padding position."""
    import torch
    from tqdm.auto import tqdm

    blocks = decoder_blocks(model)
    layout = model_layout(model)
    hidden = layout.hidden_size
    tokens = sum(len(s) for s in sequences)
    features = len(blocks) * hidden
    if tokens == 0:
        raise TunelabError("ICA template building got no tokens; the sample sequences are empty")
    X = np.empty((tokens, features), dtype=np.float32)
    state: dict[str, Any] = {"row": 0, "keep": None}

    def capture(layer: int):
        def hook(module, args, output):
            out = output[0] if isinstance(output, tuple) else output
            keep = state["keep"]
            if out.shape[1] != keep.shape[1]:  # virtual tokens of a prompt-learning method come first
                out = out[:, -keep.shape[1]:]
            values = out[keep.to(out.device)].float().cpu().numpy()
            X[state["row"]:state["row"] + len(values), layer * hidden:(layer + 1) * hidden] = values

        return hook

    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    handles = [block.mlp.register_forward_hook(capture(i)) for i, block in enumerate(blocks)]
    disable = _adapter_disabled(model)
    try:
        with torch.no_grad(), disable:
            for start in tqdm(range(0, len(sequences), batch_size), desc="ICA: collecting MLP activations",
                              unit="batch"):
                batch = sequences[start:start + batch_size]
                width = max(len(s) for s in batch)
                ids = torch.full((len(batch), width), pad_token_id, dtype=torch.long)
                mask = torch.zeros((len(batch), width), dtype=torch.long)
                for i, seq in enumerate(batch):
                    ids[i, :len(seq)] = torch.as_tensor(seq, dtype=torch.long)
                    mask[i, :len(seq)] = 1
                state["keep"] = mask.bool()
                model(input_ids=ids.to(device), attention_mask=mask.to(device), use_cache=False)
                state["row"] += int(mask.sum())
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    assert state["row"] == tokens
    if not np.isfinite(X).all():
        raise TunelabError("ICA template building: the model produced non-finite MLP activations; load it in "
                           "float32 (--torch_dtype float32) and check the weights")
    return X


def _adapter_disabled(model):
    """Activations of the base model: a peft wrapper's adapter is switched off while they are collected."""
    from peft import PeftModel

    return model.disable_adapter() if isinstance(model, PeftModel) else contextlib.nullcontext()


def _zscore_inplace(X: np.ndarray) -> None:
    chunk = max(1, 2**23 // max(X.shape[0], 1))  # columns per step: temporaries stay near 64 MiB
    for c0 in range(0, X.shape[1], chunk):
        block = X[:, c0:c0 + chunk]
        mean = block.mean(axis=0, dtype=np.float64)
        std = block.std(axis=0, dtype=np.float64)
        std[std < 1e-8] = 1.0  # a dead channel stays a column of zeros
        block -= mean.astype(np.float32)
        block /= std.astype(np.float32)


def independent_components(X: np.ndarray, hidden_size: int, settings: BuildSettings,
                           hint: str = "use more or longer sequences, or fewer components") -> tuple[
                               list[dict[int, list[int]]], dict]:
    """z-score (in place) -> PCA where needed -> FastICA -> per component, the (layer, channel) pairs at or above
    the percentile of its absolute mixing weights. Returns (components, what was done)."""
    from sklearn.decomposition import PCA, FastICA
    from sklearn.exceptions import ConvergenceWarning

    tokens, features = X.shape
    _zscore_inplace(X)
    info: dict[str, Any] = {"tokens": tokens, "features": features, "pca_components": None}
    basis = None
    data = X
    if features > settings.max_pca_components:
        k = min(settings.max_pca_components, tokens, features)
        pca = PCA(n_components=k, svd_solver="randomized", random_state=settings.seed, copy=False)
        data = pca.fit_transform(X)
        basis = pca.components_                      # k x features
        info["pca_components"] = int(k)
        info["pca_explained_variance"] = float(pca.explained_variance_ratio_.sum())
    usable = min(data.shape[0], data.shape[1])
    if settings.components > usable:
        raise TunelabError(f"ICA: {settings.components} components asked for, but the activations support at most "
                           f"{usable} ({tokens} tokens, {data.shape[1]} dimensions); {hint}")
    ica = FastICA(n_components=settings.components, whiten="unit-variance", max_iter=1000, tol=1e-4,
                  random_state=settings.seed)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        ica.fit(data)
    converged = not any(issubclass(w.category, ConvergenceWarning) for w in caught)
    if not converged:
        log.warning("FastICA did not converge in %d iterations; the components may be noisy (more tokens help)",
                    ica.n_iter_)
    mixing = ica.mixing_                              # dims x components
    if basis is not None:
        mixing = basis.T.astype(np.float64) @ mixing   # back to the (layer, channel) columns
    components = []
    for c in range(mixing.shape[1]):
        weight = np.abs(mixing[:, c])
        threshold = np.percentile(weight, settings.percentile)
        chosen = np.flatnonzero(weight >= threshold)
        comp: dict[int, list[int]] = {}
        for j in chosen.tolist():
            comp.setdefault(j // hidden_size, []).append(j % hidden_size)
        components.append(comp)
    info["fastica"] = {"whiten": "unit-variance", "max_iter": 1000, "tol": 1e-4, "n_iter": int(ica.n_iter_),
                       "converged": converged}
    return components, info


def build_templates(model, sequences: list[list[int]], settings: BuildSettings, *, pad_token_id: int,
                    model_name_or_path: str | None, details: dict[str, Any] | None = None,
                    flags: dict[str, str] | None = None) -> IcaTemplates:
    """Templates for ``model`` from token-id sequences (already truncated to the wanted length). ``flags`` names
    the options behind samples, components and max_pca_components in error messages."""
    import sklearn

    from tunelab import __version__

    started = time.perf_counter()
    layout = model_layout(model)
    chosen = choose_sequences([list(s) for s in sequences if len(s)], settings.samples, settings.seed)
    tokens = sum(len(s) for s in chosen)
    features = layout.num_layers * layout.hidden_size
    needed = memory_needed_bytes(tokens, features, settings.max_pca_components)
    log.info("ICA templates: %d sequences, %d tokens x %d features (%d layers x %d channels); PCA to %s; "
             "needs about %.2f GiB of memory", len(chosen), tokens, features, layout.num_layers, layout.hidden_size,
             min(settings.max_pca_components, tokens) if features > settings.max_pca_components else "none (fewer "
             "features than --max_pca_components)", needed / GIB)
    f = {"samples": "--samples", "components": "--components", "max_pca_components": "--max_pca_components",
         **(flags or {})}
    _check_memory(needed, f"lower {f['samples']} or --max_seq_length, or {f['max_pca_components']}")
    X = collect_activations(model, chosen, pad_token_id=pad_token_id, batch_size=settings.batch_size)
    components, info = independent_components(X, layout.hidden_size, settings,
                                              hint=f"raise {f['samples']} or --max_seq_length, or lower "
                                                   f"{f['components']}")
    del X
    build = {"activation": "output of each decoder block's mlp, padding excluded, layers concatenated",
             **(details or {}), "samples": settings.samples, "sequences": len(chosen),
             "components": settings.components, "percentile": settings.percentile,
             "max_pca_components": settings.max_pca_components, "seed": settings.seed, **info,
             "build_seconds": round(time.perf_counter() - started, 3), "tunelab_version": __version__,
             "scikit_learn_version": sklearn.__version__}
    templates = IcaTemplates(layout=layout, components=components, build=build,
                             model_name_or_path=model_name_or_path)
    sizes = [sum(len(c) for c in comp.values()) for comp in components]
    log.info("ICA templates: %d components of %s (layer, channel) pairs in %.1fs", len(components),
             ", ".join(map(str, sizes)), build["build_seconds"])
    return templates


def build_from_options(opts) -> tuple[IcaTemplates, Path]:
    """`tunelab ica build`: load the model and the data as training would, build, save. Returns (templates, path)."""
    import torch

    from tunelab.config import TrainOptions
    from tunelab.data import sources
    from tunelab.data.prepare import prepare
    from tunelab.models import detect_task_kind, load_config, load_model, load_tokenizer, resolve_model

    settings = BuildSettings(samples=opts.samples, components=opts.components, percentile=opts.percentile,
                             max_pca_components=opts.max_pca_components, seed=opts.seed, batch_size=opts.batch_size)
    settings.check({"samples": "--samples", "components": "--components", "percentile": "--percentile",
                    "max_pca_components": "--max_pca_components"})
    if opts.max_seq_length < 1:
        raise TunelabError(f"--max_seq_length must be at least 1, got {opts.max_seq_length}")
    output = Path(opts.output)
    if output.is_dir():
        raise TunelabError(f"--output {output}: is a directory; pass a file path such as {output / 'ica.json'}")
    sources.check_local(opts.dataset_name_or_path)
    model_path = resolve_model(opts.model_name_or_path)
    config = load_config(model_path, trust_remote_code=opts.trust_remote_code)
    task_kind = detect_task_kind(config)
    if task_kind != "causal_lm":
        raise TunelabError(f"--model_name_or_path {opts.model_name_or_path}: ICA templates need a decoder-only "
                           f"(causal LM) model; this one is {task_kind}")
    tokenizer = load_tokenizer(model_path, task_kind=task_kind, trust_remote_code=opts.trust_remote_code)
    tokenizer.padding_side = "right"
    topts = TrainOptions(model_name_or_path=opts.model_name_or_path, dataset_name_or_path=opts.dataset_name_or_path,
                         output_dir=str(output.parent), dataset_config=opts.dataset_config,
                         train_split=opts.train_split, dataset_format=opts.dataset_format,
                         input_columns=opts.input_columns, target_column=opts.target_column, template=opts.template,
                         system_prompt=opts.system_prompt, max_seq_length=opts.max_seq_length,
                         max_train_samples=opts.samples, max_eval_samples=1, seed=opts.seed)
    data = prepare(topts, tokenizer, task_kind)
    model = load_model(model_path, task_kind, dtype=torch.float32, trust_remote_code=opts.trust_remote_code)
    if torch.cuda.is_available() and not opts.use_cpu:
        model.to("cuda")
    templates = build_templates(
        model, [row["input_ids"] for row in data.train], settings, pad_token_id=tokenizer.pad_token_id,
        model_name_or_path=opts.model_name_or_path,
        details={"dataset_name_or_path": opts.dataset_name_or_path, "max_seq_length": opts.max_seq_length,
                 "template": data.template.name})
    return templates, templates.save(output)
