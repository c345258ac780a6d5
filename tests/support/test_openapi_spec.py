"""Tests for the OpenAI-spec validation helper (``openapi_spec``).

Assertions about what is required or nullable follow the vendored spec
(``spec/openai-openapi/openapi.yaml``, pinned in the repository), not the live API.
"""

from __future__ import annotations

import copy
import hashlib
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator

from . import openapi_spec
from .openapi_spec import (
    SPEC_ENV_VAR,
    errors,
    json_schema,
    openapi_to_json_schema,
    schema_names,
    spec_path,
    validate,
    validator,
)


def _chat_completion() -> dict[str, Any]:
    """A non-streaming chat completion as OpenAI returns it."""
    return {
        "id": "chatcmpl-abc123",
        "object": "chat.completion",
        "created": 1_741_569_952,
        "model": "gpt-4.1-2025-04-14",
        "system_fingerprint": "fp_mh_0001",
        "service_tier": "default",
        "choices": [
            {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": "Hello! How can I help?",
                    "refusal": None,
                    "annotations": [],
                },
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": {
            "prompt_tokens": 19,
            "completion_tokens": 10,
            "total_tokens": 29,
            "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
            "completion_tokens_details": {
                "reasoning_tokens": 0,
                "audio_tokens": 0,
                "accepted_prediction_tokens": 0,
                "rejected_prediction_tokens": 0,
            },
        },
    }


def _chunk(choices: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    """A chat completion stream chunk around ``choices``."""
    return {
        "id": "chatcmpl-abc123",
        "object": "chat.completion.chunk",
        "created": 1_741_569_952,
        "model": "gpt-4.1-2025-04-14",
        "system_fingerprint": "fp_mh_0001",
        "choices": choices,
        **extra,
    }


# --- locating and loading the spec -------------------------------------------


def test_default_spec_is_the_copy_pinned_inside_the_repository(monkeypatch: pytest.MonkeyPatch) -> None:
    """A fresh clone anywhere runs its tests: nothing outside the checkout is read (issue #13, point 6)."""
    monkeypatch.delenv(SPEC_ENV_VAR, raising=False)
    repository = Path(openapi_spec.__file__).resolve().parents[2]
    assert (repository / "pyproject.toml").is_file()
    assert spec_path() == repository / "spec" / "openai-openapi" / "openapi.yaml"
    assert spec_path().is_file()
    digest = hashlib.sha256(spec_path().read_bytes()).hexdigest()
    assert digest in (spec_path().parent / "README.md").read_text(), "the README names the pinned file's sha256"


def test_env_var_overrides_spec_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = tmp_path / "mini.yaml"
    spec.write_text(
        "openapi: 3.1.0\n"
        "components:\n"
        "  schemas:\n"
        "    Thing:\n"
        "      type: object\n"
        "      required: [name]\n"
        "      properties:\n"
        "        name: {type: string, nullable: true}\n"
    )
    monkeypatch.setenv(SPEC_ENV_VAR, str(spec))
    assert spec_path() == spec.resolve()
    assert schema_names() == {"Thing"}
    validate("Thing", {"name": None})
    with pytest.raises(AssertionError, match=r"\$\.name: 1 is not of type"):
        validate("Thing", {"name": 1})


def test_missing_spec_names_the_override_variable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(SPEC_ENV_VAR, str(tmp_path / "absent.yaml"))
    with pytest.raises(FileNotFoundError, match=SPEC_ENV_VAR):
        schema_names()


def test_schema_names_lists_components() -> None:
    names = schema_names()
    assert {"CreateChatCompletionResponse", "CreateChatCompletionStreamResponse", "ListModelsResponse"} <= names


def test_unknown_schema_name_raises_key_error_with_suggestion() -> None:
    with pytest.raises(KeyError, match="CreateChatCompletionResponse"):
        validate("CreateChatCompletionRespons", {})


def test_validators_are_cached() -> None:
    assert validator("ListModelsResponse") is validator("ListModelsResponse")


# --- chat completions ----------------------------------------------------------


def test_chat_completion_response_validates() -> None:
    validate("CreateChatCompletionResponse", _chat_completion())


def test_chat_completion_bad_finish_reason_reports_its_path() -> None:
    body = _chat_completion()
    body["choices"][0]["finish_reason"] = "banana"
    with pytest.raises(AssertionError) as caught:
        validate("CreateChatCompletionResponse", body)
    message = str(caught.value)
    assert "CreateChatCompletionResponse" in message
    assert "$.choices[0].finish_reason: 'banana' is not one of" in message


def test_chat_completion_without_choices_is_rejected() -> None:
    body = _chat_completion()
    del body["choices"]
    with pytest.raises(AssertionError, match=r"\$: 'choices' is a required property"):
        validate("CreateChatCompletionResponse", body)


def test_chat_completion_nullable_fields_accept_null() -> None:
    # refusal, content, logprobs and service_tier are nullable in the spec.
    body = _chat_completion()
    body["service_tier"] = None
    body["choices"][0]["message"].update(content=None, refusal=None)
    body["choices"][0]["logprobs"] = None
    validate("CreateChatCompletionResponse", body)


def test_chat_completion_required_nullable_fields_must_be_present() -> None:
    # message.refusal and choice.logprobs are required even though nullable.
    body = _chat_completion()
    del body["choices"][0]["message"]["refusal"]
    del body["choices"][0]["logprobs"]
    problems = errors("CreateChatCompletionResponse", body)
    assert "$.choices[0]: 'logprobs' is a required property" in problems
    assert "$.choices[0].message: 'refusal' is a required property" in problems


def test_system_fingerprint_is_not_nullable_in_the_spec() -> None:
    # The spec types it as a plain (deprecated) string: omit it rather than send null.
    body = _chat_completion()
    body["system_fingerprint"] = None
    expected = r"\$\.system_fingerprint: None is not of type 'string'"
    with pytest.raises(AssertionError, match=expected):
        validate("CreateChatCompletionResponse", body)
    del body["system_fingerprint"]
    validate("CreateChatCompletionResponse", body)


def test_stream_chunks_validate() -> None:
    first = _chunk(
        [{"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": None, "finish_reason": None}]
    )
    # finish_reason (nullable enum) and usage (nullable $ref) set to null.
    middle = _chunk([{"index": 0, "delta": {"content": "Hello"}, "finish_reason": None}], usage=None)
    last_choice = _chunk([{"index": 0, "delta": {}, "finish_reason": "stop"}])
    usage_only = _chunk([], usage={"prompt_tokens": 19, "completion_tokens": 10, "total_tokens": 29})
    for chunk in (first, middle, last_choice, usage_only):
        validate("CreateChatCompletionStreamResponse", chunk)


def test_stream_chunk_bad_delta_role_is_rejected() -> None:
    chunk = _chunk([{"index": 0, "delta": {"role": "robot"}, "finish_reason": None}])
    with pytest.raises(AssertionError, match=r"\$\.choices\[0\]\.delta\.role: 'robot' is not one of"):
        validate("CreateChatCompletionStreamResponse", chunk)


# --- models ----------------------------------------------------------------------


def test_list_models_response_validates() -> None:
    validate(
        "ListModelsResponse",
        {"object": "list", "data": [{"id": "m", "object": "model", "created": 1, "owned_by": "x"}]},
    )


def test_error_report_is_capped() -> None:
    body = {"object": "list", "data": [{"id": n} for n in range(15)]}
    with pytest.raises(AssertionError) as caught:
        validate("ListModelsResponse", body)
    lines = str(caught.value).splitlines()
    assert lines[0] == "body does not match OpenAI schema ListModelsResponse (60 errors):"
    assert len(lines) == 1 + openapi_spec.MAX_REPORTED_ERRORS + 1
    assert lines[-1] == "  ... and 50 more"
    assert lines[1].startswith("  $.data[0]")


# --- the OpenAPI -> JSON Schema rewrite, on the real spec -------------------------


def test_allof_nullable_idiom_admits_null() -> None:
    # CreateRunRequest.truncation_strategy is allOf: [$ref TruncationObject, {nullable: true}].
    validate("CreateRunRequest", {"assistant_id": "asst_1", "truncation_strategy": None, "tool_choice": None})
    validate("CreateRunRequest", {"assistant_id": "asst_1", "truncation_strategy": {"type": "auto"}})
    with pytest.raises(AssertionError, match=r"\$\.truncation_strategy"):
        validate("CreateRunRequest", {"assistant_id": "asst_1", "truncation_strategy": {"type": "sometimes"}})


def test_boolean_exclusive_minimum_is_honoured() -> None:
    # learning_rate_multiplier: oneOf ["auto", {type: number, minimum: 0, exclusiveMinimum: true}].
    for good in ("auto", 0.5, 2):
        validate("FineTuneSupervisedHyperparameters", {"learning_rate_multiplier": good})
    with pytest.raises(AssertionError, match=r"\$\.learning_rate_multiplier"):
        validate("FineTuneSupervisedHyperparameters", {"learning_rate_multiplier": 0})


def test_recursive_ref_resolves_to_the_compound_filter() -> None:
    leaf = {"type": "eq", "key": "author", "value": "x"}
    validate("CompoundFilter", {"type": "and", "filters": [leaf, {"type": "or", "filters": [leaf]}]})
    with pytest.raises(AssertionError, match=r"\$\.filters\[1\]"):
        validate("CompoundFilter", {"type": "and", "filters": [leaf, {"type": "or", "filters": "nope"}]})


def test_rewritten_schemas_are_valid_2020_12_and_refs_resolve() -> None:
    names = schema_names()
    rewritten = {name: json_schema(name) for name in names}
    Draft202012Validator.check_schema({"$defs": rewritten})

    targets: set[str] = set()

    def collect(node: object) -> None:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str):
                targets.add(ref)
            for value in node.values():
                collect(value)
        elif isinstance(node, list):
            for value in node:
                collect(value)

    collect(rewritten)
    prefix = "#/components/schemas/"
    assert all(ref.startswith(prefix) for ref in targets), sorted(targets)
    assert {ref.removeprefix(prefix) for ref in targets} <= names


# --- the rewrite, on small schemas ------------------------------------------------


def test_rewrite_nullable_type_and_enum() -> None:
    schema = {"type": "string", "enum": ["a", "b"], "nullable": True}
    assert openapi_to_json_schema(schema) == {"type": ["string", "null"], "enum": ["a", "b", None]}
    listed = {"type": ["string", "integer"], "nullable": True}
    assert openapi_to_json_schema(listed) == {"type": ["string", "integer", "null"]}


def test_rewrite_nullable_ref_and_combinators_wrap_in_anyof() -> None:
    for schema in (
        {"$ref": "#/components/schemas/X", "nullable": True},
        {"oneOf": [{"type": "string"}], "nullable": True},
        {"allOf": [{"$ref": "#/components/schemas/X"}, {"nullable": True, "description": "d"}]},
    ):
        rewritten = openapi_to_json_schema(schema)
        assert rewritten["anyOf"][1] == {"type": "null"}, schema
        assert "nullable" not in str(rewritten), schema


def test_rewrite_drops_nullable_false_and_keeps_other_keywords() -> None:
    schema = {
        "type": "object",
        "nullable": False,
        "additionalProperties": True,
        "discriminator": {"propertyName": "type"},
        "x-oaiTypeLabel": "map",
        "properties": {"nullable": {"type": "boolean"}, "type": {"type": "string", "nullable": True}},
    }
    original = copy.deepcopy(schema)
    rewritten = openapi_to_json_schema(schema)
    assert schema == original  # input untouched
    assert rewritten == {
        "type": "object",
        "additionalProperties": True,
        "discriminator": {"propertyName": "type"},
        "x-oaiTypeLabel": "map",
        "properties": {"nullable": {"type": "boolean"}, "type": {"type": ["string", "null"]}},
    }


def test_rewrite_boolean_exclusive_bounds_and_recursive_ref() -> None:
    bounds = {"minimum": 0, "exclusiveMinimum": True, "maximum": 2, "exclusiveMaximum": False}
    assert openapi_to_json_schema(bounds) == {"exclusiveMinimum": 0, "maximum": 2}
    recursive = {"$recursiveAnchor": True, "items": {"oneOf": [{"type": "string"}, {"$recursiveRef": "#"}]}}
    assert openapi_to_json_schema(recursive, "#/components/schemas/F") == {
        "items": {"oneOf": [{"type": "string"}, {"$ref": "#/components/schemas/F"}]}
    }
