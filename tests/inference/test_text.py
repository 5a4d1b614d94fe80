"""Turning token pieces into text deltas: UTF-8 boundaries and stop sequences."""

from __future__ import annotations

from lodestar.services.inference.text import TextStream


def _run(pieces: list[bytes], stops: tuple[str, ...] = ()) -> tuple[list[str], str, bool]:
    stream = TextStream(stops)
    deltas: list[str] = []
    for piece in pieces:
        deltas.append(stream.push(piece))
        if stream.stopped:
            break
    tail = stream.finish()
    return deltas, tail, stream.stopped


def test_multibyte_character_split_over_tokens_is_held_back() -> None:
    euro = "€".encode()  # three bytes
    deltas, tail, _ = _run([b"price: ", euro[:1], euro[1:2], euro[2:], b"5"])
    assert deltas == ["price: ", "", "", "€", "5"]
    assert tail == ""


def test_incomplete_character_at_the_end_becomes_a_replacement() -> None:
    deltas, tail, _ = _run([b"ok ", "é".encode()[:1]])
    assert "".join(deltas) == "ok "
    assert tail == "\ufffd"


def test_stop_sequence_across_tokens_is_not_emitted() -> None:
    deltas, tail, stopped = _run([b"Hello", b" wor", b"ld. ", b"END", b"OF", b" more"], ("ENDOF",))
    assert stopped
    assert "".join(deltas) + tail == "Hello world. "
    # "END" could begin the stop sequence, so it was held back, then dropped with it.
    assert deltas == ["Hello", " wor", "ld. ", "", ""]


def test_partial_stop_that_does_not_complete_is_released() -> None:
    deltas, tail, stopped = _run([b"a <", b"|x", b"y> b"], ("<|im_end|>",))
    assert not stopped
    assert deltas[0] == "a "
    assert "".join(deltas) + tail == "a <|xy> b"


def test_earliest_of_several_stops_wins() -> None:
    deltas, tail, stopped = _run([b"one two three"], ("three", "two"))
    assert stopped
    assert "".join(deltas) + tail == "one "


def test_held_partial_stop_is_flushed_when_generation_ends() -> None:
    deltas, tail, stopped = _run([b"the end is ne"], ("near",))
    assert not stopped
    assert deltas == ["the end is "]
    assert tail == "ne"
