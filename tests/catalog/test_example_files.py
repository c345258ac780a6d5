"""The models files in examples/ (docs/scaling.md shows them) load as written."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from modelhost.auth import Principal
from modelhost.catalog import load_catalog
from modelhost.catalog.build import build_models
from modelhost.config import Settings
from modelhost.engine.registry import CHAT, EMBEDDINGS, TOOLS

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def _in(project: str) -> Principal:
    """A caller of `project` with no model permissions of its own: the models file alone decides."""
    return Principal("org-test", project, "user-test", "key_test", "project")


@pytest.mark.parametrize("name", ["models-laptop.toml", "models-pool.toml", "models-gpu.toml"])
def test_every_example_is_a_valid_models_file(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POOL_API_KEY", "sk-example")
    monkeypatch.setenv("VLLM_API_KEY", "sk-example")
    catalog = load_catalog(EXAMPLES / name)
    assert catalog.models


def test_the_laptop_example_serves_what_the_default_serves(tmp_path: Path) -> None:
    path = EXAMPLES / "models-laptop.toml"
    registry, built = build_models(path, load_catalog(path), Settings(home=tmp_path), {})
    try:
        chat = registry.get("smollm2", CHAT, caller=_in("proj_any"))
        assert chat.id == "smollm2-135m-instruct" and {CHAT, TOOLS, EMBEDDINGS} <= chat.capabilities
        assert registry.get("all-minilm-l6-v2", EMBEDDINGS, caller=_in("proj_any")).capabilities == {EMBEDDINGS}
    finally:
        for model in built.values():
            asyncio.run(model.stop())
