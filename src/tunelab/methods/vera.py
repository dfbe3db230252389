"""VeRA from peft: frozen shared random projections, trained scaling vectors only."""

from tunelab.methods import register
from tunelab.methods.base import MODULES_TO_SAVE, TARGET_MODULES, Method, target_modules, task_type
from tunelab.methods.lora import LORA_DROPOUT, LORA_R


class VeRA(Method):
    def peft_config(self, opts, model, ctx):
        from peft import VeraConfig

        return VeraConfig(task_type=task_type(ctx), r=opts.lora_r, vera_dropout=opts.lora_dropout,
                          target_modules=target_modules(opts, model), modules_to_save=opts.modules_to_save)


register(VeRA(name="vera", summary="shared frozen random projections with trained scaling vectors "
                                   "(Kopiczko et al. 2024)", peft_type="VERA", default_learning_rate=1e-3,
              default_learning_rate_why="peft's method-comparison suite: the scaling vectors need larger steps "
                                        "than LoRA's matrices",
              learning_rate_range=(1e-3, 1e-1), rank_option="lora_r",
              options=(LORA_R, LORA_DROPOUT, TARGET_MODULES, MODULES_TO_SAVE),
              hyperparameters=(("rank", "r"), ("dropout", "vera_dropout"))))
