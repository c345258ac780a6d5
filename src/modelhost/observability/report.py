"""What the pipeline reports once per settled request (a generation or an embeddings run)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SettlementReport:
    model: str
    operation: str  # chat.completions, completions, embeddings, ...
    outcome: str  # completed, cancelled, failed
    prompt_tokens: int
    completion_tokens: int
    time_to_first_token: float | None = None  # seconds from submission to the first text (generations)
    time_per_output_token: float | None = None  # seconds per token after each choice's first (generations)
