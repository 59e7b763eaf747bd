"""Requests, responses and one-way messages over one :class:`~narwhal.net.connection.Connection`.

An :class:`RpcChannel` is the connection's frame sink. Outbound it numbers requests
(``request_id``), waits for the matching RESPONSE or ERROR with a deadline, and sends
one-way messages. Inbound it decodes each REQUEST/ONEWAY body with the message registry,
finds the handler in the :class:`Router`, runs it as a task, and answers with its return
value (or ``Ack``) or a typed ERROR frame. Any number of requests may be outstanding in
both directions on one connection.

Inbound checks, cheapest first, each answered with its own typed ERROR (a one-way message
is dropped and counted instead): a REQUEST with id 0 is a protocol error (GOAWAY
``PROTOCOL_ERROR``: the peer's request state is broken); an unregistered tag is
``UNKNOWN_TYPE``; a registered type this router has no handler for, or that the router's
``allow`` refuses from this peer, is ``UNAUTHORIZED`` (it is a real message, just not one
this link carries); a frame over the (peer, route) rate limit is ``RATE_LIMITED``
(:mod:`narwhal.net.rate_limit`). Only then is the body decoded (``MALFORMED`` /
``TOO_LARGE``) and the handler run. Every check before decoding depends on the frame
header alone, so a flood of refused frames never costs a decode.

Bounds: at most ``max_concurrent_handlers`` handlers run per connection. A request beyond
that is answered ``OVERLOADED`` at once (transient: the sender's retrier backs off) and a
one-way message beyond it is dropped and counted. We never pause reading for that: a
handler may itself wait for a response on this very connection, and pausing the reader
would deadlock it.

Answers count against the connection's outbound budget (``connection.py``): a request
handler waits for the budget before it runs and again before its answer is queued, so a
peer that does not read its answers makes its own requests wait, not our memory grow.
While over budget the connection holds the peer's new requests (and, past a small
backlog, stops reading) but keeps delivering RESPONSE/ERROR frames, so a handler waiting
for a response on this link is never blocked by it.
"""

from __future__ import annotations

import asyncio
import bisect
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

from narwhal import messages
from narwhal.config.network import DEFAULT_REQUEST_TIMEOUT, MAX_CONCURRENT_HANDLERS
from narwhal.errors import (
    ConnectionClosed,
    ErrorCode,
    MessageError,
    NarwhalError,
    RemoteError,
    RequestRejected,
    RequestTimeout,
)
from narwhal.net.rate_limit import RateLimiter
from narwhal.wire.frames import Frame, FrameKind, decode_error, encode_error_body

__all__ = ["Handler", "Router", "RpcChannel", "channel_of", "rate_limited"]

log = logging.getLogger(__name__)

#: Large answers (routes marked ``bulk``: catch-up reads) produced at once per connection.
#: Each may be a frame (4 MiB answers in practice) held until the outbound budget takes it,
#: so this bounds what a peer that never reads costs beyond its budget; an honest
#: catching-up peer asks one such request at a time per source, and each is read in ms.
BULK_ANSWERS_PER_CONNECTION = 1

#: ``handler(peer, message) -> response | None`` (None answers a request with ``Ack``); the
#: response is a message or a ``messages.Encoded`` (a message already in wire form).
Handler = Callable[[Any, Any], Awaitable[Any]]


#: Upper bounds (seconds) of the handler latency histogram buckets.
LATENCY_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class RouteStats:
    """Per message type ("route"): requests served, errors, handler latency histogram.

    One instance is shared by every channel of a peer manager or client server, so the
    figures survive connections coming and going."""

    def __init__(self) -> None:
        self._routes: dict[str, list[Any]] = {}  # name -> [served, errors, sum, bucket counts]

    def record(self, route: str, seconds: float, ok: bool) -> None:
        entry = self._routes.get(route)
        if entry is None:
            entry = self._routes[route] = [0, 0, 0.0, [0] * (len(LATENCY_BUCKETS) + 1)]
        entry[0 if ok else 1] += 1
        entry[2] += seconds
        entry[3][bisect.bisect_left(LATENCY_BUCKETS, seconds)] += 1

    def snapshot(self) -> dict[str, dict[str, Any]]:
        """JSON-ready: ``{route: {"requests", "errors", "latency_sum", "latency_buckets"}}``
        where ``latency_buckets`` pairs each bound (``"+Inf"`` last) with a *cumulative* count."""
        out = {}
        for route, (served, errors, total, counts) in sorted(self._routes.items()):
            cumulative, running = [], 0
            for bound, count in zip([*map(str, LATENCY_BUCKETS), "+Inf"], counts, strict=True):
                running += count
                cumulative.append([bound, running])
            out[route] = {"requests": served, "errors": errors, "latency_sum": total,
                          "latency_buckets": cumulative}
        return out


class Router:
    """Message class -> handler, shared by every connection of a server or peer manager.

    ``allow(peer, message_class) -> bool`` (optional) refuses message types on links where
    they do not belong (answered ``UNAUTHORIZED``, as is a registered type without a
    handler here). ``limiter`` (optional) rate-limits each (peer, route).
    """

    def __init__(self, allow: Callable[[Any, type], bool] | None = None, *,
                 limiter: RateLimiter | None = None) -> None:
        self._handlers: dict[int, Handler] = {}
        self._bulk: set[int] = set()
        self._allow = allow
        self.limiter = limiter

    def route(self, message_class: type, handler: Handler, *, bulk: bool = False) -> None:
        """``bulk``: the answer may be large (catch-up reads, up to a frame): at most
        BULK_ANSWERS_PER_CONNECTION of them are produced at once per connection, the slot
        held until its answer is queued (see :meth:`RpcChannel._run_handler`)."""
        tag = messages.tag_of(message_class)
        self._handlers[tag] = handler
        if bulk:
            self._bulk.add(tag)

    def is_bulk(self, tag: int) -> bool:
        return tag in self._bulk

    def handler_for(self, tag: int) -> Handler | None:
        return self._handlers.get(tag)

    def allowed(self, peer: Any, message_class: type) -> bool:
        return self._allow is None or self._allow(peer, message_class)

    def admit(self, peer: Any, tag: int, nbytes: int) -> bool:
        """Within ``peer``'s rate limit on route ``tag`` (and charged), or not."""
        return self.limiter is None or self.limiter.admit(peer, tag, nbytes)

    def limited_count(self, label: str) -> int:
        """Frames refused ``RATE_LIMITED`` from the peer named ``label`` (all routes)."""
        return 0 if self.limiter is None else self.limiter.limited_for(label)


class RpcChannel:
    """Request/response state of one connection; also its :class:`FrameSink`."""

    def __init__(
        self,
        connection: Any,
        router: Router,
        *,
        max_concurrent_handlers: int = MAX_CONCURRENT_HANDLERS,
        routes: RouteStats | None = None,
    ) -> None:
        self._conn = connection
        self._routes = routes
        self._router = router
        self._max_handlers = max_concurrent_handlers
        self._next_id = 0
        self._pending: dict[int, asyncio.Future[tuple[int, bytes]]] = {}
        self._handlers: set[asyncio.Task[None]] = set()
        self._bulk_answers = asyncio.Semaphore(BULK_ANSWERS_PER_CONNECTION)
        self._closed: BaseException | None = None
        self._goaway = False
        #: Errors by kind, for metrics ("decode", "unknown_type", "overloaded", ...).
        self.errors: Counter[str] = Counter()
        self.requests_sent = 0
        self.requests_served = 0

    # -- outbound -----------------------------------------------------------------------

    @property
    def outstanding(self) -> int:
        """Requests in flight in either direction (graceful close waits for zero)."""
        return len(self._pending) + len(self._handlers)

    @property
    def accepting_requests(self) -> bool:
        return self._closed is None and not self._goaway and self._conn.is_open

    async def request(self, message: Any, *, timeout: float | None = DEFAULT_REQUEST_TIMEOUT) -> Any:
        """Send ``message`` as a REQUEST; return the decoded response or raise.

        Raises :class:`RemoteError` (peer answered ERROR), :class:`RequestTimeout`,
        :class:`ConnectionClosed`, or :class:`MessageError` (response did not decode).
        """
        body = messages.encode(message)
        return await self.request_raw(messages.tag_of(message), body, timeout=timeout)

    async def request_raw(self, tag: int, body: bytes, *, timeout: float | None = DEFAULT_REQUEST_TIMEOUT) -> Any:
        """Like :meth:`request` with an already encoded body (encode once, send to many)."""
        response_tag, response_body = await self.exchange(tag, body, timeout=timeout)
        return self._decode_response(tag, response_tag, response_body)

    async def exchange(self, tag: int, body: bytes, *,
                       timeout: float | None = DEFAULT_REQUEST_TIMEOUT) -> tuple[int, bytes]:
        """Like :meth:`request_raw`, but the response's ``(tag, body)`` undecoded: for a
        caller that forwards the bytes it asked for (the ordered output splices batches)."""
        self._check_open()
        await self._conn.wait_writable()
        self._check_open()
        request_id = self._allocate_id()
        future: asyncio.Future[tuple[int, bytes]] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = future
        try:
            self._conn.send_frame(FrameKind.REQUEST, request_id, tag, body)
            self.requests_sent += 1
            async with asyncio.timeout(timeout):
                response_tag, response_body = await future
        except TimeoutError:
            raise RequestTimeout(f"{self._conn.name}: no answer within {timeout}s") from None
        finally:
            self._pending.pop(request_id, None)
            # An ERROR answer is raised out of ``future``, and its traceback holds this frame:
            # with ``future`` still a local here, that is a reference cycle, and every refused
            # request (with the body it sent) would wait for a full garbage collection.
            del future
        return response_tag, response_body

    async def notify(self, message: Any) -> None:
        """Send ``message`` one-way (no answer, no delivery guarantee)."""
        self._check_open()
        await self._conn.wait_writable()
        self._conn.send_frame(FrameKind.ONEWAY, 0, messages.tag_of(message), messages.encode(message))

    def _check_open(self) -> None:
        if self._closed is not None:
            raise ConnectionClosed(f"{self._conn.name}: connection closed") from self._closed
        if self._goaway or not self._conn.is_open:
            raise ConnectionClosed(f"{self._conn.name}: connection is draining")

    def _allocate_id(self) -> int:
        while True:
            self._next_id = self._next_id % 0xFFFF_FFFF + 1
            if self._next_id not in self._pending:
                return self._next_id

    def _decode_response(self, request_tag: int, tag: int, body: bytes) -> Any:
        expected = messages.class_for(request_tag).response
        response = messages.decode(tag, body)
        if expected is not None and not isinstance(response, expected):
            raise MessageError(
                f"{self._conn.name}: response {type(response).__name__} to a request that expects "
                f"{expected.__name__}"
            )
        return response

    # -- inbound ------------------------------------------------------------------------

    def frame_received(self, frame: Frame) -> None:
        kind = frame.kind
        if kind is FrameKind.RESPONSE or kind is FrameKind.ERROR:
            future = self._pending.get(frame.request_id)
            if future is None or future.done():
                self.errors["late_answer"] += 1  # requester gave up; harmless
                return
            if kind is FrameKind.RESPONSE:
                future.set_result((frame.tag, frame.body))
            else:
                future.set_exception(RemoteError(*decode_error(frame.body)))
        elif kind is FrameKind.REQUEST:
            self._serve(frame, reply=True)
        elif kind is FrameKind.ONEWAY:
            self._serve(frame, reply=False)

    def _serve(self, frame: Frame, *, reply: bool) -> None:
        """Decode, route and start the handler; answer errors at once."""
        if frame.request_id == 0 and reply:
            # 0 is never a request id (wire_spec.md section 6): the sender's request state
            # is broken and nothing we answer could reach it. Close the link gracefully.
            self.errors["bad_request_id"] += 1
            self._conn.close(ErrorCode.PROTOCOL_ERROR, "REQUEST with request id 0")
            return
        if len(self._handlers) >= self._max_handlers or self._closed is not None:
            self._reject(frame, reply, ErrorCode.OVERLOADED, "too many requests in flight", "overloaded")
            return
        cls = messages.REGISTRY.get(frame.tag)
        if cls is None:
            self._reject(frame, reply, ErrorCode.UNKNOWN_TYPE, f"unknown message type 0x{frame.tag:04x}",
                         "unknown_type")
            return
        peer = self._conn.peer
        handler = self._router.handler_for(frame.tag)
        if handler is None or not self._router.allowed(peer, cls):
            self._reject(frame, reply, ErrorCode.UNAUTHORIZED,
                         f"{cls.__name__} is not allowed on this link", "unauthorized")
            return
        if not self._router.admit(peer, frame.tag, len(frame.body)):
            self._reject(frame, reply, ErrorCode.RATE_LIMITED,
                         f"rate limit of {cls.__name__} exceeded, back off", "rate_limited")
            return
        try:
            message = messages.decode(frame.tag, frame.body)
        except MessageError as exc:
            self._reject(frame, reply, exc.code, str(exc), "malformed")
            return
        task = asyncio.get_running_loop().create_task(
            self._run_handler(handler, message, frame.request_id if reply else 0,
                              bulk=self._router.is_bulk(frame.tag))
        )
        self._handlers.add(task)
        task.add_done_callback(self._handlers.discard)

    async def _run_handler(self, handler: Handler, message: Any, request_id: int, *,
                           bulk: bool = False) -> None:
        started = time.monotonic()
        ok = False
        try:
            if request_id and bulk:
                # A large answer is held in memory until the peer's budget lets it be
                # queued: a burst of such requests, each passing the check below before any
                # answer is queued, would hold one answer each (a peer that never reads made
                # a victim hold ~110 MiB; with one at a time, ~51-55 MiB in all).
                async with self._bulk_answers:
                    ok = await self._answer_within_budget(handler, message, request_id)
            else:
                ok = await self._answer_within_budget(handler, message, request_id)
        finally:
            if self._routes is not None:
                self._routes.record(type(message).__name__, time.monotonic() - started, ok)

    async def _answer_within_budget(self, handler: Handler, message: Any, request_id: int) -> bool:
        if request_id and self._conn.throttled:
            # Owing the peer more than its outbound budget already: do not produce
            # another answer (and hold it in memory) before the peer reads.
            await self._conn.wait_budget()
        return await self._handle(handler, message, request_id)

    async def _handle(self, handler: Handler, message: Any, request_id: int) -> bool:
        """Run the handler and answer; False when the answer is an ERROR."""
        ok, kind, tag, body = await self._answer(handler, message, request_id)
        if request_id and self._conn.can_send:
            # the answer counts against the connection's outbound budget: wait for it, so
            # the queue exceeds the budget by at most one frame
            if self._conn.throttled:
                await self._conn.wait_budget()
            if self._conn.can_send:
                self._conn.send_frame(kind, request_id, tag, body)
        return ok

    async def _answer(self, handler: Handler, message: Any,
                      request_id: int) -> tuple[bool, FrameKind, int, bytes]:
        """Run the handler: ``(ok, kind, tag, body)`` of the answer frame to send."""
        try:
            response = await handler(self._conn.peer, message)
        except RequestRejected as exc:
            self.errors["rejected"] += 1
            return False, FrameKind.ERROR, 0, encode_error_body(exc.code, exc.text, exc.detail)
        except NarwhalError as exc:
            self.errors[type(exc).__name__] += 1
            return False, FrameKind.ERROR, 0, encode_error_body(exc.code, str(exc))
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a handler bug must not take the connection down
            log.exception("%s: handler for %s failed", self._conn.name, type(message).__name__)
            self.errors["handler_crash"] += 1
            return False, FrameKind.ERROR, 0, encode_error_body(
                ErrorCode.INTERNAL, f"handler failed: {type(exc).__name__}")
        self.requests_served += 1
        if not request_id:
            return True, FrameKind.RESPONSE, 0, b""
        if response is None:
            response = messages.Ack()
        if isinstance(response, messages.Encoded):  # already wire bytes (see messages.splice)
            return True, FrameKind.RESPONSE, response.tag, response.body
        try:
            return True, FrameKind.RESPONSE, messages.tag_of(response), messages.encode(response)
        except MessageError:  # our handler built an invalid message: our bug, not the peer's
            log.exception("%s: handler for %s returned an invalid response",
                          self._conn.name, type(message).__name__)
            self.errors["bad_response"] += 1
            return False, FrameKind.ERROR, 0, encode_error_body(ErrorCode.INTERNAL, "invalid response")

    def _reject(self, frame: Frame, reply: bool, code: ErrorCode, text: str, counter: str) -> None:
        self.errors[counter] += 1
        if reply:
            self._answer_error(frame.request_id, code, text)
        else:
            log.debug("%s: dropped one-way 0x%04x: %s", self._conn.name, frame.tag, text)

    def _answer_error(self, request_id: int, code: ErrorCode, text: str) -> None:
        if request_id and self._conn.can_send:
            self._conn.send_frame(FrameKind.ERROR, request_id, 0, encode_error_body(code, text))

    # -- connection events ---------------------------------------------------------------

    def goaway_received(self, code: int, text: str) -> None:
        self._goaway = True

    def connection_lost(self, error: BaseException | None) -> None:
        self._closed = error or ConnectionClosed(f"{self._conn.name}: closed")
        for future in self._pending.values():
            if not future.done():
                future.set_exception(ConnectionClosed(f"{self._conn.name}: connection closed"))
        self._pending.clear()
        for task in list(self._handlers):
            task.cancel()


def channel_of(conn: Any) -> RpcChannel:
    """The RPC channel of a connection made by the network layer: ``Connection.sink`` is
    typed as the narrower ``FrameSink`` the connection itself needs."""
    sink = conn.sink
    assert isinstance(sink, RpcChannel), f"{conn.name}: its sink is not an RpcChannel"
    return sink


def rpc_errors_of(conn: Any) -> dict[str, int]:
    """The requests ``conn``'s channel refused so far, by kind (none if it never had a
    channel: reading this must not make one for every half-open connection it is asked
    about, see ``Connection.sink``)."""
    sink = conn.existing_sink if conn is not None else None
    return dict(getattr(sink, "errors", None) or {})


def rate_limited(*routers: Router) -> dict[str, dict[str, int]]:
    """Frames refused ``RATE_LIMITED`` by the routers of one role (validator port, client
    port), JSON-ready: ``{peer label: {route: count}}``."""
    out: dict[str, dict[str, int]] = {}
    for router in routers:
        if router.limiter is not None:
            for peer, routes in router.limiter.snapshot().items():
                merged = out.setdefault(peer, {})
                for route, count in routes.items():
                    merged[route] = merged.get(route, 0) + count
    return out
