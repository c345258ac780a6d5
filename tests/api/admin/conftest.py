"""Admin keys for two organizations, and the official SDK's admin client on each."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import httpx
import openai
import pytest

from serverproc import ServerProcess


@dataclass(frozen=True)
class AdminKey:
    id: str
    secret: str
    organization: str
    owner: str


def _admin_key(server: ServerProcess, *args: str) -> AdminKey:
    data = server.cli("keys", "create", "--kind", "admin", *args)
    return AdminKey(str(data["id"]), str(data["secret"]), str(data["organization"]), str(data["user"]))


@pytest.fixture(scope="session")
def admin_key(server: ServerProcess) -> AdminKey:
    """An admin key of the first owner's organization (the one the other tests' keys belong to)."""
    return _admin_key(server, "--name", "tests-admin")


@pytest.fixture(scope="session")
def other_admin_key(server: ServerProcess) -> AdminKey:
    """An admin key of a second organization, for isolation tests."""
    org = server.cli("orgs", "create", "Admin tests elsewhere")
    return _admin_key(server, "--org", str(org["id"]), "--name", "tests-admin-elsewhere")


def _sdk(server: ServerProcess, key: AdminKey) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.base_url, admin_api_key=key.secret, api_key="unused", max_retries=0)


@pytest.fixture(scope="session")
def admin(server: ServerProcess, admin_key: AdminKey) -> openai.OpenAI:
    return _sdk(server, admin_key)


@pytest.fixture(scope="session")
def other_admin(server: ServerProcess, other_admin_key: AdminKey) -> openai.OpenAI:
    return _sdk(server, other_admin_key)


@pytest.fixture(scope="session")
def admin_http(server: ServerProcess, admin_key: AdminKey) -> Callable[..., httpx.Response]:
    """``admin_http("GET", "/organization/projects", params=…)``: raw HTTP with the admin key."""

    def send(method: str, path: str, **kwargs: object) -> httpx.Response:
        headers = {"Authorization": f"Bearer {admin_key.secret}"}
        return httpx.request(method, server.base_url + path, headers=headers, timeout=30, **kwargs)  # type: ignore[arg-type]

    return send
