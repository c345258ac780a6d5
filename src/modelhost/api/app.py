"""The application factory: builds state in the lifespan, attaches routers, middleware, handlers."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from collections.abc import AsyncIterator, Callable

from fastapi import FastAPI
from starlette.concurrency import run_in_threadpool

from modelhost import __version__, accounts
from modelhost.api import chat, completions, health, models
from modelhost.api.errors import install_error_handlers
from modelhost.api.middleware import RequestContextMiddleware
from modelhost.api.state import AppState
from modelhost.auth import Authenticator
from modelhost.config import Settings
from modelhost.engine import ModelRegistry, ServedModel
from modelhost.pipeline import GenerationPipeline
from modelhost.store import UsageLedger, migrate, open_engine, session_factory

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
        slot_context=settings.slot_context,
        batch_tokens=settings.batch_tokens,
        threads=settings.threads,
        flash_attention=settings.flash_attention,
        kv_unified=settings.kv_unified,
        max_queued=settings.max_queued,
        prefix_reuse=settings.prefix_reuse,
        share_prefix_across_scopes=settings.share_prefix_across_organizations,
    )
    stat = path.stat()
    digest = hashlib.sha256(f"{path.name}:{stat.st_size}:{__version__}".encode()).hexdigest()[:10]
    return ModelRegistry(
        [
            ServedModel(
                id=settings.model_id,
                created=int(stat.st_mtime),
                owned_by=settings.model_owned_by,
                engine=engine,
                fingerprint=f"fp_{digest}",
            )
        ]
    )


def create_app(settings: Settings | None = None, *, registry_factory: RegistryFactory = default_registry) -> FastAPI:
    settings = settings or Settings()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        database = open_engine(settings.resolved_database_url())
        await run_in_threadpool(migrate, database)
        sessions = session_factory(database)
        first = await run_in_threadpool(accounts.bootstrap, sessions)
        if first.created:
            logger.warning(
                "created organization %s with project %s and owner %s; create a key with: modelhost keys create",
                first.organization_id,
                first.project_id,
                first.user_email,
            )
        ledger = UsageLedger(sessions)
        registry = registry_factory(settings)
        await registry.start()
        authenticator = Authenticator(sessions, cache_seconds=settings.key_cache_seconds)
        app.state.modelhost = AppState(
            settings=settings,
            database=database,
            sessions=sessions,
            authenticator=authenticator,
            ledger=ledger,
            registry=registry,
            pipeline=GenerationPipeline(ledger),
        )
        flusher = asyncio.create_task(_flush_key_use(authenticator, settings.last_used_flush_seconds))
        try:
            yield
        finally:
            flusher.cancel()
            await registry.stop()
            await run_in_threadpool(_flush_quietly, authenticator)
            database.dispose()

    app = FastAPI(
        title="modelhost",
        version=__version__,
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
    )
    app.add_middleware(RequestContextMiddleware, max_body_bytes=settings.max_body_bytes)
    install_error_handlers(app)
    app.include_router(health.router)
    app.include_router(models.router)
    app.include_router(chat.router)
    app.include_router(completions.router)
    return app


def _flush_quietly(authenticator: Authenticator) -> None:
    try:
        authenticator.flush_key_use()
    except Exception:
        logger.warning("could not write key last-used times; will retry", exc_info=True)


async def _flush_key_use(authenticator: Authenticator, every: float) -> None:
    while True:
        await asyncio.sleep(every)
        await run_in_threadpool(_flush_quietly, authenticator)
