"""`/v1/models` and the deprecated `/v1/engines` that openai<1.0 and openai@3 clients still call.

Each lists the models the caller's project may use, aliases included (as OpenAI lists `gpt-4o`
beside the dated model it points to); a model outside the project's allow-list is not found.
"""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request

from modelhost.api.deps import app_state, principal
from modelhost.auth import Principal
from modelhost.engine.registry import ServedModel
from modelhost.protocol.common import Engine, EngineList, Model, ModelList

router = APIRouter(dependencies=[Depends(principal)])


def _named(request: Request, who: Principal) -> list[tuple[str, ServedModel]]:
    """(name, model) for every name the caller may use: each model's id, then its aliases."""
    return [(name, m) for m in app_state(request).registry.visible(who) for name in (m.id, *m.aliases)]


def _model(name: str, served: ServedModel) -> Model:
    return Model(id=name, created=served.created, owned_by=served.owned_by)


@router.get("/v1/models", response_model=ModelList)
async def list_models(request: Request, who: Principal = Depends(principal)) -> ModelList:
    return ModelList(data=[_model(name, m) for name, m in _named(request, who)])


@router.get("/v1/models/{model:path}", response_model=Model)
async def retrieve_model(model: str, request: Request, who: Principal = Depends(principal)) -> Model:
    return _model(model, app_state(request).registry.get(model, capability=None, caller=who))


def _engine(name: str, served: ServedModel) -> Engine:
    return Engine(id=name, created=served.created, owner=served.owned_by)


@router.get("/v1/engines", response_model=EngineList, deprecated=True)
async def list_engines(request: Request, who: Principal = Depends(principal)) -> EngineList:
    return EngineList(data=[_engine(name, m) for name, m in _named(request, who)])


@router.get("/v1/engines/{engine_id:path}", response_model=Engine, deprecated=True)
async def retrieve_engine(engine_id: str, request: Request, who: Principal = Depends(principal)) -> Engine:
    return _engine(engine_id, app_state(request).registry.get(engine_id, capability=None, caller=who))
