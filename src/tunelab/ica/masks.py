"""Masks on the MLP outputs of decoder blocks, and the anti-drift parametrization of down_proj.

"The MLP output" of a decoder block is the output of its ``mlp`` module (for Llama-style models the output of
down_proj); a channel is an index of the hidden dimension. Masks act through forward hooks, so they never enter
a state dict; :class:`ChannelMasks` installs and removes them. :class:`AntiDrift` keeps chosen rows of
down_proj.weight (full fine-tuning) or of its LoRA B matrix (rows = output channels) at their values from install
time, through ``torch.nn.utils.parametrize``; ``bake`` writes the parametrized value into the plain weight and
removes the parametrization, so what is saved is an ordinary weight under its ordinary name.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.nn.utils import parametrize

from tunelab.errors import TunelabError
from tunelab.ica.templates import Layout

log = logging.getLogger(__name__)


def decoder_blocks(model) -> list[nn.Module]:
    """The repeated decoder blocks, in order: the ModuleList whose entries all have an ``mlp`` module and whose
    length is the config's layer count (Llama, Mistral, Qwen, Gemma, Phi-3, GPT-2 ... through any peft wrapper)."""
    config = model.config
    n = getattr(config, "num_hidden_layers", None)
    for _, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) and (n is None or len(module) == n) and all(
                isinstance(getattr(block, "mlp", None), nn.Module) for block in module):
            return list(module)
    raise TunelabError(f"ICA masking needs a decoder-only model whose blocks have an `mlp` module (Llama, Mistral, "
                       f"Qwen, Gemma, GPT-2, ...); model type {config.model_type!r} has none; train it without "
                       "--mask_mode")


def model_layout(model) -> Layout:
    config = model.config
    blocks = decoder_blocks(model)
    hidden = getattr(config, "hidden_size", None)
    if hidden is None:
        raise TunelabError(f"ICA masking: the config of model type {config.model_type!r} has no hidden_size")
    archs = getattr(config, "architectures", None) or []
    return Layout(model_type=str(config.model_type), architecture=archs[0] if archs else None,
                  num_layers=len(blocks), hidden_size=int(hidden))


def zero_masks(selection: dict[int, list[int]], mode: str, hidden_size: int) -> dict[int, torch.Tensor]:
    """Layer -> bool vector over the hidden channels, True where the channel is zeroed. Lesion zeroes the selected
    channels; preserve zeroes every other channel of the layers that hold a selected one. Layers without a
    selected channel are left alone in both modes."""
    if mode not in ("lesion", "preserve"):
        raise ValueError(f"mask mode {mode!r}")
    masks = {}
    for layer, channels in selection.items():
        selected = torch.zeros(hidden_size, dtype=torch.bool)
        selected[torch.as_tensor(channels, dtype=torch.long)] = True
        masks[layer] = selected if mode == "lesion" else ~selected
    return masks


def _mask_hook(zeroed: torch.Tensor):
    cache: dict[torch.device, torch.Tensor] = {}

    def hook(module, args, output):
        out = output[0] if isinstance(output, tuple) else output
        mask = cache.get(out.device)
        if mask is None:
            mask = cache[out.device] = zeroed.to(out.device)
        masked = out.masked_fill(mask, 0)  # exact zeros; the gradient through them is exactly zero too
        return (masked, *output[1:]) if isinstance(output, tuple) else masked

    return hook


@dataclass
class ChannelMasks:
    """Forward hooks on the ``mlp`` modules of the masked layers."""

    blocks: list[nn.Module]
    zeroed: dict[int, torch.Tensor]
    handles: list = field(default_factory=list)

    @property
    def installed(self) -> bool:
        return bool(self.handles)

    def install(self) -> None:
        if self.handles:
            return
        for layer, mask in sorted(self.zeroed.items()):
            self.handles.append(self.blocks[layer].mlp.register_forward_hook(_mask_hook(mask)))

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles.clear()


class FreezeRows(nn.Module):
    """A parametrization: the tensor with the given rows replaced by a frozen copy of their values.

    The optimizer updates the underlying ``original`` tensor as it likes (weight decay included), but every
    forward, and the baked weight, takes those rows from the frozen copy, so they stay bit-identical. The
    gradient that reaches ``original`` at those rows is exactly zero (index_put's backward)."""

    def __init__(self, rows: torch.Tensor, values: torch.Tensor):
        super().__init__()
        # Non-persistent: the copy never enters a state dict or a checkpoint.
        self.register_buffer("rows", rows.clone(), persistent=False)
        self.register_buffer("values", values.detach().clone(), persistent=False)

    def forward(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor.index_put((self.rows.to(tensor.device),), self.values.to(tensor.device, tensor.dtype))


def anti_drift_targets(block: nn.Module, layer: int) -> list[nn.Module]:
    """The modules whose rows are the MLP's output channels: down_proj itself (full fine-tuning) or the LoRA B
    matrices of a peft-wrapped down_proj. An untrained down_proj (a peft method that leaves it alone) needs none."""
    down = getattr(block.mlp, "down_proj", None)
    if down is None:
        raise TunelabError(f"--anti_drift needs an MLP with a down_proj linear layer (Llama-style); layer {layer}'s "
                           f"MLP ({type(block.mlp).__name__}) has none; drop --anti_drift")
    lora_b = getattr(down, "lora_B", None)
    if isinstance(lora_b, nn.ModuleDict):
        return [lora_b[name] for name in lora_b]
    if isinstance(down, nn.Linear) and down.weight.requires_grad:
        return [down]
    return []


@dataclass
class AntiDrift:
    """Rows outside the trained channel set keep their install-time values (see FreezeRows)."""

    blocks: list[nn.Module]
    frozen_rows: dict[int, torch.Tensor]          # layer -> bool vector over output channels, True = frozen
    _targets: list[tuple[nn.Module, str, FreezeRows]] = field(default_factory=list)
    _saved: dict[int, FreezeRows] = field(default_factory=dict)  # id(tensor) -> its frozen copy, kept across bakes

    @property
    def installed(self) -> bool:
        return bool(self._targets)

    def install(self) -> None:
        if self._targets:
            return
        for layer, frozen in sorted(self.frozen_rows.items()):
            rows = torch.nonzero(frozen).flatten()
            if not len(rows):
                continue
            for module in anti_drift_targets(self.blocks[layer], layer):
                for name in ("weight", "bias"):
                    tensor = getattr(module, name, None)
                    if tensor is None or not tensor.requires_grad:
                        continue
                    key = id(tensor)
                    if key not in self._saved:
                        self._saved[key] = FreezeRows(rows.to(tensor.device), tensor.detach()[rows.to(tensor.device)])
                    # The Parameter object moves to parametrizations.<name>.original unchanged, so an optimizer
                    # that already holds it keeps updating it.
                    parametrize.register_parametrization(module, name, self._saved[key])
                    self._targets.append((module, name, self._saved[key]))

    def bake(self) -> None:
        """Write the parametrized values into the plain tensors and drop the parametrizations (same Parameter
        objects, ordinary names), e.g. before a checkpoint or the final save."""
        for module, name, _ in self._targets:
            if parametrize.is_parametrized(module, name):
                parametrize.remove_parametrizations(module, name, leave_parametrized=True)
        self._targets.clear()

    def trainable_rows(self) -> int:
        return int(sum((~m).sum() for m in self.frozen_rows.values()))
