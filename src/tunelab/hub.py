"""Upload an adapter or a full/merged model to the Hugging Face Hub with a generated model card.

The card (README.md with YAML front matter) is built from the folder's train_results.json, tunelab_config.yaml,
merge_info.json and an eval_results.json: base model, method, trainable parameters, data, metrics, retention.
The token is never handled here: huggingface_hub finds it (HF_TOKEN or `hf auth login`) and sends it; tunelab only
asks whether one exists, to fail early with a clear message, and never prints, logs or writes it.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tunelab import __version__
from tunelab.errors import TunelabError
from tunelab.units import format_bytes
from tunelab import run_files
from tunelab.records import EvalRecord, TrainRecord

log = logging.getLogger(__name__)

CARD = "README.md"
# Hub ids of the built-in models, for the card's base_model field.
BUILTIN_HUB_IDS = {"smollm2-135m": "HuggingFaceTB/SmolLM2-135M-Instruct",
                   "minilm-l6": "sentence-transformers/all-MiniLM-L6-v2"}
PIPELINE_TAGS = {"causal_lm": "text-generation", "seq2seq_lm": "text2text-generation",
                 "seq_cls": "text-classification"}
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja",
                    "chat_template.json", "vocab.json", "merges.txt", "vocab.txt", "tokenizer.model",
                    "spiece.model", "added_tokens.json")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+$")


@dataclass
class UploadPlan:
    directory: Path
    repo_id: str
    kind: str                                   # "adapter" or "model"
    files: dict[str, Path]                      # path in the repo -> local file (README.md excluded)
    card: str
    skipped: list[str] = field(default_factory=list)


# --- what is uploaded ----------------------------------------------------------------------------------------------

def folder_kind(directory: Path) -> str:
    if (directory / "adapter_config.json").is_file():
        return "adapter"
    if (directory / "config.json").is_file():
        return "model"
    raise TunelabError(f"--model_name_or_path {directory}: neither an adapter (adapter_config.json) nor a model "
                       "(config.json); pass the output_dir of `tunelab train` or `tunelab merge`")


def upload_files(directory: str | Path) -> tuple[list[str], list[str]]:
    """(files to upload, files left out) for a run or merge folder. Weights, tokenizer and tunelab's result files
    go up; checkpoints, sub-folders, GGUF exports, pickled training state and any old README.md stay home."""
    directory = Path(directory)
    kind = folder_kind(directory)
    weights = ("adapter_model.safetensors",) if kind == "adapter" else ()
    chosen, skipped = [], []
    for path in sorted(directory.iterdir()):
        name = path.name
        if path.is_dir():
            skipped.append(name + "/")
            continue
        keep = (name in weights or name in _TOKENIZER_FILES or name in run_files.RESULT_FILES
                or name in ("config.json", "generation_config.json", "adapter_config.json")
                or (kind == "model" and re.fullmatch(r"model(-\d+-of-\d+)?\.safetensors(\.index\.json)?", name)))
        (chosen if keep else skipped).append(name)
    has_weights = any(n.endswith(".safetensors") for n in chosen)
    if not has_weights:
        raise TunelabError(f"--model_name_or_path {directory}: no safetensors weights "
                           f"({'adapter_model.safetensors' if kind == 'adapter' else 'model*.safetensors'}) to "
                           "upload; tunelab uploads safetensors only")
    return chosen, skipped


def plan_upload(directory: str | Path, repo_id: str, *, eval_results: str | Path | None = None) -> UploadPlan:
    directory = Path(directory)
    if not directory.is_dir():
        raise TunelabError(f"--model_name_or_path {directory}: no such folder; pass the output_dir of `tunelab train` "
                           "or `tunelab merge`")
    if not _HUB_ID.match(repo_id):
        raise TunelabError(f"--repo_id {repo_id}: not a Hub repository id; write it as NAMESPACE/NAME, e.g. "
                           "your-name/smollm2-sql-lora")
    names, skipped = upload_files(directory)
    card = model_card(directory, repo_id=repo_id, eval_results=eval_results)
    files = {name: directory / name for name in names}
    if eval_results is not None:
        files[run_files.EVAL_RESULTS] = Path(eval_results)
    return UploadPlan(directory, repo_id, folder_kind(directory), files, card, skipped)


# --- the card --------------------------------------------------------------------------------------------------------

def _hub_id(name: str | None) -> str | None:
    """A Hub id for the card's base_model, or None for a local folder (the Hub rejects those)."""
    if not name:
        return None
    if name in BUILTIN_HUB_IDS:
        return BUILTIN_HUB_IDS[name]
    from tunelab.models import cache_dir

    for builtin, hub_id in BUILTIN_HUB_IDS.items():  # a built-in model's converted folder
        try:
            if Path(name).resolve() == (cache_dir() / "models" / builtin).resolve():
                return hub_id
        except OSError:
            pass
    if Path(name).expanduser().exists() or not _HUB_ID.match(name):
        return None
    return name


def _shown(path: str | None) -> str:
    """Local paths appear by their last component only: a card should not publish one's directory layout."""
    if not path:
        return "n/a"
    return Path(path).name if Path(path).expanduser().exists() or path.startswith(("/", "~", ".")) else path


def _num(x: Any, digits: int = 4) -> str:
    if x is None:
        return "n/a"
    if isinstance(x, bool):
        return str(x)
    if isinstance(x, int):
        return f"{x:,}"
    if isinstance(x, float):
        return f"{x:.3e}" if 0 < abs(x) < 10 ** -digits else f"{x:.{digits}f}"
    return str(x)


def model_card(directory: str | Path, *, repo_id: str, eval_results: str | Path | None = None) -> str:
    """README.md for the Hub: YAML front matter (library_name, base_model, tags, pipeline_tag) and tables from the
    folder's result files."""
    directory = Path(directory)
    kind = folder_kind(directory)
    merge_info = run_files.read_json(directory / run_files.MERGE_INFO)
    train = TrainRecord.read(directory / run_files.TRAIN_RESULTS)
    if train is None and (merge_info or {}).get("adapter_train_results"):  # a merged model: its adapter's run
        train = TrainRecord.from_json(merge_info["adapter_train_results"], source=directory / run_files.MERGE_INFO)
    has_train = train is not None
    train = train or TrainRecord.from_json({})  # (no run: every field None)
    run = {}
    if (directory / run_files.TRAIN_CONFIG).is_file():
        run = run_files.read_yaml_mapping(directory / run_files.TRAIN_CONFIG)
    if eval_results is not None and not Path(eval_results).is_file():
        raise TunelabError(f"--eval_results {eval_results}: file not found; pass the eval_results.json of "
                           "`tunelab eval`")
    evals = EvalRecord.read(Path(eval_results) if eval_results else directory / run_files.EVAL_RESULTS)

    adapter_cfg = run_files.read_json(directory / "adapter_config.json") or {}
    method = train.method or run.get("method") or (merge_info or {}).get("method") or (
        str(adapter_cfg.get("peft_type", "")).lower() or None)
    if kind == "model" and merge_info is None and method not in (None, "full"):
        method = None  # a model folder that is neither a full fine-tune nor a tunelab merge
    base = (merge_info or {}).get("base_model_name_or_path") or train.model_name_or_path \
        or run.get("model_name_or_path") or adapter_cfg.get("base_model_name_or_path")
    base_id = _hub_id(base)
    task_kind = train.task_kind or (evals.task_kind if evals else None) or "causal_lm"

    tags = ["tunelab"]
    if kind == "adapter":
        tags += ["peft"]
    if method:
        tags.append(method.replace("_", "-"))
    if merge_info:
        tags.append("merged-adapter")
    front: dict[str, Any] = {"library_name": "peft" if kind == "adapter" else "transformers"}
    if base_id:
        front["base_model"] = base_id
    front["tags"] = tags
    front["pipeline_tag"] = PIPELINE_TAGS.get(task_kind, "text-generation")

    what = {"adapter": f"a {method or 'PEFT'} adapter", "model": "a merged model (adapter folded into the base)"
            if merge_info else ("a fully fine-tuned model" if method == "full" else "a fine-tuned model")}[kind]
    base_ref = f"[{base_id}](https://huggingface.co/{base_id})" if base_id else f"the base model `{_shown(base)}`"
    lines = ["---", yaml.safe_dump(front, sort_keys=False).rstrip(), "---", "", f"# {repo_id.split('/')[-1]}", "",
             f"This is {what} for {base_ref}, trained with tunelab "
             f"{train.tunelab_version or __version__}.", ""]

    if has_train or run:
        trainable, total = train.trainable_params, train.total_params
        rows = [("base model", f"`{base_id or _shown(base)}`"), ("method", method or "n/a")]
        if trainable is not None:
            rows.append(("trainable parameters", f"{_num(trainable)} of {_num(total)} "
                                                 f"({_num(train.trainable_percent, 3)}%)"))
        rows += [("data", f"`{_shown(train.dataset_name_or_path or run.get('dataset_name_or_path'))}`"
                          f" ({_num(train.train_samples)} training examples)"),
                 ("steps / epochs", f"{_num(train.global_step)} / {_num(train.epochs, 2)}"),
                 ("effective batch size", _num(train.effective_batch_size)),
                 ("learning rate", f"{run['learning_rate']:g}" if run.get("learning_rate") else "n/a"),
                 ("max sequence length", _num(run.get("max_seq_length"))),
                 ("training time", f"{_num(train.train_seconds, 1)} s on {train.device or 'n/a'}"),
                 ("peak memory", format_bytes(train.peak_memory_bytes, "n/a")),
                 ("checkpoint size", format_bytes(train.checkpoint_bytes, "n/a")),
                 ("final train loss", _num(train.final_train_loss)),
                 ("final eval loss", _num(train.final_eval_loss))]
        if kind == "adapter":  # the hyper-parameters peft used, as the method names them (OFT: its block size)
            from tunelab.methods import method_of_adapter

            made_by = method_of_adapter(adapter_cfg, method)
            rows[2:2] = [(label, _num(value)) for label, value in (made_by.describe(adapter_cfg) if made_by
                                                                   else {}).items()]
        lines += ["## Training", "", "| | |", "|---|---|", *[f"| {k} | {v} |" for k, v in rows], ""]

    if evals is not None and evals.metrics:
        head, ci = evals.headline_metric, evals.headline_ci
        lines += [f"## Evaluation: {evals.task}", "",
                  f"On `{_shown(evals.dataset_name_or_path)}` ({_num(evals.num_examples)} examples"
                  f"{'; 95% bootstrap interval for ' + head + ': ' + _num(ci[0]) + '-' + _num(ci[1]) if ci else ''}).",
                  "", "| metric | value |", "|---|---|"]
        lines += [f"| {'**' + k + '**' if k == head else k} | {_num(v)} |" for k, v in evals.metrics.items()]
        lines.append("")
    retention = (evals.retention if evals else None) or {}
    if retention:
        from tunelab.evaluation.retention import is_drift

        lines += ["## Retention", "", "What the base model knew before tuning and what the tuned model keeps.", "",
                  "| probe | metric | before | after | retention |", "|---|---|---|---|---|"]
        for probe, p in retention.items():
            task, _, source = probe.partition(":")
            name = f"{task}:{_shown(source)}" if source else probe  # TASK:PATH probes: the file name only
            if is_drift(p):
                lines.append(f"| {name} | KL from base (nats/token) | 0 | {_num(p.get('kl_divergence'))} | "
                             f"change in cross-entropy {_num(p.get('delta_cross_entropy'))} |")
            elif "before" in p:
                lines.append(f"| {name} | {p.get('metric')} | {_num(p.get('before'))} | {_num(p.get('after'))} | "
                             f"{_num(p.get('retention_ratio'), 3)} |")
        lines.append("")

    lines += ["## Usage", "", "```python"]
    model_cls = {"causal_lm": "AutoModelForCausalLM", "seq2seq_lm": "AutoModelForSeq2SeqLM",
                 "seq_cls": "AutoModelForSequenceClassification"}.get(task_kind, "AutoModelForCausalLM")
    if kind == "adapter":
        lines += ["from peft import PeftModel", f"from transformers import {model_cls}, AutoTokenizer", "",
                  f"base = {model_cls}.from_pretrained(\"{base_id or '<base model>'}\")",
                  f"model = PeftModel.from_pretrained(base, \"{repo_id}\")",
                  f"tokenizer = AutoTokenizer.from_pretrained(\"{repo_id}\")"]
    else:
        lines += [f"from transformers import {model_cls}, AutoTokenizer", "",
                  f"model = {model_cls}.from_pretrained(\"{repo_id}\")",
                  f"tokenizer = AutoTokenizer.from_pretrained(\"{repo_id}\")"]
    lines += ["```", ""]
    if kind == "adapter" and run.get("use_4bit"):
        lines += ["It was trained and evaluated on a 4-bit (NF4) base through bitsandbytes, computed the way it trained "
                  "(tunelab's models.keep_4bit_weights_unpacked). On a CPU with avx512_bf16, bitsandbytes runs 4-bit "
                  "layers in eval mode through a packed inference kernel whose outputs differ from that path; to "
                  "compute as evaluated, set `support_avx512bf16_for_cpu = False` on every `Linear4bit` module "
                  "before the first forward pass.", ""]
    if run.get("template") not in (None, "auto", "chat") or run.get("system_prompt"):
        lines += [f"Prompt it as it was trained: template `{run.get('template')}`"
                  f"{', system prompt: ' + repr(run.get('system_prompt')) if run.get('system_prompt') else ''}.", ""]
    lines += ["The full training configuration is in `tunelab_config.yaml` and the measurements in "
              "`train_results.json`" + (" and `eval_results.json`." if evals else "."), ""]
    return "\n".join(lines)


# --- the upload --------------------------------------------------------------------------------------------------------

@dataclass
class PushResult:
    url: str
    plan: UploadPlan


def push(directory: str | Path, repo_id: str, *, private: bool = False, eval_results: str | Path | None = None,
         commit_message: str | None = None) -> PushResult:
    """Create REPO_ID if needed and upload the folder's files plus the model card in one commit."""
    import huggingface_hub
    from huggingface_hub import CommitOperationAdd, HfApi
    from huggingface_hub import constants as hub_constants

    plan = plan_upload(directory, repo_id, eval_results=eval_results)
    if hub_constants.HF_HUB_OFFLINE:
        raise TunelabError("cannot upload: HF_HUB_OFFLINE is set, so the Hugging Face Hub is not contacted; unset it "
                           "(and make sure huggingface.co is reachable) to push")
    if huggingface_hub.get_token() is None:  # presence only; the value stays inside huggingface_hub
        raise TunelabError("cannot upload: no Hugging Face token found; run `hf auth login` or set HF_TOKEN in the "
                           "environment (a token with write access), then push again")
    api = HfApi()
    operations = [CommitOperationAdd(path_in_repo=name, path_or_fileobj=str(local))
                  for name, local in plan.files.items()]
    operations.append(CommitOperationAdd(path_in_repo=CARD, path_or_fileobj=plan.card.encode("utf-8")))
    try:
        url = api.create_repo(repo_id, private=private, exist_ok=True)
        info = api.create_commit(repo_id, operations, commit_message=commit_message or "Upload with tunelab")
    except Exception as e:  # noqa: BLE001 - mapped to one clear line below, or re-raised
        raise _hub_error(e, repo_id) from None
    log.info("uploaded %d files to %s", len(operations), url)
    return PushResult(str(getattr(info, "commit_url", None) or url), plan)


def _hub_error(e: Exception, repo_id: str) -> Exception:
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    if isinstance(e, OfflineModeIsEnabled):
        return TunelabError("cannot upload: HF_HUB_OFFLINE is set; unset it to push")
    if isinstance(e, HfHubHTTPError):
        status = getattr(getattr(e, "response", None), "status_code", None)
        if status == 401:
            return TunelabError("the Hugging Face Hub refused the token (401); run `hf auth login` again or set a "
                                "valid HF_TOKEN")
        if status == 403:
            return TunelabError(f"--repo_id {repo_id}: the token may not write there (403); use a token with write "
                                "access, or a namespace you own")
        return TunelabError(f"--repo_id {repo_id}: the Hub answered {status or 'an error'} "
                            f"({str(e).splitlines()[0][:200]})")
    module = type(e).__module__.split(".")[0]
    if isinstance(e, (ConnectionError, TimeoutError, OSError)) or module in ("httpx", "httpx2", "httpcore",
                                                                              "requests", "urllib3"):
        return TunelabError(f"cannot reach the Hugging Face Hub ({type(e).__name__}); check the network connection "
                            "(or a proxy setting) and push again")
    return e
