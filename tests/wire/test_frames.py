"""Unit, property and hostile-input tests of ``narwhal.wire.frames`` (spec section 5)."""

from __future__ import annotations

import struct

import cbor2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from narwhal.errors import ErrorCode, FrameError, FrameTooLarge
from narwhal.wire.frames import (
    DEFAULT_MAX_FRAME_SIZE,
    MAX_ERROR_TEXT,
    Frame,
    FrameDecoder,
    FrameKind,
    decode_error_body,
    encode_error_body,
    encode_frame,
    frame_header,
)
from tests.wire.harness import cut_points, decode_all, split

frames_st = st.builds(
    Frame,
    kind=st.sampled_from(FrameKind),
    request_id=st.integers(0, 2**32 - 1),
    tag=st.integers(0, 2**16 - 1),
    body=st.binary(max_size=300),
)


def header(length: int, kind: int = 0, request_id: int = 1, tag: int = 2) -> bytes:
    return struct.pack(">IBIH", length, kind, request_id, tag)


def decode_one(data: bytes | bytearray | memoryview, **kwargs: int) -> Frame | None:
    decoder = FrameDecoder(**kwargs)
    decoder.receive_data(data)
    return decoder.next_frame()


# --- round trips ------------------------------------------------------------------------


@pytest.mark.parametrize("kind", list(FrameKind))
def test_round_trip_every_kind(kind: FrameKind) -> None:
    frame = Frame(kind, 0xDEADBEEF, 0xBEEF, b"body")
    data = encode_frame(frame.kind, frame.request_id, frame.tag, frame.body)
    assert data[:4] == (7 + 4).to_bytes(4, "big") and data[4] == kind
    assert decode_one(data) == frame


def test_frame_header_is_encode_frame_prefix() -> None:
    body = b"x" * 1000
    assert frame_header(FrameKind.REQUEST, 5, 9, len(body)) + body == encode_frame(
        FrameKind.REQUEST, 5, 9, body
    )


def test_zero_length_body() -> None:
    data = encode_frame(FrameKind.PING, 7)
    assert len(data) == 11 and data[:4] == b"\x00\x00\x00\x07"
    assert decode_one(data) == Frame(FrameKind.PING, 7, 0, b"")


def test_body_of_exactly_max_frame_size_is_accepted() -> None:
    body = b"z" * (1024 - 7)
    assert decode_one(encode_frame(FrameKind.ONEWAY, 0, 1, body), max_frame_size=1024) == Frame(
        FrameKind.ONEWAY, 0, 1, body
    )


@pytest.mark.parametrize("wrap", [bytes, bytearray, memoryview])
def test_bytes_like_inputs(wrap: type) -> None:
    data = encode_frame(FrameKind.RESPONSE, 3, 4, b"abc") * 2
    frames = decode_all(FrameDecoder(), [wrap(data[:5]), wrap(data[5:])])
    assert frames == [Frame(FrameKind.RESPONSE, 3, 4, b"abc")] * 2
    assert all(type(f.body) is bytes for f in frames)


@settings(max_examples=150, deadline=None)
@given(st.data(), st.lists(frames_st, max_size=20))
def test_any_split_decodes_to_the_same_frames(data: st.DataObject, frames: list[Frame]) -> None:
    stream = b"".join(encode_frame(f.kind, f.request_id, f.tag, f.body) for f in frames)
    cuts = data.draw(cut_points(len(stream), max_cuts=40))
    decoder = FrameDecoder()
    assert decode_all(decoder, split(stream, cuts)) == frames
    assert decoder.buffered == 0


def test_byte_at_a_time() -> None:
    frames = [Frame(k, i, i, bytes([i]) * i) for i, k in enumerate(FrameKind)]
    stream = b"".join(encode_frame(f.kind, f.request_id, f.tag, f.body) for f in frames)
    assert decode_all(FrameDecoder(), split(stream, range(len(stream)))) == frames


def test_many_small_frames_in_one_chunk() -> None:
    """100k frames in one receive_data: completes (the consumed prefix is compacted lazily)."""
    one = encode_frame(FrameKind.PING, 1)
    decoder = FrameDecoder()
    decoder.receive_data(one * 100_000)
    count = 0
    while decoder.next_frame() is not None:
        count += 1
    assert count == 100_000 and decoder.buffered == 0


# --- hostile input ------------------------------------------------------------------------


@pytest.mark.parametrize("length", range(7))
def test_length_below_header_is_rejected_on_the_length_bytes(length: int) -> None:
    decoder = FrameDecoder()
    decoder.receive_data(length.to_bytes(4, "big"))
    with pytest.raises(FrameError) as info:
        decoder.next_frame()
    assert type(info.value) is FrameError and info.value.code is ErrorCode.PROTOCOL_ERROR


@pytest.mark.parametrize(
    ("max_size", "length"),
    [(DEFAULT_MAX_FRAME_SIZE, DEFAULT_MAX_FRAME_SIZE + 1), (1024, 1025), (1024, 0xFFFFFFFF)],
)
def test_too_large_is_rejected_after_four_bytes(max_size: int, length: int) -> None:
    decoder = FrameDecoder(max_frame_size=max_size)
    decoder.receive_data(length.to_bytes(4, "big"))  # no kind, no body yet
    with pytest.raises(FrameTooLarge) as info:
        decoder.next_frame()
    assert info.value.code is ErrorCode.TOO_LARGE
    assert decoder.buffered == 0  # nothing kept for the declared body


def test_three_length_bytes_wait_for_more() -> None:
    decoder = FrameDecoder(max_frame_size=1024)
    decoder.receive_data(b"\xff\xff\xff")
    assert decoder.next_frame() is None


@pytest.mark.parametrize("kind", [7, 8, 128, 255])
def test_unknown_kind(kind: int) -> None:
    with pytest.raises(FrameError, match="kind"):
        decode_one(header(7, kind))


def test_truncated_frame_waits_without_error() -> None:
    data = encode_frame(FrameKind.REQUEST, 1, 2, b"0123456789")
    for cut in range(len(data)):
        decoder = FrameDecoder()
        decoder.receive_data(data[:cut])
        assert decoder.next_frame() is None
        assert decoder.buffered == cut


@pytest.mark.parametrize("bad", [header(3), header(7, 9), (2**31).to_bytes(4, "big")])
def test_decoder_is_unusable_after_an_error(bad: bytes) -> None:
    decoder = FrameDecoder()
    decoder.receive_data(bad)
    with pytest.raises(FrameError):
        decoder.next_frame()
    good = encode_frame(FrameKind.PING, 1)
    with pytest.raises(FrameError):
        decoder.receive_data(good)
    with pytest.raises(FrameError):
        decoder.next_frame()


def test_buffer_cap_without_draining() -> None:
    decoder = FrameDecoder(max_frame_size=1024, slack=100)
    decoder.receive_data(b"\x00" * (1024 + 4 + 100))  # exactly at the cap: fine
    with pytest.raises(FrameTooLarge):
        decoder.receive_data(b"\x00")
    with pytest.raises(FrameTooLarge):
        decoder.next_frame()


def test_buffer_cap_counts_only_undrained_bytes() -> None:
    decoder = FrameDecoder(max_frame_size=1024, slack=0)
    ping = encode_frame(FrameKind.PING, 1)
    for _ in range(1000):  # 11 kB in total, never more than 11 bytes buffered
        assert decode_all(decoder, [ping]) == [Frame(FrameKind.PING, 1, 0)]


def test_max_frame_size_below_header_is_a_local_error() -> None:
    with pytest.raises(ValueError):
        FrameDecoder(max_frame_size=6)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=2000), st.lists(st.integers(0, 2000), max_size=8))
def test_garbage_raises_only_frame_errors(garbage: bytes, cuts: list[int]) -> None:
    decoder = FrameDecoder(max_frame_size=1024)
    try:
        frames = decode_all(decoder, split(garbage, cuts))
    except FrameError:
        return
    assert sum(11 + len(f.body) for f in frames) + decoder.buffered == len(garbage)


# --- ERROR / GOAWAY bodies ------------------------------------------------------------------


@pytest.mark.parametrize("code", [1, 6, 14, 999, 2**32 - 1])
def test_error_body_round_trip(code: int) -> None:
    assert decode_error_body(encode_error_body(code, "why ✓")) == (code, "why ✓")
    assert cbor2.loads(encode_error_body(code, "t")) == [code, "t"]


def test_error_body_encoder_truncates_to_1024_utf8_bytes() -> None:
    code, text = decode_error_body(encode_error_body(3, "é" * 1000))  # 2000 bytes
    assert code == 3 and text == "é" * 512 and len(text.encode()) <= MAX_ERROR_TEXT


def test_error_body_decoder_truncates_to_1024_utf8_bytes() -> None:
    _, text = decode_error_body(cbor2.dumps([3, "€" * 1024]))  # 3072 bytes
    assert len(text.encode()) <= MAX_ERROR_TEXT


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"\xff",
        cbor2.dumps([1]),
        cbor2.dumps([1, "a", "detail"]),
        cbor2.dumps([1, "a", -1]),
        cbor2.dumps([1, "a", 2, 3]),
        cbor2.dumps(["1", "a"]),
        cbor2.dumps([True, "a"]),
        cbor2.dumps([-1, "a"]),
        cbor2.dumps([2**32, "a"]),
        cbor2.dumps([1, b"bytes"]),
        cbor2.dumps({"code": 1}),
    ],
)
def test_malformed_error_body(body: bytes) -> None:
    assert decode_error_body(body) == (ErrorCode.PROTOCOL_ERROR, "malformed error body")


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=200))
def test_error_body_decoder_never_raises(garbage: bytes) -> None:
    code, text = decode_error_body(garbage)
    assert isinstance(code, int) and isinstance(text, str)
