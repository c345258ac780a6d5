"""An engine error that reaches the app (one raised while a request is planned, such as a busy
schema compiler) is answered as `pipeline.engine_errors` says, in OpenAI's envelope."""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.testclient import TestClient

from modelhost.api.errors import install_error_handlers
from modelhost.engine.grammar_errors import GrammarCompilerBusy
from modelhost.engine.upstream_errors import UpstreamRejected


def app_raising(error: Exception) -> TestClient:
    app = FastAPI()
    install_error_handlers(app)

    @app.post("/v1/chat/completions")
    async def plan() -> None:
        raise error

    return TestClient(app, raise_server_exceptions=False)


def test_a_busy_schema_compiler_while_planning_is_a_503_overloaded_with_retry_after() -> None:
    response = app_raising(GrammarCompilerBusy("no compile worker was free in time", per_organization=False)).post("/v1/chat/completions")
    assert response.status_code == 503 and response.headers["retry-after"] == "1"
    assert response.json() == {
        "error": {
            "message": "The server is compiling too many schemas at once; retry shortly.",
            "type": "server_error",
            "param": None,
            "code": "overloaded",
        }
    }


def test_an_upstream_rejection_keeps_its_status_param_and_code() -> None:
    rejected = UpstreamRejected("upstream HTTP 422", status=422, upstream_message="Bad 'n'.", param="n", code="invalid_value")
    response = app_raising(rejected).post("/v1/chat/completions")
    assert response.status_code == 400
    assert response.json()["error"] == {"message": "Bad 'n'.", "type": "invalid_request_error", "param": "n", "code": "invalid_value"}
