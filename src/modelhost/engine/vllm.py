"""vLLM's engine in this process (`vllm.v1.engine.async_llm.AsyncLLM`, or the older
`AsyncLLMEngine`), behind the same `Engine` interface as the llama.cpp engine.

vLLM is an optional extra (``pip install 'modelhost[vllm]'``: Linux, a CUDA GPU) imported only when
a model in the models file uses it; when it is missing, building the model fails with a message
saying how to install it or how to run ``vllm serve`` behind an `openai` backend instead.

Like the llama.cpp engine it takes token prompts: chat templates come from the model's tokenizer
(transformers renders them in a sandboxed Jinja environment), sampling maps one to one onto
``vllm.SamplingParams`` with ``output_kind=DELTA``, and each `RequestOutput` becomes `TextDelta` /
`ChoiceFinished` events. Tool calls and structured outputs are not offered through this backend
(the models file refuses those capabilities for it): for them, run ``vllm serve`` with its own
tool parser and point an `openai` backend at it.

Prefix caching is per organization, as in the llama.cpp engine: every prompt carries its
organization's ``cache_salt`` (`CacheSalts`; vLLM 0.9+ with the V1 engine mixes it into the hash of
the first KV block), so `num_cached_tokens` and time to first token only ever reflect the caller's
own prefixes. A vLLM that cannot salt gets ``enable_prefix_caching=False`` and reports no cached
tokens, unless the operator shares prefixes across organizations
(``MODELHOST_SHARE_PREFIX_ACROSS_ORGANIZATIONS``).
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import itertools
import logging
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any, Protocol

from jinja2 import TemplateError

from modelhost.engine import chat_prompt
from modelhost.engine.base import ChoiceFinished, EngineFailed, GenerationRequest, PromptLogprobs, TextDelta, TokenLogprob
from modelhost.engine.cache_salt import CacheSalts
from modelhost.engine.chat_template import ChatTemplateError
from modelhost.engine.generation_task import CoroutineGenerationTask
from modelhost.engine.grammar_errors import GrammarError

logger = logging.getLogger(__name__)

_ids = itertools.count()


class VllmUnavailable(RuntimeError):
    """vLLM is configured for a model but cannot be imported here."""


def import_vllm(model_id: str) -> SimpleNamespace:
    """The vLLM classes the adapter uses; raises `VllmUnavailable` with what to do when vLLM is missing."""
    try:
        from vllm import SamplingParams
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.inputs import TokensPrompt
        from vllm.sampling_params import RequestOutputKind
    except ImportError as exc:
        raise VllmUnavailable(
            f"model `{model_id}` uses the `vllm` backend, but vLLM cannot be imported in this environment "
            f"({exc}). Install it with `pip install 'modelhost[vllm]'` (Linux with a CUDA GPU), or run "
            "`vllm serve MODEL` as its own process and give this model an `openai` backend with that "
            "server's URL (docs/scaling.md)."
        ) from exc
    try:
        from vllm.v1.engine.async_llm import AsyncLLM as engine_class

        v1 = True
    except ImportError:  # vLLM before the V1 engine
        from vllm.engine.async_llm_engine import AsyncLLMEngine as engine_class

        v1 = False
    prompt_keys = getattr(TokensPrompt, "__required_keys__", frozenset()) | getattr(TokensPrompt, "__optional_keys__", frozenset())
    return SimpleNamespace(
        SamplingParams=SamplingParams,
        AsyncEngineArgs=AsyncEngineArgs,
        TokensPrompt=TokensPrompt,
        DELTA=RequestOutputKind.DELTA,
        Engine=engine_class,
        # cache_salt arrived with vLLM 0.9 and only the V1 engine honours it (V0 refuses or ignores it).
        salts_prompts=v1 and "cache_salt" in prompt_keys,
    )


@dataclass(frozen=True)
class VllmOptions:
    """What `AsyncEngineArgs` gets (the models file's `vllm` backend table)."""

    model: str
    tokenizer: str | None = None
    revision: str | None = None
    dtype: str = "auto"
    tensor_parallel_size: int = 1
    pipeline_parallel_size: int = 1
    gpu_memory_utilization: float = 0.9
    max_num_seqs: int | None = None
    enforce_eager: bool = False
    trust_remote_code: bool = False


class _VllmCore(Protocol):
    """The calls the adapter makes on vLLM's engine; what they return is vLLM's own (untyped here:
    vLLM is optional and not installed where this is type-checked). Some versions return coroutines."""

    def generate(self, prompt: object, sampling_params: object, request_id: str) -> AsyncIterator[Any]: ...

    def abort(self, request_id: str) -> object: ...

    def get_tokenizer(self) -> object: ...

    def get_model_config(self) -> object: ...


async def _maybe_await(value: object) -> object:
    return await value if inspect.isawaitable(value) else value


_VLLM_MAX_NUM_SEQS = 256  # vLLM's default batch on most GPUs, when a started engine does not say


def _max_num_seqs(core: object) -> int | None:
    """The batch size a started vLLM resolved (V1 ``AsyncLLM.vllm_config``, V0 ``AsyncLLMEngine.engine``)."""
    for path in (("vllm_config", "scheduler_config"), ("engine", "scheduler_config")):
        found: object = core
        for name in path:
            found = getattr(found, name, None)
        value = getattr(found, "max_num_seqs", None)
        if isinstance(value, int) and value >= 1:
            return value
    return None


class VllmGeneration(CoroutineGenerationTask):
    """One request inside vLLM: iterate it for events; `cancel()` aborts it in the engine."""

    def __init__(self, engine: VllmEngine, request: GenerationRequest) -> None:
        super().__init__(request.n)
        self._vllm_id = f"{request.request_id}-{next(_ids)}"
        self._engine = engine
        self._request = request

    async def run(self) -> None:
        engine, request = self._engine, self._request
        sampling = request.sampling
        finished = set()
        core = engine.core
        assert core is not None, "submit() checks that the engine is started"
        engine.running += 1
        try:
            prompt = engine.prompt(request)
            async for output in core.generate(prompt, engine.sampling_params(request), self._vllm_id):
                if engine.reports_cached_tokens:
                    self.cached = max(self.cached, int(getattr(output, "num_cached_tokens", 0) or 0))
                if sampling.prompt_logprobs and getattr(output, "prompt_logprobs", None):
                    self.emit(PromptLogprobs(engine.prompt_logprobs(request.prompt_tokens, output.prompt_logprobs, sampling.logprobs or 0)))
                for choice in output.outputs:
                    if choice.index in finished:
                        continue
                    if sampling.max_tokens == 0:  # vLLM samples at least one token; an echo-only request shows none
                        finished.add(choice.index)
                        self.emit(ChoiceFinished(choice.index, "length", 0))
                        continue
                    self.generated[choice.index] += len(choice.token_ids)
                    logprobs = engine.token_logprobs(choice.logprobs, sampling.logprobs) if sampling.logprobs is not None else ()
                    if choice.text or logprobs:
                        self.emit(TextDelta(choice.index, choice.text, logprobs))
                    if choice.finish_reason is not None:
                        finished.add(choice.index)
                        reason = "length" if choice.finish_reason == "length" else "stop"
                        self.emit(ChoiceFinished(choice.index, reason, self.generated[choice.index]))
        except asyncio.CancelledError:
            await asyncio.shield(engine.abort(self._vllm_id))
            raise
        finally:
            engine.running -= 1

    def unexpected(self, error: Exception) -> EngineFailed:
        logger.error("model %s: vLLM failed on %s: %s", self._engine.model_id, self._request.request_id, type(error).__name__)
        return EngineFailed(f"vLLM failed: {type(error).__name__}")


class VllmEngine:
    """Serves one Hugging Face model with vLLM's continuous batching, paged attention and parallelism."""

    forwards_requests = False

    def __init__(
        self, *, model_id: str, options: VllmOptions, context_length: int | None, max_n: int, cache_salts: CacheSalts | None = None
    ) -> None:
        self.vllm = import_vllm(model_id)  # at configuration time: a missing vLLM is reported before serving
        self._cache_salts = cache_salts  # None: salting is not possible here, so tenants may not share a cache
        self.model_id = model_id
        self.max_n = max_n
        self.context_length = context_length or 0  # from the model's config at start() when not set
        self._options = options
        self._max_model_len = context_length
        self.core: _VllmCore | None = None
        self._tokenizer: object = None
        self.running = 0
        self.capacity = options.max_num_seqs or _VLLM_MAX_NUM_SEQS  # sequences in one batch; vLLM's own once started

    async def start(self) -> None:
        o = self._options
        extra: dict[str, object] = {"max_model_len": self._max_model_len} if self._max_model_len else {}
        if o.max_num_seqs is not None:
            extra["max_num_seqs"] = o.max_num_seqs
        if not self.reports_cached_tokens:
            # No salt: a shared prefix cache would tell one tenant (by cached_tokens and by speed) what another sent.
            logger.warning(
                "model %s: this vLLM cannot salt its prefix cache per organization (cache_salt needs vLLM 0.9+ with "
                "the V1 engine); prefix caching is off",
                self.model_id,
            )
            extra["enable_prefix_caching"] = False
        args = self.vllm.AsyncEngineArgs(
            model=o.model,
            tokenizer=o.tokenizer,
            revision=o.revision,
            dtype=o.dtype,
            tensor_parallel_size=o.tensor_parallel_size,
            pipeline_parallel_size=o.pipeline_parallel_size,
            gpu_memory_utilization=o.gpu_memory_utilization,
            enforce_eager=o.enforce_eager,
            trust_remote_code=o.trust_remote_code,
            **extra,
        )
        self.core = core = self.vllm.Engine.from_engine_args(args)
        self.capacity = _max_num_seqs(core) or self.capacity  # vLLM picks its default by GPU when not given
        self._tokenizer = await _maybe_await(core.get_tokenizer())
        if not self.context_length:
            config = await _maybe_await(core.get_model_config())
            self.context_length = int(config.max_model_len)  # type: ignore[attr-defined]

    async def stop(self) -> None:
        if self.core is not None:
            shutdown = getattr(self.core, "shutdown", None)
            if shutdown is not None:
                await asyncio.to_thread(shutdown)

    async def abort(self, vllm_id: str) -> None:
        assert self.core is not None, "only a started engine has requests to abort"
        try:
            await _maybe_await(self.core.abort(vllm_id))
        except Exception:
            logger.warning("model %s: vLLM could not abort a request", self.model_id, exc_info=True)

    # -- tokenizer and template -----------------------------------------------------------------
    def tokenize(self, text: str) -> list[int]:
        return list(self._tokenizer.encode(text, add_special_tokens=False))  # type: ignore[attr-defined]

    def detokenize(self, tokens: Sequence[int]) -> str:
        return str(self._tokenizer.decode(list(tokens)))  # type: ignore[attr-defined]

    @property
    def start_token(self) -> int:
        tok = self._tokenizer
        bos = getattr(tok, "bos_token_id", None)
        return int(bos if bos is not None else tok.eos_token_id)  # type: ignore[attr-defined]

    @property
    def vocab_size(self) -> int:
        return len(self._tokenizer)  # type: ignore[arg-type]

    def render_chat(self, messages: Sequence[dict[str, object]], tools: Sequence[dict[str, object]] | None = None) -> str:
        return str(
            self._tokenizer.apply_chat_template(  # type: ignore[attr-defined]
                list(messages), tools=list(tools) if tools else None, tokenize=False, add_generation_prompt=True
            )
        )

    def tokenize_chat(self, messages: Sequence[dict[str, object]], tools: Sequence[dict[str, object]] | None = None) -> list[int]:
        """The conversation as prompt tokens: special tokens only where the template wrote them (chat_prompt)."""
        tok = self._tokenizer

        def render(msgs: Sequence[Mapping[str, object]], tls: Sequence[Mapping[str, object]] | None) -> str:
            try:
                return self.render_chat(msgs, tls)  # type: ignore[arg-type]
            except TemplateError as exc:
                raise ChatTemplateError(f"The model's chat template rejected the messages: {exc}") from exc

        rendered = chat_prompt.render(render, messages, tools, self._controls)
        return chat_prompt.tokenize(
            rendered,
            self._controls,
            whole=self.tokenize,
            # Hugging Face's switch for "special tokens in this text are text".
            text_only=lambda text: list(tok.encode(text, add_special_tokens=False, split_special_tokens=True)),  # type: ignore[attr-defined]
        )

    @functools.cached_property
    def _controls(self) -> chat_prompt.ControlTokens:
        """The tokenizer's special tokens (its added tokens marked special, and bos/eos/unk/pad/…)."""
        tok = self._tokenizer
        found = {
            index: chat_prompt.ControlToken(index, str(t.content), lstrip=bool(getattr(t, "lstrip", False)), rstrip=bool(getattr(t, "rstrip", False)))
            for index, t in (getattr(tok, "added_tokens_decoder", None) or {}).items()
            if getattr(t, "special", False)
        }
        for text, index in zip(getattr(tok, "all_special_tokens", ()), getattr(tok, "all_special_ids", ())):
            found.setdefault(int(index), chat_prompt.ControlToken(int(index), str(text)))
        return chat_prompt.ControlTokens(list(found.values()))

    @property
    def template_supports_tools(self) -> bool:
        return False  # tools are not a capability of this backend (see the module docstring)

    def check_grammar(self, grammar: str) -> None:
        raise GrammarError("This model's vllm backend does not enforce grammars; structured outputs and tools are not available for it.")

    # -- generation -----------------------------------------------------------------------------
    @property
    def reports_cached_tokens(self) -> bool:
        """Whether vLLM's prefix cache can only hold the caller's own prefixes (salted, or shared on purpose)."""
        salts = self._cache_salts
        return salts is not None and (salts.shared or self.vllm.salts_prompts)

    def prompt(self, request: GenerationRequest) -> object:
        """The token prompt, salted with the request's organization when prefixes are not shared."""
        salt = self._cache_salts.of(request.cache_scope) if self._cache_salts is not None and self.vllm.salts_prompts else None
        if salt is None:
            return self.vllm.TokensPrompt(prompt_token_ids=list(request.prompt_tokens))
        return self.vllm.TokensPrompt(prompt_token_ids=list(request.prompt_tokens), cache_salt=salt)

    def sampling_params(self, request: GenerationRequest) -> object:
        s = request.sampling
        return self.vllm.SamplingParams(
            n=request.n,
            max_tokens=max(1, s.max_tokens),
            temperature=s.temperature,
            top_p=s.top_p,
            seed=s.seed,
            presence_penalty=s.presence_penalty,
            frequency_penalty=s.frequency_penalty,
            logit_bias=dict(s.logit_bias) or None,
            stop=list(s.stop) or None,
            logprobs=s.logprobs,
            prompt_logprobs=(s.logprobs or 0) if s.prompt_logprobs else None,
            output_kind=self.vllm.DELTA,
        )

    def submit(self, request: GenerationRequest) -> VllmGeneration:
        assert self.core is not None, "start() the engine first"
        assert request.prompt_tokens, "a prompt has at least one token"
        return VllmGeneration(self, request)

    @property
    def alive(self) -> bool:
        """Whether vLLM is started and has not failed (/health answers 503 otherwise)."""
        return self.core is not None and not bool(getattr(self.core, "errored", False))

    def state(self) -> dict[str, object]:
        return {"model": self.model_id, "backend": "vllm", "slots_busy": self.running, "queue_depth": 0}

    def _piece(self, token_id: int, decoded: str | None) -> bytes:
        if decoded is None:
            decoded = self.detokenize([token_id])
        return decoded.encode("utf-8")

    def token_logprobs(self, entries: Sequence[Mapping[int, object]] | None, top: int | None) -> tuple[TokenLogprob, ...]:
        """vLLM's per-position {token_id: Logprob(logprob, rank, decoded_token)} → our `TokenLogprob`s."""
        out = []
        for position in entries or ():
            chosen = next(iter(position))  # vLLM puts the sampled token first
            best = sorted(position.items(), key=lambda kv: getattr(kv[1], "rank", 0) or 0)[: top or 0]
            info = position[chosen]
            out.append(
                TokenLogprob(
                    chosen,
                    self._piece(chosen, getattr(info, "decoded_token", None)),
                    float(info.logprob),  # type: ignore[attr-defined]
                    tuple((t, self._piece(t, getattr(lp, "decoded_token", None)), float(lp.logprob)) for t, lp in best),  # type: ignore[attr-defined]
                )
            )
        return tuple(out)

    def prompt_logprobs(self, prompt: Sequence[int], entries: Sequence[Mapping[int, object] | None], top: int) -> tuple[TokenLogprob, ...]:
        out = [TokenLogprob(prompt[0], self._piece(prompt[0], None), None)]
        for token, position in zip(prompt[1:], list(entries)[1:]):
            if not position:
                continue
            info = position.get(token) or next(iter(position.values()))
            best = sorted(position.items(), key=lambda kv: getattr(kv[1], "rank", 0) or 0)[:top]
            out.append(
                TokenLogprob(
                    token,
                    self._piece(token, getattr(info, "decoded_token", None)),
                    float(info.logprob),  # type: ignore[attr-defined]
                    tuple((t, self._piece(t, getattr(lp, "decoded_token", None)), float(lp.logprob)) for t, lp in best),  # type: ignore[attr-defined]
                )
            )
        return tuple(out)
