"""Transport benchmark: our Noise connection against plain TCP and TLS 1.3, in one run.

Two OS processes on 127.0.0.1: this one (the client, which drives every workload) and a
server child (``--serve``) that listens on three ports (port 0 each) and reports them on
its stdout. All three transports carry the *same* application framing
(``narwhal.wire.frames``: 11-byte header + body) with the same write coalescing (queue
frames, one write per loop iteration or at ``FLUSH_THRESHOLD``) and the same backpressure
(high-water mark -> ``pause_writing`` -> ``await wait_writable()``):

- ``raw``: uvloop TCP, :class:`FramedProtocol`, plaintext;
- ``tls``: :class:`FramedProtocol` over asyncio TLS 1.3 (self-signed P-256 cert made at start);
- ``noise``: ``narwhal.net.connection.Connection`` (Noise IK, fixed keys made at start).

Workloads, each written once and run on every transport (:data:`WORKLOADS`):

- ``bulk``: 64 KiB one-way frames for S seconds; the *receiver* counts body bytes;
- ``msgs``: 512-byte one-way frames, pipelined, ``await wait_writable()`` before each;
  the receiver counts frames;
- ``echo1`` / ``echo64``: request/response round trips with 1 / 64 in flight, answered by
  the bench's own minimal echo (request id matching only) on every transport;
- ``rpc1`` / ``rpc64`` (noise only): the same through ``RpcChannel.request()`` with a
  small ``narwhal.messages`` request answered by a ``Router`` handler;
- ``hs_seq`` / ``hs_conc`` (tls and noise): TCP connect + TLS 1.3 / Noise IK handshake +
  close, one at a time / 16 at a time (why not raw: see :data:`SECURE`).

Each stream workload has a warm-up, then a MARK frame; the receiver measures from MARK to
the REPORT request that follows the last data frame, and answers its counters.
Round-trip and handshake rates are counted by the client after the warm-up.
MB is 10**6 bytes. Numbers are noisy when other work shares the machine: the load
average is recorded in the JSON.

Usage: ``python bench/transport.py [--quick] [--json] [--seconds S] [--only raw,tls,noise]
[--workloads bulk,msgs,...]``. With ``--json`` the last line of stdout is one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import datetime
import importlib.metadata
import ipaddress
import json
import os
import platform
import select
import signal
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import uvloop
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.x509.oid import NameOID
from rich.console import Console
from rich.table import Table

from narwhal.errors import ConnectionClosed, HandshakeError
from narwhal.net.connection import FLUSH_THRESHOLD, Connection, ConnectionConfig
from narwhal.wire.frames import Frame, FrameDecoder, FrameKind, frame_header
from narwhal.wire.noise import HandshakePayload, NoiseHandshake, Pattern

HOST = "127.0.0.1"
TRANSPORTS = ("raw", "tls", "noise", "raw_coalesced", "tls_coalesced")
#: The baselines: the usual asyncio idiom, one ``transport.write`` per frame. The
#: ``*_coalesced`` variants give raw/TLS our own coalescing too, to show what of Noise's
#: advantage comes from coalescing alone (they run the stream workloads only).
BASELINES = ("raw", "tls")
COALESCED = ("raw_coalesced", "tls_coalesced")
STREAM_TRANSPORTS = ("raw", "tls", "noise", *COALESCED)
CORE_TRANSPORTS = ("raw", "tls", "noise")
#: Handshakes are measured on these only: a raw TCP connect completes in the kernel without
#: the server process, so a client can outrun the server's accept() and overflow the
#: listen queue (each dropped SYN then costs a 1 s retransmit); it measures nothing useful.
SECURE = ("tls", "noise")
#: Bench-private type tags, at the top of the u16 space (``narwhal.messages`` starts low).
TAG_DATA, TAG_MARK, TAG_REPORT, TAG_ECHO = 0xFF01, 0xFF02, 0xFF03, 0xFF04
BULK_FRAME = 64 * 1024
MSG_SIZE = 512
ECHO_BODY = bytes(16)
HS_CONCURRENCY = 16
#: A connect or a REPORT that takes longer means the bench is broken, not slow.
CONNECT_TIMEOUT = 10.0
#: Same socket high-water mark for every transport (the Connection's default).
HIGH_WATER = ConnectionConfig().write_high_water
SERVER_PAYLOAD = HandshakePayload(role="primary", authority=b"\x01" * 32)
CLIENT_PAYLOAD = HandshakePayload(role="primary", authority=b"\x02" * 32)
#: Targets (reported, never forced): key -> minimum.
TARGETS = {
    "noise_vs_tls_bulk": 2.0,
    "noise_vs_raw_bulk": 0.6,
    "noise_vs_tls_msgs": 1.5,
    "noise_handshakes_per_s": 800.0,
}

console = Console(stderr=True, highlight=False)
#: ``FrameDecoder.frames()`` (all complete frames at once) where the decoder has it.
_BATCH_DECODE = hasattr(FrameDecoder, "frames")


# -- the baseline transport: same frames, same coalescing, no Noise --------------------------


class FramedProtocol(asyncio.Protocol):
    """raw/TLS twin of ``Connection``: frame decoder in, coalesced frames out, backpressure.

    Exposes the part of ``Connection``'s interface the workloads use: ``send_frame``,
    ``wait_writable``, ``ready``, ``aclose``, ``sink``.
    """

    def __init__(self, sink_factory: Callable[[Any], BenchSink], *, coalesce: bool) -> None:
        self._loop = asyncio.get_running_loop()
        self._coalesce = coalesce
        self.ready: asyncio.Future[FramedProtocol] = self._loop.create_future()
        self.closed: asyncio.Future[None] = self._loop.create_future()
        self._transport: asyncio.Transport | None = None
        self._decoder = FrameDecoder()
        self._out: list[bytes] = []
        self._out_size = 0
        self._flush_handle: asyncio.Handle | None = None
        self._writable = asyncio.Event()
        self._writable.set()
        self.sink = sink_factory(self)

    def connection_made(self, transport: Any) -> None:  # uvloop's are not asyncio.Transport
        self._transport = transport
        transport.set_write_buffer_limits(high=HIGH_WATER)
        self.ready.set_result(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        self._writable.set()
        if self._flush_handle is not None:
            self._flush_handle.cancel()
        self.sink.connection_lost(exc)
        if not self.closed.done():
            self.closed.set_result(None)

    def pause_writing(self) -> None:
        self._writable.clear()

    def resume_writing(self) -> None:
        self._writable.set()

    def data_received(self, data: bytes) -> None:
        decoder = self._decoder
        decoder.receive_data(data)
        if _BATCH_DECODE:  # whichever way Connection drains the decoder, the baseline does too
            for frame in decoder.frames():  # type: ignore[attr-defined]
                self.sink.frame_received(frame)
        else:
            while (frame := decoder.next_frame()) is not None:
                self.sink.frame_received(frame)

    async def wait_writable(self) -> None:
        while not self._writable.is_set():
            await self._writable.wait()
        if self._transport is None:
            raise ConnectionClosed("closed")

    def send_frame(self, kind: FrameKind, request_id: int, tag: int, body: bytes) -> None:
        if not self._coalesce:  # the usual idiom: one write per frame
            if self._transport is not None:
                self._transport.write(frame_header(kind, request_id, tag, len(body)) + body)
            return
        self._out.append(frame_header(kind, request_id, tag, len(body)))
        if body:
            self._out.append(body)
        self._out_size += len(body) + 11
        if self._out_size >= FLUSH_THRESHOLD:
            self._flush()
        elif self._flush_handle is None:
            self._flush_handle = self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        if not self._out or self._transport is None:
            return
        out = self._out
        self._out = []
        self._out_size = 0
        self._transport.write(out[0] if len(out) == 1 else b"".join(out))

    async def aclose(self) -> None:
        if self._transport is not None:
            self._flush()
            self._transport.close()
        await asyncio.shield(self.closed)


# -- the frame sink of both ends, every transport ------------------------------------------


class BenchSink:
    """Counts DATA, answers MARK/REPORT/ECHO, matches answers to our own requests.

    Frames with other tags (``narwhal.messages`` requests and their answers, tag-0 ERRORs)
    go to the connection's ``RpcChannel`` when there is one (noise).
    """

    def __init__(self, conn: Any, rpc: Any = None) -> None:
        self.conn = conn
        self.rpc = rpc
        self._pending: dict[int, asyncio.Future[bytes]] = {}
        self._next_id = 0
        self._mark()

    def _mark(self) -> None:
        self.frames = 0
        self.bytes = 0
        self.since = time.perf_counter()

    def frame_received(self, frame: Frame) -> None:
        tag = frame.tag
        if tag == TAG_DATA:
            self.frames += 1
            self.bytes += len(frame.body)
        elif tag < TAG_DATA:
            if self.rpc is not None:
                self.rpc.frame_received(frame)
        elif frame.kind is FrameKind.RESPONSE:
            future = self._pending.pop(frame.request_id, None)
            if future is not None and not future.done():
                future.set_result(frame.body)
        elif tag == TAG_MARK:
            self._mark()
        elif frame.kind is FrameKind.REQUEST:
            body = frame.body
            if tag == TAG_REPORT:
                report = {"frames": self.frames, "bytes": self.bytes,
                          "seconds": time.perf_counter() - self.since}
                body = json.dumps(report).encode()
            self.conn.send_frame(FrameKind.RESPONSE, frame.request_id, tag, body)

    async def call(self, tag: int, body: bytes) -> bytes:
        """Minimal request: send, await the RESPONSE with the same id."""
        await self.conn.wait_writable()
        self._next_id = self._next_id % 0xFFFF_FFFF + 1
        future: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self._pending[self._next_id] = future
        self.conn.send_frame(FrameKind.REQUEST, self._next_id, tag, body)
        return await future

    # FrameSink protocol, delegated to the RpcChannel when there is one.
    def goaway_received(self, code: int, text: str) -> None:
        if self.rpc is not None:
            self.rpc.goaway_received(code, text)

    def connection_lost(self, error: BaseException | None) -> None:
        for future in self._pending.values():
            if not future.done():
                future.set_exception(ConnectionClosed(f"connection lost: {error}"))
        self._pending.clear()
        if self.rpc is not None:
            self.rpc.connection_lost(error)

    @property
    def outstanding(self) -> int:
        return len(self._pending) + (self.rpc.outstanding if self.rpc is not None else 0)


def _rpc_parts() -> tuple[Any, Any, Any] | None:
    """(RpcChannel, Router, messages), or None while ``narwhal.messages`` does not exist."""
    try:
        from narwhal import messages
        from narwhal.net.rpc import Router, RpcChannel
    except ImportError:
        return None
    return RpcChannel, Router, messages


def _rpc_request(messages: Any) -> Any:
    """The small request the rpc workloads send (answered with ``Ack``)."""
    return messages.Cleanup(1)


# -- keys, certificate, endpoints ------------------------------------------------------------


def make_secrets(workdir: Path) -> dict[str, Any]:
    """Fresh Noise keys, network id and a self-signed TLS cert; JSON-able, for both processes."""
    def x25519() -> tuple[str, str]:
        key = X25519PrivateKey.generate()
        pub = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        return key.private_bytes_raw().hex(), pub.hex()

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(
            [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address(HOST))]), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = workdir / "cert.pem", workdir / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    (server_priv, server_pub), (client_priv, client_pub) = x25519(), x25519()
    return {"server_priv": server_priv, "server_pub": server_pub, "client_priv": client_priv,
            "client_pub": client_pub, "network_id": os.urandom(32).hex(),
            "cert": str(cert_file), "key": str(key_file)}


def tls_context(secrets: dict[str, Any], *, server: bool) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER if server else ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ctx.maximum_version = ssl.TLSVersion.TLSv1_3
    if server:
        ctx.load_cert_chain(secrets["cert"], secrets["key"])
    else:
        ctx.load_verify_locations(secrets["cert"])
    return ctx


def identify_as(expected_static: bytes | None) -> Callable[[bytes | None, HandshakePayload], Any]:
    def identify(remote_static: bytes | None, payload: HandshakePayload) -> Any:
        if expected_static is not None and remote_static != expected_static:
            raise HandshakeError("unknown static key")
        if payload.role != "primary":
            raise HandshakeError("unexpected role")
        return payload.authority
    return identify


def protocol_factory(transport: str, secrets: dict[str, Any], *, server: bool,
                     router: Any = None) -> Callable[[], asyncio.Protocol]:
    """``asyncio.Protocol`` factory of one end of one transport."""
    if transport != "noise":
        coalesce = transport in COALESCED
        return lambda: FramedProtocol(BenchSink, coalesce=coalesce)
    network_id = bytes.fromhex(secrets["network_id"])
    parts = _rpc_parts()

    def sink(conn: Connection) -> BenchSink:
        return BenchSink(conn, parts[0](conn, router or parts[1]()) if parts else None)

    def make() -> Connection:
        if server:
            hs = NoiseHandshake.responder(network_id=network_id,
                                          local_static=bytes.fromhex(secrets["server_priv"]))
            return Connection(hs, local_payload=SERVER_PAYLOAD, sink_factory=sink, name="bench-server",
                              identify=identify_as(bytes.fromhex(secrets["client_pub"])))
        hs = NoiseHandshake.initiator(pattern=Pattern.IK, network_id=network_id,
                                      remote_static=bytes.fromhex(secrets["server_pub"]),
                                      local_static=bytes.fromhex(secrets["client_priv"]))
        return Connection(hs, local_payload=CLIENT_PAYLOAD, sink_factory=sink, name="bench-client",
                          identify=identify_as(None))
    return make


# -- the server process --------------------------------------------------------------------


def _die_with_parent() -> None:
    """Linux: SIGKILL this process when the parent dies, however it dies."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass  # not Linux: stdin EOF still ends the server


class _StdinWatch(asyncio.Protocol):
    def __init__(self, gone: asyncio.Future[None]) -> None:
        self.gone = gone

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.gone.done():
            self.gone.set_result(None)


async def serve(secrets: dict[str, Any]) -> None:
    """Listen on one port per transport, print them, run until stdin closes."""
    loop = asyncio.get_running_loop()
    router = None
    if (parts := _rpc_parts()) is not None:
        _, router_class, messages = parts
        router = router_class()

        async def answer(peer: Any, message: Any) -> None:
            return None  # -> Ack
        router.route(type(_rpc_request(messages)), answer)
    ports = {}
    servers = []
    for transport in TRANSPORTS:
        ctx = tls_context(secrets, server=True) if transport.startswith("tls") else None
        factory = protocol_factory(transport, secrets, server=True, router=router)
        server = await loop.create_server(factory, HOST, 0, ssl=ctx, backlog=256)
        servers.append(server)
        ports[transport] = server.sockets[0].getsockname()[1]
    print(json.dumps(ports), flush=True)
    gone: asyncio.Future[None] = loop.create_future()
    await loop.connect_read_pipe(lambda: _StdinWatch(gone), sys.stdin)
    await gone
    for server in servers:
        server.close()


def spawn_server(secrets: dict[str, Any], extra_env: dict[str, str]) -> tuple[subprocess.Popen[str], dict[str, int]]:
    """Start the server child and read its ports; the caller must :func:`stop_server` it."""
    child = subprocess.Popen(
        [sys.executable, os.path.abspath(__file__), "--serve"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, start_new_session=True,
        env={**os.environ, **extra_env},
    )
    assert child.stdin is not None and child.stdout is not None
    try:
        child.stdin.write(json.dumps(secrets) + "\n")
        child.stdin.flush()
        ready, _, _ = select.select([child.stdout], [], [], 30)
        line = child.stdout.readline() if ready else ""
        if not line:
            raise RuntimeError(f"server did not report its ports (exit code {child.poll()})")
        return child, json.loads(line)
    except BaseException:
        stop_server(child)
        raise


def stop_server(child: subprocess.Popen[str]) -> None:
    """Close its stdin (it exits), then terminate, then kill: never leave it behind."""
    try:
        if child.stdin is not None:
            child.stdin.close()
        child.wait(timeout=5)
    except (subprocess.TimeoutExpired, OSError):
        child.terminate()
        try:
            child.wait(timeout=3)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()


# -- workloads (client side), written once for every transport -----------------------------


class Link:
    """One transport, as the workloads see it: ``connect()`` -> an open, ready connection."""

    def __init__(self, name: str, port: int, secrets: dict[str, Any]) -> None:
        self.name = name
        self._port = port
        self._factory = protocol_factory(name, secrets, server=False)
        self._ssl = tls_context(secrets, server=False) if name.startswith("tls") else None
        self.cipher: tuple[str, str, int] | None = None

    async def connect(self) -> Any:
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(CONNECT_TIMEOUT):
            transport, proto = await loop.create_connection(  # proto: FramedProtocol | Connection
                self._factory, HOST, self._port, ssl=self._ssl,
                server_hostname="localhost" if self._ssl else None)
            self.cipher = transport.get_extra_info("cipher")
            return await proto.ready  # type: ignore[attr-defined]


async def stream(link: Link, plan: Plan, body: bytes, burst: int) -> dict[str, float]:
    """One-way frames of ``body``, for ``plan.seconds`` after a warm-up; receiver's counts."""
    conn = await link.connect()
    send, wait, clock = conn.send_frame, conn.wait_writable, time.perf_counter

    async def pump(seconds: float) -> None:
        until = clock() + seconds
        while clock() < until:
            for _ in range(burst):
                await wait()
                send(FrameKind.ONEWAY, 0, TAG_DATA, body)

    await pump(plan.warmup)
    send(FrameKind.ONEWAY, 0, TAG_MARK, b"")
    await pump(plan.seconds)
    async with asyncio.timeout(CONNECT_TIMEOUT + plan.seconds):
        report: dict[str, float] = json.loads(await conn.sink.call(TAG_REPORT, b""))
    await conn.aclose()
    return report


async def timed(plan: Plan, concurrency: int, step: Callable[[], Awaitable[Any]]) -> float:
    """Run ``step`` in a loop in ``concurrency`` tasks; completions per second after warm-up."""
    done = 0
    stop = False

    async def worker() -> None:
        nonlocal done
        while not stop:
            await step()
            done += 1

    tasks = [asyncio.create_task(worker()) for _ in range(concurrency)]
    try:
        await asyncio.sleep(plan.warmup)
        start, t0 = done, time.perf_counter()
        await asyncio.sleep(plan.seconds)
        count, elapsed = done - start, time.perf_counter() - t0
        stop = True
        await asyncio.gather(*tasks)
    finally:
        for task in tasks:
            task.cancel()
    return count / elapsed


async def bulk(link: Link, plan: Plan) -> float:
    report = await stream(link, plan, bytes(BULK_FRAME), burst=1)
    return report["bytes"] / report["seconds"] / 1e6


async def msgs(link: Link, plan: Plan) -> float:
    report = await stream(link, plan, bytes(MSG_SIZE), burst=256)
    return report["frames"] / report["seconds"]


async def round_trips(link: Link, plan: Plan, inflight: int, via_rpc: bool) -> float | None:
    parts = _rpc_parts()
    if via_rpc and parts is None:
        return None
    conn = await link.connect()
    if parts is not None and via_rpc:
        message = _rpc_request(parts[2])
        rate = await timed(plan, inflight, lambda: conn.sink.rpc.request(message))
    else:
        rate = await timed(plan, inflight, lambda: conn.sink.call(TAG_ECHO, ECHO_BODY))
    await conn.aclose()
    return rate


async def handshakes(link: Link, plan: Plan, concurrency: int) -> float:
    async def once() -> None:
        conn = await link.connect()
        await conn.aclose()
    return await timed(plan, concurrency, once)


#: name -> (result key suffix, unit, transports it runs on, driver).
WORKLOADS: dict[str, tuple[str, str, tuple[str, ...], Callable[[Link, Plan], Awaitable[float | None]]]] = {
    "bulk": ("bulk_MBps", "MB/s", STREAM_TRANSPORTS, bulk),
    "msgs": ("msgs_per_s", "msg/s", STREAM_TRANSPORTS, msgs),
    "echo1": ("echo1_per_s", "rt/s", CORE_TRANSPORTS, lambda ln, p: round_trips(ln, p, 1, False)),
    "echo64": ("echo_per_s", "rt/s", CORE_TRANSPORTS, lambda ln, p: round_trips(ln, p, 64, False)),
    "rpc1": ("rpc1_per_s", "rt/s", ("noise",), lambda ln, p: round_trips(ln, p, 1, True)),
    "rpc64": ("rpc_per_s", "rt/s", ("noise",), lambda ln, p: round_trips(ln, p, 64, True)),
    "hs_seq": ("handshakes_seq_per_s", "hs/s", SECURE, lambda ln, p: handshakes(ln, p, 1)),
    "hs_conc": ("handshakes_conc_per_s", "hs/s", SECURE,
                lambda ln, p: handshakes(ln, p, HS_CONCURRENCY)),
}


class Plan:
    """How long each workload warms up and measures."""

    def __init__(self, seconds: float, warmup: float) -> None:
        self.seconds = seconds
        self.warmup = warmup


async def run_client(args: argparse.Namespace, ports: dict[str, int], secrets: dict[str, Any]) -> dict[str, Any]:
    plan = Plan(args.seconds, args.warmup)
    results: dict[str, Any] = {}
    began = time.perf_counter()
    for transport in args.only:
        link = Link(transport, ports[transport], secrets)
        for workload in args.workloads:
            suffix, unit, runs_on, driver = WORKLOADS[workload]
            if transport not in runs_on:
                continue
            value = await driver(link, plan)
            results[f"{transport}_{suffix}"] = value
            shown = "n/a (narwhal.messages missing)" if value is None else f"{value:,.1f} {unit}"
            console.print(f"[dim]{time.perf_counter() - began:6.1f}s[/] {transport:>5} {workload:<8} {shown}")
        if link.cipher:
            results[f"{transport}_cipher"] = link.cipher[0]
    return results


# -- report --------------------------------------------------------------------------------


def derive(results: dict[str, Any]) -> None:
    """Add the best-of handshake figure, the ratios and the target checks."""
    for transport in TRANSPORTS:
        pair = [results.get(f"{transport}_handshakes_{m}_per_s") for m in ("seq", "conc")]
        if any(v is not None for v in pair):
            results[f"{transport}_handshakes_per_s"] = max(v for v in pair if v is not None)
    for metric, short in (("bulk_MBps", "bulk"), ("msgs_per_s", "msgs"), ("echo_per_s", "echo"),
                          ("handshakes_per_s", "handshakes")):
        for base in ("tls", "raw", *COALESCED):
            ours, theirs = results.get(f"noise_{metric}"), results.get(f"{base}_{metric}")
            if ours is not None and theirs:
                results[f"noise_vs_{base}_{short}"] = ours / theirs
    results["targets_met"] = {key: results[key] >= minimum
                              for key, minimum in TARGETS.items() if results.get(key) is not None}


def table(results: dict[str, Any], transports: list[str], workloads: list[str]) -> Table:
    out = Table(title="narwhal-py transport benchmark (loopback, 2 processes, uvloop)")
    out.add_column("workload")
    out.add_column("unit")
    for transport in transports:
        out.add_column(transport, justify="right")
    out.add_column("noise/tls", justify="right")
    out.add_column("noise/raw", justify="right")
    for workload in workloads:
        suffix, unit, runs_on, _ = WORKLOADS[workload]
        if not set(runs_on) & set(transports):
            continue
        cells = []
        for transport in transports:
            value = results.get(f"{transport}_{suffix}")
            cells.append("-" if value is None else f"{value:,.1f}" if value < 100 else f"{value:,.0f}")
        ratios = []
        for base in ("tls", "raw"):
            ours, theirs = results.get(f"noise_{suffix}"), results.get(f"{base}_{suffix}")
            ratios.append(f"{ours / theirs:.2f}x" if ours is not None and theirs else "")
        out.add_row(workload, unit, *cells, *ratios)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="short runs: under 40 s in all")
    parser.add_argument("--json", action="store_true", help="last line of stdout: one JSON object")
    parser.add_argument("--seconds", type=float, help="measured seconds per workload (default 5, quick 1.0)")
    parser.add_argument("--warmup", type=float, help="warm-up seconds per workload (default 1, quick 0.25)")
    parser.add_argument("--only", default=",".join(TRANSPORTS), help="transports, comma-separated")
    parser.add_argument("--workloads", default=",".join(WORKLOADS), help="workloads, comma-separated")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        _die_with_parent()
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when we stop
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(serve(json.loads(sys.stdin.readline())))
        return 0
    args.only = [t for t in args.only.split(",") if t]
    args.workloads = [w for w in args.workloads.split(",") if w]
    unknown = (set(args.only) - set(TRANSPORTS)) | (set(args.workloads) - set(WORKLOADS))
    if unknown:
        parser.error(f"unknown transport or workload: {', '.join(sorted(unknown))}")
    if args.seconds is None:
        args.seconds = 1.0 if args.quick else 5.0
    if args.warmup is None:
        args.warmup = 0.25 if args.quick else 1.0

    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="narwhal-bench-") as workdir:
        secrets = make_secrets(Path(workdir))
        child, ports = spawn_server(secrets, {})
        try:
            with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
                results = runner.run(run_client(args, ports, secrets))
        finally:
            stop_server(child)
    derive(results)
    results.update(seconds=args.seconds, warmup=args.warmup, quick=args.quick,
                   python=platform.python_version(), uvloop=importlib.metadata.version("uvloop"), cpus=os.cpu_count(),
                   openssl=ssl.OPENSSL_VERSION, loadavg_before=load_before[0], loadavg_after=os.getloadavg()[0],
                   malloc_env={k: v for k, v in os.environ.items() if k.startswith(("MALLOC_", "GLIBC_TUNABLES"))})
    Console(highlight=False).print(table(results, args.only, args.workloads))
    if args.json:
        print(json.dumps(results, sort_keys=True), flush=True)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        console.print("interrupted")
        sys.exit(130)
