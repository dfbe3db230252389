"""Options of ``tunelab train`` (and of the Python API's ``tunelab.train``), with method-aware defaults."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar

from tunelab.data.formats import FORMATS
from tunelab.evaluation.tasks import TASKS
from tunelab.methods import default_learning_rates, flag_declaration, method_names, option_help, own_options_help
from tunelab.options import option

TASK_TYPES = ("auto", "causal_lm", "seq2seq_lm", "seq_cls")
DATASET_FORMATS = ("auto", *FORMATS)  # the data formats' registry, and auto: detected from the columns
TEMPLATES = ("auto", "chat", "alpaca", "chatml", "plain")
REPORT_TO = ("none", "tensorboard", "wandb", "mlflow")
SCHEDULERS = ("linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup",
              "inverse_sqrt", "reduce_lr_on_plateau", "cosine_with_min_lr", "warmup_stable_decay")
OPTIMIZERS = ("adamw_torch", "adamw_torch_fused", "adamw_8bit", "paged_adamw_8bit", "adafactor", "sgd")


def method_flag(name: str) -> Any:
    """A TrainOptions field for a flag a method family declares (tunelab.methods.base.MethodFlag): its default, help
    and choices come from that declaration, and its help names the methods that read it, computed when --help is
    built (so a method registered later that reads it is named too)."""
    decl = flag_declaration(name)
    return option(decl.default, lambda: option_help(name, decl.help), choices=decl.choices, group="method")


DTYPES = ("auto", "float32", "bfloat16", "float16")
# --torch_dtype of the commands that load a model to run it (eval, generate)
LOADED_DTYPE_HELP = ("dtype the model's weights are loaded in; auto: as the run trained (bfloat16 after --bf16, "
                     "float16 after --fp16 on a GPU, float32 for the non-quantized tensors of a QLoRA run, else "
                     "float32; a model that is no tunelab run: the precision tunelab would train it in here); read "
                     "from the run's tunelab_config.yaml")


@dataclass(kw_only=True)
class TrainOptions:
    """Every option of a training run. Names follow transformers' TrainingArguments and peft's configs."""

    # --- model -------------------------------------------------------------------------------------------------
    model_name_or_path: str = option(help="a built-in model name (see `tunelab models list`), a local model "
                                          "directory, or a Hugging Face Hub id", group="model")
    task_type: str = option("auto", "causal_lm, seq2seq_lm or seq_cls; auto reads it from the model config",
                            choices=TASK_TYPES, group="model")
    trust_remote_code: bool = option(False, "allow model code from the Hub to run (off unless you ask)",
                                     group="model")
    torch_dtype: str = option("auto", "dtype the base weights are loaded in; auto: bfloat16 (float16 with --fp16) for "
                                      "PEFT methods trained with --bf16/--fp16, else float32 (full fine-tuning keeps "
                                      "float32 master weights under mixed precision)",
                              choices=DTYPES, group="model")

    # --- data --------------------------------------------------------------------------------------------------
    dataset_name_or_path: str = option(help="a .json/.jsonl/.csv/.parquet file, a directory holding "
                                            "train.* and validation.* files (or parallel text files: train.en "
                                            "beside train.fr), or a Hub dataset name", group="data")
    dataset_config: str | None = option(None, "the Hub dataset's configuration name", group="data")
    train_split: str = option("train", "split to train on", group="data")
    eval_split: str | None = option(None, "split to evaluate on (default: one named validation/val/dev/valid, "
                                          "if the dataset has one)", group="data")
    validation_split: float = option(0.0, "carve this fraction of the training rows out as the validation set "
                                          "(shuffled with --seed) when the dataset has no validation split; its "
                                          "loss is the mean per predicted token over the whole set",
                                     group="data")
    dataset_format: str = option("auto", "how to read rows; auto detects it from the column names",
                                 choices=DATASET_FORMATS, group="data")
    input_columns: list[str] | None = option(None, "columns that form the prompt (or the texts to classify)",
                                             group="data")
    target_column: str | None = option(None, "column that holds the response (or the label)", group="data")
    template: str = option("auto", "prompt template; auto uses the tokenizer's chat template when it has one, "
                                   "else alpaca", choices=TEMPLATES, group="data")
    system_prompt: str | None = option(None, "system prompt placed before every example", group="data")
    train_on_prompt: bool = option(False, "compute the loss on prompt tokens too (default: response tokens only)",
                                   group="data")
    max_seq_length: int = option(512, "truncate examples to this many tokens", group="data")
    max_train_samples: int | None = option(None, "use at most this many training rows (after shuffling with "
                                                 "--seed)", group="data")
    max_eval_samples: int | None = option(None, "use at most this many validation rows", group="data")
    group_by_length: bool = option(False, "batch examples of similar length together, so less of each batch is "
                                          "padding (the order stays seeded)", group="data")
    packing: bool = option(False, "padding-free batches: each batch is one flattened row whose position ids restart "
                                  "per example (causal LMs; the attention never crosses examples)", group="data")

    # --- method ------------------------------------------------------------------------------------------------
    # The method options' help is generated from the methods' declarations (tunelab.methods: which method reads
    # which option, each one's default learning rate), so a new method shows up here without an edit.
    method: str = option("lora", f"full, or a PEFT method: {', '.join(m for m in method_names() if m != 'full')}",
                         aliases=(), group="method")
    no_peft: bool = option(False, "alias of --method full", group="method")
    method_options: list[str] | None = option(None, own_options_help, metavar="NAME=VALUE", group="method")
    # Flags a method family owns (lora.py declares --lora_r's default and help, prompt.py --num_virtual_tokens'):
    # here only the value, under the name users know.
    lora_r: int = method_flag("lora_r")
    lora_alpha: int = method_flag("lora_alpha")
    lora_dropout: float = method_flag("lora_dropout")
    lora_target_modules: list[str] | None = method_flag("lora_target_modules")
    modules_to_save: list[str] | None = method_flag("modules_to_save")
    num_virtual_tokens: int = method_flag("num_virtual_tokens")
    prompt_tuning_init: str = method_flag("prompt_tuning_init")
    prompt_tuning_init_text: str | None = method_flag("prompt_tuning_init_text")
    use_4bit: bool = option(False, "load the base model in 4-bit through bitsandbytes (qlora sets it)",
                            group="quantization")
    use_8bit: bool = option(False, "load the base model in 8-bit through bitsandbytes", group="quantization")
    bnb_4bit_quant_type: str = option("nf4", "4-bit data type", choices=("nf4", "fp4"), group="quantization")
    bnb_4bit_compute_dtype: str = option("auto", "dtype of 4-bit matmuls; auto: bfloat16 on a GPU that supports "
                                                 "it, else float32",
                                         choices=DTYPES, group="quantization")
    bnb_4bit_use_double_quant: bool = option(True, "quantize the quantization constants too (QLoRA's double "
                                                   "quantization)", group="quantization")

    # --- training ----------------------------------------------------------------------------------------------
    output_dir: str = option(help="where the adapter or model, tokenizer, config and train_results.json go",
                             group="training")
    overwrite_output_dir: bool = option(False, "replace an output dir that holds a different or finished run",
                                        group="training")
    num_train_epochs: float = option(3.0, "epochs to train (ignored when --max_steps > 0)", group="training")
    max_steps: int = option(-1, "total optimizer steps; overrides --num_train_epochs when > 0", group="training")
    per_device_train_batch_size: int = option(8, "batch size per device", group="training")
    per_device_eval_batch_size: int = option(8, "evaluation batch size per device", group="training")
    gradient_accumulation_steps: int = option(1, "batches accumulated per optimizer step", group="training")
    learning_rate: float | None = option(None, f"peak learning rate (default by method: {default_learning_rates()})",
                                         group="training")
    lr_scheduler_type: str = option("linear", "learning-rate schedule", choices=SCHEDULERS, group="training")
    warmup_ratio: float | None = option(None, "share of steps spent warming up (default: 0.1 for full, 0.03 for "
                                              "PEFT methods)", group="training")
    weight_decay: float = option(0.0, "AdamW weight decay", group="training")
    max_grad_norm: float = option(1.0, "gradient clipping norm", group="training")
    optim: str = option("adamw_torch_fused", "optimizer (default: AdamW's fused kernel, transformers' own default; "
                                             "on the CPU about 3x faster than adamw_torch's per-tensor steps)",
                        choices=OPTIMIZERS, group="training")
    gradient_checkpointing: bool = option(False, "recompute activations in backward to save memory",
                                          group="training")
    bf16: bool | None = option(None, "train in bfloat16 mixed precision (autocast; master weights stay float32). "
                                     "Default: on where the hardware runs bf16 fast (a CUDA GPU that supports it, "
                                     "or a CPU with avx512_bf16 or AMX instructions), "
                                     "else off (a CPU without them emulates bf16, slower than float32); --no_bf16 "
                                     "or --bf16 false turns it off. The choice and why are logged and saved",
                               negation="no_bf16", group="training")
    fp16: bool = option(False, "train in float16 mixed precision (GPU only)", group="training")
    seed: int = option(42, "random seed for initialisation, shuffling and dropout", group="training")
    logging_steps: int = option(10, "log the training loss every this many steps", group="training")
    eval_steps: int | None = option(None, "evaluate every this many steps (default: only at the end)",
                                    group="training")
    save_steps: int = option(500, "save a checkpoint every this many steps", group="training")
    save_total_limit: int | None = option(None, "keep at most this many checkpoints", group="training")
    resume_from_checkpoint: str | None = option(None, "a checkpoint directory to resume from, or 'latest' for the "
                                                      "newest in --output_dir", group="training")
    report_to: str = option("none", "where to send logs", choices=REPORT_TO, group="training")
    tensor_peak: bool = option(False, "on the CPU, also count the live tensor bytes of the first 2 steps "
                                      "(peak_tensor_bytes beside the resident-set peak: comparable across methods; "
                                      "tunelab compare turns it on for its tables). Every op of those steps then "
                                      "passes through Python (5 to 20 percent slower), so it is off unless asked",
                               group="training")
    early_stopping_patience: int | None = option(None, "stop after this many evaluations without improvement of "
                                                       "the eval loss (needs a validation set and --eval_steps)",
                                                 group="training")
    use_cpu: bool = option(False, "train on the CPU even when a GPU is present", group="training")

    # --- what the run forgets while it trains (tunelab.tracking) ------------------------------------------------
    track_retention: list[str] | None = option(
        None, "signals measured against the base model at every --eval_steps (default: 10 times over the run) and "
              "written to train_results.json as 'curves': general_text (change in cross-entropy on general text), "
              "drift (KL from the base on its own continuations), task_kl (KL(base||tuned) on the task's own "
              "examples); the validation loss joins them when there is a validation set", metavar="SIGNAL",
        group="retention tracking")
    max_forgetting: list[str] | None = option(
        None, "a forgetting budget, e.g. drift=0.05: stop at the first tracked step beyond it and keep the last "
              "checkpoint within it (the signal is tracked)", metavar="SIGNAL=VALUE", group="retention tracking")
    track_samples: int = option(16, "examples per tracked signal (drift prompts; task examples, validation rows "
                                    "else training rows; --track_text rows)", group="retention tracking")
    track_text: str | None = option(None, "general text for the general_text signal: a .jsonl/.json/.csv/.parquet "
                                          "file of 'text' rows or conversations (default: the base's own "
                                          "continuations of the built-in drift prompts)", group="retention tracking")
    curve_points: int = option(0, "a learning-forgetting trajectory: track the signals at this many evenly spaced "
                                  "steps (the last is the end of training) and save the adapter, or the model, of "
                                  "each in OUTPUT_DIR/curve/step-N for `tunelab eval` (0: off)",
                               group="retention tracking")
    curve_checkpoints: bool = option(True, "with --curve_points: save the model at each point (false: only the "
                                           "tracked signals, e.g. to spare full fine-tuning's disk)",
                                     group="retention tracking")

    # --- several devices and machines (tunelab.distributed; docs: examples/distributed/README.md) ---------------
    num_processes: int = option(1, "train with this many processes, one per GPU (data parallel): tunelab starts "
                                   "`accelerate launch` itself; the global batch is per_device_train_batch_size x "
                                   "processes x gradient_accumulation_steps. Under accelerate launch or torchrun, "
                                   "leave it out (it records the launcher's world size)", group="distributed")
    fsdp: str | None = option(None, "shard the model with PyTorch FSDP through the Trainer, e.g. \"full_shard "
                                    "auto_wrap\" (or true, with everything in --fsdp_config); GPUs only",
                              group="distributed")
    fsdp_config: str | None = option(None, "the Trainer's FSDP settings as a JSON file, e.g. "
                                           "examples/distributed/fsdp_full_shard.json", group="distributed")
    deepspeed: str | None = option(None, "a DeepSpeed JSON config (ZeRO-2/ZeRO-3, offload), e.g. "
                                         "examples/distributed/ds_zero2.json; needs the deepspeed package and GPUs",
                                   group="distributed")

    # --- ICA functional-network masking (tunelab.ica) ----------------------------------------------------------
    mask_mode: str = option("none", "ICA functional-network masking during training: lesion zeroes the selected "
                                    "channels of each decoder block's MLP output, preserve zeroes every other channel "
                                    "of the layers that hold a selected one; the saved model carries no mask",
                            choices=("none", "lesion", "preserve"), group="ica masking")
    ica_templates: str | None = option(None, "templates from `tunelab ica build` (default with --mask_mode: built "
                                             "from the training rows and saved as ica_templates.json in "
                                             "--output_dir)", group="ica masking")
    ica_component_ids: list[int] | None = option(None, "components whose channels are selected, e.g. 0,1 "
                                                       "(default: all)", group="ica masking")
    ica_mask_layers: str | None = option(None, "mask only these decoder layers: indices and end-exclusive ranges, "
                                               "e.g. 0,2:5 = layers 0, 2, 3, 4 (default: all)", group="ica masking")
    anti_drift: bool = option(False, "only the rows of down_proj (full) or of its LoRA B matrix (lora, qlora) that "
                                     "belong to the trained channels change; the others stay bit-identical",
                              group="ica masking")
    ica_samples: int = option(100, "templates built on the fly: training sequences analysed", group="ica masking")
    ica_components: int = option(10, "templates built on the fly: independent components", group="ica masking")
    ica_percentile: float = option(98.0, "templates built on the fly: a component keeps the (layer, channel) pairs "
                                         "whose absolute mixing weight is at or above this percentile",
                                   group="ica masking")
    ica_max_pca_components: int = option(1000, "templates built on the fly: PCA reduces the activations to this "
                                                "many dimensions first when they have more", group="ica masking")

    # --- after training (tunelab.merge, tunelab.gguf_export) --------------------------------------------------
    merge_adapter_with_base: bool = option(False, "after training, merge the adapter into the base and save the "
                                                  "standalone model in OUTPUT_DIR/merged (methods that change weights "
                                                  "only: not prompt_tuning, prefix_tuning, llama_adapter)",
                                           group="after training")
    convert_to_gguf: bool = option(False, "after training, write OUTPUT_DIR/model-<gguf_outtype>.gguf (Llama-family "
                                          "models; an adapter is merged first)", group="after training")
    gguf_outtype: str = option("f16", "tensor type of --convert_to_gguf", choices=("f32", "f16", "q8_0"),
                               group="after training")

    # --- the options file itself -------------------------------------------------------------------------------
    config: str | None = option(None, "a YAML file of any of these options; flags on the command line win",
                                group="options file")

    # saved beside the options in tunelab_config.yaml (what precision bf16=auto gave, and why); a saved file can be
    # passed back as --config
    SAVED_RECORD_KEYS: ClassVar[tuple[str, ...]] = ("precision", "precision_reason")


# Training-relevant fields: two runs differ when one of these differs (output dir identity, compare keys).
NON_IDENTITY_FIELDS = frozenset({"output_dir", "overwrite_output_dir", "resume_from_checkpoint", "config",
                                 "report_to", "logging_steps", "save_steps", "save_total_limit", "use_cpu",
                                 "tensor_peak",  # a measurement of the run, not a change to it
                                 # exports made after training do not change what training produces
                                 "merge_adapter_with_base", "convert_to_gguf", "gguf_outtype"})


def resolve(opts: TrainOptions, explicit: set[str]) -> tuple[TrainOptions, dict[str, Any]]:
    """Apply aliases and method-aware defaults; return the effective options and the defaults that were chosen."""
    from tunelab.methods import get_method

    chosen: dict[str, Any] = {}
    updates: dict[str, Any] = {}
    if opts.no_peft:
        updates["method"] = "full"
    method = get_method(updates.get("method", opts.method))
    if opts.learning_rate is None:
        updates["learning_rate"] = chosen["learning_rate"] = method.default_learning_rate
    if opts.warmup_ratio is None:
        updates["warmup_ratio"] = chosen["warmup_ratio"] = method.default_warmup_ratio
    for name, value in method.implied_options.items():
        if getattr(opts, name) != value:
            updates[name] = chosen[name] = value
    if opts.bf16 is None:  # bf16 where this machine runs it fast (tunelab.precision); training logs and saves why
        from tunelab import precision

        updates["bf16"] = precision.for_options(opts).bf16
    return dataclasses.replace(opts, **updates), chosen


def identity(opts: TrainOptions) -> dict[str, Any]:
    """The options that decide what a run produces (used to recognise 'the same run')."""
    return {f.name: getattr(opts, f.name) for f in dataclasses.fields(opts) if f.name not in NON_IDENTITY_FIELDS}


EVAL_TASKS = tuple(TASKS)  # the evaluation tasks' registry


@dataclass(kw_only=True)
class EvalOptions:
    """Every option of an evaluation: a task on a dataset, and retention probes run before and after tuning."""

    model_name_or_path: str | None = option(None, "the base model (built-in name, folder or Hub id) or a fully "
                                                  "fine-tuned model's output_dir; left out beside --adapter: the "
                                                  "base the adapter was trained on", group="model")
    adapter: str | None = option(None, "a PEFT adapter directory (the output_dir of a PEFT run) to evaluate on "
                                       "top of the base", group="model")
    base_model_name_or_path: str | None = option(None, "the untouched base for the 'before' of retention probes "
                                                       "(default: read from the run's saved config)", group="model")
    task_type: str = option("auto", "causal_lm, seq2seq_lm or seq_cls; auto reads it from the model config",
                            choices=TASK_TYPES, group="model")
    task: str | None = option(None, "what the dataset measures", choices=EVAL_TASKS, group="task")
    dataset_name_or_path: str | None = option(None, "the task's evaluation data: a file, a directory with a "
                                                    "test/validation split file, or a Hub dataset", group="task")
    dataset_config: str | None = option(None, "the Hub dataset's configuration name", group="task")
    eval_split: str = option("test", "split to evaluate when the dataset has several (falls back to "
                                     "validation/val/dev)", group="task")
    dataset_format: str = option("auto", "how to read rows; auto detects it from the column names",
                                 choices=DATASET_FORMATS, group="task")
    input_columns: list[str] | None = option(None, "columns that form the prompt (or the texts to classify); "
                                                   "default: the run's, where the data has them", group="task")
    target_column: str | None = option(None, "column that holds the reference (or the label); default: the run's, "
                                             "where the data has it", group="task")
    template: str | None = option(None, "prompt template (default: the one the run was trained with)",
                                  choices=TEMPLATES, group="task")
    system_prompt: str | None = option(None, "system prompt of the task (default: the one the run was trained "
                                             "with); retention probes are asked without it", group="task")
    sql_database: str | None = option(None, "text2sql: an SQLite file to run queries on (default: databases "
                                            "generated from each row's CREATE TABLE context, or the dataset "
                                            "directory's .sqlite file)", group="task")
    skip_invalid_rows: bool = option(False, "text2sql: leave out rows whose database schema (CREATE TABLE context) "
                                            "does not run in SQLite, counted in the results and the report, instead "
                                            "of stopping at the first one", group="task")
    retention: list[str] | None = option(None, "retention probes run before and after tuning: built-in names "
                                               "(general_knowledge, drift, multi30k_en_fr, stsb, text2sql), "
                                               "standard benchmarks scored by lm-eval (arc_easy, arc_challenge, "
                                               "openbookqa, winogrande, boolq, mmlu from local copies; lm_eval:TASK "
                                               "for any lm-eval task, from the Hub; NAME@N scores N examples "
                                               "instead of --probe_samples) or TASK:PATH for your own data "
                                               "(TASK:PATH:INPUT->TARGET names its columns)",
                                         group="retention")
    data_dir: str | None = option(None, "folder of the shared real datasets used by built-in probes "
                                        "(default: $TUNELAB_DATA_DIR or ../shared/data)", group="retention")
    benchmark_data_dir: str | None = option(None, "folder of the benchmarks' local copies (arc_easy.dev.jsonl, ..., "
                                                  "mmlu_dev/) (default: $TUNELAB_BENCHMARK_DIR, else the data "
                                                  "folder's benchmarks/)", group="retention")
    probe_samples: int = option(50, "examples per retention probe (for a benchmark, lm-eval's limit: a random "
                                    "subset drawn with --seed, the same before and after)", group="retention")
    baseline: str | None = option(None, "a base model's eval_results.json whose probe scores serve as 'before' "
                                        "(saves re-running the base)", group="retention")
    output_dir: str = option(help="where eval_results.json and predictions.jsonl go", group="output")
    overwrite_output_dir: bool = option(False, "replace a finished evaluation in --output_dir", group="output")
    max_eval_samples: int | None = option(None, "evaluate at most this many examples (chosen with --seed)",
                                          group="generation")
    max_new_tokens: int = option(128, "tokens to generate per answer (greedy)", group="generation")
    per_device_eval_batch_size: int = option(8, "generation batch size", group="generation")
    max_seq_length: int = option(1024, "truncate prompts to this many tokens", group="generation")
    seed: int = option(42, "seed for sampling examples and bootstrap intervals", group="generation")
    use_cpu: bool = option(False, "run on the CPU even when a GPU is present", group="generation")
    torch_dtype: str = option("auto", LOADED_DTYPE_HELP, choices=DTYPES, group="generation")
    config: str | None = option(None, "a YAML file of any of these options; flags on the command line win",
                                group="options file")


@dataclass(kw_only=True)
class CompareOptions:
    """`tunelab compare`: a recipe plus command-line overrides of its fields."""

    recipe: str = option(help="a recipe YAML file or a built-in recipe name (see `tunelab recipes`); also given as "
                              "the first argument", group="recipe")
    output_dir: str | None = option(None, "the comparison directory (default: runs/compare-<recipe name>)",
                                    group="recipe")
    methods: list[str] | None = option(None, "compare only these entries (labels or method names; a method the "
                                             "recipe lacks is added with its defaults), e.g. full,lora",
                                       group="overrides")
    seeds: list[int] | None = option(None, "seeds to run, e.g. 0,1,2", group="overrides")
    model_name_or_path: str | None = option(None, "another base model", group="overrides")
    max_steps: int | None = option(None, "shared budget: optimizer steps", group="overrides")
    num_train_epochs: float | None = option(None, "shared budget: epochs (when max_steps is not set)",
                                            group="overrides")
    per_device_train_batch_size: int | None = option(None, "shared budget: batch size", group="overrides")
    gradient_accumulation_steps: int | None = option(None, "shared budget: accumulation steps", group="overrides")
    max_seq_length: int | None = option(None, "shared budget: sequence length", group="overrides")
    group_by_length: bool | None = option(None, "shared batching: batch examples of similar length together "
                                                "(less padding)", group="overrides")
    packing: bool | None = option(None, "shared batching: padding-free packed batches (not for prompt/prefix "
                                        "tuning)", group="overrides")
    bf16: bool | None = option(None, "shared precision: bf16 mixed precision for every run (default: tunelab "
                                     "train's, on where the device runs bf16 fast); --no_bf16 trains every run in "
                                     "float32", negation="no_bf16", group="overrides")
    max_eval_samples: int | None = option(None, "evaluation examples", group="overrides")
    probe_samples: int | None = option(None, "examples per retention probe", group="overrides")
    retention: list[str] | None = option(None, "the retention probes of every run instead of the recipe's, named as "
                                               "`tunelab eval --retention` names them, e.g. general_knowledge,drift "
                                               "(none: no probes)", group="overrides")
    max_new_tokens: int | None = option(None, "tokens generated per answer", group="overrides")
    curve_points: int | None = option(None, "learning-forgetting trajectories: evaluate each run also at K evenly "
                                            "spaced steps of its training (the recipe's curve_points; 0 turns them "
                                            "off)", group="overrides")
    diagnostics: bool | None = option(None, "record each run's weight diagnostics (ΔW norm shares, effective rank, "
                                            "intruder dimensions, by layer) as the recipe's diagnostics: true does",
                                      group="overrides")
    data_dir: str | None = option(None, "folder of the shared real datasets that recipes read "
                                        "(default: $TUNELAB_DATA_DIR or ../shared/data)", group="data")
    device: str = option("auto", "where runs train: auto uses a GPU when there is one (bf16 where supported)",
                         choices=("auto", "cpu", "cuda"), group="execution")
    force: bool = option(False, "re-run finished runs too", group="execution")
    retry_failed: bool = option(False, "re-run runs recorded as failed", group="execution")
    run_timeout: float | None = option(None, "seconds after which a run is stopped and recorded as failed",
                                       group="execution")
    parallel: int | None = option(None, "runs at once (default: 1 with the local launcher; with ray, every run is "
                                        "submitted and the cluster's free GPUs/CPUs decide): locally each run gets a "
                                        "GPU of its own (CUDA_VISIBLE_DEVICES), or cores / N CPU threads",
                                  group="execution")
    launcher: str = option("local", "where runs execute: local subprocesses, or ray tasks on a Ray cluster "
                                    "(pip install 'tunelab[ray]')", choices=("local", "ray"), group="execution")
    ray_address: str | None = option(None, "the Ray cluster to submit to, e.g. ray://head:10001 or auto (default: "
                                           "$RAY_ADDRESS, else a local Ray instance)", group="execution")
    ray_num_cpus: int = option(1, "with --launcher ray: CPUs each run asks for (CPU runs use that many threads)",
                               group="execution")
    ray_num_gpus: int | None = option(None, "with --launcher ray: GPUs each run asks for (default: 1 when the "
                                            "cluster has GPUs and --device is not cpu, else 0)", group="execution")
    # (the ranges below are the methods' own declarations, Method.learning_rate_range; a test keeps them equal)
    search: str | None = option(None, "tune each method's learning rate before comparing (off by default; on in a "
                                      "recipe with a search: section; none turns that off): an Optuna study per "
                                      "method (seeded TPE, successive-halving pruning on the validation loss, at most "
                                      "3 full training budgets per method) over a log-uniform range by method family: "
                                      "full 1e-6 to 1e-4; LoRA family (lora, qlora, dora, adalora, loha, lokr, oft) "
                                      "3e-5 to 3e-3; ia3, vera, prompt_tuning, prefix_tuning, llama_adapter 1e-3 to "
                                      "1e-1 (a recipe entry may set learning_rate_range: [low, high]); trials run on "
                                      "a validation split of the training rows, never on the test set",
                                choices=("learning_rate", "none"), group="learning-rate search")
    search_trials: int | None = option(None, "trials per method (default 6)", group="learning-rate search")
    search_validation_fraction: float | None = option(
        None, "share of the training rows held out as the search's validation split (default 0.1; seeded; whole "
              "groups of the recipe's holdout column, e.g. spider's db_id)", group="learning-rate search")
    search_objective: str | None = option(None, "what a trial is judged by: loss, the validation loss (default), "
                                                "or metric, the task's headline metric on the validation split",
                                          choices=("loss", "metric"), group="learning-rate search")


@dataclass(kw_only=True)
class IcaBuildOptions:
    """`tunelab ica build`: find a model's functional networks (ICA over its MLP outputs) and save them as
    templates for `tunelab train --mask_mode lesion|preserve --ica_templates FILE`."""

    model_name_or_path: str = option(help="a built-in model name, a local model directory or a Hub id (a "
                                          "decoder-only model)", group="model")
    trust_remote_code: bool = option(False, "allow model code from the Hub to run (off unless you ask)",
                                     group="model")
    dataset_name_or_path: str = option(help="the sample sequences: any dataset `tunelab train` reads",
                                       group="data")
    dataset_config: str | None = option(None, "the Hub dataset's configuration name", group="data")
    train_split: str = option("train", "split to sample from", group="data")
    dataset_format: str = option("auto", "how to read rows; auto detects it from the column names",
                                 choices=DATASET_FORMATS, group="data")
    input_columns: list[str] | None = option(None, "columns that form the prompt", group="data")
    target_column: str | None = option(None, "column that holds the response", group="data")
    template: str = option("auto", "prompt template, as in `tunelab train`", choices=TEMPLATES, group="data")
    system_prompt: str | None = option(None, "system prompt placed before every example", group="data")
    max_seq_length: int = option(512, "truncate sample sequences to this many tokens", group="data")
    samples: int = option(100, "sequences analysed (chosen with --seed)", group="ica")
    components: int = option(10, "independent components (functional networks) to find", group="ica")
    percentile: float = option(98.0, "a component keeps the (layer, channel) pairs whose absolute mixing weight is "
                                     "at or above this percentile of its weights", group="ica")
    max_pca_components: int = option(1000, "PCA reduces the activations to this many dimensions first when they "
                                           "have more", group="ica")
    seed: int = option(0, "seed for choosing sequences, PCA and FastICA", group="ica")
    batch_size: int = option(8, "sequences per forward pass", group="ica")
    use_cpu: bool = option(False, "run on the CPU even when a GPU is present", group="ica")
    output: str = option(help="the template file to write (JSON)", group="output")
    config: str | None = option(None, "a YAML file of any of these options; flags on the command line win",
                                group="options file")


# --- the adapter lifecycle: generate, merge, export, push (tunelab.adapters, merge, gguf_export, hub) -------------

@dataclass(kw_only=True)
class GenerateOptions:
    """`tunelab generate`: one base, several adapters, each input answered by the adapter it names."""

    model_name_or_path: str | None = option(None, "the base model (built-in name, folder or Hub id) or a fully "
                                                  "fine-tuned model's output_dir (default: the base the --adapter "
                                                  "runs were trained on)", group="model")
    adapter: list[str] | None = option(None, "NAME=DIR of a PEFT adapter trained on this base; repeat the flag (or "
                                             "list several) to load more; the name 'base' is reserved for the base "
                                             "with adapters disabled", metavar="NAME=DIR", group="model")
    prompt: str | None = option(None, "one prompt (a user message) to answer", group="input")
    input_file: str | None = option(None, "a .jsonl file, one prompt per line ('prompt', 'messages', 'instruction' "
                                          "or 'question'), each optionally with an 'adapter' field naming who answers",
                                    group="input")
    use: str | None = option(None, "the adapter that answers inputs naming none ('base' = adapters disabled; "
                                   "default: the only adapter, or the base when none is given)", group="input")
    template: str | None = option(None, "prompt template (default: the one each adapter was trained with)",
                                  choices=TEMPLATES, group="input")
    system_prompt: str | None = option(None, "system prompt (default: the one each adapter was trained with)",
                                       group="input")
    max_new_tokens: int = option(128, "tokens to generate per answer (greedy)", group="generation")
    per_device_eval_batch_size: int = option(8, "prompts per generation batch", group="generation")
    max_seq_length: int = option(1024, "truncate prompts to this many tokens", group="generation")
    use_cpu: bool = option(False, "run on the CPU even when a GPU is present", group="generation")
    torch_dtype: str = option("auto", LOADED_DTYPE_HELP, choices=DTYPES, group="generation")
    output_file: str | None = option(None, "write one JSON line per input (its fields, 'adapter', 'response') "
                                           "instead of printing", group="output")
    overwrite: bool = option(False, "replace an existing --output_file", group="output")
    config: str | None = option(None, "a YAML file of any of these options; flags on the command line win",
                                group="options file")


@dataclass(kw_only=True)
class MergeOptions:
    """`tunelab merge`: fold a PEFT adapter into its base and save a standalone model."""

    model_name_or_path: str | None = option(None, "the base model the adapter was trained on (default: the one "
                                                  "the adapter names)", group="model")
    adapter: str = option(help="the PEFT adapter directory (the output_dir of a PEFT run)", group="model")
    output_dir: str = option(help="where the merged model (safetensors + tokenizer) goes", group="output")
    overwrite_output_dir: bool = option(False, "replace a previous merge in --output_dir", group="output")
    use_cpu: bool = option(False, "merge on the CPU even when a GPU is present", group="output")
    torch_dtype: str = option("auto", "dtype the base is loaded and merged in; auto: as the run trained (bfloat16 "
                                      "for a PEFT run trained with --bf16, float32 for a QLoRA run: merging into "
                                      "4-bit weights would round the update away); read from the adapter's "
                                      "tunelab_config.yaml", choices=DTYPES,
                              group="output")
    config: str | None = option(None, "a YAML file of any of these options; flags on the command line win",
                                group="options file")


@dataclass(kw_only=True)
class ExportOptions:
    """`tunelab export gguf`: write a Llama-family model (an adapter merged first) as one GGUF file. (The format,
    `gguf`, is the command's first argument; it is the only one.)"""

    model_name_or_path: str | None = option(None, "a built-in name, model folder or Hub id (Llama family), or a "
                                                  "fully fine-tuned model's output_dir; left out beside --adapter: "
                                                  "the base the adapter was trained on", group="model")
    adapter: str | None = option(None, "a PEFT adapter to merge into the model before writing", group="model")
    output: str = option(help="the .gguf file to write (--outfile, llama.cpp's convert_hf_to_gguf.py name, works too)",
                         aliases=("--outfile",), group="output")
    outtype: str = option("f16", "tensor type of the weight matrices (norms stay f32)",
                          choices=("f32", "f16", "q8_0"), group="output")
    overwrite: bool = option(False, "replace an existing --output file", group="output")
    use_cpu: bool = option(False, "merge on the CPU even when a GPU is present", group="output")
    config: str | None = option(None, "a YAML file of any of these options; flags on the command line win",
                                group="options file")


@dataclass(kw_only=True)
class PushOptions:
    """`tunelab push`: upload an adapter or a full/merged model to the Hugging Face Hub with a model card."""

    model_name_or_path: str = option(help="the folder to upload: a PEFT run's output_dir (adapter only), a full "
                                          "fine-tuning run's output_dir, or a `tunelab merge` output",
                                     aliases=("--adapter",), group="upload")
    repo_id: str = option(help="the Hub repository, e.g. your-name/smollm2-sql-lora (created if missing)",
                          group="upload")
    private: bool = option(False, "create the repository as private", group="upload")
    eval_results: str | None = option(None, "an eval_results.json to report in the model card (default: one in "
                                            "the folder, if any)", group="upload")
    commit_message: str | None = option(None, "the commit message (default: 'Upload with tunelab')",
                                        group="upload")
    dry_run: bool = option(False, "show the files and the model card that would be uploaded; contact nothing",
                           group="upload")
    config: str | None = option(None, "a YAML file of any of these options; flags on the command line win",
                                group="options file")


@dataclass(kw_only=True)
class EstimateOptions(TrainOptions):
    """TrainOptions with the data and output options optional, and the estimator's own options."""

    model_name_or_path: str | None = option(
        None, "a built-in model, a local model folder (its config.json is enough), a Hub id, or an architecture "
              "tunelab knows offline (llama-2-7b, llama-2-13b, llama-2-70b, llama-3-8b, mistral-7b, qwen2.5-0.5b, "
              "qwen2.5-7b, gemma-2-2b, flan-t5-base, flan-t5-large, gpt2, bert-base, ... or their Hub ids)",
        group="model")
    dataset_name_or_path: str | None = option(None, "not needed to estimate (accepted so that a train command line "
                                                    "works unchanged)", group="data")
    output_dir: str | None = option(None, "not needed to estimate (accepted so that a train command line works "
                                          "unchanged)", group="training")

    device: str = option("auto", "the device the run is for: cuda (a GPU), cpu, or auto (cuda unless --use_cpu)",
                         choices=("auto", "cuda", "cpu"), group="estimate")
    num_labels: int = option(2, "classes of a sequence-classification head", group="estimate")
    json: bool = option(False, "print the result as JSON", group="estimate")
    fit: float | None = option(None, "propose settings (gradient checkpointing, a smaller batch with gradient "
                                     "accumulation, an 8-bit optimizer, a 4-bit base) under which the run fits a "
                                     "GPU of this many GB", metavar="GB", group="estimate")
    headroom_gb: float = option(1.0, "memory a GPU keeps beyond the peak of allocated tensors (CUDA context, "
                                     "allocator fragmentation) when deciding what fits", group="estimate")
    table: bool = option(False, "print methods x model sizes with the GPU sizes each fits, for the other flags "
                                "given (batch size, sequence length, precision, optimizer ...)", group="estimate")
    table_sizes: list[str] | None = option(None, "rows of --table (default: 0.5B 1B 3B 7B 13B 30B 70B)",
                                           group="estimate")
    table_methods: list[str] | None = option(None, "columns of --table (default: full lora qlora)",
                                             group="estimate")
    gpu_memory_gb: list[float] | None = option(None, "GPU sizes --table and the fit summary check (default: 16 24 "
                                                     "40 80)", group="estimate")
    validate: bool = option(False, "run the real step for small models and compare predicted with measured peak "
                                   "memory (torch.cuda.max_memory_allocated on CUDA, live tensor bytes on the CPU); "
                                   "exits 1 when a case misses by more than --tolerance", group="validation")
    validate_models: list[str] | None = option(None, "models to validate (default: tiny-llama smollm2-135m)",
                                               group="validation")
    validate_methods: list[str] | None = option(None, "methods to validate (default: full lora qlora)",
                                                group="validation")
    validate_seq_lengths: list[int] | None = option(None, "sequence lengths to validate (default: 64 256)",
                                                    group="validation")
    validate_batch_size: int = option(2, "batch size of the validation runs", group="validation")
    tolerance: float = option(0.10, "largest |predicted - measured| / measured a validation case may have",
                              group="validation")


@dataclass(kw_only=True)
class DiagnoseOptions:
    """`tunelab diagnose RUN_DIR`: what fine-tuning did to the weights (ΔW = W_tuned − W_base per adapted matrix)."""

    run_dir: str = option(help="the output_dir of a `tunelab train` run (full fine-tuning, or a PEFT method that "
                               "changes weights)", positional=True, aliases=("--adapter",), group="run")
    base_model_name_or_path: str | None = option(None, "the base the run was trained from (default: read from the "
                                                       "run's tunelab_config.yaml)", group="run")
    energy: float = option(0.9, "effective rank: the fewest singular values of ΔW holding this share of its energy",
                           group="diagnostics")
    top_k: int = option(10, "intruder dimensions: top left singular vectors of W_tuned examined", group="diagnostics")
    epsilon: float = option(0.5, "intruder dimensions: a vector whose largest |cosine| with every singular vector "
                                 "of W_base is below this", group="diagnostics")
    mitigate: bool = option(False, "apply peft's reduce_intruder_dimension to the run's LoRA adapter and save the "
                                   "result (RUN_DIR/intruder_reduced, or --output_dir) for `tunelab eval --adapter`",
                            group="mitigation")
    mitigation_lambda: float = option(0.75, "share of the intruder dimensions kept (peft's mitigation_lambda: "
                                            "lower removes more)", group="mitigation")
    output_dir: str | None = option(None, "where --mitigate saves the adapter (default: RUN_DIR/intruder_reduced)",
                                    group="mitigation")
    overwrite: bool = option(False, "replace an existing mitigated adapter", group="mitigation")
    use_cpu: bool = option(False, "compute on the CPU even when a GPU is present", group="mitigation")
    config: str | None = option(None, "a YAML file of any of these options; flags on the command line win",
                                group="options file")
