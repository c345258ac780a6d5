"""What the pipeline reports once per settled generation."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class GenerationReport:
    model: str
    operation: str
    outcome: str  # completed, cancelled, failed
    prompt_tokens: int
    completion_tokens: int
    time_to_first_token: float | None  # seconds from submission to the first text
    time_per_output_token: float | None  # seconds per token after each choice's first
