"""Stop strings and UTF-8: text is only released when it can no longer be part of a stop."""

from __future__ import annotations

from modelhost.engine.stops import TextAssembler


def feed_all(assembler: TextAssembler, pieces: list[bytes]) -> str:
    return "".join(assembler.feed(p) for p in pieces) + assembler.flush()


def test_without_stops_text_passes_straight_through() -> None:
    a = TextAssembler(())
    assert a.feed(b"Hello") == "Hello"
    assert a.feed(b" world") == " world"


def test_stop_split_across_tokens_is_never_emitted() -> None:
    a = TextAssembler(("END",))
    assert a.feed(b"one E") == "one "
    assert a.feed(b"N") == ""
    assert a.feed(b"D two") == ""
    assert a.stopped
    assert a.flush() == ""


def test_a_false_start_of_a_stop_is_released() -> None:
    a = TextAssembler(("END",))
    assert a.feed(b"E") == ""
    assert a.feed(b"X") == "EX"


def test_held_text_is_flushed_at_the_end() -> None:
    assert feed_all(TextAssembler(("stop here",)), [b"it is st", b"op"]) == "it is stop"


def test_earliest_of_several_stops_wins() -> None:
    a = TextAssembler(("b", "a"))
    assert feed_all(a, [b"xxab"]) == "xx"


def test_multibyte_characters_split_across_tokens() -> None:
    snowman = "\u2603".encode()
    a = TextAssembler(())
    assert a.feed(snowman[:1]) == ""
    assert a.feed(snowman[1:]) == "\u2603"


def test_stop_string_with_non_ascii() -> None:
    a = TextAssembler(("\u00e9t\u00e9",))
    data = "un \u00e9t\u00e9 chaud".encode()
    assert feed_all(a, [data[i : i + 1] for i in range(len(data))]) == "un "
