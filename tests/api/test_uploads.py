"""The Uploads API through the official Python SDK against a real server: an upload made of parts
sent in any order, completed in the order named (MD5 checked), cancelled, or left to expire.

The same small limits as tests/api/test_files.py (files up to 64 KiB); parts' blobs are looked for
on disk after every end an upload can have.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from typing import Any

import openai
import pytest
from sqlalchemy.orm import Session, sessionmaker

from api.test_files import MAX_FILE, SERVER_ENV, batch_line, blobs_on_disk, error_of, jsonl, message_of, new_project_client, sdk, wait_until
from modelhost.config import Settings
from modelhost.store import open_engine, retention, session_factory
from serverproc import ServerProcess
from support.openapi_spec import validate


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    proc = ServerProcess(tmp_path_factory.mktemp("uploads"), env_overrides=SERVER_ENV).start()
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def client(server: ServerProcess) -> openai.OpenAI:
    return sdk(server)


@pytest.fixture(scope="module")
def sessions(server: ServerProcess) -> Iterator[sessionmaker[Session]]:
    engine = open_engine(Settings(home=server.home).resolved_database_url())
    yield session_factory(engine)
    engine.dispose()


def parts_on_disk(server: ServerProcess, upload_id: str) -> set[str]:
    return {name for name in blobs_on_disk(server) if name.startswith(f"uploads/{upload_id}/")}


def new_upload(client: openai.OpenAI, size: int, **extra: Any) -> Any:
    fields = {"filename": "data.jsonl", "mime_type": "text/jsonl", "purpose": "user_data", **extra}
    return client.uploads.create(bytes=size, **fields)


def test_parts_sent_in_any_order_make_the_file_in_the_order_named(server: ServerProcess, client: openai.OpenAI) -> None:
    raw = client.uploads.with_raw_response.create(bytes=15, filename="abc.txt", mime_type="text/plain", purpose="assistants")
    created = raw.http_response.json()
    validate("Upload", created)
    assert created["status"] == "pending" and created["expires_at"] - created["created_at"] == 3600
    assert created["id"].startswith("upload_") and created["file"] is None
    upload_id = created["id"]
    third = client.uploads.parts.with_raw_response.create(upload_id, data=b"ccccc").http_response.json()
    validate("UploadPart", third)
    assert third["object"] == "upload.part" and third["upload_id"] == upload_id
    first = client.uploads.parts.create(upload_id, data=b"aaaaa")
    second = client.uploads.parts.create(upload_id, data=io.BytesIO(b"bbbbb"))
    assert len(parts_on_disk(server, upload_id)) == 3

    done = client.uploads.with_raw_response.complete(
        upload_id, part_ids=[first.id, second.id, third["id"]], md5=hashlib.md5(b"aaaaabbbbbccccc").hexdigest()
    ).http_response.json()
    validate("Upload", done)
    assert done["status"] == "completed"
    file = done["file"]
    validate("OpenAIFile", file)
    assert (file["bytes"], file["filename"], file["purpose"]) == (15, "abc.txt", "assistants")
    assert client.files.content(file["id"]).read() == b"aaaaabbbbbccccc"
    assert client.files.retrieve(file["id"]).id == file["id"]
    wait_until(lambda: not parts_on_disk(server, upload_id), "the completed upload's parts being removed")
    again = error_of(lambda: client.uploads.complete(upload_id, part_ids=[first.id, second.id, third["id"]]))
    assert again.status_code == 400 and "completed" in message_of(again)
    more = error_of(lambda: client.uploads.parts.create(upload_id, data=b"x"))
    assert more.status_code == 400 and "completed" in message_of(more)


def test_the_sdks_chunked_upload_helper(client: openai.OpenAI) -> None:
    data = jsonl(*(batch_line(f"req-{i}") for i in range(100)))
    assert len(data) < MAX_FILE
    upload = client.uploads.upload_file_chunked(
        file=data, filename="batch.jsonl", bytes=len(data), mime_type="text/jsonl", purpose="batch", part_size=4096
    )
    assert upload.status == "completed" and upload.file is not None
    assert upload.file.purpose == "batch" and upload.file.bytes == len(data)
    assert client.files.content(upload.file.id).read() == data


def test_a_wrong_md5_keeps_the_upload_pending_and_makes_no_file(server: ServerProcess, client: openai.OpenAI) -> None:
    upload = new_upload(client, 4)
    part = client.uploads.parts.create(upload.id, data=b"data")
    files_before = {f.id for f in client.files.list()}
    wrong = error_of(lambda: client.uploads.complete(upload.id, part_ids=[part.id], md5="0" * 32))
    assert wrong.status_code == 400 and wrong.body["param"] == "md5"  # type: ignore[index]
    assert hashlib.md5(b"data").hexdigest() in message_of(wrong)
    assert {f.id for f in client.files.list()} == files_before
    assert not [n for n in blobs_on_disk(server) if n.startswith("files/") and n[6:] not in files_before]
    right = client.uploads.complete(upload.id, part_ids=[part.id], md5=hashlib.md5(b"data").hexdigest().upper())
    assert right.status == "completed"


def test_completing_names_each_of_its_own_parts_once_adding_up_to_its_size(server: ServerProcess, client: openai.OpenAI) -> None:
    upload = new_upload(client, 6)
    a = client.uploads.parts.create(upload.id, data=b"abc")
    b = client.uploads.parts.create(upload.id, data=b"def")
    other = new_upload(client, 3)
    foreign = client.uploads.parts.create(other.id, data=b"xyz")
    for part_ids, param in (
        ([a.id, a.id], "part_ids[1]"),
        ([a.id, foreign.id], "part_ids[1]"),
        (["part_nosuchthing"], "part_ids[0]"),
        ([a.id], "part_ids"),
    ):
        refused = error_of(lambda: client.uploads.complete(upload.id, part_ids=part_ids))
        assert refused.status_code == 400 and refused.body["param"] == param, (part_ids, refused.body)  # type: ignore[index]
    done = client.uploads.complete(upload.id, part_ids=[b.id, a.id])
    assert done.file is not None and client.files.content(done.file.id).read() == b"defabc"


def test_parts_may_not_pass_the_declared_size(client: openai.OpenAI) -> None:
    upload = new_upload(client, 5)
    client.uploads.parts.create(upload.id, data=b"1234")
    over = error_of(lambda: client.uploads.parts.create(upload.id, data=b"56"))
    assert over.status_code == 400 and over.body["code"] == "upload_too_large"  # type: ignore[index]
    assert client.uploads.parts.create(upload.id, data=b"5").upload_id == upload.id
    too_big = error_of(lambda: new_upload(client, MAX_FILE + 1))
    assert too_big.status_code == 400 and too_big.body["param"] == "bytes"  # type: ignore[index]


def test_a_batch_upload_is_checked_when_completed(client: openai.OpenAI) -> None:
    data = jsonl(batch_line("a"), batch_line("a"))
    upload = new_upload(client, len(data), purpose="batch")
    part = client.uploads.parts.create(upload.id, data=data)
    refused = error_of(lambda: client.uploads.complete(upload.id, part_ids=[part.id]))
    assert refused.status_code == 400 and "line 2:" in message_of(refused)


def test_a_cancelled_upload_takes_no_more_parts_and_its_parts_are_removed(server: ServerProcess, client: openai.OpenAI) -> None:
    upload = new_upload(client, 10)
    part = client.uploads.parts.create(upload.id, data=b"hello")
    assert parts_on_disk(server, upload.id)
    raw = client.uploads.with_raw_response.cancel(upload.id).http_response.json()
    validate("Upload", raw)
    assert raw["status"] == "cancelled"
    wait_until(lambda: not parts_on_disk(server, upload.id), "the cancelled upload's parts being removed")
    for call in (
        lambda: client.uploads.parts.create(upload.id, data=b"more"),
        lambda: client.uploads.complete(upload.id, part_ids=[part.id]),
        lambda: client.uploads.cancel(upload.id),
    ):
        refused = error_of(call)
        assert refused.status_code == 400 and "cancelled" in message_of(refused)


def test_an_upload_expires_after_its_hour(server: ServerProcess, client: openai.OpenAI, sessions: sessionmaker[Session]) -> None:
    project = new_project_client(server, "Expiring")
    upload = new_upload(project, 60_000)
    part = project.uploads.parts.create(upload.id, data=b"p" * 1000)
    assert parts_on_disk(server, upload.id)
    # Time moves past the hour: the retention sweep expires it (its 60 kB given back), the files sweep removes its part.
    assert retention.purge_expired(sessions, datetime.now(timezone.utc) + timedelta(hours=1, seconds=1))["files"] >= 1
    wait_until(lambda: not parts_on_disk(server, upload.id), "the expired upload's parts being removed")
    refused = error_of(lambda: project.uploads.complete(upload.id, part_ids=[part.id]))
    assert refused.status_code == 400 and "expired" in message_of(refused)
    # 200 kB per project: with the 60 kB reservation given back, three 60 kB uploads fit again.
    for _ in range(3):
        new_upload(project, 60_000)


def test_other_projects_get_the_unknown_upload_404(server: ServerProcess, client: openai.OpenAI) -> None:
    upload = new_upload(client, 3)
    part = client.uploads.parts.create(upload.id, data=b"abc")
    stranger = new_project_client(server, "Stranger")
    for call in (
        lambda: stranger.uploads.parts.create(upload.id, data=b"x"),
        lambda: stranger.uploads.complete(upload.id, part_ids=[part.id]),
        lambda: stranger.uploads.cancel(upload.id),
    ):
        refused = error_of(call)
        assert refused.status_code == 404 and refused.body["message"] == f"No such Upload object: {upload.id}"  # type: ignore[index]
    assert client.uploads.complete(upload.id, part_ids=[part.id]).status == "completed"


def test_a_bad_create_body_is_a_400_naming_the_field(client: openai.OpenAI) -> None:
    for fields, param in (
        ({"bytes": -1}, "bytes"),
        ({"bytes": False}, "bytes"),  # not 0 (found by schemathesis)
        ({"bytes": "3"}, "bytes"),
        ({"purpose": "nothing"}, "purpose"),
        ({"expires_after": {"anchor": "created_at", "seconds": 10}}, "expires_after.seconds"),
    ):
        body: dict[str, Any] = {"bytes": 3, "filename": "a.txt", "mime_type": "text/plain", "purpose": "user_data", **fields}
        refused = error_of(lambda: client.post("/uploads", body=body, cast_to=object))
        assert refused.status_code == 400 and refused.body["param"] == param, json.dumps(refused.body)  # type: ignore[index]
