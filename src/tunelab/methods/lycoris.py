"""LyCORIS methods from peft: LoHa (Hadamard product) and LoKr (Kronecker product) low-rank updates."""

from tunelab.methods import register
from tunelab.methods.base import Method, target_modules, task_type
from tunelab.methods.lora import LORA_OPTIONS


class LoHa(Method):
    def peft_config(self, opts, model, ctx):
        from peft import LoHaConfig

        return LoHaConfig(task_type=task_type(ctx), r=opts.lora_r, alpha=opts.lora_alpha,
                          module_dropout=opts.lora_dropout, target_modules=target_modules(opts, model),
                          modules_to_save=opts.modules_to_save)


class LoKr(Method):
    def peft_config(self, opts, model, ctx):
        from peft import LoKrConfig

        return LoKrConfig(task_type=task_type(ctx), r=opts.lora_r, alpha=opts.lora_alpha,
                          module_dropout=opts.lora_dropout, target_modules=target_modules(opts, model),
                          modules_to_save=opts.modules_to_save)


_FAMILY = dict(rank_option="lora_r", options=LORA_OPTIONS,
               hyperparameters=(("rank", "r"), ("alpha", "alpha"), ("module dropout", "module_dropout")),
               default_learning_rate_why="the LoRA family's")
register(LoHa(name="loha", summary="low-rank Hadamard product updates (Hyeon-Woo et al. 2022)", peft_type="LOHA",
              **_FAMILY))
register(LoKr(name="lokr", summary="low-rank Kronecker product updates (Yeh et al. 2023)", peft_type="LOKR",
              **_FAMILY))
