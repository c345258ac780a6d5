"""The models file, served and reloadable without dropping a request.

``registry = await catalog.open()`` at startup; ``await catalog.reload()`` on SIGHUP. A reload
reads and checks the file, builds what changed (unchanged models keep their running engine),
starts it, and only then swaps the registry that new requests look models up in, and with it the
price table (`catalog.prices`, frozen: the file's prices under the operator's `MODELHOST_PRICES`). Requests already
running keep the engine they started on; an engine no longer in the file is drained — it serves
what it holds for up to `shutdown_grace_seconds`, then takes no more and is stopped. A file that
fails to load or a model that fails to start leaves the previous registry serving, and says why in
the log.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable

import anyio

from modelhost.catalog.build import BuiltModel, build_models
from modelhost.catalog.schema import Catalog, CatalogError, load_catalog
from modelhost.config import Settings
from modelhost.engine.registry import ModelRegistry
from modelhost.limits.prices import PriceTable

logger = logging.getLogger(__name__)

# A request that looked its model up just before a swap may submit to the old engine a little later
# (it was rendering and tokenizing its prompt); retired engines wait this long before they can close.
LATE_SUBMIT_SECONDS = 2.0


class ModelCatalog:
    """See the module docstring. `install(registry, prices)` makes a reload's registry and prices the ones requests use."""

    def __init__(
        self, settings: Settings, *, install: Callable[[ModelRegistry, PriceTable], None] | None = None
    ) -> None:
        assert settings.models_file is not None, "ModelCatalog serves MODELHOST_MODELS_FILE"
        self.path = settings.models_file
        self.install = install
        self.registry: ModelRegistry | None = None
        self.prices = PriceTable(settings.prices)
        self._settings = settings
        self._built: dict[str, BuiltModel] = {}
        self._lock = asyncio.Lock()
        self._draining: set[asyncio.Task[None]] = set()

    async def open(self) -> ModelRegistry:
        """Load, build and start every model; raises `CatalogError` (startup stops with its message)."""
        catalog = load_catalog(self.path)
        registry, built = await anyio.to_thread.run_sync(build_models, self.path, catalog, self._settings, {})
        await _start(built.values())
        self._adopt(catalog, registry, built)
        logger.info("serving %d models from %s", len(registry.all()), self.path)
        return registry

    async def reload(self) -> bool:
        """Re-read the file and swap the registry; False (and the old one keeps serving) on any error."""
        async with self._lock:
            try:
                catalog = await anyio.to_thread.run_sync(load_catalog, self.path)
                registry, built = await anyio.to_thread.run_sync(build_models, self.path, catalog, self._settings, self._built)
            except CatalogError as exc:
                logger.error("models file not reloaded; the previous models keep serving: %s", exc)
                return False
            fresh = [m for key, m in built.items() if key not in self._built]
            try:
                await _start(fresh)
            except Exception:
                logger.exception("models file not reloaded: a new model failed to start; the previous models keep serving")
                for model in fresh:
                    await model.stop()
                return False
            retired = [m for key, m in self._built.items() if key not in built]
            self._adopt(catalog, registry, built)
            if self.install is not None:
                self.install(registry, self.prices)
            for model in retired:
                task = asyncio.create_task(self._retire(model))
                self._draining.add(task)
                task.add_done_callback(self._draining.discard)
            logger.warning(
                "models file reloaded: %d models, %d engines started, %d draining", len(registry.all()), len(fresh), len(retired)
            )
            return True

    async def close(self) -> None:
        """Stop every engine, the draining ones included (at shutdown, after requests were drained)."""
        for task in list(self._draining):
            task.cancel()
        await asyncio.gather(*self._draining, return_exceptions=True)
        for model in self._built.values():
            await model.stop()
        self._built.clear()

    @property
    def draining(self) -> int:
        return len(self._draining)

    def _adopt(self, catalog: Catalog, registry: ModelRegistry, built: dict[str, BuiltModel]) -> None:
        self._built = built
        self.registry = registry
        file_prices = {spec.id: spec.price for spec in catalog.models if spec.price is not None}
        self.prices = PriceTable.layered(file_prices, self._settings.prices)  # MODELHOST_PRICES wins

    async def _retire(self, model: BuiltModel) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max(self._settings.shutdown_grace_seconds, LATE_SUBMIT_SECONDS)
        try:
            await asyncio.sleep(LATE_SUBMIT_SECONDS)
            while model.open and loop.time() < deadline:
                await asyncio.sleep(0.1)
            if model.open:
                logger.warning("a replaced model still had %d requests after the grace period; stopping it", model.open)
        finally:
            model.close()  # same event-loop step as the last check: nothing can slip in between
            with anyio.CancelScope(shield=True):
                await model.stop()


async def _start(models: Iterable[BuiltModel]) -> None:
    started: list[BuiltModel] = []
    try:
        for model in models:
            await model.start()
            started.append(model)
    except BaseException:
        for model in started:
            await model.stop()
        raise
