"""modelhost in front of real OpenAI-compatible servers on loopback: a pool of two modelhost
replicas (bundled model, one shared store) and llama-cpp-python's own server, beside a local
llama.cpp model, all from one models file. Responses and streamed chunks validate against
OpenAI's spec, usage is the upstream's (or counted here when it reports none) and lands in the
ledger, aliases resolve, and per-project allow-lists change with a SIGHUP reload."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from serverproc import MODEL, ServerProcess, free_port, wait_for_entry
from support.openapi_spec import validate
from support.peer_server import LlamaCppServer, PeerUnavailable, ensure_peer_venv
from support.proxy import model_ids, proxy, reload_models, replica_ledger, replicas, sse_events

HI = [{"role": "user", "content": "Say hi."}]
PEER_PROBLEM: list[str] = []
EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "models-pool.toml"


@pytest.fixture(scope="module")
def pool_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("upstream-pool")


@pytest.fixture(scope="module")
def pool(pool_dir: Path) -> Iterator[list[ServerProcess]]:
    servers = replicas(pool_dir, 2)
    yield servers
    for server in servers:
        server.stop()


@pytest.fixture(scope="module")
def peer(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LlamaCppServer | None]:
    """llama-cpp-python's server on the bundled GGUF (installed once into a cached venv), or None."""
    from modelhost.engine.llama_model import bundled_model_path

    try:
        python = ensure_peer_venv()
    except PeerUnavailable as exc:
        PEER_PROBLEM.append(f"llama-cpp-python's server could not be installed here: {exc}")
        yield None
        return
    home = tmp_path_factory.mktemp("peer")
    server = LlamaCppServer(python, free_port(), bundled_model_path(), MODEL, home / "server.log").start()
    yield server
    server.stop()


def models(pool: list[ServerProcess], peer: LlamaCppServer | None) -> str:
    """examples/models-pool.toml with this test's loopback servers in place of its addresses."""
    peer_url = peer.base_url if peer is not None else f"http://127.0.0.1:{free_port()}/v1"  # listed, unreachable
    text = EXAMPLE.read_text()
    for example, real in [
        ("http://10.0.0.11:8000/v1", pool[0].base_url),
        ("http://10.0.0.12:8000/v1", pool[1].base_url),
        ("http://10.0.0.13:8000/v1", peer_url),
    ]:
        assert example in text
        text = text.replace(example, real)
    return text


@pytest.fixture(scope="module")
def upstream_key(pool: list[ServerProcess]) -> str:
    return str(pool[0].cli("keys", "create", "--name", "modelhost-proxy")["secret"])


@pytest.fixture(scope="module")
def front(tmp_path_factory: pytest.TempPathFactory, pool: list[ServerProcess], peer: LlamaCppServer | None, upstream_key: str) -> Iterator[ServerProcess]:
    server = proxy(tmp_path_factory.mktemp("proxy"), models(pool, peer), env={"POOL_API_KEY": upstream_key})
    yield server
    server.stop()


@pytest.fixture(scope="module")
def key(front: ServerProcess) -> dict[str, object]:
    return front.cli("keys", "create", "--name", "proxy-tests")


@pytest.fixture(scope="module")
def client(front: ServerProcess, key: dict[str, object]) -> openai.OpenAI:
    return openai.OpenAI(base_url=front.base_url, api_key=str(key["secret"]), max_retries=0)


def stream_events(front: ServerProcess, secret: str, path: str, body: dict[str, object]) -> list[str]:
    with httpx.stream("POST", f"{front.base_url}/{path}", headers={"Authorization": f"Bearer {secret}"}, json=body, timeout=120) as response:
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"].startswith("text/event-stream")
        return list(sse_events(response))


def test_models_lists_upstream_and_local_models_with_their_aliases(client: openai.OpenAI) -> None:
    listed = client.models.with_raw_response.list()
    validate("ListModelsResponse", listed.http_response.json())
    names = [m.id for m in listed.parse().data]
    assert names[:2] == ["smol-pool", "pool"] and names[-2:] == ["smol-local", "local"]
    assert "smol-peer" in names
    assert client.models.retrieve("pool").owned_by == "team-gpu"


def test_chat_through_the_pool_is_billed_with_the_upstreams_usage(client: openai.OpenAI, front: ServerProcess, pool_dir: Path) -> None:
    raw = client.chat.completions.with_raw_response.create(model="pool", messages=HI, max_tokens=3, temperature=0)  # type: ignore[arg-type]
    validate("CreateChatCompletionResponse", raw.http_response.json())
    completion = raw.parse()
    assert completion.model == "smol-pool" and completion.choices[0].finish_reason in ("stop", "length")
    assert completion.usage is not None and completion.usage.completion_tokens <= 3
    entry = wait_for_entry(front, completion.id)
    assert (entry.model, entry.outcome) == ("smol-pool", "completed")
    assert (entry.prompt_tokens, entry.completion_tokens) == (completion.usage.prompt_tokens, completion.usage.completion_tokens)
    upstream_rows = [e for e in replica_ledger(pool_dir).entries() if e.outcome == "completed"]
    assert any((e.prompt_tokens, e.completion_tokens) == (entry.prompt_tokens, entry.completion_tokens) for e in upstream_rows)


def test_streams_through_the_pool_are_openais_format(front: ServerProcess, key: dict[str, object]) -> None:
    body = {"model": "pool", "messages": HI, "max_tokens": 3, "stream": True, "stream_options": {"include_usage": True}, "logprobs": True, "top_logprobs": 2}
    events = stream_events(front, str(key["secret"]), "chat/completions", body)
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    for chunk in chunks:
        validate("CreateChatCompletionStreamResponse", chunk)
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert len({c["id"] for c in chunks}) == 1 and {c["model"] for c in chunks} == {"smol-pool"}
    tokens = [t for c in chunks if c["choices"] and c["choices"][0]["logprobs"] for t in c["choices"][0]["logprobs"]["content"]]
    assert 1 <= len(tokens) <= 3 and all(len(t["top_logprobs"]) == 2 for t in tokens)
    usage = chunks[-1]["usage"]
    assert chunks[-1]["choices"] == [] and usage["completion_tokens"] == len(tokens)
    entry = wait_for_entry(front, chunks[0]["id"])
    assert entry.completion_tokens == usage["completion_tokens"] and entry.prompt_tokens == usage["prompt_tokens"]


def test_legacy_completions_through_the_pool(front: ServerProcess, key: dict[str, object], client: openai.OpenAI) -> None:
    raw = client.completions.with_raw_response.create(model="pool", prompt=["Once upon", "A cat"], max_tokens=2, n=2, echo=True, logprobs=1)
    body = raw.http_response.json()
    validate("CreateCompletionResponse", body)
    assert len(body["choices"]) == 4
    assert body["choices"][0]["text"].startswith("Once upon") and body["choices"][2]["text"].startswith("A cat")
    events = stream_events(front, str(key["secret"]), "completions", {"model": "pool", "prompt": "Once upon", "max_tokens": 2, "stream": True})
    assert events[-1] == "[DONE]"
    for event in events[:-1]:
        chunk = json.loads(event)
        # As tests/api/test_completions.py: the spec's one schema for chunks and bodies describes only
        # the final finish_reason; OpenAI streams null until a choice ends.
        for choice in chunk["choices"]:
            assert choice["finish_reason"] in (None, "stop", "length")
            choice["finish_reason"] = choice["finish_reason"] or "length"
        validate("CreateCompletionResponse", chunk)


def test_tool_calls_made_by_the_upstream_reach_the_client(client: openai.OpenAI) -> None:
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]
    raw = client.chat.completions.with_raw_response.create(
        model="pool", messages=[{"role": "user", "content": "Weather in Paris?"}], tools=tools, tool_choice="required", max_tokens=40, temperature=0  # type: ignore[arg-type]
    )
    validate("CreateChatCompletionResponse", raw.http_response.json())
    choice = raw.parse().choices[0]
    if choice.finish_reason == "length":
        pytest.skip("the 135M model used all 40 tokens before closing its call")
    assert choice.finish_reason == "tool_calls" and choice.message.tool_calls
    call = choice.message.tool_calls[0]
    assert call.function.name == "get_weather" and "city" in json.loads(call.function.arguments)


def test_llama_cpp_pythons_server_streams_through_in_openais_format(front: ServerProcess, key: dict[str, object], peer: LlamaCppServer | None) -> None:
    if peer is None:
        pytest.skip(PEER_PROBLEM[0])
    body = {"model": "smol-peer", "messages": HI, "max_tokens": 3, "stream": True, "stream_options": {"include_usage": True}}
    events = stream_events(front, str(key["secret"]), "chat/completions", body)
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    for chunk in chunks:
        validate("CreateChatCompletionStreamResponse", chunk)
    assert {c["model"] for c in chunks} == {"smol-peer"}
    # llama-cpp-python's server reports no usage in streams: counted here, a chunk per token.
    usage = chunks[-1]["usage"]
    assert 1 <= usage["completion_tokens"] <= 3 and usage["prompt_tokens"] >= 1
    entry = wait_for_entry(front, chunks[0]["id"])
    assert (entry.completion_tokens, entry.outcome) == (usage["completion_tokens"], "completed")


def test_llama_cpp_pythons_server_answers_whole_completions(client: openai.OpenAI, peer: LlamaCppServer | None) -> None:
    if peer is None:
        pytest.skip(PEER_PROBLEM[0])
    raw = client.chat.completions.with_raw_response.create(model="smol-peer", messages=HI, max_tokens=2)  # type: ignore[arg-type]
    validate("CreateChatCompletionResponse", raw.http_response.json())
    assert raw.parse().choices[0].finish_reason in ("stop", "length")


def test_a_local_model_from_the_models_file_serves_beside_the_upstreams(client: openai.OpenAI, front: ServerProcess) -> None:
    completion = client.chat.completions.create(model="local", messages=HI, max_tokens=2)  # type: ignore[arg-type]
    assert completion.model == "smol-local" and completion.usage is not None and completion.usage.completion_tokens <= 2
    with pytest.raises(openai.BadRequestError, match="does not support tools"):
        client.chat.completions.create(model="local", messages=HI, max_tokens=2, tools=[{"type": "function", "function": {"name": "f"}}])  # type: ignore[arg-type,list-item]


def test_project_allow_lists_follow_a_reload(front: ServerProcess, key: dict[str, object], pool: list[ServerProcess], peer: LlamaCppServer | None) -> None:
    project = front.cli("projects", "create", "restricted", "--org", str(key["organization"]))
    restricted = str(front.cli("keys", "create", "--project", str(project["id"]), "--name", "restricted")["secret"])
    everyone = str(key["secret"])
    assert "smol-local" in model_ids(front, restricted)
    allow = f'\n[projects."{project["id"]}"]\nmodels = ["pool"]\n'
    try:
        reload_models(front, models(pool, peer) + allow, lambda: model_ids(front, restricted) == ["smol-pool", "pool"])
        assert "smol-local" in model_ids(front, everyone)  # projects not listed keep every model
        client = openai.OpenAI(base_url=front.base_url, api_key=restricted, max_retries=0)
        with pytest.raises(openai.NotFoundError) as caught:
            client.chat.completions.create(model="local", messages=HI, max_tokens=2)  # type: ignore[arg-type]
        assert caught.value.code == "model_not_found"
        with pytest.raises(openai.NotFoundError):
            client.models.retrieve("smol-local")
        assert client.chat.completions.create(model="smol-pool", messages=HI, max_tokens=2).model == "smol-pool"  # type: ignore[arg-type]
    finally:
        reload_models(front, models(pool, peer), lambda: "smol-local" in model_ids(front, restricted))


def test_no_upstream_url_or_key_reaches_the_log(front: ServerProcess, pool: list[ServerProcess], upstream_key: str) -> None:
    log = front.log_path.read_text(errors="replace") if front.log_path else ""
    for server in pool:
        assert f"127.0.0.1:{server.port}" not in log
    assert upstream_key not in log
