"""The admin endpoint: /metrics, /status, bad input, loopback only, slow clients."""

from __future__ import annotations

import asyncio
import json
import time

import pytest
from prometheus_client.parser import text_string_to_metric_families

from narwhal import admin
from narwhal.admin import AdminError, AdminServer, start_admin

PEER = {"name": "v1/primary", "key": "ab" * 32, "role": "primary", "state": "connected",
        "address": "127.0.0.1:4000", "connected_since": time.time() - 5, "rtt_ms": 2.5,
        "bytes_in": 1000, "bytes_out": 2000, "frames_in": 10, "frames_out": 20,
        "in_flight": 1, "queued": 0, "backing_off": 0, "pending": 1, "pool_capacity": 128,
        "retries": 3, "reconnects": 1, "dial_failures": 0, "errors": {"timeout": 2},
        "last_error": "timeout: no answer"}
STATUS = {"authority": "cd" * 32, "primary": {"round": 7, "committed_round": 5,
                                              "consensus_index": 12, "peers": [PEER]},
          "workers": {"0": {"batches_sealed": 4, "txs_received": 90, "errors": {"bad": 1},
                            "peers": [{**PEER, "name": "v1/worker-0", "role": "worker"}]}}}


async def request(port: int, raw: bytes) -> tuple[int, bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(raw)
    reply = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    head, _, body = reply.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


def get(path: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n".encode()


@pytest.fixture
async def server():
    srv = AdminServer(lambda: STATUS)
    await srv.start()
    yield srv
    await srv.stop()


async def test_metrics_are_prometheus_text_built_from_the_status(server):
    code, body = await request(server.port, get("/metrics"))
    assert code == 200
    families = {f.name: f for f in text_string_to_metric_families(body.decode())}
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for f in families.values() for s in f.samples}
    labels = (("local", "primary"), ("peer", "v1/primary"), ("role", "primary"))
    assert samples[("narwhal_peer_connected", labels)] == 1
    assert samples[("narwhal_peer_rtt_seconds", labels)] == pytest.approx(0.0025)
    assert samples[("narwhal_peer_sent_bytes_total", labels)] == 2000
    assert samples[("narwhal_peer_retries_total", labels)] == 3
    assert samples[("narwhal_peer_errors_total", (("kind", "timeout"), *labels))] == 2
    assert samples[("narwhal_peer_connection_uptime_seconds", labels)] >= 5  # since import
    assert samples[("narwhal_primary_round", ())] == 7
    assert samples[("narwhal_primary_consensus_index", ())] == 12
    assert samples[("narwhal_worker_batches_sealed_total", (("local", "worker-0"),))] == 4
    worker = (("local", "worker-0"), ("peer", "v1/worker-0"), ("role", "worker"))
    assert samples[("narwhal_peer_connected", worker)] == 1
    assert families["narwhal_peer_last_error_info"].samples[0].labels["error"] == "timeout: no answer"


async def test_status_is_the_json_snapshot_with_its_time(server):
    before = time.time()
    code, body = await request(server.port, get("/status?x=1"))
    document = json.loads(body)
    assert code == 200 and before <= document.pop("time") <= time.time()
    assert document == STATUS


async def test_a_status_that_has_its_own_time_keeps_it():
    """As in the status files (write_status): the document's own "time" wins."""
    srv = AdminServer(lambda: {**STATUS, "time": 12.5})
    await srv.start()
    try:
        code, body = await request(srv.port, get("/status"))
    finally:
        await srv.stop()
    assert code == 200 and json.loads(body)["time"] == 12.5


@pytest.mark.parametrize(("raw", "code"), [
    (get("/nope"), 404),
    (b"garbage\r\n\r\n", 400),
    (b"GET nope HTTP/1.1\r\n\r\n", 400),
    (b"GET / SMTP\r\n\r\n", 400),
    (b"GET /status HTTP/1.1\r\n" + b"X: " + b"a" * 20_000 + b"\r\n\r\n", 400),
    (b"POST /status HTTP/1.1\r\n\r\n", 405),
])
async def test_bad_requests(server, raw, code):
    assert (await request(server.port, raw))[0] == code


async def test_a_non_loopback_bind_is_refused_unless_forced():
    with pytest.raises(AdminError, match="loopback"):
        AdminServer(dict, "0.0.0.0")
    with pytest.raises(AdminError):
        AdminServer(dict, "example.com", 80)
    assert AdminServer(dict, "0.0.0.0", force=True).host == "0.0.0.0"
    assert await start_admin("10.1.2.3:9000", dict) is None  # logged, not served
    assert await start_admin(None, dict) is None


async def test_a_slow_client_does_not_block_another_and_is_dropped(server, monkeypatch):
    monkeypatch.setattr(admin, "READ_TIMEOUT", 0.3)
    slow_reader, slow_writer = await asyncio.open_connection("127.0.0.1", server.port)
    slow_writer.write(b"GET /status HT")  # never finishes its request
    started = time.monotonic()
    assert (await request(server.port, get("/status")))[0] == 200
    assert time.monotonic() - started < 0.25
    assert await asyncio.wait_for(slow_reader.read(), 2) == b""  # timed out and closed
    slow_writer.close()


async def test_clients_beyond_the_limit_are_closed_at_once(server, monkeypatch):
    monkeypatch.setattr(admin, "MAX_CLIENTS", 2)
    idle = [await asyncio.open_connection("127.0.0.1", server.port) for _ in range(2)]
    await asyncio.sleep(0.05)
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    assert await asyncio.wait_for(reader.read(), 1) == b""
    writer.close()
    for _, w in idle:
        w.close()
