"""A stranger's connection flood against a real node's listeners, against no attack.

Three OS processes on 127.0.0.1, all on uvloop:

- the **victim** (``--victim``, a child): a ``PeerManager`` listening on a validator port
  (it only accepts: its one peer must dial it, through the flood) and a ``ClientServer``
  on a client port, default ``Parameters`` limits;
- the **honest side** (this process): the victim's peer, sending ``Cleanup`` requests one
  after another over its link (round trips/s), and a real client connecting to the
  client port again and again with the client's normal retry (``narwhal.client``'s
  backoff, 0.2 s up to 5 s), each connect timed from the first attempt;
- the **attacker** (``--attack``, a child, phase 2 only): ``--silent`` connections that
  never send a byte, split over both ports and reopened as the victim closes them, plus a
  handshake flood from the same address: a recorded message 1 replayed (IK on the
  validator port, NK on the client port) or, with ``--garbage``, fresh random ones.

Phase 1 measures without attack, phase 2 with it, ``--seconds`` each. Printed: victim RSS
(peak during the phase), honest RPC round trips/s, real-client connect latency (median,
max, attempts), each with the attack / no-attack ratio, and the victim's admission
counters. Attacker, victim and honest side share 127.0.0.1, so the real client competes
with the flood for its own address's share, the hardest case; the machine's cores are
shared by all three processes.

File descriptors: the attacker holds ``--silent`` sockets; each process raises its soft
``RLIMIT_NOFILE`` in-process (``resource.setrlimit``, up to the hard limit) and says so.

Usage: ``python bench/connection_flood.py [--silent 5000] [--seconds 8] [--garbage]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from narwhal import messages
from narwhal.client.transactions import DEFAULT_RETRY as CLIENT_RETRY
from narwhal.config import Parameters
from narwhal.net.clients import ClientServer, connect_client
from narwhal.net.network import PeerInfo, PeerManager
from narwhal.net.retry import Backoff, is_transient
from narwhal.net.rpc import Router
from narwhal.net.sending import ReliableNetwork
from narwhal.wire.noise import HandshakePayload, Pattern
from tests.net.cluster import keypair
from tests.net.floods import (
    HandshakeFlood,
    SilentFlood,
    garbage_message1,
    raise_fd_limit,
    recorded_message1,
    rss_bytes,
)

NETWORK_ID = bytes(range(32))
MiB = 1024 * 1024


def _info(name: str, public: bytes, index: int, address: tuple[str, int] | None) -> PeerInfo:
    return PeerInfo(name=name, static_key=public, role="primary", authority=bytes([index]) * 32,
                    address=address)


# -- victim ----------------------------------------------------------------------------------


async def _victim(keys: dict[str, bytes], pipe: Any) -> None:
    limit = raise_fd_limit(16_384)
    config = Parameters().network_config()
    router = Router()

    async def cleanup(peer: Any, message: Any) -> None:
        return None

    router.route(messages.Cleanup, cleanup)
    manager = PeerManager(
        local_static=keys["victim_private"], local_public=keys["victim_public"],
        local_payload=HandshakePayload("primary", authority=bytes([0]) * 32),
        network_id=NETWORK_ID, peers=[_info("honest", keys["honest_public"], 1, None)],
        router=router, config=config, name="victim")
    clients = ClientServer(local_static=keys["victim_private"], network_id=NETWORK_ID,
                           local_payload=HandshakePayload("primary", authority=bytes([0]) * 32),
                           router=Router(), config=config.connection, name="victim/clients")
    ports = (await manager.start("127.0.0.1", 0), await clients.start("127.0.0.1", 0))
    pipe.send({"ports": ports, "fd_limit": limit})
    loop = asyncio.get_running_loop()
    while True:
        command = await loop.run_in_executor(None, pipe.recv)
        if command == "stop":
            break
        pipe.send({"validators": manager.admission.snapshot(),
                   "clients": clients.admission.snapshot()})
    await clients.stop()
    await manager.stop()


def victim_main(keys: dict[str, bytes], pipe: Any) -> None:
    uvloop.run(_victim(keys, pipe))


# -- attacker --------------------------------------------------------------------------------


async def _attack(keys: dict[str, bytes], ports: tuple[int, int], silent: int, garbage: bool,
                  pipe: Any) -> None:
    limit = raise_fd_limit(silent + 4_096)
    validator_port, client_port = ports
    ik = recorded_message1(Pattern.IK, keys["victim_public"], NETWORK_ID,
                           local_static=keys["honest_private"],
                           payload=HandshakePayload("primary", authority=bytes([1]) * 32))
    nk = recorded_message1(Pattern.NK, keys["victim_public"], NETWORK_ID)
    floods: list[Any] = [SilentFlood(validator_port, hold=silent // 2).start(),
                         SilentFlood(client_port, hold=silent - silent // 2).start()]
    for port, message in ((validator_port, ik), (client_port, nk)):
        make = garbage_message1(message) if garbage else (lambda m=message: m)
        floods.append(HandshakeFlood(port, make, concurrency=32).start())
    pipe.send({"fd_limit": limit})
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, pipe.recv)
    pipe.send({"silent_opened": sum(f.opened for f in floods[:2]),
               "handshakes_sent": sum(f.sent for f in floods[2:]),
               "handshakes_answered": sum(f.answered for f in floods[2:])})
    for flood in floods:
        await flood.stop()


def attack_main(keys: dict[str, bytes], ports: tuple[int, int], silent: int, garbage: bool,
                pipe: Any) -> None:
    uvloop.run(_attack(keys, ports, silent, garbage, pipe))


# -- honest side -----------------------------------------------------------------------------


async def _connect_with_retry(port: int, server_key: bytes) -> tuple[float, int]:
    """Seconds and attempts to connect, with the client's normal backoff."""
    backoff = Backoff(CLIENT_RETRY)
    start, attempts = time.monotonic(), 0
    while True:
        attempts += 1
        try:
            conn = await connect_client("127.0.0.1", port, server_static=server_key,
                                        network_id=NETWORK_ID, timeout=5)
        except Exception as exc:
            if not is_transient(exc):
                raise
            await asyncio.sleep(backoff.next_delay() or CLIENT_RETRY.max_interval)
            continue
        conn.abort()
        return time.monotonic() - start, attempts


async def _measure(network: ReliableNetwork, victim_key: bytes, client_port: int,
                   victim_pid: int, seconds: float) -> dict[str, Any]:
    deadline = time.monotonic() + seconds
    rss_peak = rss_bytes(victim_pid)

    async def rpcs() -> int:
        count, round_ = 0, 0
        while time.monotonic() < deadline:
            round_ += 1
            handle = await network.send(victim_key, messages.Cleanup(round_))
            await asyncio.wait_for(handle.wait(), 10)
            count += 1
        return count

    async def connects() -> list[tuple[float, int]]:
        out = []
        while time.monotonic() < deadline:
            out.append(await _connect_with_retry(client_port, victim_key))
            await asyncio.sleep(0.1)
        return out

    async def rss() -> None:
        nonlocal rss_peak
        while time.monotonic() < deadline:
            rss_peak = max(rss_peak, rss_bytes(victim_pid))
            await asyncio.sleep(0.1)

    start = time.monotonic()
    count, latencies, _ = await asyncio.gather(rpcs(), connects(), rss())
    elapsed = time.monotonic() - start
    seconds_list = [s for s, _ in latencies]
    return {
        "victim_rss_peak_mb": round(rss_peak / MiB, 1),
        "rpc_per_s": round(count / elapsed, 1),
        "client_connects": len(latencies),
        "client_connect_median_ms": round(statistics.median(seconds_list) * 1000, 1),
        "client_connect_max_ms": round(max(seconds_list) * 1000, 1),
        "client_attempts_max": max(a for _, a in latencies),
    }


async def _run(args: argparse.Namespace) -> dict[str, Any]:
    print(f"honest side: open-file soft limit {raise_fd_limit(4_096)}", file=sys.stderr)
    victim_private, victim_public = keypair()
    honest_private, honest_public = keypair()
    keys = {"victim_private": victim_private, "victim_public": victim_public,
            "honest_private": honest_private, "honest_public": honest_public}
    ctx = multiprocessing.get_context("spawn")
    victim_pipe, victim_end = ctx.Pipe()
    victim = ctx.Process(target=victim_main, args=(keys, victim_end), daemon=True)
    victim.start()
    loop = asyncio.get_running_loop()
    hello = await loop.run_in_executor(None, victim_pipe.recv)
    validator_port, client_port = hello["ports"]
    print(f"victim: open-file soft limit {hello['fd_limit']}", file=sys.stderr)
    manager = PeerManager(
        local_static=honest_private, local_public=honest_public,
        local_payload=HandshakePayload("primary", authority=bytes([1]) * 32),
        network_id=NETWORK_ID,
        peers=[_info("victim", victim_public, 0, ("127.0.0.1", validator_port))],
        config=Parameters().network_config(), name="honest")
    await manager.start("127.0.0.1", 0)
    network = ReliableNetwork(manager)
    attacker = None
    try:
        await manager.connection(victim_public, timeout=10)
        baseline = await _measure(network, victim_public, client_port, victim.pid, args.seconds)
        attack_pipe, attack_end = ctx.Pipe()
        attacker = ctx.Process(target=attack_main, daemon=True, args=(
            keys, (validator_port, client_port), args.silent, args.garbage, attack_end))
        attacker.start()
        started = await loop.run_in_executor(None, attack_pipe.recv)
        print(f"attacker: open-file soft limit {started['fd_limit']}", file=sys.stderr)
        await asyncio.sleep(1.0)  # let the flood build up
        attack = await _measure(network, victim_public, client_port, victim.pid, args.seconds)
        attack_pipe.send("report")
        flood = await loop.run_in_executor(None, attack_pipe.recv)
        victim_pipe.send("report")
        admission = await loop.run_in_executor(None, victim_pipe.recv)
    finally:
        await manager.stop()
        if attacker is not None:
            attacker.terminate()
        victim_pipe.send("stop")
        victim.join(5)
        victim.terminate()
    ratios = {f"{k}_ratio": round(attack[k] / baseline[k], 2) if baseline[k] else None
              for k in ("victim_rss_peak_mb", "rpc_per_s", "client_connect_median_ms",
                        "client_connect_max_ms")}
    counters = ("half_open", "peak_half_open", "evicted_per_source", "evicted_overall",
                "handshakes", "throttled_per_source", "throttled_overall", "replayed",
                "timed_out", "completed")
    return {"silent": args.silent, "handshake_flood": "garbage" if args.garbage else "replay",
            "seconds": args.seconds, "baseline": baseline, "attack": attack, **ratios,
            "flood": flood,
            "admission": {name: {k: snap[k] for k in counters} for name, snap in admission.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--silent", type=int, default=5_000, help="silent connections held")
    parser.add_argument("--seconds", type=float, default=8.0, help="seconds per phase")
    parser.add_argument("--garbage", action="store_true",
                        help="handshake flood of fresh random message 1s instead of replays")
    args = parser.parse_args()
    result = uvloop.run(_run(args))
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
