"""Fuzzing for issue #12 item 1: generated schemas of every costly shape, not just the known examples.

Hypothesis builds schemas from the keywords that cost (patterns with quantifiers, groups and
alternation; length and item bounds; optional properties; long names; nesting; enums and
alternatives; allOf; references used many times or recursively; keyword values of the wrong
type), with counts from small to absurd. Whatever it builds, the bounds answer in
milliseconds, and whatever they accept compiles in under a second in the worker, or is refused
there as a `GrammarError` — never another exception, never a hang. The time limits here are
loose (this machine is shared and noisy); `bench/schema_bounds.py` measures the real figures.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from modelhost.engine.grammar_compiler import GrammarCompiler
from modelhost.engine.schema_bounds import GrammarError, check_schema
from serverproc import MODEL

from .conftest import Guarded

COUNTS = st.one_of(st.integers(0, 20), st.integers(0, 2000), st.sampled_from([999, 1000, 1001, 10**6, 2 * 10**8]))
NAMES = st.one_of(st.text("abcxyz_-", min_size=1, max_size=8), st.integers(1, 400).map(lambda n: "n" * n))

_atoms = st.one_of(st.sampled_from(["a", "b", "\\d", "[a-z]", "[0-9A-F]", ".", "\\."]))


@st.composite
def _regex(draw: st.DrawFn, depth: int = 0) -> str:
    parts = []
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.integers(0, 3 if depth < 4 else 1))
        piece = draw(_atoms) if kind < 2 else f"({draw(_regex(depth + 1))})"
        if kind == 3:
            piece = f"({draw(_regex(depth + 1))}|{draw(_regex(depth + 1))})"
        quantifier = draw(st.one_of(st.just(""), st.sampled_from(["*", "+", "?"]), COUNTS.map(lambda n: f"{{{n}}}"),
                                    st.tuples(COUNTS, COUNTS).map(lambda p: f"{{{min(p)},{max(p)}}}")))
        parts.append(piece + quantifier)
    return "".join(parts)


PATTERNS = st.one_of(_regex().map(lambda r: f"^{r}$"), st.sampled_from(["^x{0,200000000}$", "(a", "^(?=a)$", "^a{2}{3}$", "^[a$"]))


def _leaf() -> st.SearchStrategy[dict[str, object]]:
    return st.one_of(
        st.just({"type": "integer"}),
        st.builds(lambda n: {"type": "string", "maxLength": n}, COUNTS),
        st.builds(lambda lo, hi: {"type": "string", "minLength": min(lo, hi), "maxLength": max(lo, hi)}, COUNTS, COUNTS),
        PATTERNS.map(lambda p: {"type": "string", "pattern": p}),
        st.lists(st.text(max_size=20), min_size=1, max_size=30).map(lambda vs: {"enum": vs}),
        st.just({"type": "string", "format": "date-time"}),
        # keyword values of the wrong JSON type (a list where a string belongs …): 400, never a 500
        st.builds(lambda key, v: {"type": "string", key: v}, st.sampled_from(["format", "pattern", "maxLength", "type", "required"]),
                  st.one_of(st.lists(st.text(max_size=5), max_size=3), st.integers(-5, 5), st.none(), st.dictionaries(st.text(max_size=3), st.integers(), max_size=2))),
    )


def _extend(children: st.SearchStrategy[dict[str, object]]) -> st.SearchStrategy[dict[str, object]]:
    def obj(props: dict[str, dict[str, object]], required_share: float) -> dict[str, object]:
        names = list(props)
        return {"type": "object", "properties": props, "required": names[: int(len(names) * required_share)]}

    return st.one_of(
        st.builds(obj, st.dictionaries(NAMES, children, max_size=12), st.floats(0, 1)),
        st.builds(lambda item, n: {"type": "array", "items": item, "maxItems": n}, children, COUNTS),
        st.lists(children, min_size=1, max_size=6).map(lambda alts: {"anyOf": alts}),
        st.lists(children, min_size=1, max_size=6).map(lambda parts: {"allOf": parts}),
        # references: a definition used from several places, and definitions that refer to each other
        st.builds(lambda child, n: {"$defs": {"a": child}, "anyOf": [{"$ref": "#/$defs/a"}] * n}, children, st.integers(1, 40)),
        st.builds(lambda child, n: {"type": "array", "items": {"anyOf": [{"$ref": "#"}] * n + [child]}}, children, st.integers(1, 3)),
    )


SCHEMAS = st.recursive(_leaf(), _extend, max_leaves=40)


@pytest.fixture(scope="module")
def compiler() -> Iterator[GrammarCompiler]:
    pool = GrammarCompiler(workers=1)
    yield pool
    pool.close()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(schema=SCHEMAS)
def test_fuzz_any_schema_is_refused_in_milliseconds_or_compiles_in_a_second(compiler: GrammarCompiler, schema: dict[str, object]) -> None:
    started = time.perf_counter()
    try:
        check_schema(schema)
    except GrammarError:
        assert time.perf_counter() - started < 0.5
        return
    assert time.perf_counter() - started < 0.5
    started = time.perf_counter()
    try:
        grammar = compiler.compile(schema)
    except GrammarError as exc:
        assert "within" not in str(exc), f"the worker had to be killed: {exc}"  # bounds let through a runaway
    else:
        assert "root ::=" in grammar
    assert time.perf_counter() - started < 15.0  # a runaway compile took 18 s and more


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(schema=SCHEMAS)
def test_fuzz_generated_schemas_through_the_api_are_200_or_400_never_slow_or_5xx(guarded: Guarded, schema: dict[str, object]) -> None:
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "Answer in json."}],
        "max_tokens": 2,
        "response_format": {"type": "json_schema", "json_schema": {"name": "fuzz", "schema": schema}},
    }
    started = time.perf_counter()
    reply = httpx.post(f"{guarded.proc.base_url}/chat/completions", json=body, headers=guarded.auth, timeout=30)
    assert reply.status_code in (200, 400), reply.text
    if reply.status_code == 400:
        assert reply.json()["error"]["param"] == "response_format"
    assert time.perf_counter() - started < 15.0  # a runaway compile took 18 s and more
