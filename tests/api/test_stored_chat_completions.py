"""Stored chat completions (`store: true`) through the official Python SDK, against a real server and the bundled model.

Four generations in all (tiny `max_tokens`): one stored whole answer and one stored stream shared by
the module, one with `store` off, one to delete. Every object is validated against the spec.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

import httpx
import openai
import pytest
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from modelhost.config import Settings
from modelhost.store import open_engine, retention, session_factory
from modelhost.store.chat_completions import StoredChatCompletion
from serverproc import MODEL, ServerProcess
from support.openapi_spec import validate

MESSAGES = [
    {"role": "system", "content": "You are brief."},
    {"role": "user", "content": "Say hi"},
    {"role": "assistant", "content": "Hi!"},
    {"role": "user", "content": [{"type": "text", "text": "Again, "}, {"type": "text", "text": "please."}]},
]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    # The retention sweep every half second, so a test can watch the server's own sweep delete.
    proc = ServerProcess(
        tmp_path_factory.mktemp("stored-chat"), env_overrides={"MODELHOST_STORED_OBJECTS_SWEEP_SECONDS": "0.5"}
    ).start()
    yield proc
    proc.stop()


def _client(server: ServerProcess, *args: str) -> openai.OpenAI:
    key = server.cli("keys", "create", *args)
    return openai.OpenAI(base_url=server.base_url, api_key=str(key["secret"]), max_retries=0)


@pytest.fixture(scope="module")
def client(server: ServerProcess) -> openai.OpenAI:
    return _client(server)


@pytest.fixture(scope="module")
def sessions(server: ServerProcess) -> Iterator[sessionmaker[Session]]:
    """The server's store, as an operator's tools would read it."""
    engine = open_engine(Settings(home=server.home).resolved_database_url())
    yield session_factory(engine)
    engine.dispose()


@dataclass(frozen=True)
class Kept:
    whole: str  # a stored whole answer, metadata {"topic": "greeting", "run": "1"}
    streamed: str  # a stored stream, metadata {"topic": "greeting", "run": "2"}
    streamed_text: str
    readable_before_done: bool  # the stream's completion could be read when its usage chunk came


@pytest.fixture(scope="module")
def kept(client: openai.OpenAI) -> Kept:
    whole = client.chat.completions.with_raw_response.create(
        model=MODEL, messages=MESSAGES, max_tokens=4, store=True, metadata={"topic": "greeting", "run": "1"}
    )
    validate("CreateChatCompletionResponse", whole.http_response.json())
    stream = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Count to three"}],
        max_tokens=4,
        store=True,
        metadata={"topic": "greeting", "run": "2"},
        stream=True,
        stream_options={"include_usage": True},
    )
    text, readable = "", False
    for chunk in stream:
        text += "".join(c.delta.content or "" for c in chunk.choices)
        if chunk.usage is not None:  # the last chunk before [DONE]
            readable = client.chat.completions.retrieve(chunk.id).id == chunk.id
    return Kept(whole.parse().id, chunk.id, text, readable)


def _sorted_out(ids: list[str], *wanted: str) -> list[str]:
    return [i for i in ids if i in wanted]


def test_a_stored_completion_reads_back_as_it_was_answered(client: openai.OpenAI, kept: Kept) -> None:
    raw = client.chat.completions.with_raw_response.retrieve(kept.whole)
    body = raw.http_response.json()
    validate("CreateChatCompletionResponse", body)
    assert body["object"] == "chat.completion" and body["model"] == MODEL
    assert body["metadata"] == {"topic": "greeting", "run": "1"}
    completion = raw.parse()
    assert completion.choices[0].message.content and completion.usage and completion.usage.completion_tokens <= 4


def test_a_streamed_completion_is_stored_before_done(client: openai.OpenAI, kept: Kept) -> None:
    assert kept.readable_before_done
    body = client.chat.completions.with_raw_response.retrieve(kept.streamed).http_response.json()
    validate("CreateChatCompletionResponse", body)
    assert body["choices"][0]["message"]["content"] == kept.streamed_text  # what the stream said, whole
    assert body["usage"]["completion_tokens"] <= 4


def test_the_list_filters_by_model_and_metadata_and_pages(client: openai.OpenAI, kept: Kept) -> None:
    raw = client.chat.completions.with_raw_response.list(metadata={"topic": "greeting"})
    body = raw.http_response.json()
    validate("ChatCompletionList", body)
    assert [c["id"] for c in body["data"]] == [kept.whole, kept.streamed] and body["has_more"] is False
    assert [c.id for c in client.chat.completions.list(metadata={"run": "2"})] == [kept.streamed]
    assert [c.id for c in client.chat.completions.list(model="another-model")] == []
    newest = client.chat.completions.list(limit=1, order="desc", metadata={"topic": "greeting"})
    assert [c.id for c in newest.data] == [kept.streamed] and newest.has_more
    assert [c.id for c in newest.get_next_page().data] == [kept.whole]  # the SDK's `after` cursor
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.list(limit=101)
    assert info.value.param == "limit"


def test_the_messages_are_the_request_messages_with_ids(client: openai.OpenAI, kept: Kept) -> None:
    raw = client.chat.completions.messages.with_raw_response.list(kept.whole, limit=3)
    body = raw.http_response.json()
    # The spec types each item as a response message (role `assistant` only); OpenAI, like its own
    # example there, answers each with the role it was sent with. Everything else is checked as written.
    validate("ChatCompletionMessageList", {**body, "data": [{**m, "role": "assistant"} for m in body["data"]]})
    assert [m["id"] for m in body["data"]] == [f"{kept.whole}-{i}" for i in range(3)] and body["has_more"]
    assert [(m["role"], m["content"]) for m in body["data"]] == [(m["role"], m["content"]) for m in MESSAGES[:3]]
    every = list(client.chat.completions.messages.list(kept.whole, limit=3))  # the SDK pages on
    assert [m.id for m in every] == [f"{kept.whole}-{i}" for i in range(4)]
    last = every[-1]
    assert last.content == "Again, please." and [p.text for p in last.content_parts or []] == ["Again, ", "please."]
    newest = client.chat.completions.messages.list(kept.whole, order="desc", limit=1)
    assert [m.id for m in newest.data] == [f"{kept.whole}-3"]


def test_updating_replaces_the_metadata(client: openai.OpenAI, kept: Kept) -> None:
    raw = client.chat.completions.with_raw_response.update(kept.streamed, metadata={"topic": "greeting", "run": "2", "checked": "yes"})
    validate("CreateChatCompletionResponse", raw.http_response.json())
    assert raw.parse().metadata == {"topic": "greeting", "run": "2", "checked": "yes"}
    assert [c.id for c in client.chat.completions.list(metadata={"checked": "yes"})] == [kept.streamed]
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.update(kept.streamed, metadata={f"k{i}": "v" for i in range(17)})
    assert info.value.param == "metadata"


def test_other_projects_and_organizations_get_the_unknown_id_404(server: ServerProcess, client: openai.OpenAI, kept: Kept) -> None:
    organization = str(server.cli("keys", "create", "--name", "probe")["organization"])
    sibling = str(server.cli("projects", "create", "Sibling", "--org", organization)["id"])
    elsewhere = str(server.cli("orgs", "create", "Elsewhere")["id"])
    with pytest.raises(openai.NotFoundError) as unknown:
        client.chat.completions.retrieve("chatcmpl-nosuchthing")
    same_as_unknown = {**unknown.value.body, "message": unknown.value.body["message"].replace("chatcmpl-nosuchthing", kept.whole)}  # type: ignore[index, dict-item]
    for stranger in (_client(server, "--project", sibling), _client(server, "--org", elsewhere)):
        assert [c.id for c in stranger.chat.completions.list()] == []
        for call in (
            lambda: stranger.chat.completions.retrieve(kept.whole),
            lambda: stranger.chat.completions.update(kept.whole, metadata={"x": "y"}),
            lambda: stranger.chat.completions.messages.list(kept.whole),
            lambda: stranger.chat.completions.delete(kept.whole),
        ):
            with pytest.raises(openai.NotFoundError) as info:
                call()
            assert info.value.body == same_as_unknown
    assert client.chat.completions.retrieve(kept.whole).id == kept.whole


def test_without_store_nothing_is_kept(client: openai.OpenAI, sessions: sessionmaker[Session], kept: Kept) -> None:
    unstored = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Hi"}], max_tokens=2)
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.retrieve(unstored.id)
    assert unstored.id not in [c.id for c in client.chat.completions.list()]
    with sessions() as session:
        assert session.get(StoredChatCompletion, unstored.id) is None


def test_a_deleted_completion_is_gone(client: openai.OpenAI) -> None:
    made = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Bye"}], max_tokens=1, store=True)
    raw = client.chat.completions.with_raw_response.delete(made.id)
    validate("ChatCompletionDeleted", raw.http_response.json())
    assert raw.http_response.json() == {"object": "chat.completion.deleted", "id": made.id, "deleted": True}
    for call in (
        lambda: client.chat.completions.retrieve(made.id),
        lambda: client.chat.completions.messages.list(made.id),
        lambda: client.chat.completions.delete(made.id),
    ):
        with pytest.raises(openai.NotFoundError):
            call()


def test_after_the_retention_a_completion_is_a_404_and_a_newer_one_stays(
    client: openai.OpenAI, sessions: sessionmaker[Session], kept: Kept
) -> None:
    with sessions() as session:
        expires = {row.id: row.expires_at for row in session.scalars(select(StoredChatCompletion))}
    older = expires[kept.whole].replace(tzinfo=timezone.utc)
    assert older - datetime.now(timezone.utc) > timedelta(days=29)  # 30 days by default
    # Time moves to the moment the older one's 30 days are up: it is swept, the newer one is not.
    assert retention.purge_expired(sessions, older)["chat_completions"] == 1
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.retrieve(kept.whole)
    assert client.chat.completions.retrieve(kept.streamed).id == kept.streamed


def test_the_servers_own_sweep_deletes_what_expired(client: openai.OpenAI, sessions: sessionmaker[Session], kept: Kept) -> None:
    with sessions() as session:  # its retention ran out a second ago
        session.execute(
            update(StoredChatCompletion)
            .where(StoredChatCompletion.id == kept.streamed)
            .values(expires_at=datetime.now(timezone.utc) - timedelta(seconds=1))
        )
        session.commit()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            client.chat.completions.retrieve(kept.streamed)
        except openai.NotFoundError:
            return
        time.sleep(0.25)
    pytest.fail("the server's sweep (every 0.5 s here) did not delete an expired completion in 10 s")


def test_a_bad_metadata_filter_is_a_400_naming_it(server: ServerProcess, client: openai.OpenAI) -> None:
    response = httpx.get(
        f"{server.base_url}/chat/completions",
        params={f"metadata[{'k' * 65}]": "v"},
        headers={"Authorization": f"Bearer {client.api_key}"},
    )
    assert response.status_code == 400 and response.json()["error"]["param"] == "metadata"
