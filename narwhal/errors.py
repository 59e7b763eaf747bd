"""One exception tree for the whole node.

Every error that can cross the wire knows its wire code (:class:`ErrorCode`), so the
boundary that catches it can answer the peer with an ERROR frame without a lookup table.
Third-party exceptions (``noise.exceptions.*``, ``cryptography.exceptions.InvalidTag``,
``cbor2.CBORDecodeError``, ``OSError``) are mapped into this tree at exactly one place
each: ``wire/noise.py``, ``messages/codec.py`` and ``net/connection.py``.

Errors are *transient* (the same request may succeed later: retry with backoff) or
*permanent* (retrying cannot help: stop). The retrier reads :attr:`NarwhalError.transient`.
"""

from __future__ import annotations

import enum
from typing import TypeVar

ErrorT = TypeVar("ErrorT", bound=BaseException)


class ErrorCode(enum.IntEnum):
    """Error codes carried in ERROR and GOAWAY frames (see ``wire_spec.md`` section 8)."""

    #: Framing, state or sequencing violation; the connection is closed.
    PROTOCOL_ERROR = 1
    #: The frame's type tag is not in the message registry.
    UNKNOWN_TYPE = 2
    #: The CBOR body did not decode, or decoded to the wrong shape or types.
    MALFORMED = 3
    #: A frame or a collection inside a message exceeded a limit.
    TOO_LARGE = 4
    #: The message decoded but is semantically invalid (bad signature, wrong round, ...).
    INVALID = 5
    #: The peer is not allowed to send this message on this link.
    UNAUTHORIZED = 6
    #: The receiver is busy (queue or pool full); try again later.
    OVERLOADED = 7
    #: The receiver failed while handling the request; try again later.
    INTERNAL = 8
    #: The request's deadline passed before an answer.
    TIMEOUT = 9
    #: The sender is shutting down (GOAWAY); reconnect later.
    SHUTTING_DOWN = 10
    #: The requested object is not held by the receiver.
    NOT_FOUND = 11
    #: Handshake: no common wire version.
    VERSION_MISMATCH = 12
    #: GOAWAY: this connection lost the duplicate-connection tie-break.
    DUPLICATE_CONNECTION = 13
    #: GOAWAY: no frame arrived within the idle timeout.
    IDLE_TIMEOUT = 14
    #: The sender exceeded its request or byte rate on this route; back off and retry.
    RATE_LIMITED = 15
    #: The receiver's storage failed (disk full, I/O error): permanent for this request.
    STORAGE_FAILED = 16
    #: The requested output index is older than what the node retains; the ERROR (or
    #: GOAWAY) carries the earliest index it still has as its ``detail``.
    PRUNED = 17

    @property
    def transient(self) -> bool:
        """True when the same request may succeed if retried later."""
        return self in _TRANSIENT_CODES


_TRANSIENT_CODES = frozenset(
    {
        ErrorCode.OVERLOADED,
        ErrorCode.INTERNAL,
        ErrorCode.TIMEOUT,
        ErrorCode.SHUTTING_DOWN,
        ErrorCode.NOT_FOUND,
        ErrorCode.DUPLICATE_CONNECTION,
        ErrorCode.IDLE_TIMEOUT,
        ErrorCode.RATE_LIMITED,
    }
)


class NarwhalError(Exception):
    """Root of every error this package raises on purpose."""

    code: ErrorCode = ErrorCode.INTERNAL

    @property
    def transient(self) -> bool:
        return self.code.transient


def without_tracebacks(error: ErrorT) -> ErrorT:
    """``error``, its tracebacks and those of its causes and contexts dropped; for an error
    kept after its handler returns (a connection's close reason). A traceback holds the
    frames it passed through, and those hold their ``self``: a closed connection whose
    reason kept them would be a reference cycle, freed only by a full garbage collection
    (a flood of failed handshakes made millions of them). The text and the chain's types
    stay; only the stack is gone."""
    seen: set[int] = set()
    link: BaseException | None = error
    while link is not None and id(link) not in seen:
        seen.add(id(link))
        link.__traceback__ = None
        link = link.__cause__ or link.__context__
    return error


# --- wire: what a peer sent was wrong -------------------------------------------------


class WireError(NarwhalError):
    """The remote side broke the wire protocol; the connection is unusable afterwards."""

    code = ErrorCode.PROTOCOL_ERROR


class FrameError(WireError):
    """A frame header is invalid (unknown kind, impossible length)."""


class FrameTooLarge(FrameError):
    """A frame's declared length exceeds the configured maximum."""

    code = ErrorCode.TOO_LARGE


class HandshakeError(WireError):
    """The Noise handshake failed: bad preamble, bad key, wrong prologue, bad payload."""


class VersionMismatch(HandshakeError):
    """The peers share no wire version."""

    code = ErrorCode.VERSION_MISMATCH


class PeerRejected(HandshakeError):
    """The responder refused us (our key is not in its committee for this role)."""

    code = ErrorCode.UNAUTHORIZED


class HandshakeClosed(HandshakeError):
    """The responder closed the connection before answering our handshake message 1.

    Transient: a listener under a connection or handshake flood sheds load exactly this
    way (``wire_spec.md`` section 3.6), so a client redials with backoff. A wrong server
    key or network id looks the same on the wire and is retried too (and logged each time).
    """

    code = ErrorCode.OVERLOADED


class HandshakeTimeout(HandshakeError):
    """The handshake did not complete within the handshake timeout (slow loris)."""

    code = ErrorCode.TIMEOUT


class AdmissionRefused(HandshakeError):
    """A listener shed a connection before its handshake completed, without any crypto:
    evicted to make room for a newer one, over the handshake rate of its source or of the
    listener, or a replayed handshake message 1 (``narwhal/net/admission.py``)."""

    code = ErrorCode.OVERLOADED


class DecryptError(WireError):
    """A Noise transport message failed authentication (tampered, replayed or reordered)."""


class MessageError(NarwhalError):
    """A frame body is not a valid message. The connection stays usable."""

    code = ErrorCode.MALFORMED


class UnknownMessageType(MessageError):
    """The type tag is not in the registry."""

    code = ErrorCode.UNKNOWN_TYPE


class MessageTooLarge(MessageError):
    """A collection inside a message exceeds its limit."""

    code = ErrorCode.TOO_LARGE


# --- net: what happened to our request -------------------------------------------------


class NetworkError(NarwhalError):
    """A send or request did not complete."""

    code = ErrorCode.INTERNAL


class ConnectionClosed(NetworkError):
    """The connection closed before the request completed (transient: redial and retry)."""

    code = ErrorCode.SHUTTING_DOWN


class ConnectionStale(ConnectionClosed):
    """Nothing arrived on a connection we were asked to verify (its peer dialed us again,
    so it may have lost this one without our noticing): it was aborted."""


class RequestTimeout(NetworkError):
    """No response arrived before the request's deadline."""

    code = ErrorCode.TIMEOUT


class PeerUnknown(NetworkError):
    """The peer is not in our peer directory: retrying cannot help."""

    code = ErrorCode.UNAUTHORIZED


class PeerNotConnected(NetworkError):
    """The peer has no established connection right now (unreliable sends only)."""

    code = ErrorCode.SHUTTING_DOWN


class PoolFull(NetworkError):
    """The peer's bounded task pool and its queue are full."""

    code = ErrorCode.OVERLOADED


class ExecutorClosed(NetworkError):
    """The peer's task pool was closed (the node is stopping): nothing more will be sent."""

    code = ErrorCode.SHUTTING_DOWN

    @property
    def transient(self) -> bool:
        return False


class SendCancelled(NetworkError):
    """A reliable send was cancelled (explicitly, by GC of its round, or by dropping its handle)."""

    code = ErrorCode.SHUTTING_DOWN

    @property
    def transient(self) -> bool:
        return False  # the caller gave up on purpose: never retry


class RemoteError(NetworkError):
    """The peer answered a request with an ERROR frame."""

    def __init__(self, code: ErrorCode | int, text: str = "", detail: int | None = None) -> None:
        try:
            self.code = ErrorCode(code)
        except ValueError:
            self.code = ErrorCode.INTERNAL
        self.raw_code = int(code)
        self.text = text
        #: The error body's optional third element (wire_spec 8.1): e.g. for PRUNED, the
        #: earliest output index the node still has.
        self.detail = detail
        super().__init__(f"{self.code.name}({self.raw_code}): {text}")


class RequestRejected(NarwhalError):
    """Raised by a request handler to answer with an ERROR frame of the given code."""

    def __init__(self, code: ErrorCode, text: str = "", detail: int | None = None) -> None:
        self.code = code
        self.text = text
        self.detail = detail
        super().__init__(f"{code.name}: {text}")
