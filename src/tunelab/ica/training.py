"""What ``tunelab train --mask_mode lesion|preserve`` adds to a training run.

``check_options`` runs before anything is loaded; ``setup`` runs after the model is built (it loads the templates,
or builds them from the training rows, and validates them against the model); the run then saves the templates
into its output dir and hands ``Masking.callback()`` to the Trainer.

Lifecycle of the masks (the callback):
- ``on_train_begin`` (after the Trainer has loaded any checkpoint it resumes from): hooks and anti-drift
  parametrizations are installed, so a resumed run is masked exactly like a fresh one;
- whenever the Trainer is about to save a checkpoint or to evaluate (``should_save`` / ``should_evaluate`` at
  step or epoch end): the hooks are removed and the anti-drift parametrizations baked into plain weights, so a
  checkpoint holds ordinary tensors under ordinary names (hooks never enter a state dict anyway) and evaluation
  during training sees the model that will be saved, unmasked; ``on_step_begin`` installs both again;
- ``on_train_end``: hooks removed, parametrizations baked. ``train`` calls ``remove`` once more before its own
  save. The saved model or adapter therefore carries no masking at all.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunelab.errors import TunelabError
from tunelab.ica.build import BuildSettings, build_templates
from tunelab.ica.masks import AntiDrift, ChannelMasks, anti_drift_targets, decoder_blocks, model_layout, zero_masks
from tunelab.ica.templates import IcaTemplates, parse_layers
from tunelab import run_files
from tunelab.methods import get_method, method_names

log = logging.getLogger(__name__)

_BUILD_FLAGS = {"samples": "--ica_samples", "components": "--ica_components", "percentile": "--ica_percentile",
                "max_pca_components": "--ica_max_pca_components"}


def build_settings(opts) -> BuildSettings:
    return BuildSettings(samples=opts.ica_samples, components=opts.ica_components, percentile=opts.ica_percentile,
                         max_pca_components=opts.ica_max_pca_components, seed=opts.seed,
                         batch_size=opts.per_device_eval_batch_size)


def check_options(opts) -> None:
    """Flag combinations that cannot work, before any weight is loaded."""
    if opts.mask_mode == "none":
        given = [name for name in ("ica_templates", "ica_component_ids", "ica_mask_layers")
                 if getattr(opts, name) is not None] + (["anti_drift"] if opts.anti_drift else [])
        if given:
            raise TunelabError(f"--{given[0]} has no effect without --mask_mode lesion or --mask_mode preserve; add "
                               f"one or drop --{given[0]}")
        return
    if opts.anti_drift and not get_method(opts.method).anti_drift:
        able = ", ".join(name for name in method_names() if get_method(name).anti_drift)
        raise TunelabError(f"--anti_drift restricts the rows of down_proj (full) or of its LoRA B matrix; --method "
                           f"{opts.method} has neither; use it with {able} or drop it")
    if opts.ica_templates is not None and not Path(opts.ica_templates).is_file():
        raise TunelabError(f"--ica_templates {opts.ica_templates}: file not found; build one with `tunelab ica "
                           "build`, or leave the flag out to build templates from the training data")
    for i in opts.ica_component_ids or []:
        if i < 0:
            raise TunelabError(f"--ica_component_ids {i}: component ids start at 0")
    parse_layers(opts.ica_mask_layers)
    if opts.ica_templates is None:
        build_settings(opts).check(_BUILD_FLAGS)


@dataclass
class Masking:
    mode: str
    templates: IcaTemplates
    origin: str                       # "file", "built" (from the training rows) or "reused" (a resumed run's)
    source: str
    selection: dict[int, list[int]]
    masks: ChannelMasks
    anti_drift: AntiDrift | None
    component_ids: list[int] | None

    def install(self) -> None:
        self.masks.install()
        if self.anti_drift is not None:
            self.anti_drift.install()

    def bake(self) -> None:
        if self.anti_drift is not None:
            self.anti_drift.bake()

    def remove(self) -> None:
        """No hooks and no parametrizations left: the model is an ordinary model again."""
        self.masks.remove()
        self.bake()

    def save_templates(self, out: Path) -> Path:
        return self.templates.save(Path(out) / run_files.ICA_TEMPLATES)

    def summary(self) -> dict[str, Any]:
        zeroed = sum(int(m.sum()) for m in self.masks.zeroed.values())
        return {
            "mask_mode": self.mode,
            "templates": self.source,
            "templates_origin": self.origin,
            "component_ids": self.component_ids if self.component_ids is not None
            else list(range(len(self.templates.components))),
            "masked_layers": sorted(self.selection),
            "selected_channels": sum(len(c) for c in self.selection.values()),
            "zeroed_channels": zeroed,
            "anti_drift": self.anti_drift is not None,
            "template_build_seconds": self.templates.build.get("build_seconds") if self.origin == "built" else None,
        }

    def callback(self):
        from transformers import TrainerCallback

        masking = self

        class IcaMasking(TrainerCallback):
            def on_train_begin(self, args, state, control, **kwargs):
                masking.install()

            def on_step_begin(self, args, state, control, **kwargs):
                masking.install()  # again after an evaluation or a checkpoint took them off

            def on_step_end(self, args, state, control, **kwargs):
                if control.should_save or control.should_evaluate:
                    masking.remove()

            def on_epoch_end(self, args, state, control, **kwargs):
                if control.should_save or control.should_evaluate:
                    masking.remove()

            def on_train_end(self, args, state, control, **kwargs):
                masking.remove()

        return IcaMasking()


def setup(model, opts, *, task_kind: str, sequences: list[list[int]], pad_token_id: int, out: Path,
          reuse: bool) -> Masking | None:
    """Templates (from --ica_templates, from a resumed run's output dir, or built from ``sequences``), checked
    against the model, turned into masks that are not installed yet. None when --mask_mode is none."""
    if opts.mask_mode == "none":
        return None
    if task_kind != "causal_lm":
        raise TunelabError(f"--mask_mode {opts.mask_mode}: ICA masking works on decoder-only (causal LM) models; "
                           f"{opts.model_name_or_path} is a {task_kind} model")
    layout = model_layout(model)
    saved = Path(out) / run_files.ICA_TEMPLATES
    if opts.ica_templates is not None:
        templates = IcaTemplates.load(opts.ica_templates)
        origin, source = "file", str(opts.ica_templates)
        templates.check_layout(layout, source=f"--ica_templates {opts.ica_templates}",
                               model=opts.model_name_or_path)
    elif reuse and saved.is_file():
        templates = IcaTemplates.load(saved, flag="the resumed run's templates")
        origin, source = "reused", str(saved)
        templates.check_layout(layout, source=str(saved), model=opts.model_name_or_path)
        log.info("ICA masking: resuming with the templates the run built before (%s)", saved)
    else:
        log.info("ICA masking: building templates from the training rows (pass --ica_templates to reuse a file)")
        import torch

        if torch.cuda.is_available() and not opts.use_cpu and next(model.parameters()).device.type == "cpu":
            model.to("cuda")  # where the Trainer would put it anyway; the forward passes run there
        templates = build_templates(model, sequences, build_settings(opts), pad_token_id=pad_token_id,
                                    model_name_or_path=opts.model_name_or_path,
                                    details={"dataset_name_or_path": opts.dataset_name_or_path,
                                             "max_seq_length": opts.max_seq_length},
                                    flags=_BUILD_FLAGS)
        origin, source = "built", str(saved)
    layers = parse_layers(opts.ica_mask_layers, layout.num_layers)
    selection = templates.select(opts.ica_component_ids, layers)
    if not selection:
        raise TunelabError(f"--ica_mask_layers {opts.ica_mask_layers}: the chosen components have no channel in "
                           f"these layers (they use layers {sorted({l for c in templates.components for l in c})}); "
                           "choose other layers or components")
    zeroed = zero_masks(selection, opts.mask_mode, layout.hidden_size)
    blocks = decoder_blocks(model)
    anti = None
    if opts.anti_drift:
        # The rows the masks zero are the ones that must not change: lesion freezes the selected channels,
        # preserve every other channel of the masked layers.
        targets = [t for layer in zeroed for t in anti_drift_targets(blocks[layer], layer)]
        if not targets:
            log.warning("--anti_drift: down_proj is not trained by --method %s here (not a LoRA target), so its rows "
                        "cannot drift anyway", opts.method)
        if not opts.weight_decay:
            # Measured on demo-ica too: scores identical to the mask alone beside both masks (README).
            log.warning("--anti_drift keeps the down_proj rows of the channels the masks zero, and while masked those "
                        "rows get no gradient: with --weight_decay 0 nothing else moves them, so --anti_drift "
                        "changes nothing here (it keeps them bit-identical against weight decay)")
        anti = AntiDrift(blocks, zeroed)
    masking = Masking(mode=opts.mask_mode, templates=templates, origin=origin, source=source, selection=selection,
                      masks=ChannelMasks(blocks, zeroed), anti_drift=anti, component_ids=opts.ica_component_ids)
    s = masking.summary()
    log.info("ICA masking (%s): %d selected channels in %d layers, %d channels zeroed during training%s",
             opts.mask_mode, s["selected_channels"], len(s["masked_layers"]), s["zeroed_channels"],
             ", anti-drift on" if anti else "")
    return masking
