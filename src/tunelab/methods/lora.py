"""LoRA and its variants from peft: lora, qlora (4-bit NF4 base + LoRA), dora, adalora."""

from __future__ import annotations

from tunelab.errors import TunelabError
from tunelab.methods import register
from tunelab.methods.base import MODULES_TO_SAVE, TARGET_MODULES, Method, MethodFlag, target_modules, task_type

# The LoRA family's options (other families that have a rank or a dropout read these too), what it reads and what
# its model card shows.
LORA_R = MethodFlag("lora_r", 16, "rank of the adapter's low-rank update")
LORA_ALPHA = MethodFlag("lora_alpha", 32, "LoRA scaling numerator (alpha / r scales the update)")
LORA_DROPOUT = MethodFlag("lora_dropout", 0.0, "dropout on the adapter input (default: 0, as in peft and unsloth: "
                                               "dropout keeps a dropped-out copy of every adapted layer's input for "
                                               "the backward pass, more activation memory; at 0.05 LoRA's "
                                               "activations exceed full fine-tuning's)")
LORA_OPTIONS = (LORA_R, LORA_ALPHA, LORA_DROPOUT, TARGET_MODULES, MODULES_TO_SAVE)
LORA_HYPERPARAMETERS = (("rank", "r"), ("alpha", "lora_alpha"), ("dropout", "lora_dropout"))


class LoRA(Method):
    use_dora = False

    def peft_config(self, opts, model, ctx):
        from peft import LoraConfig

        return LoraConfig(task_type=task_type(ctx), r=opts.lora_r, lora_alpha=opts.lora_alpha,
                          lora_dropout=opts.lora_dropout, target_modules=target_modules(opts, model),
                          modules_to_save=opts.modules_to_save, use_dora=self.use_dora)


class QLoRA(LoRA):
    def check(self, opts, model_config, ctx):
        super().check(opts, model_config, ctx)
        if opts.use_8bit:
            raise TunelabError("--method qlora loads the base in 4-bit; drop --use_8bit (or use --method lora "
                               "--use_8bit for an 8-bit base)")


class DoRA(LoRA):
    use_dora = True


class AdaLoRA(LoRA):
    def peft_config(self, opts, model, ctx):
        from peft import AdaLoraConfig

        total = max(int(ctx.total_steps), 1)
        # AdaLoRA prunes ranks between tinit and total - tfinal; keep both inside short budgets.
        tinit, tfinal = max(total // 10, 0), max(total // 5, 0)
        if total - tinit - tfinal <= 0:
            tinit, tfinal = 0, 0
        return AdaLoraConfig(task_type=task_type(ctx), init_r=opts.lora_r, target_r=max(opts.lora_r // 2, 1),
                             lora_alpha=opts.lora_alpha, lora_dropout=opts.lora_dropout,
                             target_modules=target_modules(opts, model), modules_to_save=opts.modules_to_save,
                             total_step=total, tinit=tinit, tfinal=tfinal, deltaT=max(total // 10, 1))

    def callbacks(self, model):
        from transformers import TrainerCallback

        class RankAllocation(TrainerCallback):
            """AdaLoRA re-allocates ranks from the gradients: after each optimizer step, before zero_grad."""

            def on_optimizer_step(self, args, state, control, **kwargs):
                model.base_model.update_and_allocate(state.global_step)

        return [RankAllocation()]


_FAMILY = dict(peft_type="LORA", rank_option="lora_r", options=LORA_OPTIONS, hyperparameters=LORA_HYPERPARAMETERS,
               default_learning_rate_why="peft's LoRA guides; Biderman et al. 2024 found about 10x full "
                                         "fine-tuning's rate best")
register(LoRA(name="lora", summary="low-rank adapters on the linear layers (Hu et al. 2021)", anti_drift=True,
              **_FAMILY))
register(QLoRA(name="qlora", summary="LoRA on a 4-bit NF4 base loaded through bitsandbytes (Dettmers et al. 2023)",
               implied_options={"use_4bit": True}, anti_drift=True, **_FAMILY))
register(DoRA(name="dora", summary="weight-decomposed LoRA: magnitude and direction (Liu et al. 2024)", **_FAMILY))
register(AdaLoRA(name="adalora", summary="LoRA with ranks re-allocated by importance during training "
                                         "(Zhang et al. 2023)",
                 **{**_FAMILY, "peft_type": "ADALORA",
                    "hyperparameters": (("initial rank", "init_r"), ("target rank", "target_r"),
                                        ("alpha", "lora_alpha"), ("dropout", "lora_dropout"))}))
