"""Full fine-tuning: every weight trains; no peft wrapper."""

from tunelab.methods import register
from tunelab.methods.base import Method


class FullFineTuning(Method):
    def apply(self, model, opts, ctx):
        for p in model.parameters():
            p.requires_grad_(True)
        return model


register(FullFineTuning(name="full", summary="full fine-tuning: every weight trains", peft=False,
                        default_learning_rate=5e-5, learning_rate_range=(1e-6, 1e-4),
                        default_learning_rate_why="about a tenth of LoRA's (Biderman et al. 2024)",
                        default_warmup_ratio=0.1, mergeable=False, anti_drift=True))
