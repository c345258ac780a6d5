"""Where model time goes: one small interface, several implementations."""

from modelhost.engine.base import (
    ChoiceFinished,
    Engine,
    EngineEvent,
    EngineFailed,
    EngineOverloaded,
    GenerationRequest,
    SamplingParams,
    TextDelta,
)
from modelhost.engine.registry import ModelRegistry, ServedModel

__all__ = [
    "ChoiceFinished",
    "Engine",
    "EngineEvent",
    "EngineFailed",
    "EngineOverloaded",
    "GenerationRequest",
    "ModelRegistry",
    "SamplingParams",
    "ServedModel",
    "TextDelta",
]
