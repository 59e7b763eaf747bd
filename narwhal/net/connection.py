"""One authenticated, encrypted link: an ``asyncio.Protocol`` around the sans-IO wire layer.

Bytes flow ``socket -> NoiseHandshake (first) -> NoiseTransport -> FrameDecoder -> sink``.
The connection itself answers PING with PONG, measures RTT, enforces the handshake and
idle timeouts, and handles GOAWAY; REQUEST / RESPONSE / ONEWAY / ERROR frames go to the
:class:`FrameSink` (the RPC channel) created for it.

Writes are *coalesced*: ``send_frame`` only queues; one flush per event-loop iteration
(or sooner when a lot is queued) joins the queued frames, encrypts them into as few Noise
messages as possible and hands them to the socket in one ``writelines``. That is what lets
small messages reach hundreds of thousands per second instead of one syscall each.

Backpressure: the socket transport's high-water mark triggers ``pause_writing``; senders
``await wait_writable()`` before queueing more, so a slow peer slows its senders instead
of growing our memory. Inbound, the frame decoder caps what a peer can make us buffer, and
the RPC channel caps concurrent handlers.

Outbound budget (what a peer that does not read can cost us). Requests and one-way
messages wait for the high-water mark, but *answers* (RESPONSE, ERROR, PONG) are owed to
the peer: a peer that keeps sending requests and never reads would otherwise make us
queue answers without limit. So every frame queued on a connection counts against its
outbound budget (:attr:`ConnectionConfig.outbound_budget`, default the larger of 8 MiB and
two maximum frames), measured as bytes not yet accepted by the kernel
(:attr:`Connection.queued_outbound`). Once over it the connection is *throttled* until the
socket drains below the transport's low-water mark (a quarter of the high-water mark):

- REQUEST and PING frames from the peer (the frames that make us owe it an answer) are
  not served but held in a small backlog, served in order once the connection drains;
- once that backlog exceeds :data:`BACKLOG_LIMIT` we stop reading the socket
  (``transport.pause_reading()``): TCP backpressure now reaches the peer, not our memory;
- handlers of requests already running wait for the budget before they start and again
  before their answer is queued (``wait_budget``), so the queue never exceeds the budget
  by more than one frame;
- a connection still throttled after :attr:`ConnectionConfig.budget_timeout` is aborted
  (its unread answers are dropped) and counted (``ConnectionStats.budget_disconnects``).

Why this cannot deadlock two honest nodes: while throttled we keep reading and
delivering everything that does not make us owe more -- RESPONSE and ERROR frames
answering our own requests, ONEWAY, PONG, GOAWAY -- so our requests to a busy peer still
complete, and handlers waiting for a response on this very link still get it. We stop
reading altogether only when the peer has sent more than ``BACKLOG_LIMIT`` of requests
we have not served while it has not read ``outbound_budget`` bytes of our answers. An
honest peer sends requests only while its own write buffer toward us is below its
high-water mark (``wait_writable``), which is below its budget, so it cannot be throttled
itself while it fills our backlog, i.e. it is still reading, and our queue drains. Two
honest nodes would have to both exceed budget *and* both fill the other's backlog, which
needs each to send requests while not writable; the budget timeout is the backstop.

Before the handshake completes a connection is cheap: it reads into a buffer the size of
the largest handshake message (:data:`HANDSHAKE_RECEIVE_BUFFER`, ~1 KiB) and gets the
full :data:`RECEIVE_BUFFER` only once authenticated. An accepted connection also holds a
:class:`~narwhal.net.admission.Ticket` of its listener's admission control until then:
the listener may evict it to make room for newer ones, and message 1 is read only if the
handshake budget allows (no crypto for a refused or replayed one).

Errors never escape ``data_received``: every failure goes through :meth:`Connection._fail`,
which counts it, tries to tell the peer (ERROR frame) and closes.
"""

from __future__ import annotations

import asyncio
import collections
import enum
import logging
import time
from collections.abc import Callable
from typing import Any, Protocol

import attrs

from narwhal.config.network import ConnectionConfig
from narwhal.errors import (
    ConnectionClosed,
    ConnectionStale,
    ErrorCode,
    FrameError,
    HandshakeClosed,
    HandshakeError,
    HandshakeTimeout,
    NarwhalError,
    WireError,
    without_tracebacks,
)
from narwhal.net.admission import ListenerAdmission, Ticket
from narwhal.wire.frames import (
    DEFAULT_MAX_FRAME_SIZE,
    Frame,
    FrameDecoder,
    FrameKind,
    decode_error,
    decode_error_body,
    encode_error_body,
    frame_header,
)
from narwhal.wire.noise import (
    MAX_HANDSHAKE_MESSAGE,
    PREAMBLE,
    HandshakePayload,
    HandshakeStep,
    NoiseHandshake,
)
from narwhal.wire.transport import NOISE_LENGTH, NoiseTransport

__all__ = [
    "BudgetExceeded",
    "Connection",
    "ConnectionConfig",
    "ConnectionState",
    "ConnectionStats",
    "FrameSink",
    "close_connections",
]

log = logging.getLogger(__name__)

#: Kinds the connection hands to its sink when they carry a request id (ONEWAY carries 0).
_SINK_KINDS = frozenset({FrameKind.REQUEST, FrameKind.RESPONSE, FrameKind.ERROR})

#: Size of the per-connection receive buffer the event loop reads into, once the
#: connection is authenticated.
RECEIVE_BUFFER = 256 * 1024
#: ... and until then: the largest legal handshake read, a preamble and one handshake
#: message (wire_spec.md section 3.3: 8 + 2 + 1024 bytes). A half-open connection costs
#: this, not RECEIVE_BUFFER; bytes beyond it (the start of the transport stream) are
#: simply read in more than one go.
HANDSHAKE_RECEIVE_BUFFER = PREAMBLE.size + NOISE_LENGTH.size + MAX_HANDSHAKE_MESSAGE

#: Flush immediately once this much plaintext is queued, rather than at the end of the
#: loop iteration: bounds the queue and keeps encryption in large chunks.
FLUSH_THRESHOLD = 256 * 1024

#: While a connection is over its outbound budget, requests and PINGs it receives are held
#: (not served); once they amount to this many bytes (each frame counted with a fixed
#: overhead for its Python object) we stop reading the socket.
BACKLOG_LIMIT = 256 * 1024
#: Bytes a held frame is counted for on top of its body (object and header overhead).
BACKLOG_FRAME_OVERHEAD = 128
#: Frames that make us owe the peer an answer: held while over budget.
_ANSWERED_KINDS = frozenset({FrameKind.REQUEST, FrameKind.PING})


class BudgetExceeded(ConnectionClosed):
    """Close reason of a connection aborted because the peer stayed over its outbound
    budget (it did not read the answers it asked for) for ``budget_timeout``."""

    code = ErrorCode.TIMEOUT


class ConnectionState(enum.Enum):
    """Lifecycle: HANDSHAKE -> OPEN -> (DRAINING) -> CLOSED."""

    #: TCP connected; Noise handshake in progress.
    HANDSHAKE = "handshake"
    #: Authenticated; frames flow both ways.
    OPEN = "open"
    #: GOAWAY sent or received: no new requests; outstanding ones finish.
    DRAINING = "draining"
    #: The socket is closed.
    CLOSED = "closed"


@attrs.define
class ConnectionStats:
    """Counters of one connection (the peer manager sums them per peer)."""

    bytes_in: int = 0
    bytes_out: int = 0
    frames_in: int = 0
    frames_out: int = 0
    pings_sent: int = 0
    #: Times the connection went over its outbound budget (requests held) ...
    budget_throttles: int = 0
    #: ... times we stopped reading the socket because of it ...
    read_pauses: int = 0
    #: ... and whether it was aborted for staying over budget (0 or 1).
    budget_disconnects: int = 0
    #: Whether it was aborted by :meth:`Connection.verify_alive` (0 or 1).
    stale_aborts: int = 0
    #: Most bytes ever queued toward the peer and not yet taken by the kernel.
    peak_queued_outbound: int = 0
    rtt: float | None = None
    rtt_ewma: float | None = None
    connected_at: float = attrs.field(factory=time.monotonic)


class FrameSink(Protocol):
    """What the connection hands frames to (implemented by ``rpc.RpcChannel``)."""

    def frame_received(self, frame: Frame) -> None: ...

    def goaway_received(self, code: int, text: str) -> None: ...

    def connection_lost(self, error: BaseException | None) -> None: ...

    @property
    def outstanding(self) -> int: ...


#: ``identify(remote_static, remote_payload) -> peer`` decides whether the other side is
#: who it may be; it raises ``HandshakeError`` (or a subclass with a code) to refuse.
Identify = Callable[[bytes | None, HandshakePayload], Any]


class Connection(asyncio.BufferedProtocol):
    """One Noise-secured connection, either side.

    A ``BufferedProtocol``: the event loop reads straight into one receive buffer per
    connection, reused for every read, instead of allocating a fresh ``bytes`` object per
    read (256 KiB reads of fresh memory page-fault on every allocation; this is the bulk
    path). Everything read is consumed before the buffer is handed out again."""

    def __init__(
        self,
        handshake: NoiseHandshake,
        *,
        local_payload: HandshakePayload,
        identify: Identify,
        sink_factory: Callable[[Connection], FrameSink],
        config: ConnectionConfig = ConnectionConfig(),  # noqa: B008 -- frozen attrs: immutable
        name: str = "conn",
        on_open: Callable[[Connection], None] | None = None,
        on_close: Callable[[Connection], None] | None = None,
        admission: ListenerAdmission | None = None,
    ) -> None:
        self._handshake: NoiseHandshake | None = handshake
        self._local_payload = local_payload
        self._identify = identify
        self.config = config
        self.name = name
        self._on_open = on_open
        self._on_close = on_close
        self.initiator = handshake.is_initiator
        self.state = ConnectionState.HANDSHAKE
        self.peer: Any = None
        self.remote_static: bytes | None = None
        self.remote_payload: HandshakePayload | None = None
        self.remote_max_frame_size = DEFAULT_MAX_FRAME_SIZE
        self.close_reason: BaseException | None = None
        #: ``(code, text)`` of the GOAWAY the peer sent, if any: a permanent code tells a
        #: client not to come back for the same thing.
        #: ``(code, text, detail)`` of the GOAWAY the peer sent, if any.
        self.goaway: tuple[int, str, int | None] | None = None
        self.stats = ConnectionStats()
        self._loop = asyncio.get_running_loop()
        self.ready: asyncio.Future[Connection] = self._loop.create_future()
        self.closed: asyncio.Future[None] = self._loop.create_future()
        self._transport: asyncio.Transport | None = None
        self._cipher: NoiseTransport | None = None
        self._decoder = FrameDecoder(config.max_frame_size)
        self._recv_view = memoryview(bytearray(HANDSHAKE_RECEIVE_BUFFER))
        #: The listener's admission control (accepted connections only) and our place in
        #: it while the handshake is not complete.
        self._admission = admission
        self._ticket: Ticket | None = None
        self._out: list[bytes] = []
        self._out_size = 0
        self._flush_handle: asyncio.Handle | None = None
        self._writable = asyncio.Event()
        self._writable.set()
        self.outbound_budget = config.effective_outbound_budget
        #: Set while within budget; cleared while throttled (see the module docstring).
        self._within_budget = asyncio.Event()
        self._within_budget.set()
        self._throttled_since: float | None = None
        self._backlog: collections.deque[Frame] = collections.deque()
        self._backlog_bytes = 0
        self._reading_paused = False
        self._backlog_handle: asyncio.Handle | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._last_received = time.monotonic()
        self._ping_id = 0
        self._pings: dict[int, float] = {}
        self._verifying: asyncio.TimerHandle | None = None
        self._sink_factory = sink_factory
        self._sink: FrameSink | None = None

    @property
    def sink(self) -> FrameSink:
        """What the connection's frames go to (its :class:`~narwhal.net.rpc.RpcChannel`),
        made on first use: most connections a flood opens are refused or evicted in their
        handshake and never need one, and making it was ~1/8 of what such a connection cost
        the event loop."""
        if self._sink is None:
            self._sink = self._sink_factory(self)
        return self._sink

    @property
    def existing_sink(self) -> FrameSink | None:
        """:attr:`sink` if it was made, without making it (for metrics)."""
        return self._sink

    # -- lifecycle ------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it
        self._transport = transport  # type: ignore[assignment]
        # The high-water mark stays below the budget, so a connection over budget has
        # always been told pause_writing and is told resume_writing once it drains.
        high = max(1, min(self.config.write_high_water, self.outbound_budget // 2))
        self._transport.set_write_buffer_limits(high=high)  # type: ignore[union-attr]
        self._timer = self._loop.call_later(self.config.handshake_timeout, self._handshake_timed_out)
        hs = self._handshake
        assert hs is not None
        if self._admission is not None:
            self._admit(hs, transport.get_extra_info("peername"))
        if self.initiator:
            hs.initiate(self._local_payload)
            self._write_raw(hs.data_to_send())

    def _admit(self, hs: NoiseHandshake, peername: object) -> None:
        """Take a half-open slot (the listener evicts older ones if it is full) and submit
        message 1 to the handshake budget before any crypto."""
        assert self._admission is not None
        self._ticket = self._admission.admit_connection(self, peername)
        hs.before_message1 = self._ticket.check_message1

    def connection_lost(self, exc: Exception | None) -> None:
        handshaking = self.state is ConnectionState.HANDSHAKE
        if self._ticket is not None:
            self._ticket.release(timed_out=isinstance(self.close_reason, HandshakeTimeout))
            self._ticket = None
        self.state = ConnectionState.CLOSED
        self._transport = None
        # the handshake's message-1 hook is the ticket's, and the ticket's owner is us: break
        # the cycle, so a connection that never finished its handshake is freed when closed,
        # not by a full garbage collection (under a flood of them that took ~15% of the loop)
        if self._handshake is not None:
            self._handshake.discard()
            self._handshake = None
        self._writable.set()  # wake waiters; they will see CLOSED
        self._within_budget.set()
        self._backlog.clear()
        self._backlog_bytes = 0
        for handle in (self._timer, self._flush_handle, self._backlog_handle):
            if handle is not None:
                handle.cancel()
        if self.close_reason is not None:
            reason = self.close_reason
        elif handshaking and self.initiator and self._cipher is None:
            # the responder hung up on our message 1: it could not decrypt it or refused it
            reason = HandshakeClosed(f"{self.name}: peer closed the connection during the handshake "
                                     "(busy, or wrong server key, network id or version?)")
        elif exc is not None:
            reason = ConnectionClosed(f"{self.name}: connection lost: {exc}")
        else:
            reason = ConnectionClosed(f"{self.name}: connection closed")
        # kept after its handler returned: without the frames of its traceback (they hold
        # this connection), a closed connection is freed at once, not by a full collection
        self.close_reason = reason = without_tracebacks(reason)
        if not self.ready.done():
            self.ready.set_exception(reason)
            self.ready.exception()  # mark retrieved: a dial that was abandoned must not warn
        if self._sink is not None:
            self._sink.connection_lost(reason)
        if not self.closed.done():
            self.closed.set_result(None)
        if self._on_close is not None:
            self._on_close(self)

    def pause_writing(self) -> None:
        self._writable.clear()

    def resume_writing(self) -> None:
        self._writable.set()
        if self._throttled_since is not None and self._backlog_handle is None:
            # not from inside the transport's write callback: serve the backlog next
            self._backlog_handle = self._loop.call_soon(self._budget_drained)

    # -- inbound ------------------------------------------------------------------------

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._recv_view

    def buffer_updated(self, nbytes: int) -> None:
        self.data_received(self._recv_view[:nbytes])

    def data_received(self, data: bytes | memoryview) -> None:
        self.stats.bytes_in += len(data)
        self._last_received = time.monotonic()
        try:
            if self._cipher is None:
                self._handshake_data(data)
            else:
                self._transport_data(data)
        except NarwhalError as exc:
            self._fail(exc)
        except Exception as exc:  # a bug: never let it escape into the event loop
            log.exception("%s: unexpected error while receiving", self.name)
            self._fail(WireError(f"internal error: {exc!r}"))

    def _handshake_data(self, data: bytes | memoryview) -> None:
        hs = self._handshake
        if hs is None or self.state is ConnectionState.CLOSED:
            return
        if self._ticket is not None:
            self._ticket.started()
        try:
            hs.receive_data(bytes(data))
        finally:
            self._write_raw(hs.data_to_send())
        if hs.step is HandshakeStep.DECIDE:  # responder: msg1 read; decide who this is
            try:
                self._accept_identity(hs)
            except HandshakeError as exc:
                hs.reject(exc.code, str(exc))
                self._write_raw(hs.data_to_send())
                raise
            hs.accept(self._local_payload)
            self._write_raw(hs.data_to_send())
        if hs.complete:
            if self.initiator:
                self._accept_identity(hs)
            self._open(hs)

    def _accept_identity(self, hs: NoiseHandshake) -> None:
        assert hs.remote_payload is not None
        self.peer = self._identify(hs.remote_static, hs.remote_payload)
        self.remote_static = hs.remote_static
        self.remote_payload = hs.remote_payload
        self.remote_max_frame_size = hs.remote_payload.max_frame_size

    def _open(self, hs: NoiseHandshake) -> None:
        self._cipher = hs.transport()
        leftover = hs.leftover()
        self._handshake = None
        if self.initiator:
            self._confirm()
            # Prove to the responder that we hold the keys (see _transport_data) and take
            # a first RTT sample.
            self._send_ping()
        if leftover:
            self._transport_data(leftover)

    def _confirm(self) -> None:
        """The link is authenticated both ways: start keepalive, announce it.

        A responder only gets here after decrypting the initiator's first transport
        message: an IK message 1 can be *replayed* by anyone who recorded it, and the
        replayer completes the handshake without being able to encrypt a single message.
        Announcing the connection earlier would let such a replay displace a real
        connection under the duplicate-connection rule (wire_spec.md section 3.5).
        """
        self.state = ConnectionState.OPEN
        # authenticated: full-size reads from now on (the slice being processed keeps the
        # small buffer alive until it is done)
        self._recv_view = memoryview(bytearray(RECEIVE_BUFFER))
        if self._ticket is not None:
            self._ticket.complete()
            self._ticket = None
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self._loop.call_later(self.config.keepalive_interval, self._tick)
        self.stats.connected_at = time.monotonic()
        self.ready.set_result(self)
        if self._on_open is not None:
            self._on_open(self)

    def _transport_data(self, data: bytes | memoryview) -> None:
        cipher = self._cipher
        assert cipher is not None
        decoder = self._decoder
        plaintexts = cipher.decrypt(data)
        if plaintexts and self.state is ConnectionState.HANDSHAKE:
            self._confirm()
        deliver = self.sink.frame_received
        for plaintext in plaintexts:
            decoder.receive_data(plaintext)
            frames = decoder.frames()
            self.stats.frames_in += len(frames)
            for frame in frames:
                # The sink's frames (REQUEST, RESPONSE, ONEWAY, ERROR answering a request)
                # go straight to it; only connection-level frames take the slow path.
                kind = frame.kind
                if self._throttled_since is not None and kind in _ANSWERED_KINDS:
                    self._hold(frame)
                elif kind is FrameKind.ONEWAY or (kind in _SINK_KINDS and frame.request_id):
                    deliver(frame)
                else:
                    self._frame_received(frame)
                if self.state is ConnectionState.CLOSED:
                    return

    def _frame_received(self, frame: Frame) -> None:
        kind = frame.kind
        if kind is FrameKind.PING:
            self.send_frame(FrameKind.PONG, frame.request_id, 0, b"")
        elif kind is FrameKind.PONG:
            sent = self._pings.pop(frame.request_id, None)
            if sent is not None:
                self._record_rtt(time.monotonic() - sent)
        elif kind is FrameKind.GOAWAY:
            code, text, detail = decode_error(frame.body)
            log.info("%s: peer sent GOAWAY %s: %s", self.name, code, text)
            self.goaway = (code, text, detail)
            if self.state is ConnectionState.OPEN:
                self.state = ConnectionState.DRAINING
            self.sink.goaway_received(code, text)
            self._loop.create_task(self._close_when_idle())
        elif kind is FrameKind.ERROR and frame.request_id == 0:
            code, text = decode_error_body(frame.body)
            log.warning("%s: peer reported connection error %s: %s", self.name, code, text)
        else:
            self.sink.frame_received(frame)

    def _deliver(self, frame: Frame) -> None:
        kind = frame.kind
        if kind is FrameKind.ONEWAY or (kind in _SINK_KINDS and frame.request_id):
            self.sink.frame_received(frame)
        else:
            self._frame_received(frame)

    def _hold(self, frame: Frame) -> None:
        """Keep a request/PING for later: we already owe the peer more than the budget."""
        self._backlog.append(frame)
        self._backlog_bytes += len(frame.body) + BACKLOG_FRAME_OVERHEAD
        if self._backlog_bytes > BACKLOG_LIMIT and not self._reading_paused and self._transport is not None:
            self._reading_paused = True
            self.stats.read_pauses += 1
            log.info("%s: peer does not read its answers (%d bytes queued): pausing reading",
                     self.name, self.queued_outbound)
            self._transport.pause_reading()

    def _budget_drained(self) -> None:
        """The socket drained below the low-water mark: serve what we held, read again."""
        self._backlog_handle = None
        if self._throttled_since is None or self.state is ConnectionState.CLOSED:
            return
        self._throttled_since = None
        self._within_budget.set()
        self._check_budget()  # queued again meanwhile? then stay throttled
        try:
            while self._backlog and self._throttled_since is None:
                frame = self._backlog.popleft()
                self._backlog_bytes -= len(frame.body) + BACKLOG_FRAME_OVERHEAD
                self._deliver(frame)
                if not self._alive():
                    return
        except NarwhalError as exc:
            self._fail(exc)
            return
        if self._throttled_since is None and self._reading_paused and self._transport is not None:
            self._reading_paused = False
            self._transport.resume_reading()

    def _alive(self) -> bool:
        return self.state is not ConnectionState.CLOSED

    def _check_budget(self) -> None:
        """Called after queueing or flushing: enter the throttled state when over budget."""
        transport = self._transport
        if transport is None:
            return
        queued = self._out_size + transport.get_write_buffer_size()
        self.stats.peak_queued_outbound = max(self.stats.peak_queued_outbound, queued)
        if queued > self.outbound_budget and self._throttled_since is None:
            if self._out:
                # all of it to the transport first (this runs again from _flush): the kernel
                # may take it at once; if not, the transport's resume_writing ends throttling
                self._flush()
                return
            self._throttled_since = time.monotonic()
            self._within_budget.clear()
            self.stats.budget_throttles += 1

    @property
    def queued_outbound(self) -> int:
        """Bytes queued toward the peer that the kernel has not taken yet."""
        transport = self._transport
        return self._out_size + (transport.get_write_buffer_size() if transport is not None else 0)

    @property
    def throttled(self) -> bool:
        """Over the outbound budget: the peer's requests wait (see the module docstring)."""
        return self._throttled_since is not None

    @property
    def receive_buffer_size(self) -> int:
        """Bytes of the buffer the loop reads into (small until authenticated)."""
        return self._recv_view.nbytes

    @property
    def reading_paused(self) -> bool:
        return self._reading_paused

    async def wait_budget(self) -> None:
        """Return once the connection is within its outbound budget (answers wait here).

        Returns at once when the connection can no longer send: the caller finds that out
        when it tries."""
        while not self._within_budget.is_set():
            await self._within_budget.wait()

    def _record_rtt(self, rtt: float) -> None:
        stats = self.stats
        stats.rtt = rtt
        stats.rtt_ewma = rtt if stats.rtt_ewma is None else 0.8 * stats.rtt_ewma + 0.2 * rtt

    # -- outbound -----------------------------------------------------------------------

    @property
    def is_open(self) -> bool:
        return self.state is ConnectionState.OPEN

    @property
    def can_send(self) -> bool:
        """Frames may still be written (OPEN or DRAINING)."""
        return self._cipher is not None and self._transport is not None

    async def wait_writable(self) -> None:
        """Return once the socket buffer is below its high-water mark (backpressure)."""
        while not self._writable.is_set():
            await self._writable.wait()
        if not self.can_send:
            raise self.close_reason or ConnectionClosed(f"{self.name}: closed")

    def send_frame(self, kind: FrameKind, request_id: int, tag: int, body: bytes) -> None:
        """Queue one frame; it is encrypted and written at the next flush."""
        if not self.can_send:
            raise self.close_reason or ConnectionClosed(f"{self.name}: not open")
        if len(body) + 7 > self.remote_max_frame_size:
            raise FrameError(f"frame of {len(body)} bytes exceeds the peer's maximum")
        self._out.append(frame_header(kind, request_id, tag, len(body)))
        if body:
            self._out.append(body)
        self._out_size += len(body) + 11
        self.stats.frames_out += 1
        if self._out_size >= FLUSH_THRESHOLD:
            self._flush()
        elif self._flush_handle is None:
            self._flush_handle = self._loop.call_soon(self._flush)
        self._check_budget()

    def _flush(self) -> None:
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        if not self._out or self._cipher is None or self._transport is None:
            return
        out = self._out
        self._out = []
        self._out_size = 0
        chunks = self._cipher.encrypt_parts(out)
        self.stats.bytes_out += sum(len(c) for c in chunks)
        self._transport.writelines(chunks)
        self._check_budget()

    def _write_raw(self, data: bytes) -> None:
        if data and self._transport is not None:
            self.stats.bytes_out += len(data)
            self._transport.write(data)

    # -- timers -------------------------------------------------------------------------

    def _handshake_timed_out(self) -> None:
        if self.state is ConnectionState.HANDSHAKE:
            self._fail(HandshakeTimeout(f"{self.name}: handshake not complete within "
                                        f"{self.config.handshake_timeout}s"))

    def _tick(self) -> None:
        """Keepalive ping + idle check, every ``keepalive_interval``."""
        if self.state is ConnectionState.CLOSED:
            return
        now = time.monotonic()
        if self._throttled_since is not None and self._writable.is_set() \
                and self.queued_outbound <= self.outbound_budget:
            self._budget_drained()  # drained without resume_writing (never paused): end it
        if self._throttled_since is not None:
            if now - self._throttled_since > self.config.effective_budget_timeout:
                self._budget_exceeded(now - self._throttled_since)
                return
        elif now - self._last_received > self.config.idle_timeout:
            log.info("%s: idle for %.1fs, closing", self.name, now - self._last_received)
            self.close(ErrorCode.IDLE_TIMEOUT, "idle timeout")
            return
        self._pings = {k: v for k, v in self._pings.items() if now - v < self.config.idle_timeout}
        self._send_ping()
        self._timer = self._loop.call_later(self.config.keepalive_interval, self._tick)

    def _budget_exceeded(self, seconds: float) -> None:
        """The peer left ``queued_outbound`` bytes of answers unread for too long: drop them
        and the connection (a GOAWAY would sit behind the unread data)."""
        queued = self.queued_outbound
        log.warning("%s: peer has not read %d bytes of answers for %.1fs (budget %d): disconnecting",
                    self.name, queued, seconds, self.outbound_budget)
        self.stats.budget_disconnects += 1
        self.close_reason = BudgetExceeded(
            f"{self.name}: peer stayed over the outbound budget ({queued} > {self.outbound_budget} "
            f"bytes unread) for {seconds:.1f}s")
        self.abort()

    def verify_alive(self, timeout: float) -> None:
        """PING now and abort if *nothing* arrives within ``timeout`` seconds.

        Why: our peer dialed us again while we hold this connection, so it may have lost
        it without our noticing (a power cut, a crash behind a NAT or relay: no FIN ever
        came). Waiting for ``idle_timeout`` would refuse the peer's new connections for
        that long (``wire_spec.md`` section 1). A live connection answers within an RTT,
        and any frame at all counts, so a busy but healthy link is never dropped."""
        if self.state is not ConnectionState.OPEN or self._verifying is not None:
            return
        asked = time.monotonic()
        self._send_ping()
        self._verifying = self._loop.call_later(timeout, self._verified, asked, timeout)

    def _verified(self, asked: float, timeout: float) -> None:
        self._verifying = None
        if self.state is ConnectionState.CLOSED or self._last_received >= asked:
            return
        self.stats.stale_aborts += 1
        log.info("%s: nothing received for %.1fs after our peer dialed again: stale, aborting",
                 self.name, timeout)
        self.abort(ConnectionStale(f"{self.name}: no answer within {timeout}s to a liveness check"))

    def _send_ping(self) -> None:
        self._ping_id = (self._ping_id % 0xFFFF_FFFF) + 1
        self._pings[self._ping_id] = time.monotonic()
        self.stats.pings_sent += 1
        self.send_frame(FrameKind.PING, self._ping_id, 0, b"")

    # -- closing ------------------------------------------------------------------------

    def close(self, code: ErrorCode = ErrorCode.SHUTTING_DOWN, reason: str = "",
              detail: int | None = None) -> None:
        """Graceful close: GOAWAY now, close the socket once outstanding requests finish
        (``detail``: the GOAWAY body's third element, for the codes that define one)."""
        if self.state in (ConnectionState.CLOSED, ConnectionState.DRAINING):
            if self.state is ConnectionState.DRAINING and self.can_send:
                self._loop.create_task(self._close_when_idle())
            return
        if self.state is ConnectionState.HANDSHAKE:
            self.abort(ConnectionClosed(f"{self.name}: closed during handshake"))
            return
        self.state = ConnectionState.DRAINING
        self.close_reason = ConnectionClosed(f"{self.name}: closing ({code.name}: {reason})")
        self.close_reason.code = code
        self.send_frame(FrameKind.GOAWAY, 0, 0, encode_error_body(code, reason, detail))
        self._flush()
        self._loop.create_task(self._close_when_idle())

    async def _close_when_idle(self) -> None:
        deadline = self._loop.time() + self.config.close_grace
        while self._sink is not None and self._sink.outstanding and self._loop.time() < deadline and self._transport:
            await asyncio.sleep(0.01)
        if self._transport is not None:
            self._flush()
            self._transport.close()
        # transport.close() waits for the write buffer to drain: a peer that does not read
        # would keep it (and its buffer) for ever
        try:
            await asyncio.wait_for(asyncio.shield(self.closed), self.config.close_grace)
        except TimeoutError:
            self.abort()

    def abort(self, error: BaseException | None = None) -> None:
        """Close at once, dropping anything unsent."""
        if error is not None and self.close_reason is None:
            self.close_reason = error
        if self._transport is not None:
            self._transport.abort()

    def _fail(self, error: NarwhalError) -> None:
        """The single exit for protocol failures: tell the peer if we can, then close."""
        if self.state is ConnectionState.CLOSED:
            return
        # a stranger failing its handshake (timed out, refused, garbage) is counted by the
        # listener's admission stats: a flood of them must not also flood the log
        quiet = self.state is ConnectionState.HANDSHAKE and not self.initiator
        log.log(logging.DEBUG if quiet else logging.INFO, "%s: closing after error: %s", self.name, error)
        self.close_reason = error
        if self._cipher is not None and self._transport is not None and isinstance(error, WireError):
            try:
                self.send_frame(FrameKind.ERROR, 0, 0, encode_error_body(error.code, str(error)))
                self._flush()
            except NarwhalError:
                pass
        if self._transport is not None:
            self._transport.close() if isinstance(error, WireError) else self._transport.abort()
        self.state = ConnectionState.CLOSED

    async def aclose(self, code: ErrorCode = ErrorCode.SHUTTING_DOWN, reason: str = "") -> None:
        """Graceful close and wait until the socket is closed."""
        self.close(code, reason)
        await asyncio.shield(self.closed)


async def close_connections(conns: list[Connection], grace: float) -> None:
    """GOAWAY to every connection, wait up to ``grace`` for them to finish, abort the rest."""
    for conn in conns:
        conn.close(ErrorCode.SHUTTING_DOWN, "node stopping")
    await asyncio.gather(*(asyncio.wait_for(asyncio.shield(c.closed), grace) for c in conns),
                         return_exceptions=True)
    for conn in conns:
        conn.abort()
