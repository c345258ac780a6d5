"""The price table: what each model costs, frozen, and swapped whole when the models file is reloaded.

Built from `MODELHOST_PRICES` and the models file's ``price = {…}`` entries (the operator's
setting wins). Nothing changes a table in place: a reload builds a new one and hands it to the
limiter beside the new model registry, so every lookup sees one whole table, never a half-built
one. A request reserved just before a reload is settled at the new table's price: its dollar
counter holds actual tokens × the price in force when it settled (the ledger stores tokens, and
the Costs API prices them with the current table).

``PriceTable({"m": ModelPrice(input=1.0)}).price_of("other")`` is the ``"*"`` price if there is
one, else zero.

Batch work (a line of a batch) pays `batch_multiplier` times the price: the model's own
multiplier, else the ``"*"`` entry's, else `DEFAULT_BATCH_MULTIPLIER` (OpenAI's Batch API
costs half). ``PriceTable({"m": ModelPrice(input=2.0)}).price_of("m", batch=True).input == 1.0``.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from types import MappingProxyType

from modelhost.config import ModelPrice

#: The price of a model nothing prices.
FREE = ModelPrice()
#: What batch work pays where no entry says otherwise: half, as at OpenAI.
DEFAULT_BATCH_MULTIPLIER = 0.5


class PriceTable(Mapping[str, ModelPrice]):
    """Per-model prices in USD per 1M tokens, read-only; ``"*"`` prices every model not named."""

    __slots__ = ("_prices",)

    def __init__(self, prices: Mapping[str, ModelPrice] | None = None) -> None:
        self._prices: Mapping[str, ModelPrice] = MappingProxyType(dict(prices or {}))

    @classmethod
    def layered(cls, *layers: Mapping[str, ModelPrice]) -> PriceTable:
        """One table from several; a later layer's price of a model wins."""
        merged: dict[str, ModelPrice] = {}
        for layer in layers:
            merged.update(layer)
        return cls(merged)

    def price_of(self, model: str, *, batch: bool = False) -> ModelPrice:
        """The model's price, else the ``"*"`` price, else free: the one lookup of a price.

        With `batch`, the price of batch work: both sides times `batch_multiplier`.
        """
        price = self._prices.get(model) or self._prices.get("*") or FREE
        if not batch:
            return price
        multiplier = self.batch_multiplier(model)
        return ModelPrice(input=price.input * multiplier, output=price.output * multiplier, batch_multiplier=multiplier)

    def batch_multiplier(self, model: str) -> float:
        """What batch work on `model` pays as a multiple of its price: its own, else ``"*"``'s, else 0.5."""
        for entry in (self._prices.get(model), self._prices.get("*")):
            if entry is not None and entry.batch_multiplier is not None:
                return entry.batch_multiplier
        return DEFAULT_BATCH_MULTIPLIER

    def __getitem__(self, model: str) -> ModelPrice:
        return self._prices[model]

    def __iter__(self) -> Iterator[str]:
        return iter(self._prices)

    def __len__(self) -> int:
        return len(self._prices)

    def __repr__(self) -> str:
        return f"PriceTable({dict(self._prices)!r})"
