"""`/v1/models` and the deprecated `/v1/engines` that openai<1.0 and openai@3 clients still call."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request

from modelhost.api.deps import app_state, principal
from modelhost.protocol.common import Engine, EngineList, Model, ModelList

router = APIRouter(dependencies=[Depends(principal)])


def _model(served) -> Model:  # type: ignore[no-untyped-def]
    return Model(id=served.id, created=served.created, owned_by=served.owned_by)


@router.get("/v1/models", response_model=ModelList)
async def list_models(request: Request) -> ModelList:
    return ModelList(data=[_model(m) for m in app_state(request).registry.all()])


@router.get("/v1/models/{model:path}", response_model=Model)
async def retrieve_model(model: str, request: Request) -> Model:
    return _model(app_state(request).registry.get(model))


def _engine(served) -> Engine:  # type: ignore[no-untyped-def]
    return Engine(id=served.id, created=served.created, owner=served.owned_by)


@router.get("/v1/engines", response_model=EngineList, deprecated=True)
async def list_engines(request: Request) -> EngineList:
    return EngineList(data=[_engine(m) for m in app_state(request).registry.all()])


@router.get("/v1/engines/{engine_id:path}", response_model=Engine, deprecated=True)
async def retrieve_engine(engine_id: str, request: Request) -> Engine:
    return _engine(app_state(request).registry.get(engine_id))
