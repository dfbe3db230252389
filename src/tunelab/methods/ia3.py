"""IA3 from peft: learned rescaling of keys, values and the MLP activations."""

from tunelab.methods import register
from tunelab.methods.base import MODULES_TO_SAVE, TARGET_MODULES, Method, task_type

# The feed-forward layers among the usual IA3 targets (their input, not output, is rescaled).
_FEEDFORWARD_NAMES = ("down_proj", "fc2", "wo", "c_proj", "dense_4h_to_h", "w2", "output.dense")


class IA3(Method):
    def peft_config(self, opts, model, ctx):
        from peft import IA3Config

        if opts.lora_target_modules:
            targets = list(opts.lora_target_modules)
            feedforward = [t for t in targets if t.endswith(_FEEDFORWARD_NAMES)]
            return IA3Config(task_type=task_type(ctx), target_modules=targets, feedforward_modules=feedforward,
                             modules_to_save=opts.modules_to_save)
        # peft knows the IA3 targets of each architecture (keys, values and the MLP's down projection).
        return IA3Config(task_type=task_type(ctx), modules_to_save=opts.modules_to_save)


register(IA3(name="ia3", summary="learned rescaling vectors on keys, values and MLP activations "
                                 "(Liu et al. 2022)", peft_type="IA3", default_learning_rate=3e-3,
                 default_learning_rate_why="(IA)^3 rescales from 1.0 and needs larger steps than LoRA: T-Few "
                                           "(Liu et al. 2022) trains it at 3e-3",
                 learning_rate_range=(1e-3, 1e-1), options=(TARGET_MODULES, MODULES_TO_SAVE)))
