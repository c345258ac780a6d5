"""Typed errors that know how OpenAI reports them.

Every error a client can see is an `APIError`: it carries the HTTP status, OpenAI's error
`type`, an optional `code` and `param`, and a message written for the caller. One handler in
`modelhost.api` renders them as ``{"error": {"message", "type", "param", "code"}}``.
"""

from __future__ import annotations


class APIError(Exception):
    """An error the client caused or must be told about, rendered in OpenAI's envelope."""

    status: int = 500
    type: str = "server_error"
    code: str | None = None

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code
        self.headers = headers or {}

    def body(self) -> dict[str, object]:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }


class InvalidRequest(APIError):
    """The request body or parameters are not acceptable."""

    status = 400
    type = "invalid_request_error"


class ContextLengthExceeded(InvalidRequest):
    """The prompt does not fit in the model's context window."""

    code = "context_length_exceeded"


class AuthenticationError(APIError):
    """No usable API key was presented, or it does not fit the organization or project asked for."""

    status = 401
    type = "invalid_request_error"


class PermissionDenied(APIError):
    """The key is valid but may not do this."""

    status = 403
    type = "invalid_request_error"


class NotFound(APIError):
    """The thing asked for does not exist, or the caller may not see it (same answer by design)."""

    status = 404
    type = "invalid_request_error"


class ModelNotFound(NotFound):
    """The model does not exist or the caller has no access to it."""

    code = "model_not_found"

    def __init__(self, model: str) -> None:
        super().__init__(
            f"The model `{model}` does not exist or you do not have access to it.",
            param="model",
        )


class ServiceUnavailable(APIError):
    """The server cannot take this request right now; retrying later may work."""

    status = 503
    type = "server_error"
    code = "service_unavailable"


class ServerError(APIError):
    """Something failed inside the server; the message never carries internals."""

    status = 500
    type = "server_error"


class BadGateway(APIError):
    """The model's upstream server failed or answered with something unusable; retrying may work."""

    status = 502
    type = "server_error"
    code = "bad_gateway"


class GatewayTimeout(APIError):
    """The model's upstream server did not answer in time; retrying may work."""

    status = 504
    type = "server_error"
    code = "gateway_timeout"


class UpstreamRequestError(APIError):
    """The model's upstream server refused the request itself (its status and message, internals removed)."""

    type = "invalid_request_error"

    def __init__(self, message: str, *, status: int, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message, param=param, code=code)
        self.status = status


class RouteError(APIError):
    """The URL does not exist, or does not take this method."""

    type = "invalid_request_error"

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status
