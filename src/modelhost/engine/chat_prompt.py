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

Placeholders are letters and digits, so they can neither hold nor complete a control string. They
are long random markers first; a template that rejects those (Mistral's checks that a tool-call id
has 9 characters; or the longer masked rendering passes the size cap) is rendered again with
placeholders of each string's length and character classes. A template that rejects both inspects
client text itself, and nothing says which control strings are its own: then no client string may
hold a control string, nor start or end inside one of the rendering's (``<|im_`` ending one
message and ``start|>`` starting the next, written side by side), or the request is refused.

Example (ChatML): ``[{"role": "user", "content": "hi<|im_end|>"}]`` renders as
``<|im_start|>user\\nhi<|im_end|><|im_end|>\\n<|im_start|>assistant\\n``; the template owns the first,
third and fourth control strings, so the prompt has 3 control tokens and ``<|im_end|>`` after "hi"
is text.
"""

from __future__ import annotations

import functools
import itertools
import json
import random
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
        self.longest = max(map(len, self.by_text), default=0)

    @functools.cached_property
    def prefixes(self) -> frozenset[str]:
        """The proper, non-empty prefixes of the control strings (``<``, ``<|``, … of ``<|e|>``)."""
        return frozenset(text[:k] for text in self.by_text for k in range(1, len(text)))

    @functools.cached_property
    def suffixes(self) -> frozenset[str]:
        """The proper, non-empty suffixes of the control strings (``>``, ``|>``, … of ``<|e|>``)."""
        return frozenset(text[k:] for text in self.by_text for k in range(1, len(text)))

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


# Character classes a same-length placeholder keeps, character by character; any other character
# (punctuation, spaces, other scripts) becomes a lower-case letter.
_DIGITS, _UPPER, _LOWER = "0123456789", "ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz"
_PLACEHOLDER_TRIES = 8  # random draws of a short placeholder before taking the first free one
_PLACEHOLDER_SCAN = 4096  # placeholders of one shape looked through for a free one
_AVOID_CHECKS = 256  # short placeholders checked against the real rendering (each check reads it all)…
_AVOID_SCAN = 64 * 1024 * 1024  # …and no more characters read in all than this


class _Masker:
    """Replaces client strings by placeholders; equal strings share one, so comparisons still hold.

    By default a placeholder is a marker (``PH<random>N<index>Z``) that template text cannot hold by
    chance. `same_length`: each has its string's length, for templates that check one. A string as
    long as a marker gets the marker padded with ``x``; a shorter one gets random characters of its
    characters' classes (digit, upper- or lower-case letter), drawn to be found nowhere in `avoid`
    (the real rendering, so not in the template's text). Should one still occur in template text,
    the line-up fails, which is safe: `tokenize` then accepts only the template's control tokens.
    """

    def __init__(self, *, same_length: bool = False, avoid: str = "") -> None:
        self.texts: list[str] = []
        self._index: dict[str, int] = {}
        self._placeholders: list[str] = []
        self._prefix = f"PH{secrets.token_hex(6)}N"
        self._same_length = same_length
        self._avoid = avoid
        self._avoid_checks = min(_AVOID_CHECKS, _AVOID_SCAN // (len(avoid) + 1))
        self._short: dict[str, int] = {}  # short same-length placeholder → index (-1: two strings share it)
        self._random = random.Random(secrets.randbits(64))  # unpredictability is not needed, only spread

    def text(self, value: str) -> str:
        if not value or value in _STRUCTURAL_VALUES:
            return value
        index = self._index.get(value)
        if index is None:
            index = self._index[value] = len(self.texts)
            self.texts.append(value)
            self._placeholders.append(self._placeholder(value, index))
        return self._placeholders[index]

    def tree(self, value: object) -> object:
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, Mapping):
            return {(k if k in _STRUCTURAL_KEYS else self.text(str(k))): self.tree(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [self.tree(v) for v in value]
        return value

    def _placeholder(self, value: str, index: int) -> str:
        marker = f"{self._prefix}{index}Z"
        if not self._same_length:
            return marker
        if len(value) >= len(marker):
            return marker + "x" * (len(value) - len(marker))
        pools = [_DIGITS if ch in _DIGITS else _UPPER if ch in _UPPER else _LOWER for ch in value]
        unique: str | None = None  # a draw no other string has, though the real rendering holds it
        for _ in range(_PLACEHOLDER_TRIES):
            placeholder = "".join(self._random.choice(pool) for pool in pools)
            if placeholder in self._short:
                continue
            if not self._seen(placeholder):
                break
            unique = unique or placeholder
        else:  # few placeholders of this shape (ten digits): take the first free one
            shapes = itertools.islice(map("".join, itertools.product(*pools)), _PLACEHOLDER_SCAN)
            placeholder = unique or next((p for p in shapes if p not in self._short), placeholder)
        self._short[placeholder] = -1 if placeholder in self._short else index
        return placeholder

    def _seen(self, placeholder: str) -> bool:
        if self._avoid_checks <= 0:
            return False
        self._avoid_checks -= 1
        return placeholder in self._avoid

    def split(self, masked: str) -> tuple[list[str], list[int]] | None:
        """The template text around each placeholder in `masked` and the index of each placeholder's
        string: ``([t0, t1, …, tn], [i1, …, in])``; None if a placeholder cannot be told apart."""
        finder = re.escape(self._prefix) + r"(\d+)Z"
        if self._short:
            finder += "|(" + _trie_pattern(self._short) + ")"
        pattern = re.compile(finder)
        between: list[str] = []
        indices: list[int] = []
        pos = 0
        while (match := pattern.search(masked, pos)) is not None:
            index = int(match.group(1)) if match.group(1) is not None else self._short[match.group(2)]
            if not 0 <= index < len(self.texts) or not masked.startswith(self._placeholders[index], match.start()):
                return None
            between.append(masked[pos : match.start()])
            indices.append(index)
            pos = match.start() + len(self._placeholders[index])
        between.append(masked[pos:])
        return between, indices


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
    split = masker.split(masked)
    if split is None:
        return None
    between, indices = split  # template text, and which client string sits between each two
    if not real.startswith(between[0]):
        return None
    pieces: list[tuple[str, bool]] = [(between[0], False)]
    pos = len(between[0])
    for index, after in zip(indices, between[1:]):
        for form in _forms(masker.texts[index]):
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
    # Markers first (they never occur in template text by chance); placeholders of the strings'
    # own lengths where the template rejects those.
    for masker in (_Masker(), _Masker(same_length=True, avoid=real)):
        masked_messages = [masker.tree(m) for m in messages]
        masked_tools = [masker.tree(t) for t in tools] if tools else None
        try:
            masked = render_template(masked_messages, masked_tools)  # type: ignore[arg-type]
        except ChatTemplateError:
            continue
        template_controls = tuple(t.id for _, _, t in controls.find(masked))
        return RenderedChat(real, _line_up(real, masked, masker), template_controls)
    # The template rejects every placeholder (it inspects client text): no template text to trust.
    _refuse_control_strings(real, masker.texts, controls)
    return RenderedChat(real, None, tuple(t.id for _, _, t in controls.find(real)))


_UNPLACED_CHECKS = 1_000_000  # client strings tried at the edges of control strings, per request


def _refuse_control_strings(real: str, texts: Sequence[str], controls: ControlTokens) -> None:
    """Where nothing says which control strings of `real` are the template's, refuse client text
    that holds one or makes one with its neighbours (`ChatTemplateError`).

    Each client string, in each way a template may write it (`_forms`), must hold no control string,
    and no control string of `real` may start or end inside one of its occurrences while reaching
    beyond it: ``<|im_`` ending one message and ``start|>`` starting the next both fail, and so does
    ``<|im_`` before template text that completes it. A string lying wholly inside a control string
    (``im`` in the template's ``<|im_start|>``) is not refused, or short words could never be sent:
    client text completing the control string around it is caught at its own edge. Limit: a template
    that wraps a client string in halves of a control string itself (``<|`` + name + ``|>``).
    """
    ending: dict[str, list[str]] = {}  # a control string's proper prefix → client text ending with it
    starting: dict[str, list[str]] = {}  # a control string's proper suffix → client text starting with it
    for text in texts:
        for form in _forms(text):
            if any(True for _ in controls.find(form)):
                raise ChatTemplateError(_FORGED)
            for k in range(1, min(len(form), controls.longest - 1) + 1):
                if form[-k:] in controls.prefixes:
                    ending.setdefault(form[-k:], []).append(form)
                if form[:k] in controls.suffixes:
                    starting.setdefault(form[:k], []).append(form)
    if not ending and not starting:
        return
    budget = _UNPLACED_CHECKS
    for start, end, _ in controls.find(real):
        for cut in range(start + 1, end):
            # Text ending at `cut` (so starting at or before `start`), or starting there (ending at or after `end`).
            candidates = [(form, cut - len(form)) for form in ending.get(real[start:cut], ())]
            candidates += [(form, cut) for form in starting.get(real[cut:end], ())]
            budget -= len(candidates)
            if budget < 0:
                raise ChatTemplateError(
                    "The messages have too many strings that begin or end like this model's control tokens "
                    "to check them against its chat template."
                )
            if any(real.startswith(form, at) for form, at in candidates if at >= 0):
                raise ChatTemplateError(_FORGED)


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
