"""A local network demo: N peer processes exchanging acknowledged messages over Noise.

``python -m narwhal.node demo`` creates keys and a peer directory in a folder, starts one
OS process per peer (``python -m narwhal.node demo-peer``), and shows their live peer
tables with rich. Each peer reliably broadcasts a small message to all others at a steady
rate; every message crosses a real Noise-IK TCP connection and is acknowledged by the
receiver. Kill a peer process and watch the others retry and reconnect when it returns.

It exercises the whole network layer end to end; the mempool and consensus will replace
the demo traffic with Narwhal's own messages.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from rich.console import Console
from rich.live import Live
from rich.table import Table

from narwhal import messages
from narwhal.net.network import PeerInfo, PeerManager, ReliableNetwork
from narwhal.net.rpc import Router
from narwhal.wire.noise import HandshakePayload

log = logging.getLogger(__name__)

#: How often each peer prints its snapshot line to the parent.
SNAPSHOT_INTERVAL = 0.5


def write_directory(folder: Path, nodes: int, base_port: int | None) -> Path:
    """Generate X25519 keys and a directory file for ``nodes`` peers on 127.0.0.1."""
    import socket

    entries = []
    for i in range(nodes):
        key = X25519PrivateKey.generate()
        private = key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                                    serialization.NoEncryption())
        public = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        if base_port is None:
            with socket.socket() as sock:  # ask the kernel for a free port
                sock.bind(("127.0.0.1", 0))
                port = sock.getsockname()[1]
        else:
            port = base_port + i
        entries.append({"name": f"v{i}", "private": private.hex(), "public": public.hex(),
                        "authority": os.urandom(32).hex(), "host": "127.0.0.1", "port": port})
    path = folder / "directory.json"
    path.write_text(json.dumps({"network_id": os.urandom(32).hex(), "peers": entries}, indent=2))
    return path


async def run_peer(directory: Path, index: int, rate: float) -> None:
    """One demo peer: listen, dial the others, broadcast at ``rate`` msgs/s, print snapshots."""
    spec = json.loads(directory.read_text())
    me = spec["peers"][index]
    infos = [PeerInfo(name=p["name"], static_key=bytes.fromhex(p["public"]), role="primary",
                      authority=bytes.fromhex(p["authority"]), address=(p["host"], p["port"]))
             for p in spec["peers"] if p is not me]
    received = 0

    async def on_cleanup(peer: Any, message: messages.Cleanup) -> None:
        nonlocal received
        received += 1

    router = Router()
    router.route(messages.Cleanup, on_cleanup)
    manager = PeerManager(
        local_static=bytes.fromhex(me["private"]), local_public=bytes.fromhex(me["public"]),
        local_payload=HandshakePayload("primary", authority=bytes.fromhex(me["authority"])),
        network_id=bytes.fromhex(spec["network_id"]), peers=infos, router=router, name=me["name"])
    await manager.start(me["host"], me["port"])
    network = ReliableNetwork(manager)
    peers = [i.static_key for i in infos]
    outstanding: list[Any] = []
    sent = 0
    next_snapshot = time.monotonic()
    try:
        while True:
            outstanding = [h for h in outstanding if not h.done()]
            outstanding += await network.broadcast(peers, messages.Cleanup(sent))
            sent += 1
            if time.monotonic() >= next_snapshot:
                next_snapshot += SNAPSHOT_INTERVAL
                line = {"name": me["name"], "sent": sent, "received": received,
                        "unacked": len(outstanding), "peers": manager.snapshot()}
                print(json.dumps(line), flush=True)
            await asyncio.sleep(1.0 / rate)
    finally:
        await manager.stop()


def _render(states: dict[str, dict[str, Any]], started: float) -> Table:
    table = Table(title=f"narwhal-py network demo — {time.monotonic() - started:5.1f}s "
                        "(Ctrl-C to stop)")
    for column in ("node", "peers up", "sent", "received", "unacked", "retries",
                   "RTT ms (min/max)", "MB out", "last error"):
        table.add_column(column)
    for name, state in sorted(states.items()):
        peers = state.get("peers", [])
        up = sum(p["state"] == "connected" for p in peers)
        rtts = [p["rtt_ms"] for p in peers if p["rtt_ms"] is not None]
        errors = [p["last_error"] for p in peers if p["last_error"]]
        table.add_row(
            name,
            f"[{'green' if up == len(peers) else 'red'}]{up}/{len(peers)}[/]",
            str(state.get("sent", 0)), str(state.get("received", 0)), str(state.get("unacked", 0)),
            str(sum(p["retries"] for p in peers)),
            f"{min(rtts):.2f}/{max(rtts):.2f}" if rtts else "-",
            f"{sum(p['bytes_out'] for p in peers) / 1e6:.2f}",
            (errors[-1][:40] if errors else ""),
        )
    return table


async def run_demo(nodes: int, duration: float | None, rate: float, folder: Path | None) -> int:
    """Start ``nodes`` peer processes, show their state live, stop them all at the end."""
    folder = folder or Path(tempfile.mkdtemp(prefix="narwhal-demo-"))
    folder.mkdir(parents=True, exist_ok=True)
    directory = write_directory(folder, nodes, None)
    console = Console(stderr=True)
    console.print(f"directory: {directory}  logs: {folder}/v*.log")
    procs: list[asyncio.subprocess.Process] = []
    states: dict[str, dict[str, Any]] = {}

    async def follow(proc: asyncio.subprocess.Process) -> None:
        assert proc.stdout is not None
        async for raw in proc.stdout:
            try:
                state = json.loads(raw)
                states[state["name"]] = state
            except (ValueError, KeyError):
                continue

    for i in range(nodes):
        log_file = open(folder / f"v{i}.log", "wb")  # noqa: SIM115 - owned by the child
        procs.append(await asyncio.create_subprocess_exec(
            sys.executable, "-m", "narwhal.node", "demo-peer", str(directory), str(i),
            "--rate", str(rate), stdout=subprocess.PIPE, stderr=log_file))
    readers = [asyncio.create_task(follow(p)) for p in procs]
    started = time.monotonic()
    try:
        with Live(_render(states, started), console=console, refresh_per_second=4) as live:
            while duration is None or time.monotonic() - started < duration:
                await asyncio.sleep(0.25)
                live.update(_render(states, started))
                if any(p.returncode is not None for p in procs):
                    console.print("[red]a peer process exited; see its log[/]")
                    return 1
    finally:
        for p in procs:
            if p.returncode is None:
                p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                await asyncio.wait_for(p.wait(), 5)
            except TimeoutError:
                p.kill()
                await p.wait()
        for r in readers:
            r.cancel()
    ok = all(all(peer["state"] == "connected" for peer in s.get("peers", [])) for s in states.values())
    console.print("all peers connected and acknowledging" if ok else "[yellow]some peers were not connected[/]")
    return 0
