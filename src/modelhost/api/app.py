"""The application factory: builds state in the lifespan, attaches routers, middleware, handlers."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import signal
from collections.abc import AsyncIterator, Callable
from datetime import datetime, timezone

from fastapi import FastAPI
from sqlalchemy.orm import Session, sessionmaker
from starlette.concurrency import run_in_threadpool

from modelhost import __version__
from modelhost.organization import bootstrap
from modelhost.api import admin, chat, completions, embeddings, health, metrics, models, openapi, stored_chat
from modelhost.api.batches import router as batches_router
from modelhost.api.conversations import router as conversations_router
from modelhost.api.files import router as files_router
from modelhost.api.uploads import router as uploads_router
from modelhost.api.errors import install_error_handlers
from modelhost.api.responses import router as responses_router
from modelhost.api.inflight import InFlightRequests
from modelhost.api.middleware import RequestContextMiddleware
from modelhost.api.state import AppState
from modelhost.auth import Authenticator
from modelhost.blobs import BlobStore
from modelhost.blobs.open import open_blob_store
from modelhost.batches.files import StoredFiles
from modelhost.batches.runner import BatchRunner, RunnerSettings
from modelhost.catalog import ModelCatalog
from modelhost.config import Settings
from modelhost.limits import Limiter, PriceTable, open_limiter
from modelhost.engine import ModelRegistry, ServedModel
from modelhost.engine.grammar_compiler import close_default_compiler
from modelhost.observability import Observability
from modelhost.pipeline import Pipeline
from modelhost.pipeline.ledger_writer import LedgerWriter
from modelhost.store import UsageLedger, migrate, open_engine, retention, session_factory

logger = logging.getLogger(__name__)

RegistryFactory = Callable[[Settings], ModelRegistry]


def default_registry(settings: Settings) -> ModelRegistry:
    """The configured GGUF (or the bundled SmolLM2) served by the embedded llama.cpp engine."""
    from modelhost.engine.llama_model import LlamaModel, bundled_model_path
    from modelhost.engine.llamacpp import LlamaCppEngine

    path = settings.model_path or bundled_model_path()
    model = LlamaModel(path)
    engine = LlamaCppEngine(
        model,
        model_id=settings.model_id,
        slots=settings.slots,
        batch_reserved_slots=settings.batch_reserved_slots,
        slot_context=settings.slot_context,
        batch_tokens=settings.batch_tokens,
        threads=settings.threads,
        flash_attention=settings.flash_attention,
        kv_unified=settings.kv_unified,
        max_queued=settings.max_queued,
        max_queued_per_organization=settings.max_queued_per_organization,
        max_queued_per_project=settings.max_queued_per_project,
        prefix_reuse=settings.prefix_reuse,
        share_prefix_across_scopes=settings.share_prefix_across_organizations,
    )
    embedder = None
    if settings.chat_model_embeddings:
        from modelhost.engine.embedding.gguf import LlamaEmbedder

        embedder = LlamaEmbedder(
            model,
            model_id=settings.model_id,
            max_input_tokens=settings.slot_context,
            threads=settings.threads,
            max_queued=settings.embedding_max_queued,
        )
    stat = path.stat()
    digest = hashlib.sha256(f"{path.name}:{stat.st_size}:{__version__}".encode()).hexdigest()[:10]
    models = [
        ServedModel(
            id=settings.model_id,
            created=int(stat.st_mtime),
            owned_by=settings.model_owned_by,
            engine=engine,
            fingerprint=f"fp_{digest}",
            embedder=embedder,
        )
    ]
    if settings.embedding_model_enabled:
        models.append(embedding_model(settings))
    return ModelRegistry(models)


def embedding_model(settings: Settings) -> ServedModel:
    """The configured sentence-transformers directory (or the bundled all-MiniLM-L6-v2), embeddings only."""
    from modelhost.engine.embedding import SentenceEmbedder, bundled_embedding_model_dir

    model_dir = settings.embedding_model_path or bundled_embedding_model_dir()
    embedder = SentenceEmbedder(model_dir, model_id=settings.embedding_model_id, max_queued=settings.embedding_max_queued)
    weights = (model_dir / "model.safetensors").stat()
    digest = hashlib.sha256(f"{model_dir.name}:{weights.st_size}:{__version__}".encode()).hexdigest()[:10]
    return ServedModel(
        id=settings.embedding_model_id,
        created=int(weights.st_mtime),
        owned_by=settings.model_owned_by,
        engine=None,
        fingerprint=f"fp_{digest}",
        embedder=embedder,
    )


def create_app(settings: Settings | None = None, *, registry_factory: RegistryFactory = default_registry) -> FastAPI:
    settings = settings or Settings()
    observability = Observability(access_log=settings.access_log)
    inflight = InFlightRequests()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        database = open_engine(settings.resolved_database_url())
        await run_in_threadpool(migrate, database)
        sessions = session_factory(database)
        first = await run_in_threadpool(bootstrap.bootstrap, sessions)
        if first.created:
            logger.warning(
                "created organization %s with project %s and owner %s; create a key with: modelhost keys create",
                first.organization_id,
                first.project_id,
                first.user_email,
            )
        ledger = UsageLedger(sessions)
        ledger_writer = LedgerWriter(
            ledger,
            heartbeat=settings.ledger_heartbeat_seconds,
            settle_wait=settings.ledger_settle_wait_seconds,
            # Longer than any request may live, however its replica fares: past it a pending row is swept.
            max_request_seconds=settings.request_timeout_seconds + settings.shutdown_grace_seconds + 300,
            spool_dir=settings.home / "ledger-spool",
        )
        catalog: ModelCatalog | None = None
        if settings.models_file is not None and registry_factory is default_registry:
            catalog = ModelCatalog(settings, install=lambda new, prices: _install(app.state.modelhost, new, prices))
            registry = await catalog.open()
        else:
            registry = registry_factory(settings)
            await registry.start()
        authenticator = Authenticator(sessions, cache_seconds=settings.key_cache_seconds)
        limiter = open_limiter(settings, sessions, ledger, prices=catalog.prices if catalog is not None else None)
        await _check_limit_store(settings, limiter)
        blobs = open_blob_store(settings)
        app.state.modelhost = AppState(
            settings=settings,
            database=database,
            sessions=sessions,
            authenticator=authenticator,
            ledger=ledger,
            ledger_writer=ledger_writer,
            registry=registry,
            pipeline=Pipeline(ledger_writer, observability, limiter=limiter),
            limiter=limiter,
            blobs=blobs,
            observability=observability,
        )
        await ledger_writer.start()  # also settles rows left pending by crashed replicas
        batch_runner = _batch_runner(app, app.state.modelhost)
        app.state.batch_runner = batch_runner
        if settings.batch_runner_enabled:
            await batch_runner.start()
        flusher = asyncio.create_task(_flush_key_use(authenticator, settings.last_used_flush_seconds))
        sweeper = asyncio.create_task(_sweep_expired(sessions, settings.stored_objects_sweep_seconds))
        blob_sweeper = asyncio.create_task(_sweep_file_blobs(sessions, blobs, settings.stored_objects_sweep_seconds))
        hangup = _reload_on_sighup(catalog)
        try:
            yield
        finally:
            flusher.cancel()
            sweeper.cancel()
            blob_sweeper.cancel()
            if hangup:
                asyncio.get_running_loop().remove_signal_handler(signal.SIGHUP)
            await batch_runner.stop()  # before the engines stop: its running lines are settled, their leases released
            if catalog is not None:
                await catalog.close()
            else:
                await registry.stop()
            await run_in_threadpool(_flush_quietly, authenticator)
            await limiter.close()
            await ledger_writer.close()  # after the registry stopped: every run has settled
            close_default_compiler()  # schema-compile workers die with the server
            await blobs.close()
            database.dispose()

    app = FastAPI(
        title="modelhost",
        version=__version__,
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,  # served by api/openapi.py to authenticated callers only
    )
    app.state.inflight = inflight  # api/server.py drains it on SIGTERM
    observability.metrics.watch_engines(lambda: _engine_states(app))
    app.add_middleware(
        RequestContextMiddleware,
        max_body_bytes=settings.max_body_bytes,
        body_timeout=settings.body_timeout_seconds,
        request_timeout=settings.request_timeout_seconds,
        inflight=inflight,
        observability=observability,
        # A file upload's body streams into the blob store: its file, plus room for the multipart envelope.
        max_streamed_body_bytes=settings.files_max_bytes + 64 * 1024,
    )
    install_error_handlers(app)
    app.include_router(health.router)
    app.include_router(models.router)
    app.include_router(chat.router)
    app.include_router(stored_chat.router)
    app.include_router(embeddings.router)
    app.include_router(completions.router)
    app.include_router(responses_router)
    app.include_router(conversations_router)
    app.include_router(files_router)
    app.include_router(uploads_router)
    app.include_router(batches_router)
    app.include_router(admin.router)
    app.include_router(metrics.router)
    app.include_router(openapi.router)
    openapi.install_openapi(app)
    return app


def _batch_runner(app: FastAPI, state: AppState) -> BatchRunner:
    """This replica's batch runner: lines dispatched through `app` itself, claimed under the ledger's replica id."""
    settings = state.settings
    files = StoredFiles(
        state.sessions, state.blobs, limit=settings.files_max_bytes, storage_limit=settings.project_storage_limit_bytes
    )
    return BatchRunner(
        app=app,  # type: ignore[arg-type]
        sessions=state.sessions,
        files=files,
        registry=lambda: state.registry,
        replica_id=state.ledger_writer.replica_id,
        limiter=state.limiter,
        settings=RunnerSettings(
            poll_seconds=settings.batch_poll_seconds,
            lease_seconds=settings.batch_lease_seconds,
            per_batch=settings.batch_concurrency_per_batch,
            per_organization=settings.batch_concurrency_per_organization,
            max_line_bytes=settings.max_body_bytes,
            max_lines=settings.batch_max_requests,
        ),
    )


def _install(state: AppState, registry: ModelRegistry, prices: PriceTable) -> None:
    """A reloaded models file: new requests look models up in `registry` and are priced by `prices`."""
    state.registry = registry
    state.limiter.prices = prices


async def _check_limit_store(settings: Settings, limiter: Limiter) -> None:
    """Say at startup what the limits will be counted in; a Redis that is down is not fatal (requests get 503)."""
    if settings.redis_url:
        if not await limiter.backend.ping():
            logger.error("Redis for rate limits and quotas is unreachable; generation requests get 503 until it is back")
    elif not settings.resolved_database_url().startswith("sqlite"):
        logger.warning(
            "rate limits and quotas are counted in this process only; replicas sharing this database each count "
            "their own. Set MODELHOST_REDIS_URL to share them."
        )


def _reload_on_sighup(catalog: ModelCatalog | None) -> bool:
    """SIGHUP re-reads the models file (`modelhost serve` only: signals belong to the main thread)."""
    if catalog is None or not hasattr(signal, "SIGHUP"):
        return False
    reloads: set[asyncio.Task[bool]] = set()

    def reload() -> None:
        task = asyncio.ensure_future(catalog.reload())
        reloads.add(task)
        task.add_done_callback(reloads.discard)

    try:
        asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, reload)
    except (NotImplementedError, RuntimeError, ValueError):  # not the main thread (an in-process test server)
        logger.info("SIGHUP reloads are off in this process: it does not own the main thread")
        return False
    return True


def _engine_states(app: FastAPI) -> list[dict[str, object]]:
    state: AppState | None = getattr(app.state, "modelhost", None)
    return [m.engine.state() for m in state.registry.all() if m.engine is not None] if state is not None else []


def _flush_quietly(authenticator: Authenticator) -> None:
    try:
        authenticator.flush_key_use()
    except Exception:
        logger.warning("could not write key last-used times; will retry", exc_info=True)


async def _flush_key_use(authenticator: Authenticator, every: float) -> None:
    while True:
        await asyncio.sleep(every)
        await run_in_threadpool(_flush_quietly, authenticator)


async def _sweep_expired(sessions: sessionmaker[Session], every: float) -> None:
    """Delete expired stored objects now and every `every` seconds (store/retention.py); a failure waits for the next round."""
    while True:
        try:
            deleted = await run_in_threadpool(retention.purge_expired, sessions, datetime.now(timezone.utc))
            if any(deleted.values()):
                logger.info("retention: deleted expired stored objects %s", deleted)
        except Exception:
            logger.warning("could not delete expired stored objects; will retry", exc_info=True)
        await asyncio.sleep(every)


async def _sweep_file_blobs(sessions: sessionmaker[Session], blobs: BlobStore, every: float) -> None:
    """Remove the blobs of deleted and expired files and of finished uploads' parts (files/sweep.py), every `every` seconds."""
    from modelhost.files import sweep_blobs

    while True:
        try:
            removed = await sweep_blobs(sessions, blobs)
            if any(removed.values()):
                logger.info("files sweep: removed blobs %s", removed)
        except Exception:
            logger.warning("could not remove the blobs of deleted files; will retry", exc_info=True)
        await asyncio.sleep(every)
