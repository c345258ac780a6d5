"""Rendering a model's own chat template (from its GGUF metadata) in a sandbox.

Templates come only from operator-configured model files, never from requests. They still run in
Jinja's immutable sandbox (no attribute tricks, no file or import access) with a cap on output.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime

from jinja2 import TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment

MAX_RENDERED_CHARS = 4 * 1024 * 1024


class ChatTemplateError(Exception):
    """The messages cannot be rendered by this model's template (the template said why)."""


def _raise_exception(message: str) -> None:
    raise ChatTemplateError(message)


class ChatTemplate:
    """``ChatTemplate(source, bos, eos).render(messages) -> prompt text`` ending in the assistant cue."""

    def __init__(self, source: str, bos_token: str, eos_token: str) -> None:
        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, autoescape=False)
        env.globals["raise_exception"] = _raise_exception
        env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
        self._template = env.from_string(source)
        self._bos = bos_token
        self._eos = eos_token
        # Templates written for tool use read a `tools` variable; others never mention it.
        self.supports_tools = "tools" in source

    def render(self, messages: Sequence[Mapping[str, object]], tools: Sequence[Mapping[str, object]] | None = None) -> str:
        try:
            text = self._template.render(
                messages=list(messages),
                tools=list(tools) if tools else None,
                add_generation_prompt=True,
                bos_token=self._bos,
                eos_token=self._eos,
            )
        except ChatTemplateError:
            raise
        except TemplateError as exc:
            raise ChatTemplateError(f"The model's chat template rejected the messages: {exc}") from exc
        if len(text) > MAX_RENDERED_CHARS:
            raise ChatTemplateError("The rendered prompt is too large.")
        return text


# Used when a GGUF file carries no template: ChatML, which many instruction-tuned models share.
CHATML = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
