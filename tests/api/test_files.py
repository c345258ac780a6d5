"""The Files API through the official Python SDK against a real server (no generation).

The server keeps files in its data directory (the default directory store) with small limits, so
the limit tests move kilobytes: files up to 64 KiB, 200 KB of files per project. Every object and
list is validated against the spec's schemas; every refusal is checked to leave no blob on disk.
"""

from __future__ import annotations

import hashlib
import json
import socket
import time
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from typing import Any

import httpx
import openai
import pytest
from sqlalchemy.orm import Session, sessionmaker

from blobs.s3server import s3_server
from modelhost.config import Settings
from modelhost.store import open_engine, retention, session_factory
from serverproc import ServerProcess
from support.openapi_spec import validate

MAX_FILE = 64 * 1024
STORAGE = 200_000
SERVER_ENV = {
    "MODELHOST_FILES_MAX_BYTES": str(MAX_FILE),
    "MODELHOST_PROJECT_STORAGE_LIMIT_BYTES": str(STORAGE),
    "MODELHOST_STORED_OBJECTS_SWEEP_SECONDS": "0.5",
    "MODELHOST_EMBEDDING_MODEL_ENABLED": "false",
    "MODELHOST_CHAT_MODEL_EMBEDDINGS": "false",
}


def batch_line(custom_id: str, *, model: str = "smollm2-135m-instruct", url: str = "/v1/chat/completions") -> dict[str, Any]:
    body = {"model": model, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4}
    return {"custom_id": custom_id, "method": "POST", "url": url, "body": body}


def jsonl(*lines: object) -> bytes:
    return b"".join((json.dumps(line) if not isinstance(line, (bytes, str)) else str(line)).encode() + b"\n" for line in lines if line is not None)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    proc = ServerProcess(tmp_path_factory.mktemp("files"), env_overrides=SERVER_ENV).start()
    yield proc
    proc.stop()


def sdk(server: ServerProcess, *args: str) -> openai.OpenAI:
    key = server.cli("keys", "create", *args)
    return openai.OpenAI(base_url=server.base_url, api_key=str(key["secret"]), max_retries=0)


def new_project_client(server: ServerProcess, name: str) -> openai.OpenAI:
    organization = str(server.cli("keys", "create", "--name", f"probe-{name}")["organization"])
    project = str(server.cli("projects", "create", name, "--org", organization)["id"])
    return sdk(server, "--project", project)


@pytest.fixture(scope="module")
def client(server: ServerProcess) -> openai.OpenAI:
    return sdk(server)


@pytest.fixture(scope="module")
def sessions(server: ServerProcess) -> Iterator[sessionmaker[Session]]:
    engine = open_engine(Settings(home=server.home).resolved_database_url())
    yield session_factory(engine)
    engine.dispose()


def blobs_on_disk(server: ServerProcess) -> set[str]:
    root = server.home / "files"
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()} if root.exists() else set()


def error_of(call: Any) -> openai.APIStatusError:
    with pytest.raises(openai.APIStatusError) as caught:
        call()
    return caught.value


def message_of(error: openai.APIStatusError) -> str:
    return str(error.body["message"])  # type: ignore[index]


def wait_until(check: Any, what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.2)
    pytest.fail(f"{what} did not happen within {timeout:g} s")


def test_a_file_is_uploaded_listed_read_and_deleted(server: ServerProcess, client: openai.OpenAI) -> None:
    content = jsonl(batch_line("a"), batch_line("b"))
    raw = client.files.with_raw_response.create(file=("requests.jsonl", content), purpose="batch")
    made = raw.http_response.json()
    validate("OpenAIFile", made)
    assert made["id"].startswith("file-") and made["object"] == "file"
    assert (made["bytes"], made["filename"], made["purpose"], made["status"]) == (len(content), "requests.jsonl", "batch", "processed")
    assert made["expires_at"] - made["created_at"] == 30 * 24 * 3600  # a batch file's default, as OpenAI's
    assert f"files/{made['id']}" in blobs_on_disk(server)

    got = client.files.with_raw_response.retrieve(made["id"]).http_response.json()
    assert got == made
    listed = client.files.with_raw_response.list().http_response.json()
    validate("ListFilesResponse", listed)
    assert made["id"] in [f["id"] for f in listed["data"]]
    assert client.files.content(made["id"]).read() == content
    raw_content = client.files.with_raw_response.content(made["id"]).http_response
    assert raw_content.headers["content-type"] == "application/octet-stream"
    assert raw_content.headers["content-length"] == str(len(content))

    deleted = client.files.with_raw_response.delete(made["id"]).http_response.json()
    validate("DeleteFileResponse", deleted)
    assert deleted == {"id": made["id"], "object": "file", "deleted": True}
    for call in (
        lambda: client.files.retrieve(made["id"]),
        lambda: client.files.content(made["id"]),
        lambda: client.files.delete(made["id"]),
    ):
        assert error_of(call).status_code == 404
    assert f"files/{made['id']}" not in blobs_on_disk(server)


def test_files_of_other_purposes_keep_their_bytes_and_do_not_expire(client: openai.OpenAI) -> None:
    data = bytes(range(256)) * 10
    made = client.files.create(file=("blob.bin", data), purpose="user_data")
    assert made.expires_at is None and made.bytes == len(data)
    assert client.files.content(made.id).read() == data
    later = client.files.create(file=("soon.txt", b"short-lived"), purpose="assistants", expires_after={"anchor": "created_at", "seconds": 3600})
    assert later.expires_at == later.created_at + 3600


def test_purpose_may_come_after_the_file_and_a_bad_one_keeps_nothing(server: ServerProcess, client: openai.OpenAI) -> None:
    auth = {"Authorization": f"Bearer {client.api_key}"}
    before = blobs_on_disk(server)
    # httpx sends `files` parts after `data` fields; a hand-made body puts the file first.
    body = (
        b"--XyZ\r\nContent-Disposition: form-data; name=\"file\"; filename=\"late.txt\"\r\n"
        b"Content-Type: text/plain\r\n\r\nhello\r\n"
        b"--XyZ\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\nuser_data\r\n--XyZ--\r\n"
    )
    headers = {**auth, "Content-Type": "multipart/form-data; boundary=XyZ"}
    made = httpx.post(f"{server.base_url}/files", content=body, headers=headers)
    assert made.status_code == 200, made.text
    assert (made.json()["filename"], made.json()["purpose"], made.json()["bytes"]) == ("late.txt", "user_data", 5)
    assert client.files.content(made.json()["id"]).read() == b"hello"

    bad = httpx.post(f"{server.base_url}/files", content=body.replace(b"user_data", b"fine-tuning"), headers=headers)
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "purpose"
    missing = httpx.post(f"{server.base_url}/files", content=body.split(b"--XyZ\r\nContent-Disposition: form-data; name=\"purpose\"")[0] + b"--XyZ--\r\n", headers=headers)
    assert missing.status_code == 400 and missing.json()["error"]["param"] == "purpose"
    cut = httpx.post(f"{server.base_url}/files", content=body[:60], headers=headers)  # ends inside the file
    assert cut.status_code == 400 and "multipart" in cut.json()["error"]["message"]
    not_multipart = httpx.post(f"{server.base_url}/files", json={"purpose": "batch"}, headers=auth)
    assert not_multipart.status_code == 400
    assert blobs_on_disk(server) - before == {f"files/{made.json()['id']}"}


def test_a_file_over_the_limit_is_a_413_and_leaves_nothing(server: ServerProcess, client: openai.OpenAI) -> None:
    before = blobs_on_disk(server)
    streamed_past = error_of(lambda: client.files.create(file=("big.bin", b"x" * (MAX_FILE + 1)), purpose="user_data"))
    assert streamed_past.status_code == 413
    assert streamed_past.body == {  # type: ignore[comparison-overlap]
        "message": f"File too large: the limit is {MAX_FILE} bytes.",
        "type": "invalid_request_error",
        "param": "file",
        "code": "file_too_large",
    }
    declared_past = error_of(lambda: client.files.create(file=("huge.bin", b"x" * (4 * MAX_FILE)), purpose="user_data"))
    assert declared_past.status_code == 413  # refused from its Content-Length, before a byte was read
    exact = client.files.create(file=("exact.bin", b"y" * MAX_FILE), purpose="user_data")
    assert exact.bytes == MAX_FILE
    assert blobs_on_disk(server) - before == {f"files/{exact.id}"}
    client.files.delete(exact.id)


def test_a_chunked_body_past_the_limit_is_a_413_too(server: ServerProcess, client: openai.OpenAI) -> None:
    before = blobs_on_disk(server)

    def body() -> Iterator[bytes]:  # no Content-Length: sent chunked
        yield b"--B\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\nuser_data\r\n"
        yield b"--B\r\nContent-Disposition: form-data; name=\"file\"; filename=\"c.bin\"\r\n\r\n"
        for _ in range(8):
            yield b"z" * (MAX_FILE // 4)
        yield b"\r\n--B--\r\n"

    headers = {"Authorization": f"Bearer {client.api_key}", "Content-Type": "multipart/form-data; boundary=B"}
    answer = httpx.post(f"{server.base_url}/files", content=body(), headers=headers)
    assert answer.status_code == 413 and answer.json()["error"]["code"] == "file_too_large"
    assert blobs_on_disk(server) == before


def test_a_client_gone_mid_file_leaves_nothing(server: ServerProcess, client: openai.OpenAI) -> None:
    before = blobs_on_disk(server)
    head = (
        f"POST /v1/files HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {client.api_key}\r\n"
        "Content-Type: multipart/form-data; boundary=B\r\nContent-Length: 60000\r\n\r\n"
    ).encode()
    part = b'--B\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nuser_data\r\n--B\r\nContent-Disposition: form-data; name="file"; filename="gone.bin"\r\n\r\n'
    with socket.create_connection(("127.0.0.1", server.port)) as connection:
        connection.sendall(head + part + b"g" * 20_000)  # a third of what it declared, then it goes
        wait_until(lambda: any(".partial-" in name for name in blobs_on_disk(server) - before), "the file being written")
    wait_until(lambda: blobs_on_disk(server) == before, "the half-written file being removed")
    assert client.files.list(purpose="user_data").data is not None  # the server goes on


def test_a_projects_files_stay_within_its_storage_limit(server: ServerProcess) -> None:
    project = new_project_client(server, "Storage")
    kept = [project.files.create(file=(f"{i}.bin", b"s" * 60_000), purpose="user_data") for i in range(3)]
    refused = error_of(lambda: project.files.create(file=("3.bin", b"s" * 60_000), purpose="user_data"))
    assert refused.status_code == 400 and refused.code == "storage_limit_exceeded"
    assert "200000" in message_of(refused)
    assert len(project.files.list().data) == 3
    upload = error_of(lambda: project.uploads.create(bytes=30_000, filename="u.bin", mime_type="application/octet-stream", purpose="user_data"))
    assert upload.code == "storage_limit_exceeded"  # an upload's declared bytes are reserved at once
    project.files.delete(kept[0].id)
    assert project.files.create(file=("again.bin", b"s" * 60_000), purpose="user_data").bytes == 60_000


def test_other_projects_and_organizations_get_the_unknown_id_404(server: ServerProcess, client: openai.OpenAI) -> None:
    mine = client.files.create(file=("private.txt", b"secret"), purpose="user_data")
    unknown = error_of(lambda: client.files.retrieve("file-nosuchthing"))
    assert unknown.status_code == 404
    assert unknown.body == {"message": "No such File object: file-nosuchthing", "type": "invalid_request_error", "param": "id", "code": None}  # type: ignore[comparison-overlap]
    sibling = new_project_client(server, "Sibling")
    elsewhere = sdk(server, "--org", str(server.cli("orgs", "create", "Elsewhere")["id"]))
    for stranger in (sibling, elsewhere):
        assert mine.id not in [f.id for f in stranger.files.list()]
        for call in (
            lambda: stranger.files.retrieve(mine.id),
            lambda: stranger.files.content(mine.id),
            lambda: stranger.files.delete(mine.id),
        ):
            refused = error_of(call)
            assert refused.status_code == 404
            assert refused.body == {**unknown.body, "message": f"No such File object: {mine.id}"}  # type: ignore[dict-item]
    assert client.files.content(mine.id).read() == b"secret"


def test_listing_pages_orders_and_filters_by_purpose(server: ServerProcess) -> None:
    project = new_project_client(server, "Listing")
    made = [project.files.create(file=(f"{i}.txt", b"x"), purpose="user_data" if i % 2 else "assistants").id for i in range(5)]
    newest_first = [f.id for f in project.files.list()]
    assert newest_first == list(reversed(made))  # newest first by default
    page = project.files.with_raw_response.list(limit=2, order="asc").http_response.json()
    assert [f["id"] for f in page["data"]] == made[:2] and page["has_more"] is True
    assert page["first_id"] == made[0] and page["last_id"] == made[1]
    rest = project.files.with_raw_response.list(limit=10, order="asc", after=made[1]).http_response.json()
    assert [f["id"] for f in rest["data"]] == made[2:] and rest["has_more"] is False
    assert [f.id for f in project.files.list(purpose="user_data", order="asc")] == [made[1], made[3]]
    assert [f.id for f in project.files.list(order="asc", limit=2)] == made  # the SDK's pager follows after=last_id
    bad = error_of(lambda: project.files.list(limit=0))
    assert bad.status_code == 400 and bad.body["param"] == "limit"  # type: ignore[index]
    unknown_cursor = error_of(lambda: project.files.list(after="file-nosuchthing"))
    assert unknown_cursor.status_code == 400


@pytest.mark.parametrize(
    ("lines", "line", "words"),
    [
        ([batch_line("a"), "{not json"], 2, "not valid JSON"),
        ([batch_line("a"), [1, 2]], 2, "not a JSON object"),
        ([{**batch_line("a"), "custom_id": ""}], 1, "custom_id"),
        ([batch_line("a"), {k: v for k, v in batch_line("b").items() if k != "method"}], 2, "method"),
        ([batch_line("a"), batch_line("b", url="/v1/images/generations")], 2, "url"),
        ([batch_line("a"), {**batch_line("b"), "body": "hi"}], 2, "body"),
        ([batch_line("a"), {**batch_line("b"), "body": {"messages": []}}], 2, "body.model"),
        ([batch_line("a"), "", batch_line("b"), batch_line("a")], 4, "custom_id"),  # blank lines keep their number
        ([batch_line("a"), batch_line("b", url="/v1/embeddings")], 2, "same `url`"),
        ([batch_line("a"), batch_line("b", model="other")], 2, "same `body.model`"),
        ([batch_line("a"), '{"custom_id": "x", "method": "POST", "url": "/v1/chat/completions", "body": {"model": NaN}}'], 2, "JSON"),
    ],
)
def test_a_batch_file_is_checked_at_upload_with_the_line_named(
    server: ServerProcess, client: openai.OpenAI, lines: list[object], line: int, words: str
) -> None:
    before = blobs_on_disk(server)
    refused = error_of(lambda: client.files.create(file=("bad.jsonl", jsonl(*lines)), purpose="batch"))
    assert refused.status_code == 400 and refused.body["type"] == "invalid_request_error"  # type: ignore[index]
    assert f"line {line}:" in message_of(refused) and words in message_of(refused)
    assert blobs_on_disk(server) == before


def test_an_empty_batch_file_and_a_good_one_with_blank_lines(client: openai.OpenAI) -> None:
    empty = error_of(lambda: client.files.create(file=("empty.jsonl", b"\n\n"), purpose="batch"))
    assert empty.status_code == 400 and "no requests" in message_of(empty)
    good = client.files.create(file=("ok.jsonl", b"\n" + jsonl(batch_line("a"), "", batch_line("b"))[:-1]), purpose="batch")
    assert good.purpose == "batch"


def test_expired_files_are_a_404_and_their_blobs_are_swept(server: ServerProcess, client: openai.OpenAI, sessions: sessionmaker[Session]) -> None:
    made = client.files.create(file=("hour.txt", b"for an hour"), purpose="user_data", expires_after={"anchor": "created_at", "seconds": 3600})
    assert f"files/{made.id}" in blobs_on_disk(server)
    # Time moves past the hour: the retention sweep expires it, the server's files sweep removes its blob.
    assert retention.purge_expired(sessions, datetime.now(timezone.utc) + timedelta(hours=1, seconds=1))["files"] >= 1
    assert error_of(lambda: client.files.retrieve(made.id)).status_code == 404
    wait_until(lambda: f"files/{made.id}" not in blobs_on_disk(server), "the expired file's blob being removed")


def test_bad_expires_after_is_a_400(client: openai.OpenAI) -> None:
    refused = error_of(lambda: client.files.create(file=("x.txt", b"x"), purpose="user_data", expires_after={"anchor": "created_at", "seconds": 60}))
    assert refused.status_code == 400 and refused.body["param"] == "expires_after"  # type: ignore[index]


def test_md5_of_content_matches(client: openai.OpenAI) -> None:
    data = b"0123456789" * 1000
    made = client.files.create(file=("digits.txt", data), purpose="user_data")
    assert hashlib.md5(client.files.content(made.id).read()).hexdigest() == hashlib.md5(data).hexdigest()



def test_a_server_keeps_files_in_an_s3_bucket(tmp_path_factory: pytest.TempPathFactory) -> None:
    """The same API over the S3 store, against moto's S3 server on loopback (credentials from AWS_* variables)."""
    with s3_server() as s3:
        env = {
            **SERVER_ENV,
            "MODELHOST_FILES_STORE": "s3",
            "MODELHOST_FILES_S3_BUCKET": s3.bucket,
            "MODELHOST_FILES_S3_ENDPOINT_URL": s3.endpoint_url,
            "MODELHOST_FILES_S3_PREFIX": "mh/",
        }
        proc = ServerProcess(tmp_path_factory.mktemp("files-s3"), env_overrides=env).start()
        try:
            client = sdk(proc)
            made = client.files.create(file=("in.jsonl", jsonl(batch_line("a"))), purpose="batch")
            assert s3.keys() == [f"mh/files/{made.id}"]
            assert client.files.content(made.id).read() == jsonl(batch_line("a"))
            too_big = error_of(lambda: client.files.create(file=("big.bin", b"b" * (MAX_FILE + 1)), purpose="user_data"))
            assert too_big.status_code == 413
            upload = client.uploads.create(bytes=6, filename="u.txt", mime_type="text/plain", purpose="user_data")
            parts = [client.uploads.parts.create(upload.id, data=data).id for data in (b"abc", b"def")]
            done = client.uploads.complete(upload.id, part_ids=parts[::-1])
            assert done.file is not None and client.files.content(done.file.id).read() == b"defabc"
            client.files.delete(made.id)
            wait_until(lambda: s3.keys() == [f"mh/files/{done.file.id}"], "only the completed upload's file being left")  # type: ignore[union-attr]
            assert s3.unfinished_uploads() == []
        finally:
            proc.stop()
