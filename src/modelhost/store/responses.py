"""Stored responses: their tables (SQLAlchemy models on `schema.Base`) and queries (issue #14)."""

from __future__ import annotations
