"""`/v1/organization/usage/*` and `/v1/organization/costs` agree with the usage ledger."""

from __future__ import annotations

import time
from collections import Counter

import openai
import pytest

from serverproc import ServerProcess, wait_for_entry
from support.openapi_spec import validate

MINUTE = 60


@pytest.fixture(scope="module")
def generated(admin: openai.OpenAI, server: ServerProcess, model: str) -> dict[str, object]:
    """Two tiny chat completions in a project of their own, and their ledger rows."""
    project = admin.admin.organization.projects.create(name="Usage API")
    key = server.cli("keys", "create", "--project", project.id, "--name", "usage-api")
    client = openai.OpenAI(base_url=server.base_url, api_key=str(key["secret"]), max_retries=0)
    ids = [
        client.chat.completions.create(model=model, messages=[{"role": "user", "content": text}], max_tokens=2).id
        for text in ("Hi", "Say a word")
    ]
    entries = [wait_for_entry(server, request_id) for request_id in ids]
    start = min(int(e.created_at.timestamp()) for e in entries) // MINUTE * MINUTE - 2 * MINUTE
    return {"project": project.id, "key": key["id"], "entries": entries, "start": start}


def test_minute_buckets_match_the_ledger(admin: openai.OpenAI, admin_http, generated: dict, model: str) -> None:  # type: ignore[no-untyped-def,type-arg]
    start, entries = generated["start"], generated["entries"]
    response = admin_http(
        "GET", "/organization/usage/completions",
        params={"start_time": start, "bucket_width": "1m", "project_ids[]": generated["project"],
                "group_by[]": ["project_id", "model", "api_key_id", "user_id"]},
    )
    assert response.status_code == 200, response.text
    body = response.json()
    validate("UsageResponse", body)
    assert body["data"][0]["start_time"] == start
    assert all(b["end_time"] - b["start_time"] <= MINUTE for b in body["data"])

    expected: Counter[tuple[int, str]] = Counter()
    for e in entries:
        bucket = start + (int(e.created_at.timestamp()) - start) // MINUTE * MINUTE
        expected[(bucket, "input")] += e.prompt_tokens
        expected[(bucket, "output")] += e.completion_tokens
        expected[(bucket, "requests")] += 1
    seen: Counter[tuple[int, str]] = Counter()
    for bucket in body["data"]:
        for result in bucket["results"]:
            assert (result["project_id"], result["model"], result["api_key_id"]) == (generated["project"], model, generated["key"])
            assert result["user_id"] == entries[0].user_id
            seen[(bucket["start_time"], "input")] += result["input_tokens"]
            seen[(bucket["start_time"], "output")] += result["output_tokens"]
            seen[(bucket["start_time"], "requests")] += result["num_model_requests"]
    assert seen == expected

    # The SDK sends arrays as `project_ids[]`; plain repeated `project_ids` works the same.
    sdk = admin.admin.organization.usage.completions(start_time=start, bucket_width="1h", project_ids=[generated["project"]])
    plain = admin_http("GET", "/organization/usage/completions",
                       params={"start_time": start, "bucket_width": "1h", "project_ids": generated["project"]}).json()
    totals = [(r["input_tokens"], r["output_tokens"], r["num_model_requests"]) for b in plain["data"] for r in b["results"]]
    assert totals == [(sum(e.prompt_tokens for e in entries), sum(e.completion_tokens for e in entries), 2)]
    assert [(r.input_tokens, r.num_model_requests) for b in sdk.data for r in b.results] == [(totals[0][0], 2)]


def test_pages_of_buckets(admin_http, generated: dict) -> None:  # type: ignore[no-untyped-def,type-arg]
    params = {"start_time": generated["start"], "end_time": generated["start"] + 5 * MINUTE, "bucket_width": "1m", "limit": 2}
    first = admin_http("GET", "/organization/usage/completions", params=params).json()
    assert len(first["data"]) == 2 and first["has_more"] and first["next_page"]
    second = admin_http("GET", "/organization/usage/completions", params={**params, "page": first["next_page"]}).json()
    third = admin_http("GET", "/organization/usage/completions", params={**params, "page": second["next_page"]}).json()
    starts = [b["start_time"] for page in (first, second, third) for b in page["data"]]
    assert starts == [generated["start"] + i * MINUTE for i in range(5)] and not third["has_more"]


def test_embeddings_and_costs(admin: openai.OpenAI, admin_http, generated: dict) -> None:  # type: ignore[no-untyped-def,type-arg]
    embeddings = admin_http("GET", "/organization/usage/embeddings",
                            params={"start_time": generated["start"], "project_ids[]": generated["project"]}).json()
    validate("UsageResponse", embeddings)
    assert [r for b in embeddings["data"] for r in b["results"]] == []

    costs = admin_http("GET", "/organization/costs",
                       params={"start_time": generated["start"], "group_by[]": ["project_id", "line_item"],
                               "project_ids[]": generated["project"]}).json()
    validate("UsageResponse", costs)
    results = [r for b in costs["data"] for r in b["results"]]
    assert {r["line_item"].split(", ")[1] for r in results} == {"input", "output"}
    assert all(r["project_id"] == generated["project"] and r["amount"] == {"value": 0.0, "currency": "usd"} for r in results)
    assert sum(r["quantity"] for r in results) == sum(e.prompt_tokens + e.completion_tokens for e in generated["entries"])
    page = admin.admin.organization.usage.costs(start_time=generated["start"])
    assert page.object == "page"


def test_usage_of_another_organization_is_invisible(other_admin: openai.OpenAI, generated: dict) -> None:  # type: ignore[type-arg]
    theirs = other_admin.admin.organization.usage.completions(
        start_time=generated["start"], bucket_width="1h", project_ids=[generated["project"]]
    )
    assert [r for b in theirs.data for r in b.results] == []
    everything = other_admin.admin.organization.usage.completions(start_time=generated["start"], group_by=["project_id"])
    assert generated["project"] not in {r.project_id for b in everything.data for r in b.results}


@pytest.mark.parametrize(
    ("path", "params", "param"),
    [
        ("/organization/usage/completions", {}, "start_time"),
        ("/organization/usage/completions", {"start_time": "yesterday"}, "start_time"),
        ("/organization/usage/completions", {"start_time": -5}, "start_time"),
        ("/organization/usage/completions", {"start_time": 10**15}, "start_time"),
        ("/organization/usage/completions", {"start_time": 0, "bucket_width": "2h"}, "bucket_width"),
        ("/organization/usage/completions", {"start_time": 0, "group_by[]": "color"}, "group_by"),
        ("/organization/usage/completions", {"start_time": 0, "group_by": "color"}, "group_by"),
        ("/organization/usage/completions", {"start_time": 0, "bucket_width": "1m", "limit": 1441}, "limit"),
        ("/organization/usage/completions", {"start_time": 100, "end_time": 50}, "end_time"),
        ("/organization/usage/completions", {"start_time": 0, "page": "page_garbage"}, "page"),
        ("/organization/usage/embeddings", {"start_time": 0, "group_by[]": "batch"}, "group_by"),
        ("/organization/costs", {"start_time": 0, "bucket_width": "1h"}, "bucket_width"),
        ("/organization/costs", {"start_time": 0, "limit": 181}, "limit"),
        ("/organization/costs", {"start_time": 0, "group_by[]": "model"}, "group_by"),
    ],
)
def test_bad_usage_parameters_are_400_naming_them(admin_http, path: str, params: dict, param: str) -> None:  # type: ignore[no-untyped-def,type-arg]
    response = admin_http("GET", path, params=params)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == param and error["type"] == "invalid_request_error"


def test_a_long_range_answers_one_page_quickly(admin_http) -> None:  # type: ignore[no-untyped-def]
    started = time.monotonic()
    response = admin_http("GET", "/organization/usage/completions", params={"start_time": 0, "bucket_width": "1m", "limit": 1440})
    assert response.status_code == 200 and len(response.json()["data"]) == 1440 and response.json()["has_more"]
    assert time.monotonic() - started < 5
