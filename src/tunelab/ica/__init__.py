"""ICA functional-network masking (after Liu et al. 2025, "Brain-Inspired Exploration of Functional Networks and
Key Neurons in Large Language Models", arXiv 2502.20408).

- ``templates``: the one versioned template format, shared by the builder and the trainer.
- ``build``: activation collection over sample sequences, z-scoring, PCA, FastICA -> templates.
- ``masks``: forward hooks that lesion or preserve channels of the MLP outputs, and the anti-drift
  parametrization of down_proj (or of its LoRA B matrix).
- ``training``: what ``tunelab train --mask_mode`` adds to a training run.

This module stays light (no torch import) because recipes parse method names through it.
"""

from __future__ import annotations

MASK_MODES = ("none", "lesion", "preserve")
_MASKED_SUFFIX = "+ica_"


def split_method_spec(spec: str) -> tuple[str, str | None]:
    """``lora+ica_preserve`` -> ("lora", "preserve"); ``lora`` -> ("lora", None). The mode is checked, the method
    is left to the method registry."""
    if _MASKED_SUFFIX not in spec:
        return spec, None
    method, mode = spec.split(_MASKED_SUFFIX, 1)
    if mode not in MASK_MODES[1:]:
        from tunelab.errors import TunelabError

        raise TunelabError(f"method {spec!r}: the part after '+ica_' must be lesion or preserve (e.g. "
                           f"{method or 'lora'}+ica_preserve)")
    return method, mode
