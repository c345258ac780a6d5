"""An S3-compatible server on loopback for the S3 blob store's tests: moto's server (`python -m moto.server`).

moto (installed by the `test` extra, `moto[s3,server]`) implements S3's API, multipart uploads and
their abort included, so the S3 store is tested over real HTTP with the real AWS SDK and nothing
outside the machine. It runs in a process of its own, started from an empty directory: in this
process the test tree's `responses` package (tests/responses/) would shadow the `responses`
library that moto imports. `s3_server()` starts one on a free 127.0.0.1 port, puts dummy
credentials in the environment (the SDK's standard variables, which a modelhost server started by
the test inherits) and makes a fresh bucket.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from serverproc import free_port

CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "modelhost-test",
    "AWS_SECRET_ACCESS_KEY": "modelhost-test-secret",
    "AWS_DEFAULT_REGION": "us-east-1",
}


@dataclass(frozen=True)
class S3Server:
    endpoint_url: str
    bucket: str
    client: Any  # a boto3 S3 client on the same server, to look behind the store's back

    def keys(self) -> list[str]:
        listed = self.client.list_objects_v2(Bucket=self.bucket)
        return [item["Key"] for item in listed.get("Contents", [])]

    def unfinished_uploads(self) -> list[str]:
        listed = self.client.list_multipart_uploads(Bucket=self.bucket)
        return [item["Key"] for item in listed.get("Uploads", [])]


def _wait_listening(port: int, proc: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"moto's server exited with status {proc.returncode}")
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise RuntimeError(f"moto's server did not listen on {port} within {timeout:g} s")


@contextlib.contextmanager
def s3_server() -> Iterator[S3Server]:
    """A loopback S3 server with one empty bucket; the test is skipped if moto[server] is not installed."""
    if importlib.util.find_spec("moto") is None or importlib.util.find_spec("flask") is None:
        pytest.skip("moto[server] (the test extra) is not installed")
    import boto3

    saved = {name: os.environ.get(name) for name in CREDENTIALS}
    os.environ.update(CREDENTIALS)
    port = free_port()
    with tempfile.TemporaryDirectory() as empty:
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            cwd=empty,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            stdin=subprocess.DEVNULL,
        )
        try:
            _wait_listening(port, proc)
            endpoint = f"http://127.0.0.1:{port}"
            client = boto3.session.Session().client("s3", endpoint_url=endpoint, region_name="us-east-1")
            bucket = f"modelhost-{uuid.uuid4().hex[:12]}"
            client.create_bucket(Bucket=bucket)
            yield S3Server(endpoint, bucket, client)
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            for name, value in saved.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value
