"""The errors of the structured-output path: a schema or grammar that cannot be enforced, and a
schema compiler too busy to take one more."""

from modelhost.engine.base import EngineError


class GrammarError(ValueError):
    """The schema cannot be enforced; the message names the feature or limit."""


class GrammarCompilerBusy(EngineError):
    """No compile worker was free in time: the server's load, not the schema's fault.

    `per_organization`: the caller's organization already has its share of compiles running or
    waiting (`grammar_compiler.TENANT_QUEUE`), else every worker stayed busy for the whole wait."""

    def __init__(self, message: str, *, per_organization: bool) -> None:
        super().__init__(message)
        self.per_organization = per_organization
