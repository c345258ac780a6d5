"""The models this server answers for, by id or alias. An unknown id is an error, never a fallback.

A model can generate text (it has an `engine`: chat and legacy completions), embed (it has an
`embedder`), or both (a GGUF chat model that also serves /v1/embeddings). Asking a model for what
it cannot do is an error that names the model, as OpenAI answers it. A model the models file
declares narrower `features` for (say, chat without tools) is held to them.

Which projects may use which models is `ModelAccess`: a model a project may not use is answered
exactly like a model that does not exist (404 `model_not_found`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

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
    """Which models each project may use, by canonical model id.

    ``ModelAccess({"proj_a": frozenset({"m1"})}, default=None)``: proj_a may use m1 only; every
    other project may use every model (`default` None), or only the models in `default`. A
    project mapped to None may use every model.
    """

    projects: Mapping[str, frozenset[str] | None] = field(default_factory=dict)
    default: frozenset[str] | None = None

    def allows(self, project_id: str, model_id: str) -> bool:
        allowed = self.projects[project_id] if project_id in self.projects else self.default
        return allowed is None or model_id in allowed


class ModelRegistry:
    """``registry.get("smollm2-135m-instruct", project=p) -> ServedModel``; raises `ModelNotFound` otherwise.

    `get` returns only a model that can do `capability` (text generation unless asked otherwise;
    None for any model, as /v1/models does), so a generating endpoint can always use `.engine`.
    `project` is the caller's project (None only for the operator's own use): a model that project
    may not use is not found.
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

    def get(self, model_id: str, capability: str | None = TEXT, *, project: str | None) -> ServedModel:
        model = self._names.get(model_id)
        if model is None or (project is not None and not self.access.allows(project, model.id)):
            raise ModelNotFound(model_id)
        if capability is not None and capability not in model.capabilities:
            raise _unsupported(model, model_id, capability)
        return model

    def all(self) -> list[ServedModel]:
        return list(self._models.values())

    def visible(self, project: str) -> list[ServedModel]:
        """The models `project` may use, in configuration order."""
        return [m for m in self._models.values() if self.access.allows(project, m.id)]

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
