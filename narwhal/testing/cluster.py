"""A local cluster of validator processes whose validator-to-validator links all cross a
:class:`~narwhal.testing.links.LinkEmulator`, with the nemesis' hands on the processes.

Why a separate harness: ``narwhal testnet`` runs the nodes as an operator would; a chaos
run also needs to shape every link and to kill, pause and restart any node while the
emulator (which lives in this process) keeps relaying for the others.

Layout: :func:`~narwhal.node.files.create_local`'s folder, plus ``node-<i>/dial-map.json``
(node ``i`` dials every other node's primary and worker through the relay of link
``i->j``; see :mod:`narwhal.node.dial_map`) and ``load-<i>.txt`` (its tagged load).
The nodes are started with the same command line every time (a restart is
``narwhal run`` again on the same store), each in its own process group, and stopped by
:class:`~narwhal.node.processes.ProcessGroup` (SIGTERM, grace, SIGKILL).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from pathlib import Path
from typing import Any

import attrs

from narwhal.config import Parameters, parse_address
from narwhal.node.dial_map import save_dial_map
from narwhal.node.files import LocalNetwork, create_local
from narwhal.node.processes import Child, ProcessGroup, python_module
from narwhal.node.status import read_status
from narwhal.testing.links import LinkEmulator
from narwhal.testing.outputs import tagged_load

__all__ = ["CHAOS_PARAMETERS", "RelayedCluster", "route_through"]

log = logging.getLogger(__name__)

#: Short delays (a small load still makes rounds, quickly) and a short GC depth (batches of
#: headers orphaned by a fault come back once the horizon passes them: seconds, not minutes).
CHAOS_PARAMETERS = Parameters(max_header_delay=0.05, batch_size=20_000, max_batch_delay=0.05,
                              gc_depth=10)


async def route_through(emulator: LinkEmulator, net: LocalNetwork) -> list[Path]:
    """A relay for every (node ``i``, endpoint of another node ``j``) on link ``i->j``, and
    ``node-<i>/dial-map.json`` pointing node ``i`` at them (give it to ``narwhal run
    --dial-map``); returns the dial-map files, by node index."""
    committee, files = net.committee, []
    names = committee.authorities_sorted()
    # every port of the committee: the nodes bind them only when started, after the relays
    ports = frozenset(parse_address(text)[1] for a in committee.authorities.values()
                      for text in (a.primary.address, a.primary.client_address,
                                   *([a.primary.admin_address] if a.primary.admin_address else []),
                                   *(w.worker_address for w in a.workers),
                                   *(w.transactions_address for w in a.workers)))
    for i in range(committee.size):
        dial = {}
        for j, name in enumerate(names):
            if i == j:
                continue
            authority = committee.authorities[name]
            for text in (authority.primary.address, *(w.worker_address for w in authority.workers)):
                address = parse_address(text)
                dial[address] = await emulator.add_route(i, j, address, avoid=ports)
        net.node_dir(i).mkdir(parents=True, exist_ok=True)
        files.append(net.node_dir(i) / "dial-map.json")
        save_dial_map(files[-1], dial)
    return files


@attrs.define(eq=False)
class RelayedCluster:
    """Validators ``0..n-1`` (key order) on 127.0.0.1, their links through ``emulator``."""

    net: LocalNetwork
    emulator: LinkEmulator
    group: ProcessGroup = attrs.field(factory=lambda: ProcessGroup(grace=15))
    nodes: dict[int, Child] = attrs.field(factory=dict)
    loads: dict[int, Child] = attrs.field(factory=dict)
    paused: set[int] = attrs.field(factory=set)
    log_level: str = "INFO"
    _starts: int = 0

    @classmethod
    async def create(cls, directory: Path, size: int = 4, *,
                     parameters: Parameters = CHAOS_PARAMETERS, seed: int | None = None,
                     log_level: str = "INFO") -> RelayedCluster:
        """Write the network's files and start one relay per (node, peer endpoint)."""
        net = create_local(directory, size, 1, parameters=parameters)
        emulator = LinkEmulator(seed=seed)
        await route_through(emulator, net)
        return cls(net, emulator, log_level=log_level)

    @property
    def size(self) -> int:
        return self.net.committee.size

    @property
    def f(self) -> int:
        """How many validators may fail (equal stakes)."""
        return (self.size - 1) // 3

    def argv(self, i: int) -> list[str]:
        node_dir = self.net.node_dir(i)
        return python_module(
            "narwhal.node", "run", "--keys", str(self.net.key_files[i]),
            "--committee", str(self.net.committee_file),
            "--parameters", str(self.net.parameters_file), "--store", str(node_dir),
            "--dial-map", str(node_dir / "dial-map.json"),
            "--log-level", self.log_level, "--log-file", str(node_dir / "node.log"))

    # -- processes -----------------------------------------------------------------------------

    def start(self, i: int) -> Child:
        """Start (or restart, on its store) node ``i``."""
        self._starts += 1
        child = self.group.start(f"node-{i}#{self._starts}", self.argv(i),
                                 self.net.node_dir(i) / "stdout.log")
        self.nodes[i] = child
        return child

    def running(self, i: int) -> bool:
        child = self.nodes.get(i)
        return child is not None and child.returncode is None

    async def kill(self, i: int) -> None:
        """kill -9 node ``i`` and reap it."""
        child = self.nodes[i]
        with contextlib.suppress(ProcessLookupError):
            os.kill(child.process.pid, signal.SIGKILL)
        await asyncio.to_thread(child.process.wait)
        self.paused.discard(i)

    def pause(self, i: int) -> None:
        os.kill(self.nodes[i].process.pid, signal.SIGSTOP)
        self.paused.add(i)

    def resume(self, i: int) -> None:
        os.kill(self.nodes[i].process.pid, signal.SIGCONT)
        self.paused.discard(i)

    def start_load(self, i: int, rate: float, seconds: float) -> Child:
        """Node ``i``'s worker gets ``rate`` tagged transactions a second (enough for
        ``seconds``), from a load client process of its own."""
        path = tagged_load(self.net.directory, i, int(rate * seconds) + 1)
        self.loads[i] = self.group.start(f"load-{i}", python_module(
            "narwhal.client", "submit", "--committee", str(self.net.committee_file),
            "--worker", str(i), "--rate", f"{rate:g}", "--from-file", str(path)),
            self.net.directory / f"load-{i}.log")
        return self.loads[i]

    async def stop_load(self) -> None:
        await asyncio.to_thread(self.group.stop, list(self.loads.values()))

    async def stop(self) -> dict[str, int]:
        """Stop every process (the paused ones are resumed first) and the relays."""
        for i in list(self.paused):
            with contextlib.suppress(ProcessLookupError):
                self.resume(i)
        codes = await asyncio.to_thread(self.group.stop)
        await self.emulator.close()
        return codes

    # -- observation ---------------------------------------------------------------------------

    def primary(self, i: int) -> dict[str, Any]:
        status = read_status(self.net.node_dir(i) / "status.json") or {}
        return status.get("primary") or {}

    def peers(self, i: int) -> list[dict[str, Any]]:
        """Node ``i``'s peers, as its primary's and workers' status report them."""
        status = read_status(self.net.node_dir(i) / "status.json") or {}
        found = list((status.get("primary") or {}).get("peers") or [])
        for worker in (status.get("workers") or {}).values():
            found += worker.get("peers") or []
        return found

    def rss_mb(self, i: int) -> float:
        """Resident memory of node ``i``'s process now (0 when it is not running)."""
        child = self.nodes.get(i)
        if child is None or child.returncode is not None:
            return 0.0
        try:
            for line in Path(f"/proc/{child.process.pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
        except OSError:
            pass
        return 0.0

    async def wait_for(self, predicate: Any, timeout: float, what: str) -> None:
        """Poll ``predicate()`` twice a second; TimeoutError naming ``what`` after ``timeout``."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not predicate():
            if loop.time() > deadline:
                raise TimeoutError(f"{what}: not within {timeout:.0f}s")
            await asyncio.sleep(0.5)
