"""One base model, many adapters: load the base once, attach every adapter, and answer each prompt with the adapter
it names (``base`` = adapters disabled).

Generation itself is ``inference.generate`` (batched, greedy, left padding, each adapter's own prompt template).
A batch that mixes adapters runs in one pass through peft's ``adapter_names`` where peft supports it (LoRA and
QLoRA without DoRA, in peft 0.21); for other methods the prompts are grouped per adapter and peft's
``set_adapter`` / ``disable_adapter`` switch between groups.

Adapters of different peft types (LoRA and IA3, say) cannot live in one peft model, and a QLoRA adapter needs the
4-bit base it was trained on, so adapters are grouped by (peft type, base quantization): each group shares one
loaded base. The usual case, several adapters of one method, loads the base exactly once.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from tunelab import inference
from tunelab.errors import TunelabError

log = logging.getLogger(__name__)

BASE = "base"
_NAME = re.compile(r"^[A-Za-z0-9_\-]+$")
# peft types whose layers take ``adapter_names`` for mixed batches in peft 0.21 (tuners/lora: LoraLayer and the
# bitsandbytes LoRA layers; DoRA is refused there, so it is excluded below).
MIXED_BATCH_PEFT_TYPES = frozenset({"LORA"})
Prompt = str | Sequence[dict[str, str]]


@dataclass
class _Adapter:
    name: str
    path: str
    peft_type: str
    group: tuple
    template: Any                    # tunelab.data.templates.Template
    mixed_batches: bool


@dataclass
class _Group:
    lm: inference.LoadedModel        # the shared base (a PeftModel once an adapter is attached)
    names: list[str] = field(default_factory=list)


def _mixed_batches_allowed(model) -> bool:
    """peft's mixed batches pass ``adapter_names`` through the modules an adapter trains in full too, and refuse
    those that are not Linear, Embedding or Conv (peft 0.21, utils/other.py): one such copy (a --modules_to_save
    norm) of any adapter rules them out for every adapter on that model, and for the base in their batches."""
    import torch
    from peft.utils.other import ModulesToSaveWrapper

    supported = (torch.nn.Linear, torch.nn.Embedding, torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d)
    return all(isinstance(m.original_module, supported) for m in model.modules()
               if isinstance(m, ModulesToSaveWrapper))


def parse_adapter_specs(specs: Sequence[str] | None) -> dict[str, str]:
    """``NAME=DIR`` (or just ``DIR``, named after its folder) -> {name: dir}, with clear errors."""
    out: dict[str, str] = {}
    for spec in specs or []:
        name, sep, path = str(spec).partition("=")
        if not sep:
            name, path = Path(spec).name, spec
        if not _NAME.match(name or "") or name == BASE:
            raise TunelabError(f"--adapter {spec}: {name!r} is not a usable adapter name (letters, digits, _ and - "
                               f"only; {BASE!r} is reserved for the plain base); write --adapter NAME=DIR")
        if name in out:
            raise TunelabError(f"--adapter {spec}: the name {name!r} is given twice; give each adapter its own "
                               "NAME=DIR")
        out[name] = path
    return out


class AdapterSession:
    """A base model with several adapters attached, answering each prompt with the adapter it names.

    >>> session = AdapterSession("smollm2-135m", {"sql": "out/sql", "chat": "out/chat"})
    >>> session.generate(["Count the books.", "Say hello."], adapters=["sql", "base"])
    """

    def __init__(self, model_name_or_path: str, adapters: dict[str, str] | Sequence[str] | None = None, *,
                 use_cpu: bool = False, template: str | None = None, system_prompt: str | None = None,
                 torch_dtype: str = "auto"):
        from tunelab.data.templates import resolve_template

        if adapters is None or isinstance(adapters, dict):
            specs = dict(adapters or {})
            for name in specs:
                parse_adapter_specs([f"{name}={specs[name]}"])  # same name rules as the CLI
        else:
            specs = parse_adapter_specs(adapters)
        self.model_name_or_path = model_name_or_path
        self.use_cpu = use_cpu
        self.torch_dtype = torch_dtype  # "auto": each adapter's base as its run trained it (inference.run_dtype)
        self._template_override = template
        self._system_override = system_prompt
        self._adapters: dict[str, _Adapter] = {}
        self._groups: dict[tuple, _Group] = {}
        for name, path in specs.items():
            self._attach(name, path)
        if not self._groups:  # no adapters: the plain base (or a fully fine-tuned model directory)
            lm = inference.load(model_name_or_path, None, use_cpu=use_cpu, template=template,
                                system_prompt=system_prompt, torch_dtype=torch_dtype)
            self._groups[("none",)] = _Group(lm)
        primary = next(iter(self._groups.values())).lm
        self._base_group = next(iter(self._groups))
        plain = inference.read_run_config(primary.model_path)  # a fully fine-tuned base was trained with these
        self._base_template = resolve_template(template or plain.get("template", "auto"), primary.tokenizer,
                                               system_prompt if system_prompt is not None
                                               else plain.get("system_prompt"), task_kind=primary.task_kind)

    # --- loading ---------------------------------------------------------------------------------------------
    def _attach(self, name: str, path: str) -> None:
        from tunelab import run_files
        from tunelab.data.templates import resolve_template

        config = run_files.read_adapter_config(path)  # a clear error when the folder is not an adapter
        run = inference.read_run_config(path)
        peft_type = str(config.get("peft_type", "")).upper()
        prefix = _weight_prefix(peft_type)
        if prefix and name in prefix:  # peft matches weights by substring: such a name can clobber them on load
            raise TunelabError(f"--adapter {name}={path}: peft cannot load a {peft_type.lower()} adapter named "
                               f"{name!r}, which is part of its weight prefix {prefix!r}; choose another name")
        # adapters share a base only when it is loaded alike: quantized alike and in the same dtype
        key = (peft_type, bool(run.get("use_4bit")), bool(run.get("use_8bit")),
               inference.inference_dtype(self.torch_dtype, run, use_cpu=self.use_cpu))
        group = self._groups.get(key)
        if group is None:
            if self._groups:
                log.info("adapter %s (%s%s) cannot share a peft model with the adapters loaded so far; loading "
                         "another copy of the base for it", name, peft_type.lower(),
                         ", 4-bit base" if key[1] else ", 8-bit base" if key[2] else "")
            lm = inference.load(self.model_name_or_path, path, use_cpu=self.use_cpu, adapter_name=name,
                                template=self._template_override, system_prompt=self._system_override,
                                torch_dtype=self.torch_dtype)
            group = self._groups[key] = _Group(lm)
            template = lm.template
        else:
            lm = group.lm
            if lm.task_kind == "seq_cls":
                raise TunelabError(f"--adapter {name}={path}: classification adapters carry their own heads; "
                                   "load one per session")
            inference.attach_adapter(lm.model, path, name, lm.model_path)
            lm.adapters[name] = str(path)
            tokenizer = lm.tokenizer
            template = resolve_template(self._template_override or run.get("template", "auto"), tokenizer,
                                        self._system_override if self._system_override is not None
                                        else run.get("system_prompt"), task_kind=lm.task_kind)
        group.names.append(name)
        mixed = peft_type in MIXED_BATCH_PEFT_TYPES and not config.get("use_dora")
        self._adapters[name] = _Adapter(name, str(path), peft_type, key, template, mixed)
        if not _mixed_batches_allowed(group.lm.model):
            for other in group.names:
                self._adapters[other].mixed_batches = False
        group.lm.model.eval()

    # --- queries ---------------------------------------------------------------------------------------------
    @property
    def names(self) -> list[str]:
        """The names a prompt can ask for: ``base`` and every attached adapter."""
        return [BASE, *self._adapters]

    @property
    def loaded_bases(self) -> int:
        """Copies of the base in memory: 1 unless adapters of different peft types or base quantizations mix."""
        return len(self._groups)

    @property
    def tokenizer(self):
        return next(iter(self._groups.values())).lm.tokenizer

    def adapter_info(self) -> dict[str, dict[str, Any]]:
        return {a.name: {"path": a.path, "peft_type": a.peft_type, "template": a.template.name,
                         "mixed_batches": a.mixed_batches} for a in self._adapters.values()}

    def check_name(self, name: str, where: str = "--use") -> None:
        if name != BASE and name not in self._adapters:
            raise TunelabError(f"{where}: no adapter named {name!r} is loaded (loaded: {', '.join(self.names)}); "
                               f"fix the name or add --adapter {name}=DIR")

    # --- generation ------------------------------------------------------------------------------------------
    def generate(self, prompts: Sequence[Prompt], adapters: str | Sequence[str] | None = None, *,
                 max_new_tokens: int = 128, batch_size: int = 8, max_prompt_tokens: int = 1024) -> list[str]:
        """Greedy answers, in input order. ``adapters``: one name for all prompts or one per prompt (``base`` =
        adapters disabled); default: the only adapter, or the base when none is attached."""
        conversations = [_as_messages(p) for p in prompts]
        names = self._names_for(adapters, len(conversations))
        answers: list[str | None] = [None] * len(conversations)
        for indices, run in self._plan(names):
            texts = run([conversations[i] for i in indices], [names[i] for i in indices],
                        dict(max_new_tokens=max_new_tokens, batch_size=batch_size,
                             max_prompt_tokens=max_prompt_tokens))
            for i, text in zip(indices, texts):
                answers[i] = text
        return [a if a is not None else "" for a in answers]

    def _names_for(self, adapters, n: int) -> list[str]:
        if adapters is None:
            if len(self._adapters) > 1:
                raise TunelabError(f"several adapters are loaded ({', '.join(self._adapters)}); say which one "
                                   "answers (--use NAME, or an 'adapter' field per input)")
            adapters = next(iter(self._adapters), BASE)
        names = [adapters] * n if isinstance(adapters, str) else list(adapters)
        if len(names) != n:
            raise TunelabError(f"{len(names)} adapter names for {n} prompts; give one name per prompt")
        for name in names:
            self.check_name(name, "adapter")
        return names

    def _plan(self, names: list[str]):
        """(indices, runner) units: a unit is one generate call pattern sharing a loaded model and a template."""
        units: dict[tuple, list[int]] = {}
        for i, name in enumerate(names):
            if name == BASE:
                key = ("base",)
            else:
                a = self._adapters[name]
                # adapters that allow mixed batches share a unit per (group, template); others get one each
                key = ("mixed", a.group, a.template) if a.mixed_batches else ("single", name)
            units.setdefault(key, []).append(i)
        # The base joins a mixed unit of its own group when the templates agree: one pass for all of them.
        if ("base",) in units:
            for key in list(units):
                if key[0] == "mixed" and key[1] == self._base_group and key[2] == self._base_template:
                    units[key] = sorted(units[key] + units.pop(("base",)))
                    break
        for key, indices in units.items():
            yield indices, self._runner(key)

    def _runner(self, key: tuple):
        def run(convs, names, gen):
            if key[0] == "mixed":
                lm = dataclasses.replace(self._groups[key[1]].lm, template=key[2])
                adapter_names = ["__base__" if n == BASE else n for n in names]
                return inference.generate(lm, convs, adapter_names=adapter_names, desc="generating", **gen)[0]
            if key[0] == "base":
                group = self._groups[self._base_group]
                disabled = inference.adapter_disabled(group.lm) if group.lm.is_peft \
                    else contextlib.nullcontext(group.lm)
                with disabled as base_within:
                    lm = dataclasses.replace(base_within, template=self._base_template)
                    return inference.generate(lm, convs, desc="generating (base)", **gen)[0]
            a = self._adapters[key[1]]
            group = self._groups[a.group]
            group.lm.model.set_adapter(a.name)
            lm = dataclasses.replace(group.lm, template=a.template)
            return inference.generate(lm, convs, desc=f"generating ({a.name})", **gen)[0]

        return run


def _weight_prefix(peft_type: str) -> str | None:
    from peft.mapping import PEFT_TYPE_TO_PREFIX_MAPPING

    return {str(getattr(k, "value", k)): v for k, v in PEFT_TYPE_TO_PREFIX_MAPPING.items()}.get(peft_type)


def _as_messages(prompt: Prompt) -> list[dict[str, str]]:
    if isinstance(prompt, str):
        return [{"role": "user", "content": prompt}]
    messages = [dict(m) for m in prompt]
    if messages and messages[-1].get("role") == "assistant":
        messages = messages[:-1]  # a conversation with its answer: ask for the answer
    return messages


# --- input files -------------------------------------------------------------------------------------------------

def read_inputs(path: str | Path) -> list[dict[str, Any]]:
    """Rows of a generation input file (.jsonl): each a prompt and, optionally, the adapter that answers it.

    A row's prompt is ``messages`` (a chat; a final assistant turn is dropped), ``prompt``, ``instruction`` (+
    ``input``), ``question`` (+ ``context``) or ``text``. Returns dicts with ``messages``, ``adapter`` (or None),
    ``row`` (the source row) and ``locator``.
    """
    path = Path(path)
    if not path.is_file():
        raise TunelabError(f"--input_file {path}: file not found; pass a .jsonl file with one prompt per line")
    rows = []
    for number, line in enumerate(path.read_text(encoding="utf-8-sig").splitlines(), start=1):
        if not line.strip():
            continue
        loc = f"{path} line {number}"
        try:
            row = json.loads(line)
        except ValueError as e:
            raise TunelabError(f"{loc}: not valid JSON ({e}); each line must be one JSON object") from None
        if not isinstance(row, dict):
            raise TunelabError(f"{loc}: expected a JSON object, got {type(row).__name__}")
        adapter = row.get("adapter")
        if adapter is not None and not isinstance(adapter, str):
            raise TunelabError(f"{loc}: 'adapter' should be an adapter name (text), got {adapter!r}")
        rows.append({"messages": _row_messages(row, loc), "adapter": adapter, "row": row, "locator": loc})
    if not rows:
        raise TunelabError(f"--input_file {path}: no rows; write one JSON object per line with a 'prompt'")
    return rows


def _row_messages(row: dict[str, Any], loc: str) -> list[dict[str, str]]:
    def text(key: str) -> str:
        value = row.get(key)
        if not isinstance(value, (str, int, float)) or isinstance(value, bool) or str(value) == "":
            raise TunelabError(f"{loc}: {key!r} should be non-empty text, got {value!r}")
        return str(value)

    if "messages" in row:
        msgs = row["messages"]
        if not isinstance(msgs, list) or not msgs or not all(
                isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
                for m in msgs):
            raise TunelabError(f"{loc}: 'messages' should be a list of {{'role': ..., 'content': ...}} objects")
        return _as_messages(msgs)
    for key, extra in (("prompt", None), ("instruction", "input"), ("question", "context"), ("text", None)):
        if key in row:
            content = text(key)
            if extra and row.get(extra) not in (None, ""):
                content = f"{content}\n\n{row[extra]}" if key == "instruction" else f"{row[extra]}\n\n{content}"
            return [{"role": "user", "content": content}]
    raise TunelabError(f"{loc}: no prompt found (columns: {', '.join(row) or 'none'}); give 'prompt', 'messages', "
                       "'instruction' or 'question'")


# --- the command ---------------------------------------------------------------------------------------------------

def _shared_base(model_name_or_path: str | None, specs: dict[str, str]) -> str:
    """--model_name_or_path, or, left out, the base every --adapter was trained on (as tunelab eval finds it)."""
    if model_name_or_path or not specs:
        return inference.base_for(model_name_or_path, None)
    bases = {name: inference.base_for(None, folder) for name, folder in specs.items()}
    if len(set(bases.values())) > 1:
        raise TunelabError("--adapter: the adapters were trained on different bases ("
                           + ", ".join(f"{name}: {base}" for name, base in bases.items())
                           + "); pass --model_name_or_path with the one they all fit")
    return next(iter(bases.values()))


def run_generate(opts) -> list[dict[str, Any]]:
    """``tunelab generate``: answer --prompt or every row of --input_file; write --output_file if given.
    Returns one record per input: its prompt, the adapter that answered and the response."""
    from tunelab.fileio import atomic_write_jsonl

    if (opts.prompt is None) == (opts.input_file is None):
        raise TunelabError("give exactly one of --prompt TEXT or --input_file FILE.jsonl")
    if opts.max_new_tokens < 1 or opts.per_device_eval_batch_size < 1:
        raise TunelabError("--max_new_tokens and --per_device_eval_batch_size must be at least 1")
    specs = parse_adapter_specs(opts.adapter)
    if opts.use is not None and opts.use != BASE and opts.use not in specs:
        raise TunelabError(f"--use {opts.use}: no adapter of that name (given: {', '.join([BASE, *specs])}); add "
                           f"--adapter {opts.use}=DIR or fix the name")
    if opts.input_file is not None:
        inputs = read_inputs(opts.input_file)
    else:
        inputs = [{"messages": _as_messages(opts.prompt), "adapter": None, "row": {"prompt": opts.prompt},
                   "locator": "--prompt"}]
    default = opts.use or (next(iter(specs)) if len(specs) == 1 else BASE if not specs else None)
    names = []
    for item in inputs:
        name = item["adapter"] or default
        if name is None:
            raise TunelabError(f"{item['locator']}: several adapters are loaded ({', '.join(specs)}) and this input "
                               "names none; add an 'adapter' field or pass --use NAME")
        if name != BASE and name not in specs:
            raise TunelabError(f"{item['locator']}: no adapter named {name!r} is loaded (loaded: "
                               f"{', '.join([BASE, *specs])}); fix the name or add --adapter {name}=DIR")
        names.append(name)
    if opts.output_file and Path(opts.output_file).exists() and not opts.overwrite:
        raise TunelabError(f"--output_file {opts.output_file}: already exists; choose another path or pass "
                           "--overwrite")
    session = AdapterSession(_shared_base(opts.model_name_or_path, specs), specs, use_cpu=opts.use_cpu,
                             template=opts.template, system_prompt=opts.system_prompt, torch_dtype=opts.torch_dtype)
    answers = session.generate([item["messages"] for item in inputs], names, max_new_tokens=opts.max_new_tokens,
                               batch_size=opts.per_device_eval_batch_size, max_prompt_tokens=opts.max_seq_length)
    records = [{**item["row"], "adapter": name, "response": answer}
               for item, name, answer in zip(inputs, names, answers)]
    if opts.output_file:
        atomic_write_jsonl(opts.output_file, records)
    return records
