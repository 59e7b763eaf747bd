"""Application frames: the length-prefixed records inside the decrypted Noise byte stream.

Layout (all integers big-endian; ``wire_spec.md`` section 5 is the authority)::

    +----------+--------+--------------+----------+-----------------+
    | length   | kind   | request id   | type tag | body            |
    | u32      | u8     | u32          | u16      | length - 7 bytes|
    +----------+--------+--------------+----------+-----------------+

``length`` counts every byte after itself, so it is at least :data:`FRAME_HEADER_TAIL`
(7). A frame whose ``length`` exceeds the receiver's maximum is rejected as soon as its
four length bytes arrive: the decoder never allocates for a size a peer merely *declared*.

This module is sans-IO: :class:`FrameDecoder` takes bytes and hands out :class:`Frame`
objects; :func:`encode_frame` / :func:`frame_header` turn frames into bytes. It knows
nothing about Noise, sockets or asyncio.
"""

from __future__ import annotations

import enum
import struct
from typing import Final, NamedTuple, NoReturn

import cbor2

from narwhal.errors import ErrorCode, FrameError, FrameTooLarge
from narwhal.limits import DEFAULT_MAX_FRAME_SIZE

__all__ = [
    "DEFAULT_MAX_FRAME_SIZE",
    "FRAME_HEADER",
    "FRAME_HEADER_TAIL",
    "MAX_ERROR_TEXT",
    "Frame",
    "FrameDecoder",
    "FrameKind",
    "decode_error",
    "decode_error_body",
    "encode_error_body",
    "encode_frame",
    "frame_header",
]

#: ``length`` (u32), ``kind`` (u8), ``request id`` (u32), ``type tag`` (u16).
FRAME_HEADER: Final = struct.Struct(">IBIH")
#: Bytes of header that ``length`` counts (kind + request id + tag).
FRAME_HEADER_TAIL: Final = FRAME_HEADER.size - 4

#: Largest request id (u32). Ids wrap around; 0 is never used for a request.
MAX_REQUEST_ID: Final = 0xFFFF_FFFF
#: Largest type tag (u16).
MAX_TYPE_TAG: Final = 0xFFFF

#: When the consumed prefix of the receive buffer exceeds this, the buffer is compacted.
#: Compacting lazily keeps parsing many small frames O(n) instead of O(n^2).
_COMPACT_THRESHOLD: Final = 256 * 1024


class FrameKind(enum.IntEnum):
    """What a frame is for. Unknown kinds are a protocol error."""

    #: Expects exactly one RESPONSE or ERROR with the same request id.
    REQUEST = 0
    #: Successful answer to the REQUEST with the same id.
    RESPONSE = 1
    #: Fire-and-forget message; request id is 0.
    ONEWAY = 2
    #: Failure answer to a REQUEST (or, with id 0, a connection-level notice); body [code, text].
    ERROR = 3
    #: Keepalive probe; the receiver answers PONG with the same id and an empty body.
    PING = 4
    #: Answer to PING.
    PONG = 5
    #: The sender will start no new requests on this connection; body [code, text].
    GOAWAY = 6


_KINDS: Final = frozenset(int(k) for k in FrameKind)
#: value -> FrameKind. Kinds are 0..6, so indexing this tuple replaces ``FrameKind(value)``
#: (an enum call costs ~1 us, once per received frame).
_KIND_OF: Final = tuple(sorted(FrameKind))
assert [int(k) for k in _KIND_OF] == list(range(len(_KIND_OF)))
_LENGTH: Final = struct.Struct(">I")
#: Bodies longer than this are copied out through a memoryview (one copy instead of a
#: bytearray slice + bytes(), two); shorter ones through the slice, cheaper when small.
_VIEW_COPY_MIN: Final = 2048


class Frame(NamedTuple):
    """One decoded frame. ``body`` is the raw (still encoded) message body.

    A NamedTuple rather than a frozen attrs class: as immutable, and ~4x cheaper to build
    (frozen attrs sets each slot through ``object.__setattr__``), once per received frame.
    """

    kind: FrameKind
    request_id: int
    tag: int
    body: bytes = b""


def frame_header(kind: FrameKind, request_id: int, tag: int, body_length: int) -> bytes:
    """The 11 header bytes of a frame; write the body right after them.

    Split from :func:`encode_frame` so a large body (a 500 KB batch) can be written
    without first being copied behind its header.
    """
    return FRAME_HEADER.pack(FRAME_HEADER_TAIL + body_length, kind, request_id, tag)


def encode_frame(kind: FrameKind, request_id: int = 0, tag: int = 0, body: bytes = b"") -> bytes:
    """One whole frame as bytes (header + body)."""
    return frame_header(kind, request_id, tag, len(body)) + body


class FrameDecoder:
    """Incremental frame parser: ``receive_data(bytes)`` then ``next_frame()`` until None.

    Guarantees:
    - a declared length above ``max_frame_size`` raises :class:`FrameTooLarge` before any
      of that frame's body is buffered;
    - an unknown frame kind raises :class:`FrameError`;
    - after either error the decoder is unusable (every call raises again), because the
      stream has lost its framing and nothing after the error can be trusted;
    - the receive buffer never holds more than one maximal frame plus ``slack`` bytes;
      callers must drain ``next_frame()`` after each ``receive_data()``.
    """

    __slots__ = ("_buf", "_error", "_max_buffer", "_max_frame_size", "_pos")

    def __init__(self, max_frame_size: int = DEFAULT_MAX_FRAME_SIZE, *, slack: int = 65536):
        if max_frame_size < FRAME_HEADER_TAIL:
            raise ValueError(f"max_frame_size must be >= {FRAME_HEADER_TAIL}")
        #: Unparsed bytes from ``_pos`` on: the caller's own ``bytes`` while they are parsed
        #: in place, a ``bytearray`` once a partial frame must be completed by later data.
        self._buf: bytes | bytearray = b""
        self._pos = 0
        self._max_frame_size = max_frame_size
        self._max_buffer = max_frame_size + 4 + slack
        self._error: FrameError | None = None

    @property
    def max_frame_size(self) -> int:
        return self._max_frame_size

    @property
    def buffered(self) -> int:
        """Bytes received but not yet returned as frames."""
        return len(self._buf) - self._pos

    def receive_data(self, data: bytes | bytearray | memoryview) -> None:
        """Append received bytes. Raises when the buffer would exceed its cap."""
        if self._error is not None:
            raise self._error
        if self._pos == len(self._buf) and isinstance(data, bytes):
            # Nothing pending: parse straight out of ``data`` (immutable, so it can be kept
            # without a copy); the common case of whole frames inside one Noise message.
            self._buf = data
            self._pos = 0
            return
        if isinstance(self._buf, bytes):
            self._buf = bytearray(memoryview(self._buf)[self._pos:])
            self._pos = 0
        self._buf += data
        if len(self._buf) - self._pos > self._max_buffer:
            self._fail(FrameTooLarge(f"receive buffer over {self._max_buffer} bytes (frames not drained)"))

    def next_frame(self) -> Frame | None:
        """The next complete frame, or None when more data is needed."""
        frames = self._parse(1)
        return frames[0] if frames else None

    def frames(self) -> list[Frame]:
        """Every complete frame buffered so far: ``next_frame()`` in a loop, ~2x cheaper."""
        return self._parse(-1)

    def _parse(self, limit: int) -> list[Frame]:
        """Up to ``limit`` frames (all when -1); one pass with locals, then one compaction."""
        if self._error is not None:
            raise self._error
        buf, pos = self._buf, self._pos
        size = len(buf)
        max_size = self._max_frame_size
        unpack_length, unpack_header = _LENGTH.unpack_from, FRAME_HEADER.unpack_from
        out: list[Frame] = []
        while size - pos >= 4 and len(out) != limit:
            (length,) = unpack_length(buf, pos)
            if length > max_size:
                self._fail(FrameTooLarge(f"frame length {length} exceeds maximum {max_size}"))
            if length < FRAME_HEADER_TAIL:
                self._fail(FrameError(f"frame length {length} is shorter than the frame header"))
            if size - pos >= 5 and buf[pos + 4] not in _KINDS:
                # checked before the body arrives: a bad kind must not make us buffer megabytes
                self._fail(FrameError(f"unknown frame kind {buf[pos + 4]}"))
            end = pos + 4 + length
            if size < end:
                break
            _, kind, request_id, tag = unpack_header(buf, pos)
            start = pos + FRAME_HEADER.size
            if length > _VIEW_COPY_MIN:
                with memoryview(buf) as view:
                    body = bytes(view[start:end])
            else:
                body = bytes(buf[start:end]) if end > start else b""
            out.append(Frame(_KIND_OF[kind], request_id, tag, body))
            pos = end
        if pos != self._pos:
            self._consume(pos)
        return out

    def _consume(self, new_pos: int) -> None:
        if new_pos == len(self._buf):
            self._buf = b""
            self._pos = 0
        elif isinstance(self._buf, bytearray) and new_pos > _COMPACT_THRESHOLD:
            del self._buf[:new_pos]
            self._pos = 0
        else:
            self._pos = new_pos

    def _fail(self, error: FrameError) -> NoReturn:
        self._error = error
        self._buf = b""
        self._pos = 0
        raise error


#: ERROR and GOAWAY texts are truncated to this many bytes: a peer cannot make us log or
#: keep megabytes of "reason".
MAX_ERROR_TEXT: Final = 1024


def encode_error_body(code: int, text: str, detail: int | None = None) -> bytes:
    """Body of an ERROR or GOAWAY frame: CBOR ``[code, text]``, or ``[code, text, detail]``
    for the codes that define a detail (``PRUNED``: the earliest index kept)."""
    value: list[int | str] = [int(code), _truncate_utf8(text, MAX_ERROR_TEXT)]
    if detail is not None:
        value.append(int(detail))
    return cbor2.dumps(value, canonical=True)


def _truncate_utf8(text: str, limit: int) -> str:
    """``text`` cut to at most ``limit`` bytes of UTF-8, never inside a character."""
    raw = text.encode("utf-8", "replace")
    if len(raw) <= limit:
        return text
    return raw[:limit].decode("utf-8", "ignore")


def decode_error_body(body: bytes) -> tuple[int, str]:
    """Parse an ERROR/GOAWAY body; malformed bodies become ``(PROTOCOL_ERROR, description)``."""
    code, text, _ = decode_error(body)
    return code, text


def decode_error(body: bytes) -> tuple[int, str, int | None]:
    """``(code, text, detail)`` of an ERROR/GOAWAY body (``detail`` None when absent);
    malformed bodies become ``(PROTOCOL_ERROR, description, None)``."""
    try:
        value = cbor2.loads(body)
    except Exception:  # noqa: BLE001 -- cbor2 raises assorted types on garbage: all mean malformed
        return int(ErrorCode.PROTOCOL_ERROR), "malformed error body", None
    if (
        isinstance(value, list)
        and len(value) in (2, 3)
        and type(value[0]) is int
        and 0 <= value[0] < 2**32
        and isinstance(value[1], str)
        and (len(value) == 2 or (type(value[2]) is int and 0 <= value[2] < 2**64))
    ):
        return value[0], _truncate_utf8(value[1], MAX_ERROR_TEXT), value[2] if len(value) == 3 else None
    return int(ErrorCode.PROTOCOL_ERROR), "malformed error body", None
