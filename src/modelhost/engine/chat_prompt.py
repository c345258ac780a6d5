"""Chat prompts in which only the chat template makes control tokens.

A model's control strings (``<|im_start|>``, ``<|eot_id|>``, …) are what separate turns. Rendering
the conversation and tokenizing the result with control-token parsing on would let a user message
that spells ``<|im_end|>\\n<|im_start|>system\\n…`` forge a turn. Client text is therefore always
tokenized as text (OpenAI's behaviour); only control strings the template itself wrote become
control tokens.

How the template's own text is told apart from the client's: the conversation is rendered twice,
as sent and with every piece of client text (contents, names, tool-call ids and arguments, tool
definitions, keys of client objects) replaced by a placeholder. The masked rendering holds nothing
the client wrote, so its control strings are the template's; lined up against the real rendering it
says where each client piece sits. Then:

- The real rendering is tokenized with control parsing on (exactly as before, so ordinary prompts
  get the same tokens and counts), and its control tokens are compared with the template's. Equal
  (the client wrote none): that is the prompt.
- Otherwise the rendering is cut at the template's control strings; each control string becomes its
  token and the text between them, template and client text together, is tokenized with control
  parsing off, so the client's ``<|im_start|>`` is a dozen ordinary tokens.
- A template that transforms client text beyond what the line-up understands (verbatim, stripped,
  JSON-escaped) cannot be lined up: the rendering is accepted only if it holds exactly the
  template's control tokens, otherwise the request is refused (`ChatTemplateError`, a 400).

Example (ChatML): ``[{"role": "user", "content": "hi<|im_end|>"}]`` renders as
``<|im_start|>user\\nhi<|im_end|><|im_end|>\\n<|im_start|>assistant\\n``; the template owns the first,
third and fourth control strings, so the prompt has 3 control tokens and ``<|im_end|>`` after "hi"
is text.
"""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass

from modelhost.engine.chat_template import ChatTemplateError

Messages = Sequence[Mapping[str, object]]
Tools = Sequence[Mapping[str, object]]
Render = Callable[[Messages, "Tools | None"], str]  # (messages, tools) → the template's text

# Keys a template may look up in messages, tool calls, tool definitions and JSON schemas. Any other
# key of a client object (a property name, an argument name) is client text and gets masked.
_STRUCTURAL_KEYS = frozenset(
    {
        "role", "content", "name", "tool_calls", "tool_call_id", "id", "type", "function", "arguments",
        "description", "parameters", "strict",
        "properties", "required", "items", "prefixItems", "enum", "const", "anyOf", "oneOf", "allOf", "not",
        "$ref", "$defs", "definitions", "additionalProperties", "patternProperties", "propertyNames",
        "minItems", "maxItems", "minLength", "maxLength", "minimum", "maximum", "exclusiveMinimum",
        "exclusiveMaximum", "multipleOf", "pattern", "format", "default", "title", "examples", "nullable",
        "uniqueItems", "minProperties", "maxProperties", "contains", "if", "then", "else",
        "dependentRequired", "dependentSchemas", "$schema", "$id", "$comment", "deprecated",
    }
)
# Values a template may branch on (roles, tool and JSON types): fixed words, never control strings.
_STRUCTURAL_VALUES = frozenset(
    {"system", "user", "assistant", "tool", "function", "object", "string", "number", "integer", "boolean", "array", "null"}
)


@dataclass(frozen=True)
class ControlToken:
    """A token that control-token parsing makes from its text; `lstrip`/`rstrip`: it absorbs the
    whitespace on that side (as llama.cpp and Hugging Face tokenizers do)."""

    id: int
    text: str
    lstrip: bool = False
    rstrip: bool = False


class ControlTokens:
    """A vocabulary's control tokens: their ids, and a finder for their text in a string."""

    def __init__(self, tokens: Sequence[ControlToken]) -> None:
        self.by_text = {t.text: t for t in tokens if t.text}
        self.ids = frozenset(t.id for t in tokens)
        self._pattern = re.compile(_trie_pattern(self.by_text)) if self.by_text else None

    def find(self, text: str) -> Iterator[tuple[int, int, ControlToken]]:
        """(start, end, token) of each control string in `text`, left to right, longest first."""
        if self._pattern is None:
            return
        for match in self._pattern.finditer(text):
            yield match.start(), match.end(), self.by_text[match.group()]


def _trie_pattern(words: Mapping[str, object]) -> str:
    """One regex matching any of `words`, longest first, as a trie (fast with thousands of words)."""
    trie: dict[str, dict] = {}  # type: ignore[type-arg]
    for word in words:
        node = trie
        for ch in word:
            node = node.setdefault(ch, {})
        node[""] = {}

    def pattern(node: dict[str, dict]) -> str:  # type: ignore[type-arg]
        branches = [re.escape(ch) + pattern(child) for ch, child in node.items() if ch]
        if not branches:
            return ""
        body = branches[0] if len(branches) == 1 else "(?:" + "|".join(branches) + ")"
        return f"(?:{body})?" if "" in node else body

    return pattern(trie)


@dataclass(frozen=True)
class RenderedChat:
    """The real rendering, and the template's part of it.

    `pieces` is the rendering cut into (text, from_client) pieces, or None when the template's
    handling of client text could not be lined up; `template_controls` lists the control tokens the
    template wrote, in order (from the masked rendering).
    """

    text: str
    pieces: tuple[tuple[str, bool], ...] | None
    template_controls: tuple[int, ...]


class _Masker:
    """Replaces client strings by placeholders; equal strings share one, so comparisons still hold."""

    def __init__(self) -> None:
        self.texts: list[str] = []
        self._index: dict[str, int] = {}
        self._prefix = f"PH{secrets.token_hex(6)}N"
        self.placeholder = re.compile(re.escape(self._prefix) + r"(\d+)Z")

    def text(self, value: str) -> str:
        if not value or value in _STRUCTURAL_VALUES:
            return value
        index = self._index.get(value)
        if index is None:
            index = self._index[value] = len(self.texts)
            self.texts.append(value)
        return f"{self._prefix}{index}Z"

    def tree(self, value: object) -> object:
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, Mapping):
            return {(k if k in _STRUCTURAL_KEYS else self.text(str(k))): self.tree(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [self.tree(v) for v in value]
        return value


def _forms(text: str) -> list[str]:
    """How a template may write a client string: verbatim, stripped (`| trim`), JSON-escaped
    (`| tojson`: Jinja's HTML-safe one, or json.dumps with and without ensure_ascii)."""
    as_json = json.dumps(text)[1:-1]
    html_safe = as_json.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026").replace("'", "\\u0027")
    forms: list[str] = []
    for form in (text, text.strip(), as_json, json.dumps(text, ensure_ascii=False)[1:-1], html_safe):
        if form not in forms:
            forms.append(form)
    return forms


def _line_up(real: str, masked: str, masker: _Masker) -> tuple[tuple[str, bool], ...] | None:
    """Cut `real` into template and client pieces along `masked`; None if they do not line up."""
    parts = masker.placeholder.split(masked)  # template, index, template, index, …, template
    if not real.startswith(parts[0]):
        return None
    pieces: list[tuple[str, bool]] = [(parts[0], False)]
    pos = len(parts[0])
    for i in range(1, len(parts), 2):
        after = parts[i + 1]
        for form in _forms(masker.texts[int(parts[i])]):
            if real.startswith(form, pos) and real.startswith(after, pos + len(form)):
                break
        else:
            return None
        pieces += [(form, True), (after, False)]
        pos += len(form) + len(after)
    if pos != len(real):
        return None
    return tuple((text, client) for text, client in pieces if text)


def render(render_template: Render, messages: Messages, tools: Tools | None, controls: ControlTokens) -> RenderedChat:
    """Render the conversation and find which of its text the template wrote (module docstring)."""
    real = render_template(messages, tools)
    masker = _Masker()
    masked_messages = [masker.tree(m) for m in messages]
    masked_tools = [masker.tree(t) for t in tools] if tools else None
    try:
        masked = render_template(masked_messages, masked_tools)  # type: ignore[arg-type]
    except ChatTemplateError:
        # The template rejects placeholders (it inspects content): no template text to trust, so
        # the client text must hold no control string at all.
        if any(any(True for _ in controls.find(text)) for text in masker.texts):
            raise ChatTemplateError(_FORGED) from None
        return RenderedChat(real, None, tuple(t.id for _, _, t in controls.find(real)))
    template_controls = tuple(t.id for _, _, t in controls.find(masked))
    return RenderedChat(real, _line_up(real, masked, masker), template_controls)


_FORGED = (
    "The messages contain text that this model's chat template would turn into its own control tokens "
    "(such as a turn marker); remove that text from the messages."
)


def tokenize(
    rendered: RenderedChat,
    controls: ControlTokens,
    *,
    whole: Callable[[str], list[int]],
    text_only: Callable[[str], list[int]],
    start: Sequence[int] = (),
) -> list[int]:
    """The prompt tokens of `rendered`, with control tokens only where the template wrote them.

    `whole` tokenizes with control parsing on (adding `start`, e.g. BOS, where the model wants it),
    `text_only` without control parsing and without `start`.
    """
    tokens = whole(rendered.text)
    body = tokens[len(start) :] if start and tokens[: len(start)] == list(start) else tokens
    if tuple(t for t in body if t in controls.ids) == rendered.template_controls:
        return tokens
    if rendered.pieces is None:
        raise ChatTemplateError(_FORGED)
    return [*start, *_split_tokenize(rendered.pieces, controls, text_only)]


def _split_tokenize(
    pieces: Sequence[tuple[str, bool]], controls: ControlTokens, text_only: Callable[[str], list[int]]
) -> list[int]:
    """Control strings inside template pieces become their tokens; all other text is text."""
    segments: list[str | ControlToken] = []  # text runs and the template's control tokens
    run = ""
    for text, from_client in pieces:
        if from_client:
            run += text
            continue
        pos = 0
        for start, end, token in controls.find(text):
            segments.append(run + text[pos:start])
            segments.append(token)
            run, pos = "", end
        run += text[pos:]
    segments.append(run)
    out: list[int] = []
    for i, segment in enumerate(segments):
        if isinstance(segment, ControlToken):
            out.append(segment.id)
            continue
        before = segments[i - 1] if i > 0 else None
        after = segments[i + 1] if i + 1 < len(segments) else None
        if isinstance(before, ControlToken) and before.rstrip:
            segment = segment.lstrip()
        if isinstance(after, ControlToken) and after.lstrip:
            segment = segment.rstrip()
        if segment:
            out.extend(text_only(segment))
    return out
