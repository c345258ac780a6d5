"""`limits.prices.PriceTable`: one frozen table, one lookup, replaced whole on reload."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from modelhost.config import ModelPrice
from modelhost.limits import PriceTable
from modelhost.limits.policy import cost
from modelhost.limits.prices import FREE


def test_a_model_without_a_price_costs_the_star_price_else_nothing() -> None:
    named = ModelPrice(input=1.0, output=2.0)
    assert PriceTable({"m": named, "*": ModelPrice(input=0.5)}).price_of("m") is named
    assert PriceTable({"m": named, "*": ModelPrice(input=0.5)}).price_of("other").input == 0.5
    assert PriceTable({"m": named}).price_of("other") == FREE
    assert cost("usd", "other", 1000, 1000, PriceTable({"m": named})) == 0
    assert cost("usd", "m", 1000, 500, PriceTable({"m": named})) == 2000  # millionths of a dollar


def test_the_table_and_its_prices_cannot_change_in_place() -> None:
    source = {"m": ModelPrice(input=1.0)}
    table = PriceTable(source)
    source["m"] = ModelPrice(input=9.0)  # the table copied what it was given
    assert table.price_of("m").input == 1.0
    with pytest.raises(TypeError):
        table["m"] = ModelPrice()  # type: ignore[index]
    with pytest.raises(ValidationError):
        table["m"].input = 5.0  # type: ignore[misc]


def test_later_layers_win() -> None:
    table = PriceTable.layered({"m": ModelPrice(input=1.0), "n": ModelPrice(input=2.0)}, {"m": ModelPrice(input=3.0)})
    assert {model: price.input for model, price in table.items()} == {"m": 3.0, "n": 2.0}
