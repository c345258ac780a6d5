"""Conversations and their items: tables and queries (issue #14)."""

from __future__ import annotations
