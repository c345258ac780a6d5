"""The vLLM backend without vLLM (no GPU here): the message when it is missing, and the adapter
driven through the slice of vLLM's interface it uses (`AsyncLLM.from_engine_args`, `generate`
with DELTA outputs, `abort`, `get_tokenizer`), provided by a recording stand-in module."""

from __future__ import annotations

import asyncio
import enum
import sys
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import NotRequired, TypedDict

import pytest

from modelhost.catalog.build import build_models
from modelhost.catalog.schema import CatalogError, load_catalog
from modelhost.config import Settings
from modelhost.engine.base import ChoiceFinished, GenerationRequest, SamplingParams, TextDelta
from modelhost.engine.cache_salt import CacheSalts
from modelhost.engine.fair_share import InFlightLimits
from modelhost.engine.vllm import VllmEngine, VllmOptions, VllmUnavailable

VLLM_MODELS = """
[[models]]
id = "llama-3.1-8b"
context_length = 8192
[models.backend]
type = "vllm"
model = "meta-llama/Llama-3.1-8B-Instruct"
tensor_parallel_size = 2
"""


def test_a_missing_vllm_says_how_to_install_it_or_what_to_run_instead(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "vllm", None)  # as if not installed (it is not, here)
    with pytest.raises(VllmUnavailable) as caught:
        VllmEngine(model_id="llama-3.1-8b", options=VllmOptions(model="m"), context_length=None, max_n=4)
    message = str(caught.value)
    assert "pip install 'modelhost[vllm]'" in message
    assert "vllm serve" in message and "`openai` backend" in message and "llama-3.1-8b" in message


def test_the_models_file_reports_a_missing_vllm_with_file_model_and_field(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "vllm", None)
    path = tmp_path / "models.toml"
    path.write_text(VLLM_MODELS)
    catalog = load_catalog(path)
    with pytest.raises(CatalogError) as caught:
        build_models(path, catalog, Settings(home=tmp_path), {})
    assert str(caught.value).startswith(f"{path}: model `llama-3.1-8b` (models[0]), field `backend.type`:")
    assert "pip install 'modelhost[vllm]'" in str(caught.value)


@dataclass
class Logprob:
    logprob: float
    rank: int
    decoded_token: str


@dataclass
class CompletionOutput:
    index: int
    text: str
    token_ids: list[int]
    logprobs: list[dict[int, Logprob]] | None
    finish_reason: str | None


@dataclass
class RequestOutput:
    outputs: list[CompletionOutput]
    prompt_logprobs: list[dict[int, Logprob] | None] | None = None
    num_cached_tokens: int = 0


class Tokenizer:
    bos_token_id = 1
    eos_token_id = 2

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return list(text.encode())

    def decode(self, ids: list[int]) -> str:
        return bytes(ids).decode()

    def __len__(self) -> int:
        return 256

    def apply_chat_template(self, messages, tools=None, tokenize=True, add_generation_prompt=False):  # type: ignore[no-untyped-def]
        assert tokenize is False and add_generation_prompt is True
        return "".join(f"<{m['role']}>{m['content']}" for m in messages) + "<assistant>"


@dataclass
class FakeAsyncLLM:
    args: object
    generated: list[tuple[object, object, str]] = field(default_factory=list)
    aborted: list[str] = field(default_factory=list)
    shut_down: bool = False
    hold: asyncio.Event | None = None
    vllm_config: types.SimpleNamespace | None = None

    @classmethod
    def from_engine_args(cls, args: object) -> FakeAsyncLLM:
        # As vLLM does: max_num_seqs when given, else its default for the GPU (1024 on an H100 or H200).
        max_num_seqs = args.kw.get("max_num_seqs") or 1024  # type: ignore[attr-defined]
        return cls(args, vllm_config=types.SimpleNamespace(scheduler_config=types.SimpleNamespace(max_num_seqs=max_num_seqs)))

    async def get_tokenizer(self) -> Tokenizer:
        return Tokenizer()

    async def get_model_config(self) -> types.SimpleNamespace:
        return types.SimpleNamespace(max_model_len=4096)

    async def generate(self, prompt, params, request_id):  # type: ignore[no-untyped-def]
        self.generated.append((prompt, params, request_id))
        if self.hold is not None:
            await self.hold.wait()
        lp = {104: Logprob(-0.1, 1, "h"), 105: Logprob(-2.5, 2, "i")}
        yield RequestOutput([CompletionOutput(i, "h", [104], [lp], None) for i in range(params.kw["n"])], num_cached_tokens=3)
        yield RequestOutput([CompletionOutput(i, "i!", [105, 33], [lp, {33: Logprob(-0.3, 1, "!")}], "length") for i in range(params.kw["n"])])

    async def abort(self, request_id: str) -> None:
        self.aborted.append(request_id)

    def shutdown(self) -> None:
        self.shut_down = True


class TokensPrompt(TypedDict):  # vLLM 0.9+: `cache_salt` keys the prefix cache
    prompt_token_ids: list[int]
    cache_salt: NotRequired[str]


class OldTokensPrompt(TypedDict):  # vLLM 0.8: no `cache_salt`
    prompt_token_ids: list[int]


SALTS = CacheSalts(b"a-test-secret-of-32-bytes-000000")


@pytest.fixture
def fake_vllm(monkeypatch: pytest.MonkeyPatch) -> type[FakeAsyncLLM]:
    class SamplingParamsStub:
        def __init__(self, **kw: object) -> None:
            self.kw = kw

    class RequestOutputKind(enum.Enum):
        CUMULATIVE = 0
        DELTA = 1
        FINAL_ONLY = 2

    class AsyncEngineArgs:
        def __init__(self, **kw: object) -> None:
            self.kw = kw

    modules = {
        "vllm": {"SamplingParams": SamplingParamsStub},
        "vllm.sampling_params": {"RequestOutputKind": RequestOutputKind, "SamplingParams": SamplingParamsStub},
        "vllm.inputs": {"TokensPrompt": TokensPrompt},
        "vllm.engine": {},
        "vllm.engine.arg_utils": {"AsyncEngineArgs": AsyncEngineArgs},
        "vllm.v1": {},
        "vllm.v1.engine": {},
        "vllm.v1.engine.async_llm": {"AsyncLLM": FakeAsyncLLM},
    }
    for name, attrs in modules.items():
        module = types.ModuleType(name)
        module.__dict__.update(attrs)
        monkeypatch.setitem(sys.modules, name, module)
    return FakeAsyncLLM


def test_the_adapter_configures_vllm_and_maps_outputs_to_events(fake_vllm: type[FakeAsyncLLM]) -> None:
    async def go() -> None:
        engine = VllmEngine(
            model_id="m", options=VllmOptions(model="org/model", tensor_parallel_size=2), context_length=None, max_n=4, cache_salts=SALTS
        )
        await engine.start()
        core = engine.core
        assert isinstance(core, FakeAsyncLLM)
        assert core.args.kw["model"] == "org/model" and core.args.kw["tensor_parallel_size"] == 2  # type: ignore[attr-defined]
        assert "enable_prefix_caching" not in core.args.kw  # type: ignore[attr-defined]  # salted: vLLM's default (on)
        assert engine.context_length == 4096  # from the model's config
        text = engine.render_chat([{"role": "user", "content": "hi"}])
        assert text == "<user>hi<assistant>"
        prompt = engine.tokenize(text)
        sampling = SamplingParams(max_tokens=3, temperature=0.5, seed=7, stop=("\n",), logprobs=1, logit_bias={5: -100.0})
        generation = engine.submit(GenerationRequest("chatcmpl-1", prompt, sampling, n=2, cache_scope="org-a"))
        events = [e async for e in generation]
        prompt_sent, params, _ = core.generated[0]
        assert prompt_sent == {"prompt_token_ids": prompt, "cache_salt": SALTS.of("org-a")}
        assert params.kw["n"] == 2 and params.kw["max_tokens"] == 3 and params.kw["seed"] == 7  # type: ignore[attr-defined]
        assert params.kw["stop"] == ["\n"] and params.kw["logit_bias"] == {5: -100.0}  # type: ignore[attr-defined]
        assert params.kw["output_kind"].name == "DELTA"  # type: ignore[attr-defined]
        texts = {i: "".join(e.text for e in events if isinstance(e, TextDelta) and e.index == i) for i in (0, 1)}
        assert texts == {0: "hi!", 1: "hi!"}
        first = next(e for e in events if isinstance(e, TextDelta))
        assert first.logprobs[0].piece == b"h" and first.logprobs[0].top == ((104, b"h", -0.1),)
        assert [(e.index, e.reason, e.completion_tokens) for e in events if isinstance(e, ChoiceFinished)] == [(0, "length", 3), (1, "length", 3)]
        assert generation.completion_tokens == 6 and generation.cached_tokens == 3
        await engine.stop()
        assert core.shut_down

    asyncio.run(go())


def test_cancelling_a_generation_aborts_it_in_vllm(fake_vllm: type[FakeAsyncLLM]) -> None:
    async def go() -> None:
        engine = VllmEngine(model_id="m", options=VllmOptions(model="x"), context_length=1024, max_n=1)
        await engine.start()
        core = engine.core
        assert isinstance(core, FakeAsyncLLM)
        core.hold = asyncio.Event()  # the request stays inside "vLLM"
        generation = engine.submit(GenerationRequest("r", [1, 2], SamplingParams(max_tokens=4)))
        await asyncio.sleep(0.05)
        assert engine.state()["slots_busy"] == 1
        generation.cancel()
        await asyncio.sleep(0.05)
        assert len(core.aborted) == 1 and core.aborted[0].startswith("r-")
        assert engine.state()["slots_busy"] == 0

    asyncio.run(go())


def run_one(engine: VllmEngine, scope: str) -> tuple[object, int]:
    """Submit one request for organization `scope`: (the prompt vLLM got, the cached tokens reported)."""

    async def go() -> tuple[object, int]:
        await engine.start()
        generation = engine.submit(GenerationRequest("r", [1, 2, 3], SamplingParams(max_tokens=3), cache_scope=scope))
        _ = [e async for e in generation]
        core = engine.core
        assert isinstance(core, FakeAsyncLLM)
        return core.generated[-1][0], generation.cached_tokens

    return asyncio.run(go())


def test_each_organization_gets_its_own_unguessable_cache_salt(fake_vllm: type[FakeAsyncLLM]) -> None:
    engine = VllmEngine(model_id="m", options=VllmOptions(model="x"), context_length=1024, max_n=1, cache_salts=SALTS)
    (a, cached_a), (b, _) = run_one(engine, "org-a"), run_one(engine, "org-b")
    assert a["cache_salt"] != b["cache_salt"]  # type: ignore[index]  # vLLM never shares a block between them
    assert "org-a" not in a["cache_salt"] and a["cache_salt"] != CacheSalts(b"another-secret-of-32-bytes-00000").of("org-a")  # type: ignore[index]
    assert cached_a == 3  # salted: what vLLM reports is the caller's own prefix


def test_a_vllm_that_cannot_salt_runs_without_prefix_caching_and_reports_no_cached_tokens(
    fake_vllm: type[FakeAsyncLLM], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys.modules["vllm.inputs"], "TokensPrompt", OldTokensPrompt)
    engine = VllmEngine(model_id="m", options=VllmOptions(model="x"), context_length=1024, max_n=1, cache_salts=SALTS)
    prompt, cached = run_one(engine, "org-a")
    assert prompt == {"prompt_token_ids": [1, 2, 3]}
    assert engine.core.args.kw["enable_prefix_caching"] is False  # type: ignore[attr-defined]
    assert cached == 0


def test_prefixes_shared_across_organizations_on_purpose_are_unsalted(fake_vllm: type[FakeAsyncLLM]) -> None:
    shared = CacheSalts(b"a-test-secret-of-32-bytes-000000", shared=True)  # MODELHOST_SHARE_PREFIX_ACROSS_ORGANIZATIONS
    engine = VllmEngine(model_id="m", options=VllmOptions(model="x"), context_length=1024, max_n=1, cache_salts=shared)
    prompt, cached = run_one(engine, "org-a")
    assert prompt == {"prompt_token_ids": [1, 2, 3]} and cached == 3
    assert "enable_prefix_caching" not in engine.core.args.kw  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("extra", "limits"),
    [
        ("", InFlightLimits(1024, 512, 512)),  # vLLM's own default for the GPU, read from the started engine
        ("max_num_seqs = 96", InFlightLimits(96, 48, 48)),
        ("max_in_flight = 40\nmax_in_flight_per_project = 8", InFlightLimits(40, 20, 8)),
    ],
)
def test_a_vllm_model_forwards_at_most_one_batch_and_an_organization_half_of_it(
    tmp_path: Path, fake_vllm: type[FakeAsyncLLM], extra: str, limits: InFlightLimits
) -> None:
    """No more than vLLM runs at once is handed to it (the rest waits here, in turn); half for one organization."""
    path = tmp_path / "models.toml"
    path.write_text(VLLM_MODELS + extra + "\n")
    _, built = build_models(path, load_catalog(path), Settings(home=tmp_path), {})
    (model,) = built.values()

    async def go() -> None:
        await model.start()
        assert model.engine is not None
        assert model.engine.inner.limits == limits  # type: ignore[attr-defined]
        await model.stop()

    asyncio.run(go())
