"""The models this server answers for, by id. An unknown id is an error, never a fallback."""

from __future__ import annotations

from dataclasses import dataclass

from modelhost.engine.base import Engine
from modelhost.errors import ModelNotFound


@dataclass(frozen=True)
class ServedModel:
    id: str
    created: int
    owned_by: str
    engine: Engine
    fingerprint: str  # system_fingerprint: changes when the weights or the engine change


class ModelRegistry:
    """``registry.get("smollm2-135m-instruct") -> ServedModel``; raises `ModelNotFound` otherwise."""

    def __init__(self, models: list[ServedModel]) -> None:
        self._models = {m.id: m for m in models}

    def get(self, model_id: str) -> ServedModel:
        model = self._models.get(model_id)
        if model is None:
            raise ModelNotFound(model_id)
        return model

    def all(self) -> list[ServedModel]:
        return list(self._models.values())

    async def start(self) -> None:
        for model in self._models.values():
            await model.engine.start()

    async def stop(self) -> None:
        for model in self._models.values():
            await model.engine.stop()
