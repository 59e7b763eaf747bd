"""The node's local admin endpoint: ``/metrics`` (Prometheus) and ``/status`` (JSON).

A deliberately small HTTP/1.1 server on :func:`asyncio.start_server` (no web framework):
one ``GET`` per connection, answered with ``Connection: close``. It is an operator's
loopback tool, never a public service, so:

* it binds to a loopback address only; any other address is refused (:class:`AdminError`)
  unless ``force=True``, and even then only loopback *clients* are answered unless forced;
* a request head is capped at :data:`MAX_REQUEST` bytes (more is ``400``), must arrive
  within :data:`READ_TIMEOUT` seconds, and the answer must drain within the same time;
* at most :data:`MAX_CLIENTS` connections are served at once; more are closed at once, so
  slow or many clients cost the node a few idle sockets, never the event loop.

``/status`` is the JSON of ``status_fn()`` (the runner's status document: node state plus
every role's peer snapshot) that ``peer_top`` reads, with a top-level ``"time"`` (wall
clock, unix seconds, when the answer was made) like the status files of
:func:`~narwhal.node.status.write_status`: without it two nodes' answers, or two answers
of one node, cannot be put on one timeline. ``/metrics`` is
:func:`prometheus_client.generate_latest` of the node's own registry.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import logging
import time
from collections.abc import Callable
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from narwhal.config import parse_address
from narwhal.metrics import node_registry

__all__ = ["AdminError", "AdminServer", "is_loopback", "start_admin"]

log = logging.getLogger(__name__)

MAX_REQUEST = 8192
READ_TIMEOUT = 5.0
MAX_CLIENTS = 16
REASONS = {200: "OK", 400: "Bad Request", 403: "Forbidden", 404: "Not Found",
           405: "Method Not Allowed", 500: "Internal Server Error"}


class AdminError(Exception):
    """The admin endpoint cannot listen where asked."""


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback addresses (127.0.0.0/8, ::1)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class AdminServer:
    """Serves ``status_fn()`` as ``/status`` and its metrics as ``/metrics``."""

    def __init__(self, status_fn: Callable[[], dict[str, Any]], host: str = "127.0.0.1",
                 port: int = 0, *, force: bool = False) -> None:
        self.host, self.port = host, port
        if not is_loopback(host) and not force:
            raise AdminError(f"admin address {self.address}: not a loopback address "
                             "(the admin endpoint is local only; force=True to override)")
        self.status_fn = status_fn
        self.force = force
        self.registry = node_registry(status_fn)
        self.active = 0
        self._server: asyncio.Server | None = None

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    async def start(self) -> int:
        """Listen; return the bound port (useful with port 0)."""
        try:
            self._server = await asyncio.start_server(self._serve, self.host, self.port,
                                                      limit=MAX_REQUEST)
        except OSError as exc:
            raise AdminError(f"admin address {self.address}: cannot listen: "
                             f"{exc.strerror}") from exc
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 1.0)
            self._server = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.active >= MAX_CLIENTS:
            writer.close()
            return
        self.active += 1
        try:
            peer = writer.get_extra_info("peername") or ("?",)
            if not self.force and not is_loopback(str(peer[0])):
                status, ctype, body = 403, "text/plain", b"local clients only\n"
            else:
                status, ctype, body = await self._answer(reader)
            head = (f"HTTP/1.1 {status} {REASONS[status]}\r\nContent-Type: {ctype}\r\n"
                    f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n")
            writer.write(head.encode() + body)
            await asyncio.wait_for(writer.drain(), READ_TIMEOUT)
        except (TimeoutError, ConnectionError):
            writer.transport.abort()  # a slow or vanished client: just drop it
        finally:
            self.active -= 1
            writer.close()

    async def _answer(self, reader: asyncio.StreamReader) -> tuple[int, str, bytes]:
        """Read one request head and route it: (status, content type, body)."""
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), READ_TIMEOUT)
        except (asyncio.LimitOverrunError, asyncio.IncompleteReadError, ValueError):
            return 400, "text/plain", b"bad request\n"
        parts = head.split(b"\r\n", 1)[0].decode("latin-1").split(" ")
        if len(parts) != 3 or not parts[2].startswith("HTTP/1.") or not parts[1].startswith("/"):
            return 400, "text/plain", b"bad request\n"
        method, target = parts[0], parts[1].split("?", 1)[0]
        if method != "GET":
            return 405, "text/plain", b"GET only\n"
        try:
            if target == "/metrics":
                return 200, CONTENT_TYPE_LATEST, generate_latest(self.registry)
            if target == "/status":
                document = {"time": time.time(), **self.status_fn()}  # as write_status
                return 200, "application/json", json.dumps(document).encode()
        except Exception:
            log.exception("admin endpoint: %s failed", target)
            return 500, "text/plain", b"internal error\n"
        return 404, "text/plain", b"not found: try /metrics or /status\n"


async def start_admin(address: str | None, status_fn: Callable[[], dict[str, Any]]
                      ) -> AdminServer | None:
    """Start the endpoint of a node on its configured ``address`` (``host:port``) and print
    where it listens; None when no address is configured. A non-loopback address is not
    served (logged): a committee file must not turn it into a public service."""
    if address is None:
        return None
    host, port = parse_address(address)
    try:
        server = AdminServer(status_fn, host, port)
    except AdminError as exc:
        log.warning("%s: not starting it", exc)
        return None
    await server.start()
    print(f"admin endpoint: http://{server.address}/metrics and /status", flush=True)
    log.info("admin endpoint on %s", server.address)
    return server
