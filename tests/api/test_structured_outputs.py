"""Structured outputs and tool calls: grammar-constrained, so even a 135M model's output parses."""

from __future__ import annotations

import json
import re

import jsonschema
import openai
import pytest
from pydantic import BaseModel

from support.openapi_spec import validate


class Person(BaseModel):
    name: str
    age: int
    hobbies: list[str]


WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather for a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "unit": {"type": "string", "enum": ["c", "f"]}},
            "required": ["city", "unit"],
            "additionalProperties": False,
        },
        "strict": True,
    },
}
ASK = [{"role": "user", "content": "What's the weather in Paris?"}]


def test_parse_with_a_pydantic_model(client: openai.OpenAI, model: str) -> None:
    completion = client.chat.completions.parse(
        model=model, messages=[{"role": "user", "content": "Describe a person."}], response_format=Person, max_tokens=120, seed=1
    )
    assert isinstance(completion.choices[0].message.parsed, Person)


def test_strict_json_schema_output_validates_over_many_seeds(client: openai.OpenAI, model: str) -> None:
    schema = {
        "type": "object",
        "properties": {
            "title": {"type": "string", "maxLength": 40},
            "rating": {"type": "integer"},
            "tags": {"type": "array", "items": {"type": "string", "enum": ["a", "b", "c"]}, "maxItems": 3},
            "done": {"type": "boolean"},
        },
        "required": ["title", "rating", "tags", "done"],
        "additionalProperties": False,
    }
    for seed in range(6):
        completion = client.chat.completions.create(
            model=model,
            messages=[{"role": "user", "content": "Review a movie."}],
            response_format={"type": "json_schema", "json_schema": {"name": "review", "schema": schema, "strict": True}},
            max_tokens=120,
            seed=seed,
            temperature=1.0,
        )
        choice = completion.choices[0]
        assert choice.finish_reason == "stop", choice
        jsonschema.validate(json.loads(choice.message.content), schema)


def test_json_object_mode_gives_an_object_and_requires_the_word_json(client: openai.OpenAI, model: str) -> None:
    completion = client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": "Reply in JSON: a short greeting."}],
        response_format={"type": "json_object"},
        max_tokens=400,
        seed=3,
    )
    assert completion.choices[0].finish_reason == "stop", completion.choices[0].message.content
    assert isinstance(json.loads(completion.choices[0].message.content), dict)
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": "hello"}], response_format={"type": "json_object"}
        )
    assert info.value.param == "messages"


@pytest.mark.parametrize(
    "schema",
    [
        {"type": "object", "properties": {"n": {"type": "integer", "minimum": 3}}},
        {"type": "object", "patternProperties": {"^x": {"type": "string"}}},
        {"type": "array", "items": {"type": "string"}, "maxItems": 10**6},
        {"type": "string", "enum": [str(i) for i in range(5000)]},
        {"$ref": "http://example.com/schema.json"},
    ],
)
def test_unsupported_or_hostile_schemas_are_400_naming_the_feature(client: openai.OpenAI, model: str, schema: dict) -> None:  # type: ignore[type-arg]
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(
            model=model,
            messages=ASK,
            response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": schema}},
            max_tokens=5,
        )
    assert info.value.param == "response_format"
    assert "#" in info.value.message


def test_recursive_schema_compiles_and_is_enforced(client: openai.OpenAI, model: str) -> None:
    schema = {
        "$defs": {"node": {"type": "object", "properties": {"v": {"type": "integer"}, "kids": {"type": "array", "items": {"$ref": "#/$defs/node"}, "maxItems": 2}}, "required": ["v", "kids"], "additionalProperties": False}},
        "$ref": "#/$defs/node",
    }
    completion = client.chat.completions.create(
        model=model, messages=ASK, response_format={"type": "json_schema", "json_schema": {"name": "tree", "schema": schema}}, max_tokens=60, seed=4
    )
    text = completion.choices[0].message.content
    if completion.choices[0].finish_reason == "stop":
        jsonschema.validate(json.loads(text), schema)
    else:
        # A tree may nest past max_tokens (this one does): what was written is still the schema's,
        # only the two keys, each "v" an integer, "kids" an array of nodes.
        assert completion.choices[0].finish_reason == "length" and text.startswith("{")
        assert set(re.findall(r'"([^"]*)"\s*:', text)) <= {"v", "kids"}
        assert len(re.findall(r'"v"\s*:', text)) == len(re.findall(r'"v"\s*:\s*-?\d', text)) > 1
        assert len(re.findall(r'"kids"\s*:', text)) == len(re.findall(r'"kids"\s*:\s*\[', text)) >= 1


def test_required_tool_call_has_arguments_valid_against_the_schema(client: openai.OpenAI, model: str) -> None:
    raw = client.chat.completions.with_raw_response.create(model=model, messages=ASK, tools=[WEATHER], tool_choice="required", max_tokens=60)
    validate("CreateChatCompletionResponse", raw.http_response.json())
    choice = raw.parse().choices[0]
    assert choice.finish_reason == "tool_calls"
    call = choice.message.tool_calls[0]
    assert call.id.startswith("call_") and call.type == "function"
    assert call.function.name == "get_weather"
    jsonschema.validate(json.loads(call.function.arguments), WEATHER["function"]["parameters"])  # type: ignore[index]


def test_named_tool_choice_streams_tool_call_deltas(client: openai.OpenAI, model: str) -> None:
    with client.chat.completions.stream(
        model=model,
        messages=ASK,
        tools=[WEATHER, {"type": "function", "function": {"name": "noop", "parameters": {"type": "object", "properties": {}}}}],
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
        parallel_tool_calls=False,
        max_tokens=60,
    ) as stream:
        for _ in stream:
            pass
        final = stream.get_final_completion()
    choice = final.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert [c.function.name for c in choice.message.tool_calls] == ["get_weather"]
    jsonschema.validate(json.loads(choice.message.tool_calls[0].function.arguments), WEATHER["function"]["parameters"])  # type: ignore[index]


def test_pydantic_function_tool_and_parse(client: openai.OpenAI, model: str) -> None:
    class GetWeather(BaseModel):
        city: str
        unit: str

    # Seeded: unseeded, the grammar lets the 135M model ramble inside a string past max_tokens now and then.
    completion = client.chat.completions.parse(
        model=model, messages=ASK, tools=[openai.pydantic_function_tool(GetWeather)], tool_choice="required", max_tokens=60, seed=7
    )
    call = completion.choices[0].message.tool_calls[0]
    assert isinstance(call.function.parsed_arguments, GetWeather)


def test_two_turn_tool_conversation(client: openai.OpenAI, model: str) -> None:
    first = client.chat.completions.create(model=model, messages=ASK, tools=[WEATHER], tool_choice="required", max_tokens=60)
    call = first.choices[0].message.tool_calls[0]
    messages = [
        *ASK,
        {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
        {"role": "tool", "tool_call_id": call.id, "content": json.dumps({"temperature": 18, "sky": "clear"})},
    ]
    second = client.chat.completions.create(model=model, messages=messages, tools=[WEATHER], tool_choice="none", max_tokens=20)
    assert second.choices[0].message.content
    assert second.choices[0].message.tool_calls is None


def test_deprecated_functions_map_to_function_call(client: openai.OpenAI, model: str) -> None:
    completion = client.chat.completions.create(
        model=model, messages=ASK, functions=[WEATHER["function"]], function_call={"name": "get_weather"}, max_tokens=60  # type: ignore[list-item]
    )
    choice = completion.choices[0]
    assert choice.finish_reason == "function_call"
    assert choice.message.function_call.name == "get_weather"
    json.loads(choice.message.function_call.arguments)


def test_tool_choice_naming_an_unknown_function_is_400(client: openai.OpenAI, model: str) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(
            model=model, messages=ASK, tools=[WEATHER], tool_choice={"type": "function", "function": {"name": "nope"}}
        )
    assert info.value.param == "tool_choice"
