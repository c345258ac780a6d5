"""Where model time goes: one small interface, several implementations."""

from modelhost.engine.base import (
    ChoiceFinished,
    Engine,
    EngineError,
    EngineEvent,
    EngineFailed,
    EngineOverloaded,
    GenerationRequest,
    SamplingParams,
    TextDelta,
    ToolCallDelta,
    UpstreamInput,
    UsageReported,
)
from modelhost.engine.registry import ModelAccess, ModelRegistry, ServedModel

__all__ = [
    "ChoiceFinished",
    "Engine",
    "EngineError",
    "EngineEvent",
    "EngineFailed",
    "EngineOverloaded",
    "GenerationRequest",
    "ModelAccess",
    "ModelRegistry",
    "SamplingParams",
    "ServedModel",
    "TextDelta",
    "ToolCallDelta",
    "UpstreamInput",
    "UsageReported",
]
