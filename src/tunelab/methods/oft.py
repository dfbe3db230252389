"""OFT from peft: orthogonal (block-diagonal, Cayley-parametrised) rotations of the weights."""

from tunelab.methods import register
from tunelab.methods.base import MODULES_TO_SAVE, TARGET_MODULES, Method, target_modules, task_type
from tunelab.methods.lora import LORA_DROPOUT


class OFT(Method):
    def peft_config(self, opts, model, ctx):
        from peft import OFTConfig

        # OFT is sized by block size, not rank (peft's default 32); every targeted layer's input size must be a
        # multiple of it.
        return OFTConfig(task_type=task_type(ctx), r=0, oft_block_size=32, module_dropout=opts.lora_dropout,
                         target_modules=target_modules(opts, model), modules_to_save=opts.modules_to_save)


# No rank option: --lora_r does not size OFT (its card shows the block size peft used).
register(OFT(name="oft", summary="orthogonal fine-tuning: block-diagonal rotations of the weights "
                                 "(Qiu et al. 2023)", peft_type="OFT",
             default_learning_rate_why="the LoRA family's",
             options=(LORA_DROPOUT, TARGET_MODULES, MODULES_TO_SAVE),
             hyperparameters=(("block size", "oft_block_size"), ("module dropout", "module_dropout"))))
