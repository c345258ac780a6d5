"""Stored chat completions (`store: true`): tables and queries (issue #14)."""

from __future__ import annotations
