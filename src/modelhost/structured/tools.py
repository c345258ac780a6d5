"""Tool calling: which functions the model may call, how it is told, how its calls are read back.

The wire convention inside the model's text is `<tool_call>{"name": …, "arguments": {…}}</tool_call>`
(the Hermes/Qwen convention many templates use). When the model's own chat template renders
`tools`, it is given them; otherwise (SmolLM2, for one) a system message lists the functions and
this convention — the documented fallback. Calls are grammar-constrained when the request
requires one (`required`, a named function) or marks a function `strict`; with `auto` the
grammar switches on lazily when the model starts a call.
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass, field
from typing import Literal

from modelhost.engine.grammar import GrammarError, compile_schema, rename_root
from modelhost.engine.schema_refs import hoist_refs
from modelhost.errors import InvalidRequest
from modelhost.ids import new_id
from modelhost.pipeline.inputs import Function, Params, Tools

OPEN, CLOSE = "<tool_call>", "</tool_call>"


@dataclass(frozen=True)
class ToolPlan:
    """The tool request, resolved: `mode` none/auto/required, and the callable functions."""

    mode: Literal["none", "auto", "required"]
    functions: tuple[Function, ...]
    parallel: bool
    legacy: bool  # asked with `functions`/`function_call`: answer with `message.function_call`


def resolve(tools: Tools | None, params: Params = Params()) -> ToolPlan | None:
    """Map the offered functions and the tool choice onto one plan (None: no tools were offered)."""
    if tools is None:
        return None
    functions, choice = tools.functions, tools.choice
    if not functions:
        if choice not in (None, "none") or tools.named:
            raise InvalidRequest(
                f"'{params.tool_choice}' is only allowed when '{params.tools}' are specified.", param=params.tool_choice, code="invalid_value"
            )
        return None
    names = [f.name for f in functions]
    if len(set(names)) != len(names):
        raise InvalidRequest("Function names must be unique.", param=params.tools, code="invalid_value")
    if tools.named:
        chosen = tuple(f for f in functions if f.name == choice)
        if not chosen:
            raise InvalidRequest(
                f"Invalid value for '{params.tool_choice}': no function named '{choice}' in the request.",
                param=params.tool_choice,
                code="invalid_value",
            )
        return ToolPlan("required", chosen, parallel=False, legacy=tools.legacy)
    mode = choice or "auto"
    if mode not in ("none", "auto", "required"):
        raise InvalidRequest(f"Invalid value for '{params.tool_choice}': {mode!r}.", param=params.tool_choice, code="invalid_value")
    return ToolPlan(mode, functions, tools.parallel and not tools.legacy, tools.legacy)  # type: ignore[arg-type]


def openai_tools(plan: ToolPlan) -> list[dict[str, object]]:
    """The functions as OpenAI tool objects (what tool-aware chat templates expect)."""
    return [
        {"type": "function", "function": {"name": f.name, "description": f.description or "", "parameters": f.parameters or {"type": "object", "properties": {}}}}
        for f in plan.functions
    ]


def fallback_system_prompt(plan: ToolPlan) -> str:
    listed = "\n".join(json.dumps(t["function"]) for t in openai_tools(plan))
    return (
        "You may call functions. To call one, reply with "
        f'{OPEN}{{"name": <function name>, "arguments": <arguments as a JSON object>}}{CLOSE} '
        "and nothing else. Available functions:\n" + listed
    )


def json_or_text(arguments: str) -> object:
    """A call's arguments as JSON data, or as the text they are when they are not JSON."""
    try:
        return json.loads(arguments)
    except json.JSONDecodeError:
        return arguments


def render_call(name: str, arguments: str) -> str:
    """An earlier call as the model would have written it."""
    return f"{OPEN}{json.dumps({'name': name, 'arguments': json_or_text(arguments)})}{CLOSE}"


def call_grammar(plan: ToolPlan, alternative: str | None = None, *, tenant: str | None = None, param: str = "tools") -> str:
    """GBNF for one call (or several, when parallel) to the plan's functions; optionally `| alternative`.

    Each function's parameters are their own JSON-schema document: their `#/$defs/…` references are
    resolved against them and hoisted, under names of their own, to the root of the combined schema.
    """
    definitions: dict[str, object] = {}
    variants = []
    tag = secrets.token_hex(4)
    try:
        for i, f in enumerate(plan.functions):
            parameters, defs = hoist_refs(dict(f.parameters or {"type": "object"}), prefix=f"t{tag}-{i}")
            definitions.update(defs)
            variants.append(
                {
                    "type": "object",
                    "properties": {"name": {"const": f.name}, "arguments": parameters},
                    "required": ["name", "arguments"],
                    "additionalProperties": False,
                }
            )
        schema: dict[str, object] = variants[0] if len(variants) == 1 else {"anyOf": variants}
        if definitions:
            schema = {**schema, "$defs": definitions}
        body = rename_root(compile_schema(schema, prop_order=["name", "arguments"], tenant=tenant), "tool-json")
    except GrammarError as exc:
        raise InvalidRequest(f"Invalid function parameters schema: {exc}", param=param, code="invalid_value") from exc
    calls = 'tool-call ("\\n" tool-call)*' if plan.parallel else "tool-call"
    root = f"root ::= {calls}" if alternative is None else f"root ::= {calls} | response-json"
    grammar = f'{root}\ntool-call ::= "{OPEN}" tool-json "{CLOSE}"\n{body}'
    if alternative is not None:
        grammar += "\n" + rename_root(alternative, "response-json")
    return grammar


@dataclass
class ParsedCall:
    id: str
    name: str
    arguments: str  # a JSON string, as OpenAI sends it


@dataclass
class ToolCallParser:
    """Splits streamed model text into content and completed calls, holding back a partial `<tool_call>`.

    Once a call was made, whitespace is held back too: the newline between parallel calls, or after
    the last one, is the calls' separator, not an answer (it would become an empty message)."""

    buffer: str = ""
    calls: list[ParsedCall] = field(default_factory=list)

    def feed(self, text: str) -> list[str | ParsedCall]:
        self.buffer += text
        out: list[str | ParsedCall] = []
        while True:
            start = self.buffer.find(OPEN)
            if start < 0:
                keep = next((k for k in range(min(len(OPEN) - 1, len(self.buffer)), 0, -1) if OPEN.startswith(self.buffer[-k:])), 0)
                text_part = self.buffer[: len(self.buffer) - keep]
                if text_part and not (self.calls and text_part.isspace()):
                    out.append(text_part)
                    self.buffer = self.buffer[len(text_part) :]
                return out
            if start > 0:
                if not (self.calls and self.buffer[:start].isspace()):
                    out.append(self.buffer[:start])
                self.buffer = self.buffer[start:]
            end = self.buffer.find(CLOSE)
            if end < 0:
                return out  # a call in progress: wait for its end
            call = self._parse(self.buffer[len(OPEN) : end])
            if call is None:
                out.append(self.buffer[: end + len(CLOSE)])
            else:
                out.append(call)
            self.buffer = self.buffer[end + len(CLOSE) :].lstrip("\n") if call else self.buffer[end + len(CLOSE) :]

    def finish(self, *, drop_unfinished_call: bool = False) -> list[str | ParsedCall]:
        """At the end: whatever is still held is content.

        A call cut off by `max_tokens` after complete calls is dropped when `drop_unfinished_call`
        (the complete calls are the answer; raw markup is not content). Without complete calls it
        stays visible as text, so nothing the model wrote silently disappears.
        """
        rest, self.buffer = self.buffer, ""
        if self.calls:
            unfinished = rest.lstrip()
            if not unfinished or (drop_unfinished_call and (unfinished.startswith(OPEN) or OPEN.startswith(unfinished))):
                return []  # a separator, or a call (or the start of its tag) that max_tokens cut short
        return [rest] if rest else []

    def _parse(self, body: str) -> ParsedCall | None:
        try:
            data = json.loads(body)
        except json.JSONDecodeError:
            return None
        if not isinstance(data, dict) or not isinstance(data.get("name"), str):
            return None
        arguments = data.get("arguments", {})
        call = ParsedCall(new_id("call_"), data["name"], arguments if isinstance(arguments, str) else json.dumps(arguments))
        self.calls.append(call)
        return call
