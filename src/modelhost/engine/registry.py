"""The models this server answers for, by id or alias. An unknown id is an error, never a fallback.

A model can generate text (it has an `engine`: chat and legacy completions), embed (it has an
`embedder`), or both (a GGUF chat model that also serves /v1/embeddings). Asking a model for what
it cannot do is an error that names the model, as OpenAI answers it. A model the models file
declares narrower `features` for (say, chat without tools) is held to them.

Which models a caller may use is the operator's `ModelAccess` (the models file's organization and
project lists) narrowed by the caller's own model permissions (`Caller.may_use`, set through the
Administration API); a model it may not use is answered exactly like a model that does not exist
(404 `model_not_found`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

from modelhost.engine.base import Engine
from modelhost.engine.embedding.base import Embedder
from modelhost.errors import InvalidRequest, ModelNotFound, NotFound

TEXT = "text"  # chat completions or legacy completions
CHAT = "chat"
COMPLETIONS = "completions"
EMBEDDINGS = "embeddings"
TOOLS = "tools"  # tools / functions in chat requests
JSON_SCHEMA = "json_schema"  # response_format json_object / json_schema
FEATURES = (CHAT, COMPLETIONS, EMBEDDINGS, TOOLS, JSON_SCHEMA)
_GENERATING = frozenset({TEXT, CHAT, COMPLETIONS, TOOLS, JSON_SCHEMA})


@dataclass(frozen=True)
class ServedModel:
    id: str
    created: int
    owned_by: str
    engine: Engine | None  # None: the model cannot generate text (an embedding model)
    fingerprint: str  # system_fingerprint: changes when the weights or the engine change
    embedder: Embedder | None = None  # set: the model serves /v1/embeddings
    aliases: tuple[str, ...] = ()  # other names clients may ask for; responses name `id`
    features: frozenset[str] | None = None  # declared in the models file; None: all its backends can do

    @property
    def capabilities(self) -> frozenset[str]:
        able = set(_GENERATING) if self.engine is not None else set()
        if self.embedder is not None:
            able.add(EMBEDDINGS)
        if self.features is not None:
            able &= self.features | {TEXT}
            if not able & {CHAT, COMPLETIONS}:
                able.discard(TEXT)
        return frozenset(able)


@dataclass(frozen=True)
class ModelAccess:
    """Which models the operator lets each organization and project use, by canonical model id.

    ``ModelAccess({"proj_a": frozenset({"m1"})}, default=None)``: proj_a may use m1 only; every
    other project may use every model (`default` None), or only the models in `default`. A
    project mapped to None may use every model. `organizations` and `organization_default` say
    the same per organization, and a project may use only what both its organization's list and
    its own list allow: a project created later is held to its organization's list.
    """

    projects: Mapping[str, frozenset[str] | None] = field(default_factory=dict)
    default: frozenset[str] | None = None
    organizations: Mapping[str, frozenset[str] | None] = field(default_factory=dict)
    organization_default: frozenset[str] | None = None

    def ceiling(self, organization_id: str | None, project_id: str) -> frozenset[str] | None:
        """The models the operator lets the project use; None: every model, present and future."""
        project = self.projects[project_id] if project_id in self.projects else self.default
        if organization_id is None:
            return project
        organization = (
            self.organizations[organization_id] if organization_id in self.organizations else self.organization_default
        )
        if project is None or organization is None:
            return project if organization is None else organization
        return project & organization

    def allows(self, project_id: str, model_id: str, organization_id: str | None = None) -> bool:
        allowed = self.ceiling(organization_id, project_id)
        return allowed is None or model_id in allowed


class Caller(Protocol):
    """Who asks for a model (an `auth.Principal`): its organization, project and own model permissions."""

    @property
    def organization_id(self) -> str: ...

    @property
    def project_id(self) -> str: ...

    def may_use(self, model_id: str) -> bool: ...


class ModelRegistry:
    """``registry.get("smollm2-135m-instruct", caller=who) -> ServedModel``; raises `ModelNotFound` otherwise.

    `get` returns only a model that can do `capability` (text generation unless asked otherwise;
    None for any model, as /v1/models does), so a generating endpoint can always use `.engine`.
    `caller` is who asks (None only for the operator's own use): a model it may not use is not found.
    """

    def __init__(self, models: list[ServedModel], access: ModelAccess | None = None) -> None:
        self._models = {m.id: m for m in models}
        assert len(self._models) == len(models), "model ids must be unique"
        self._names: dict[str, ServedModel] = {}
        for model in models:
            for name in (model.id, *model.aliases):
                assert name not in self._names, f"model name {name!r} is used twice"
                self._names[name] = model
        self.access = access or ModelAccess()

    def get(self, model_id: str, capability: str | None = TEXT, *, caller: Caller | None) -> ServedModel:
        model = self._names.get(model_id)
        if model is None or (caller is not None and not self._allows(caller, model.id)):
            raise ModelNotFound(model_id)
        if capability is not None and capability not in model.capabilities:
            raise _unsupported(model, model_id, capability)
        return model

    def all(self) -> list[ServedModel]:
        return list(self._models.values())

    def visible(self, caller: Caller) -> list[ServedModel]:
        """The models `caller` may use, in configuration order."""
        return [m for m in self._models.values() if self._allows(caller, m.id)]

    def _allows(self, caller: Caller, model_id: str) -> bool:
        # The operator's lists are the ceiling; the caller's own permissions can only narrow them.
        return self.access.allows(caller.project_id, model_id, caller.organization_id) and caller.may_use(model_id)

    def permitted(self, name: str, *, organization_id: str, project_id: str) -> str | None:
        """The id of the model `name` names if the operator lets the project use it; else None, as for no model."""
        model = self._names.get(name)
        if model is None or not self.access.allows(project_id, model.id, organization_id):
            return None
        return model.id

    def operator_allows(self, organization_id: str, project_id: str) -> list[str] | None:
        """The ids the operator lets the project use, in configuration order; None: every model, also future ones."""
        ceiling = self.access.ceiling(organization_id, project_id)
        return None if ceiling is None else [m for m in self._models if m in ceiling]

    async def start(self) -> None:
        for model in self._models.values():
            if model.engine is not None:
                await model.engine.start()
            if model.embedder is not None:
                await model.embedder.start()

    async def stop(self) -> None:
        # Embedders first: a GGUF embedder's context uses the weights its chat engine loaded.
        for model in self._models.values():
            if model.embedder is not None:
                await model.embedder.stop()
        for model in self._models.values():
            if model.engine is not None:
                await model.engine.stop()


def _unsupported(model: ServedModel, name: str, capability: str) -> Exception:
    if capability in (TEXT, CHAT, COMPLETIONS) and model.engine is None:
        # OpenAI answers a chat request for a non-chat model with 404 (invalid_request_error, param model).
        return NotFound(
            f"The model `{name}` is an embedding model and is not supported by this endpoint: "
            "use it with v1/embeddings, or pick a chat model from v1/models.",
            param="model",
        )
    if capability == COMPLETIONS:
        return NotFound(
            f"The model `{name}` is a chat model and is not supported in the v1/completions endpoint: "
            "use v1/chat/completions.",
            param="model",
        )
    if capability == CHAT:
        return NotFound(
            f"The model `{name}` is not a chat model and is not supported in the v1/chat/completions "
            "endpoint: use v1/completions.",
            param="model",
        )
    return InvalidRequest(
        f"The model `{name}` does not support {capability}: pick another model from v1/models.",
        param="model",
    )
