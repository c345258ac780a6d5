"""Integers in query strings (a stream's `starting_after`, a page's `limit`) are ASCII decimals or
a 400 naming the parameter: never a 500, never another script's digits read as a number."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from serverproc import ServerProcess

ODD = ["--1", "²", "٣", "１", "1" * 13, "-2"]
ROUTES = [
    ("/responses/resp_unknown?stream=true&starting_after={}", "starting_after"),
    ("/responses/resp_unknown/input_items?limit={}", "limit"),
    ("/conversations/conv_unknown/items?limit={}", "limit"),
    ("/chat/completions?limit={}", "limit"),
    ("/chat/completions/chatcmpl-unknown/messages?limit={}", "limit"),
]


@pytest.mark.parametrize(("route", "param"), ROUTES)
def test_a_query_integer_that_is_not_ascii_decimal_is_a_400(server: ServerProcess, project_key: Any, route: str, param: str) -> None:
    for value in ODD:
        response = httpx.get(
            f"{server.base_url}{route.format(value)}", headers={"Authorization": f"Bearer {project_key.secret}"}, timeout=30
        )
        assert response.status_code == 400, (value, response.status_code, response.text)
        assert response.json()["error"]["param"] == param, value
