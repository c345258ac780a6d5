"""Models file → `ModelRegistry`: one engine (and/or embedder) per model, each built once and reused
by later reloads for as long as its configuration does not change.

``build_models(path, catalog, settings, reuse) -> (registry, built)``: `built` maps each model's
configuration key to its `BuiltModel`; a key found in `reuse` (the running models) keeps that very
engine object, so reloading a file that changed one model's price or aliases restarts nothing.
Building runs off the event loop (loading GGUF weights takes time). Any failure is a
`CatalogError` naming the file, the model and the field.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from modelhost import __version__
from modelhost.catalog.drain import DrainableEmbedder, DrainableEngine
from modelhost.catalog.schema import (
    ALL_MODELS,
    Catalog,
    CatalogError,
    LlamaCppBackend,
    ModelSpec,
    OpenAIBackend,
    SentenceBackend,
    VllmBackend,
    upstream_key,
)
from modelhost.config import Settings
from modelhost.engine.base import Engine
from modelhost.engine.cache_salt import CacheSalts
from modelhost.engine.fair_share import FairShareEngine, ShareLimits
from modelhost.engine.registry import EMBEDDINGS, ModelAccess, ModelRegistry, ServedModel

DEFAULT_CONTEXT = 2048


@dataclass
class BuiltModel:
    """A model's running parts; `open` counts the requests they are serving."""

    key: str
    engine: DrainableEngine | None
    embedder: DrainableEmbedder | None
    created: int
    fingerprint: str
    closers: list[Callable[[], None]] = field(default_factory=list)  # free weights once stopped
    started: bool = False

    @property
    def open(self) -> int:
        return (self.engine.open if self.engine else 0) + (self.embedder.open if self.embedder else 0)

    def close(self) -> None:
        """Take no new requests (they get 503 and retry against the current registry)."""
        for part in (self.engine, self.embedder):
            if part is not None:
                part.closed = True

    async def start(self) -> None:
        if self.engine is not None:
            await self.engine.inner.start()
        if self.embedder is not None:
            await self.embedder.inner.start()
        self.started = True

    async def stop(self) -> None:
        self.close()
        if self.started:
            # Embedders first: a GGUF embedder's context uses the weights its chat engine loaded.
            if self.embedder is not None:
                await self.embedder.inner.stop()
            if self.engine is not None:
                await self.engine.inner.stop()
            self.started = False
        for free in self.closers:
            free()
        self.closers.clear()


def _key(spec: ModelSpec, api_key: str | None) -> str:
    identity = {
        "id": spec.id,
        "context_length": spec.context_length,
        "embeddings": EMBEDDINGS in spec.features,
        "backend": spec.backend.model_dump(mode="json"),
        "api_key": hashlib.sha256(api_key.encode()).hexdigest() if api_key else None,
    }
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()


def _fingerprint(*parts: object) -> str:
    return "fp_" + hashlib.sha256(json.dumps([*parts, __version__], default=str).encode()).hexdigest()[:10]


def build_models(
    path: Path, catalog: Catalog, settings: Settings, reuse: Mapping[str, BuiltModel]
) -> tuple[ModelRegistry, dict[str, BuiltModel]]:
    built: dict[str, BuiltModel] = {}
    served: list[ServedModel] = []
    try:
        for i, spec in enumerate(catalog.models):
            api_key = upstream_key(path, i, spec)
            key = _key(spec, api_key)
            model = reuse.get(key) or _build(path, i, spec, settings, api_key, key)
            built[key] = model
            served.append(
                ServedModel(
                    id=spec.id,
                    created=spec.created if spec.created is not None else model.created,
                    owned_by=spec.owned_by or settings.model_owned_by,
                    engine=model.engine,
                    fingerprint=model.fingerprint,
                    embedder=model.embedder,  # type: ignore[arg-type]
                    aliases=tuple(spec.aliases),
                    features=spec.features,
                )
            )
    except BaseException:
        for model in built.values():
            if model.key not in reuse:
                for free in model.closers:
                    free()
        raise
    return ModelRegistry(served, access(catalog)), built


def preflight(path: Path, catalog: Catalog) -> None:
    """What building would find missing, without loading anything: GGUF files, vLLM, model directories."""
    for index, spec in enumerate(catalog.models):
        where = f"{path}: model `{spec.id}` (models[{index}])"
        backend = spec.backend
        if isinstance(backend, LlamaCppBackend):
            file = _gguf(where, backend)
            if not file.is_file():
                field_name = "backend.path" if backend.path is not None else "backend.package"
                raise CatalogError(f"{where}, field `{field_name}`: {file} is not a file.")
        elif isinstance(backend, VllmBackend):
            from modelhost.engine.vllm import VllmUnavailable, import_vllm

            try:
                import_vllm(spec.id)
            except VllmUnavailable as exc:
                raise CatalogError(f"{where}, field `backend.type`: {exc}") from exc
        elif isinstance(backend, SentenceBackend) and backend.path is not None and not backend.path.expanduser().is_dir():
            raise CatalogError(f"{where}, field `backend.path`: {backend.path} is not a directory.")


def access(catalog: Catalog) -> ModelAccess:
    """Organization and project allow-lists by canonical id (aliases resolved); "*" is everyone else."""
    ids = {name: spec.id for spec in catalog.models for name in (spec.id, *spec.aliases)}

    def resolve(names: list[str]) -> frozenset[str] | None:
        return None if ALL_MODELS in names else frozenset(ids[n] for n in names)

    projects = catalog.projects.get(ALL_MODELS)
    organizations = catalog.organizations.get(ALL_MODELS)
    return ModelAccess(
        {pid: resolve(a.models) for pid, a in catalog.projects.items() if pid != ALL_MODELS},
        default=resolve(projects.models) if projects is not None else None,
        organizations={oid: resolve(a.models) for oid, a in catalog.organizations.items() if oid != ALL_MODELS},
        organization_default=resolve(organizations.models) if organizations is not None else None,
    )


def _build(path: Path, index: int, spec: ModelSpec, settings: Settings, api_key: str | None, key: str) -> BuiltModel:
    where = f"{path}: model `{spec.id}` (models[{index}])"
    backend = spec.backend
    if isinstance(backend, LlamaCppBackend):
        return _llamacpp(where, spec, backend, settings, key)
    if isinstance(backend, OpenAIBackend):
        from modelhost.engine.upstream import UpstreamEngine

        assert spec.context_length is not None, "checked when the file was loaded"
        engine = UpstreamEngine(
            model_id=spec.id,
            base_urls=backend.base_urls,
            upstream_model=backend.model or spec.id,
            context_length=spec.context_length,
            api_key=api_key,
            max_n=backend.max_n,
            connect_timeout=backend.connect_timeout_seconds,
            read_timeout=backend.read_timeout_seconds,
            health_path=backend.health_path,
            health_interval=backend.health_interval_seconds,
            failure_threshold=backend.failure_threshold,
            cooldown=backend.cooldown_seconds,
            cache_salts=_cache_salts(settings),
            salt_requests=backend.cache_salt,
        )
        return BuiltModel(key, DrainableEngine(_fair(engine, backend)), None, int(time.time()), _fingerprint("openai", key))
    if isinstance(backend, VllmBackend):
        from modelhost.engine.vllm import VllmEngine, VllmOptions, VllmUnavailable

        options = VllmOptions(**backend.model_dump(exclude={"type", "max_n", *_SHARE_FIELDS}))
        try:
            in_process = VllmEngine(
                model_id=spec.id, options=options, context_length=spec.context_length, max_n=backend.max_n, cache_salts=_cache_salts(settings)
            )
        except VllmUnavailable as exc:
            raise CatalogError(f"{where}, field `backend.type`: {exc}") from exc
        return BuiltModel(key, DrainableEngine(_fair(in_process, backend)), None, int(time.time()), _fingerprint("vllm", options))
    assert isinstance(backend, SentenceBackend)
    return _sentence(where, spec, backend, key)


_SHARE_FIELDS = (
    "max_in_flight",
    "max_in_flight_per_organization",
    "max_in_flight_per_project",
    "max_queued",
    "max_queued_per_organization",
    "max_queued_per_project",
)


def _fair(engine: Engine, backend: OpenAIBackend | VllmBackend) -> FairShareEngine:
    """An upstream or vLLM queues what it is sent first come, first served: forward no more than it
    runs at once, share that out per tenant, and hold the rest here (`engine/fair_share.py`)."""
    queue = ShareLimits.of(backend.max_queued, backend.max_queued_per_organization, backend.max_queued_per_project)
    if isinstance(backend, OpenAIBackend):
        in_flight: int | None = backend.max_in_flight or backend.max_in_flight_per_replica * len(backend.base_urls)
    else:
        in_flight = backend.max_in_flight  # None: vLLM's own max_num_seqs, known once it started
    return FairShareEngine(
        engine,
        queue,
        in_flight=in_flight,
        per_organization=backend.max_in_flight_per_organization,
        per_project=backend.max_in_flight_per_project,
    )


def _cache_salts(settings: Settings) -> CacheSalts:
    return CacheSalts(settings.cache_salt_secret.get_secret_value().encode(), shared=settings.share_prefix_across_organizations)


def _gguf(where: str, backend: LlamaCppBackend) -> Path:
    if backend.path is not None:
        return backend.path.expanduser()
    assert backend.package is not None
    found = importlib.util.find_spec(backend.package.split(".")[0])
    if found is None or not found.submodule_search_locations:
        raise CatalogError(f"{where}, field `backend.package`: no installed package `{backend.package}` (pip install it, or give `path`).")
    root = Path(list(found.submodule_search_locations)[0])
    if backend.file is not None:
        return root / backend.file
    files = sorted(root.rglob("*.gguf"))
    if len(files) != 1:
        names = ", ".join(str(f.relative_to(root)) for f in files) or "none"
        raise CatalogError(f"{where}, field `backend.file`: package `{backend.package}` holds {len(files)} GGUF files ({names}); name one.")
    return files[0]


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def _llamacpp(where: str, spec: ModelSpec, backend: LlamaCppBackend, settings: Settings, key: str) -> BuiltModel:
    from modelhost.engine.llama_model import LlamaModel, ModelLoadError
    from modelhost.engine.llamacpp import LlamaCppEngine

    file = _gguf(where, backend)
    field_name = "backend.path" if backend.path is not None else "backend.package"
    if not file.is_file():
        raise CatalogError(f"{where}, field `{field_name}`: {file} is not a file.")
    if backend.sha256 and _sha256(file) != backend.sha256.lower():
        raise CatalogError(f"{where}, field `backend.sha256`: {file} has another SHA-256; refusing to load it.")
    try:
        model = LlamaModel(file)
    except ModelLoadError as exc:
        raise CatalogError(f"{where}, field `{field_name}`: {exc}") from exc
    context = spec.context_length or DEFAULT_CONTEXT
    engine = LlamaCppEngine(
        model,
        model_id=spec.id,
        slots=backend.slots,
        batch_reserved_slots=backend.batch_reserved_slots,
        slot_context=context,
        batch_tokens=backend.batch_tokens,
        threads=backend.threads,
        flash_attention=backend.flash_attention,
        kv_unified=backend.kv_unified,
        max_queued=backend.max_queued,
        max_queued_per_organization=backend.max_queued_per_organization,
        max_queued_per_project=backend.max_queued_per_project,
        prefix_reuse=backend.prefix_reuse,
        share_prefix_across_scopes=settings.share_prefix_across_organizations,
    )
    embedder = None
    if EMBEDDINGS in spec.features:
        from modelhost.engine.embedding.gguf import LlamaEmbedder

        embedder = DrainableEmbedder(
            LlamaEmbedder(
                model, model_id=spec.id, max_input_tokens=context, threads=backend.threads, max_queued=settings.embedding_max_queued
            )
        )
    stat = file.stat()
    return BuiltModel(
        key, DrainableEngine(engine), embedder, int(stat.st_mtime), _fingerprint(file.name, stat.st_size), closers=[model.close]
    )


def _sentence(where: str, spec: ModelSpec, backend: SentenceBackend, key: str) -> BuiltModel:
    from modelhost.engine.embedding import SentenceEmbedder, bundled_embedding_model_dir
    from modelhost.engine.embedding.bert import BertLoadError

    try:
        model_dir = backend.path.expanduser() if backend.path is not None else bundled_embedding_model_dir()
        embedder = SentenceEmbedder(model_dir, model_id=spec.id, max_queued=backend.max_queued)
    except (BertLoadError, OSError) as exc:
        raise CatalogError(f"{where}, field `backend.path`: {exc}") from exc
    weights = (model_dir / "model.safetensors").stat()
    return BuiltModel(key, None, DrainableEmbedder(embedder), int(weights.st_mtime), _fingerprint(model_dir.name, weights.st_size))
