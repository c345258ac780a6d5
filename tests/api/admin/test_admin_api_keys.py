"""`/v1/organization/admin_api_keys`: the secret once, redacted after, revocation everywhere."""

from __future__ import annotations

import time

import openai
import pytest

from serverproc import ServerProcess
from support.openapi_spec import validate

from .conftest import AdminKey


def test_create_list_retrieve_delete(admin: openai.OpenAI, admin_key: AdminKey, server: ServerProcess, admin_http) -> None:  # type: ignore[no-untyped-def]
    keys = admin.admin.organization.admin_api_keys
    created = admin_http("POST", "/organization/admin_api_keys", json={"name": "rotating"})
    assert created.status_code == 200, created.text
    body = created.json()
    validate("AdminApiKeyCreateResponse", body)
    secret = body["value"]
    assert secret.startswith("sk-admin-") and body["owner"]["id"] == admin_key.owner and body["owner"]["role"] == "owner"

    listed = admin_http("GET", "/organization/admin_api_keys", params={"limit": 100})
    validate("ApiKeyList", listed.json())
    mine = [k for k in listed.json()["data"] if k["id"] == body["id"]]
    assert mine and "value" not in mine[0] and secret not in listed.text
    assert mine[0]["redacted_value"].endswith(secret[-4:])

    fetched = admin_http("GET", f"/organization/admin_api_keys/{body['id']}")
    validate("AdminApiKey", fetched.json())

    fresh = openai.OpenAI(base_url=server.base_url, admin_api_key=secret, max_retries=0)
    assert fresh.admin.organization.admin_api_keys.retrieve(body["id"]).id == body["id"]
    deleted = keys.delete(body["id"])
    assert deleted.deleted and deleted.id == body["id"] and deleted.object == "organization.admin_api_key.deleted"
    time.sleep(0.6)  # the test server trusts a verified key for 0.5 s
    with pytest.raises(openai.AuthenticationError):
        fresh.admin.organization.admin_api_keys.list()
    with pytest.raises(openai.NotFoundError):
        keys.retrieve(body["id"])


def test_pagination_walks_every_key_once_in_both_orders(admin: openai.OpenAI) -> None:
    keys = admin.admin.organization.admin_api_keys
    made = [keys.create(name=f"page-{i}").id for i in range(3)]
    ascending = [k.id for k in keys.list(limit=1)]  # the SDK follows `after` page by page
    assert len(ascending) == len(set(ascending)) and ascending[-3:] == made
    descending = [k.id for k in keys.list(limit=2, order="desc")]
    assert descending == list(reversed(ascending))
    for key_id in made:
        keys.delete(key_id)


def test_keys_of_another_organization_are_404(admin: openai.OpenAI, other_admin_key: AdminKey) -> None:
    with pytest.raises(openai.NotFoundError):
        admin.admin.organization.admin_api_keys.retrieve(other_admin_key.id)
    with pytest.raises(openai.NotFoundError):
        admin.admin.organization.admin_api_keys.delete(other_admin_key.id)


@pytest.mark.parametrize(
    ("method", "kwargs", "param"),
    [
        ("GET", {"params": {"limit": 0}}, "limit"),
        ("GET", {"params": {"limit": 101}}, "limit"),
        ("GET", {"params": {"limit": "many"}}, "limit"),
        ("GET", {"params": {"order": "sideways"}}, "order"),
        ("GET", {"params": {"after": "key_doesnotexist"}}, "after"),
        ("POST", {"json": {}}, "name"),
        ("POST", {"json": {"name": "x" * 300}}, "name"),
        ("POST", {"json": {"name": "x", "expires_in_seconds": 0}}, "expires_in_seconds"),
    ],
)
def test_bad_parameters_are_400_naming_them(admin_http, method: str, kwargs: dict, param: str) -> None:  # type: ignore[no-untyped-def,type-arg]
    response = admin_http(method, "/organization/admin_api_keys", **kwargs)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == param
