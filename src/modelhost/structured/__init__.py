"""Structured outputs and tool calls: request options → grammars and prompts, model text → calls."""
