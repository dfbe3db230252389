"""Render an Example into text segments, each marked as trained on (the response) or not (the prompt).

The tokenizer's own chat template is used where it has one: the segments are found by rendering the conversation
up to each assistant turn (with the generation prompt) and with it, and taking the difference.
"""

from __future__ import annotations

import dataclasses

from dataclasses import dataclass

from tunelab.data.formats import Example
from tunelab.errors import TunelabError

CHATML_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>'"
    " + '\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
ALPACA_SYSTEM = ("Below is an instruction that describes a task. Write a response that appropriately completes "
                 "the request.")

Segment = tuple[str, bool]  # (text, is_target)


@dataclass(frozen=True)
class Template:
    name: str                 # chat, chatml, alpaca or plain
    system_prompt: str | None

    def segments(self, example: Example, tokenizer) -> list[Segment]:
        if example.text is not None:
            return [(example.text + (tokenizer.eos_token or ""), True)]
        messages = self._with_system(example.messages or [])
        if self.name in ("chat", "chatml"):
            return _chat_segments(messages, tokenizer, self._jinja(tokenizer))
        return _text_segments(messages, self.name, tokenizer.eos_token or "")

    def prompt(self, messages: list[dict[str, str]], tokenizer) -> str:
        """The text a model is given to generate the next assistant turn."""
        messages = self._with_system(messages)
        if self.name in ("chat", "chatml"):
            return tokenizer.apply_chat_template(messages, chat_template=self._jinja(tokenizer), tokenize=False,
                                                 add_generation_prompt=True)
        return "".join(text for text, _ in _text_segments(messages, self.name, ""))

    def source(self, messages: list[dict[str, str]]) -> str:
        """Encoder input for seq2seq models: the prompt turns as plain text, no chat markup."""
        return "\n\n".join(m["content"] for m in self._with_system(messages))

    def without_system_prompt(self) -> "Template":
        """This template with no system prompt: how retention probes are asked (evaluation.retention.general_view)."""
        return self if self.system_prompt is None else dataclasses.replace(self, system_prompt=None)

    def _with_system(self, messages: list[dict[str, str]]) -> list[dict[str, str]]:
        if self.system_prompt is None or (messages and messages[0]["role"] == "system"):
            return list(messages)
        return [{"role": "system", "content": self.system_prompt}, *messages]

    def _jinja(self, tokenizer) -> str | None:
        return CHATML_TEMPLATE if self.name == "chatml" else None


def resolve_template(name: str, tokenizer, system_prompt: str | None, *, task_kind: str = "causal_lm") -> Template:
    if task_kind != "causal_lm":
        return Template("plain", system_prompt)
    has_chat = bool(getattr(tokenizer, "chat_template", None))
    if name == "auto":
        name = "chat" if has_chat else "alpaca"
    if name == "chat" and not has_chat:
        raise TunelabError("--template chat: this tokenizer has no chat template; use --template chatml, alpaca "
                           "or plain")
    return Template(name, system_prompt)


def _chat_segments(messages: list[dict[str, str]], tokenizer, jinja: str | None) -> list[Segment]:
    def render(msgs, gen):
        return tokenizer.apply_chat_template(msgs, chat_template=jinja, tokenize=False, add_generation_prompt=gen)

    segments: list[Segment] = []
    done = ""
    for i, msg in enumerate(messages):
        if msg["role"] != "assistant":
            continue
        before = render(messages[:i], True) if i else ""
        after = render(messages[: i + 1], False)
        if not before.startswith(done) or not after.startswith(before):
            raise TunelabError("the tokenizer's chat template renders earlier turns differently once later turns "
                               "are added, so response tokens cannot be isolated; use --template chatml or alpaca")
        if before[len(done):]:
            segments.append((before[len(done):], False))
        response = after[len(before):]
        eos = tokenizer.eos_token or ""
        if eos and eos not in response:
            response += eos
        segments.append((response, True))
        done = after
    full = render(messages, False)
    if full.startswith(done) and full[len(done):]:
        segments.append((full[len(done):], False))
    return segments


def _text_segments(messages: list[dict[str, str]], style: str, eos: str) -> list[Segment]:
    segments: list[Segment] = []
    system = next((m["content"] for m in messages if m["role"] == "system"), None)
    if style == "alpaca":
        system = ALPACA_SYSTEM if system is None else system
    prompt = f"{system}\n\n" if system else ""
    for msg in messages:
        if msg["role"] == "system":
            continue
        if msg["role"] == "user":
            prompt += (f"### Instruction:\n{msg['content']}\n\n### Response:\n" if style == "alpaca"
                       else f"{msg['content']}\n")
        else:
            if prompt:
                segments.append((prompt, False))
            segments.append((msg["content"] + eos, True))
            prompt = "\n\n" if style == "alpaca" else "\n"
    if not messages or messages[-1]["role"] != "assistant":
        segments.append((prompt, False))  # the prompt for the next assistant turn (generation)
    return segments
