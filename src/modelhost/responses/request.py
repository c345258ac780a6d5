"""A `CreateResponse` → the pipeline's `ChatInput`, with the Responses API's own rules checked first.

What only this API knows is decided here, with its field names in the errors: `instructions` is a
leading system turn (never stored, so `previous_response_id` does not carry it over, as OpenAI
documents); built-in tools, reasoning and the combinations OpenAI refuses are 400s; `text.format`,
function tools and `tool_choice` become the same `OutputFormat` and `Tools` chat completions use,
so grammars and call parsing are shared.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from modelhost.errors import InvalidRequest
from modelhost.pipeline.inputs import ChatInput, Function, OutputFormat, Params, Sampling, Tools, Turn
from modelhost.protocol.responses import (
    BuiltinTool,
    CreateResponse,
    FormatJsonObject,
    FormatJsonSchema,
    FunctionTool,
    ToolChoiceFunction,
    ToolChoiceOther,
)

PARAMS = Params(messages="input", response_format="text.format", max_tokens="max_output_tokens")
LOGPROBS = "message.output_text.logprobs"


def check(body: CreateResponse) -> None:
    """The request's own rules, before anything is looked up or admitted."""
    if body.conversation is not None and body.previous_response_id is not None:
        raise InvalidRequest(
            "Parameters 'conversation' and 'previous_response_id' cannot be used together.",
            param="conversation",
            code="invalid_value",
        )
    if body.reasoning is not None and (body.reasoning.effort not in (None, "none") or body.reasoning.summary or body.reasoning.generate_summary):
        field = "reasoning.effort" if body.reasoning.effort is not None else "reasoning.summary"
        raise InvalidRequest(
            f"Unsupported parameter: '{field}' is not supported with this model.", param=field, code="unsupported_parameter"
        )
    for i, tool in enumerate(body.tools or []):
        if isinstance(tool, BuiltinTool):
            raise InvalidRequest(
                f"Tool type '{tool.type}' is not supported by this server: only function tools can be used.",
                param=f"tools[{i}]",
                code="unsupported_value",
            )
    if isinstance(body.tool_choice, ToolChoiceOther):
        raise InvalidRequest(
            f"Tool choice '{body.tool_choice.type}' is not supported by this server: use none, auto, required or a function.",
            param="tool_choice",
            code="unsupported_value",
        )
    if body.background and not body.store:
        raise InvalidRequest("Background responses must be stored: 'store' cannot be false.", param="store", code="invalid_value")


def conversation_id(body: CreateResponse) -> str | None:
    """The conversation the response continues, however the request named it."""
    conversation = body.conversation
    return conversation if isinstance(conversation, str) or conversation is None else conversation.id


def instruction_turns(body: CreateResponse) -> tuple[Turn, ...]:
    return (Turn("system", body.instructions),) if body.instructions else ()


def _tools(body: CreateResponse) -> Tools | None:
    functions = tuple(
        Function(t.name, t.description, t.parameters, t.strict) for t in body.tools or [] if isinstance(t, FunctionTool)
    )
    choice = body.tool_choice
    if not functions and choice is None:
        return None
    return Tools(
        functions,
        choice.name if isinstance(choice, ToolChoiceFunction) else choice if isinstance(choice, str) else None,
        named=isinstance(choice, ToolChoiceFunction),
        parallel=body.parallel_tool_calls is not False,
    )


def output_format(body: CreateResponse) -> OutputFormat | None:
    fmt = body.text.format if body.text is not None else None
    if isinstance(fmt, FormatJsonSchema):
        return OutputFormat("json_schema", fmt.name, fmt.schema_, fmt.strict)
    if isinstance(fmt, FormatJsonObject):
        return OutputFormat("json_object")
    return OutputFormat("text") if fmt is not None else None


def wants_logprobs(body: CreateResponse) -> bool:
    return LOGPROBS in (body.include or [])


def chat_input(body: CreateResponse, turns: Sequence[Turn]) -> ChatInput:
    """The response's context (`turns`, instructions first) as planning takes it."""
    return ChatInput(
        model=body.model,
        turns=(*instruction_turns(body), *turns),
        sampling=Sampling(temperature=body.temperature, top_p=body.top_p),
        max_tokens=body.max_output_tokens,
        logprobs=(body.top_logprobs or 0) if wants_logprobs(body) else None,
        tools=_tools(body),
        output=output_format(body),
        params=PARAMS,
    )


def echoed_tools(body: CreateResponse) -> list[dict[str, Any]]:
    """The function tools as the Response object repeats them."""
    return [
        {"type": "function", "name": t.name, "description": t.description, "parameters": t.parameters, "strict": t.strict}
        for t in body.tools or []
        if isinstance(t, FunctionTool)
    ]


def echoed_tool_choice(body: CreateResponse) -> object:
    choice = body.tool_choice
    if isinstance(choice, ToolChoiceFunction):
        return {"type": "function", "name": choice.name}
    return choice or "auto"


def echoed_text(body: CreateResponse) -> dict[str, Any]:
    fmt = body.text.format if body.text is not None else None
    rendered: dict[str, Any] = {"type": "text"}
    if isinstance(fmt, FormatJsonSchema):
        rendered = {"type": "json_schema", "name": fmt.name, "schema": fmt.schema_, "strict": fmt.strict}
        if fmt.description is not None:
            rendered["description"] = fmt.description
    elif isinstance(fmt, FormatJsonObject):
        rendered = {"type": "json_object"}
    return {"format": rendered, "verbosity": (body.text.verbosity if body.text is not None else None) or "medium"}
