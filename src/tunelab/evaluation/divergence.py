"""How far a model's next-token distributions are from its base's, on a fixed set of texts.

A :class:`BaseReference` holds the base model's side once: its log-probabilities at every target position (float32,
on the CPU) and its summed cross-entropy. Comparing another model against it gives
- ``kl_divergence``: mean per-token KL(base || model), the forward KL (Shenfeld et al. 2025 found it the best
  predictor of forgetting);
- ``delta_cross_entropy``: the change in mean per-token cross-entropy on the targets (> 0: the model finds the text
  less likely than the base did).
Both come from :func:`tunelab.inference.response_losses`, whose logits are shifted against the labels (position t
predicts token t+1), on the same encoded examples, so the untouched base compares to exactly 0.

"Before" must be the base itself: for a PEFT model, take the reference inside :func:`base_view` (peft's
``disable_adapter()``), never with a freshly initialised adapter active (a prompt-tuning adapter changes the
outputs from its first step).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Iterator

from tunelab import inference
from tunelab.data.formats import Example


@contextlib.contextmanager
def base_view(lm: inference.LoadedModel) -> Iterator[inference.LoadedModel]:
    """The base model inside ``lm``: the adapter disabled for a PEFT model, the model itself otherwise."""
    from peft import PeftModel

    if isinstance(lm.model, PeftModel):
        with inference.adapter_disabled(lm) as base:
            yield base
    else:
        yield lm


@dataclass
class BaseReference:
    examples: list[Example]     # those with at least one target token
    indices: list[int]          # their positions in the examples given
    log_probs: list[Any]        # per example: a [target tokens, vocab] float32 CPU tensor of the base's log-probs
    nll_sum: float
    tokens: int
    asks: Any = None            # how a model is asked for these examples (retention.general_view); None: as given

    @classmethod
    def of(cls, base: inference.LoadedModel, examples: list[Example], *, batch_size: int = 8,
           max_seq_length: int = 1024, asks=None) -> "BaseReference":
        import torch

        base = asks(base) if asks is not None else base
        rows = inference.response_losses(base, examples, batch_size=batch_size, max_seq_length=max_seq_length,
                                         return_logits=True)
        kept = [(i, ex, row) for i, (ex, row) in enumerate(zip(examples, rows)) if row["tokens"]]
        return cls(examples=[ex for _, ex, _ in kept], indices=[i for i, _, _ in kept],
                   log_probs=[torch.log_softmax(row["logits"], -1) for _, _, row in kept],
                   nll_sum=sum(row["nll_sum"] for _, _, row in kept),
                   tokens=sum(row["tokens"] for _, _, row in kept), asks=asks)

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.log_probs)

    def compare(self, lm: inference.LoadedModel, *, batch_size: int = 8, max_seq_length: int = 1024,
                per_example: bool = False) -> dict[str, Any]:
        """KL(base || lm) and the change in cross-entropy, per target token, on the reference's examples. With
        ``per_example``, also each example's summed KL and token count (its index among the examples given)."""
        import torch

        if not self.tokens:
            return {"kl_divergence": None, "delta_cross_entropy": None, "num_tokens": 0, "num_examples": 0}
        lm = self.asks(lm) if self.asks is not None else lm
        rows = inference.response_losses(lm, self.examples, batch_size=batch_size, max_seq_length=max_seq_length,
                                         return_logits=True)
        kl_sum, nll_sum, each = 0.0, 0.0, []
        for index, base_logp, row in zip(self.indices, self.log_probs, rows):
            logp = torch.log_softmax(row["logits"], -1)
            kl = float((base_logp.exp() * (base_logp - logp)).sum())
            each.append({"index": index, "kl_sum": kl, "tokens": row["tokens"]})
            kl_sum += kl
            nll_sum += row["nll_sum"]
        return {**({"per_example": each} if per_example else {}),"kl_divergence": max(kl_sum / self.tokens, 0.0),
                "base_cross_entropy": self.nll_sum / self.tokens, "cross_entropy": nll_sum / self.tokens,
                "delta_cross_entropy": (nll_sum - self.nll_sum) / self.tokens,
                "num_tokens": self.tokens, "num_examples": len(self.examples)}
