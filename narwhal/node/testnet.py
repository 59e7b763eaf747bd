"""``narwhal testnet``: a local network of validator processes, a load client, a live table.

Layout of the folder::

    keys/node-<i>.json  committee.json  parameters.json      (see narwhal.node.files)
    node-<i>/           primary.db, worker-<j>.db, status.json, node.log, stdout.log
    client/             status.json, client.log, stdout.log
    testnet.log         this process's own log

Each validator is ``python -m narwhal.node run ...`` in its own OS process; the load client
is ``python -m narwhal.client submit --all-workers ...``. The parent only reads status
files, twice a second, so it costs little CPU next to the nodes. On Ctrl-C, SIGTERM, after
``--duration``, or on any exception, it stops the client and then the validators (SIGTERM,
grace period, SIGKILL; see :mod:`narwhal.node.processes`) and prints a summary.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path

import attrs
from rich.console import Console
from rich.live import Live
from rich.table import Table

from narwhal.config import Parameters
from narwhal.node.dashboard import NodeView, client_line, print_whole, render, summary
from narwhal.node.files import LocalNetwork, create_local
from narwhal.node.processes import (
    Child,
    ProcessGroup,
    Terminated,
    python_module,
    terminate_on_signal,
)
from narwhal.node.status import read_status
from narwhal.peer_top.source import testnet_targets

__all__ = ["Testnet"]

log = logging.getLogger(__name__)

#: Seconds between two refreshes of the table.
REFRESH = 0.5
#: The load client starts once every validator wrote its status (it is listening), or
#: after this many seconds at the latest.
CLIENT_DELAY = 10.0


@attrs.define
class Testnet:
    network: LocalNetwork
    log_level: str = "INFO"
    console: Console = attrs.field(factory=Console)

    @classmethod
    def create(cls, *, nodes: int, workers: int, directory: Path,
               parameters: Parameters, base_port: int | None = None,
               log_level: str = "INFO") -> Testnet:
        network = create_local(directory, nodes, workers, parameters=parameters,
                               base_port=base_port)
        return cls(network, log_level)

    @property
    def directory(self) -> Path:
        return self.network.directory

    def node_argv(self, index: int) -> list[str]:
        node_dir = self.network.node_dir(index)
        return python_module(
            "narwhal.node", "run", "--keys", str(self.network.key_files[index]),
            "--committee", str(self.network.committee_file),
            "--parameters", str(self.network.parameters_file), "--store", str(node_dir),
            "--log-level", self.log_level, "--log-file", str(node_dir / "node.log"))

    def client_argv(self, rate: float, tx_size: int) -> list[str]:
        client_dir = self.directory / "client"
        return python_module(
            "narwhal.client", "submit", "--committee", str(self.network.committee_file),
            "--all-workers", "--rate", str(rate), "--tx-size", str(tx_size),
            "--status-file", str(client_dir / "status.json"),
            "--log-level", self.log_level, "--log-file", str(client_dir / "client.log"))

    def run(self, *, duration: float | None, rate: float, tx_size: int) -> int:
        """Start everything, show the table until Ctrl-C/``duration``, stop, summarize.
        Returns 0, or 1 when a validator exited on its own."""
        size = len(self.network.key_files)
        self.console.print(f"testnet: {size} validators in [bold]{self.directory}[/] "
                           f"(logs: node-*/node.log); load {rate:g} tx/s of {tx_size} B")
        for target in testnet_targets(self.directory):
            self.console.print(f"  {target.label} admin endpoint: http://{target.admin}/status")
        self.console.print(f"  peers: python tools/peer_top --testnet {self.directory}")
        views = [NodeView(f"node-{i}", self.network.node_dir(i) / "status.json")
                 for i in range(size)]
        with terminate_on_signal(), ProcessGroup() as group:
            load = (lambda: group.start("client", self.client_argv(rate, tx_size),
                                        self.directory / "client" / "stdout.log")) if rate else None
            nodes = [group.start(f"node-{i}", self.node_argv(i),
                                 self.network.node_dir(i) / "stdout.log") for i in range(size)]
            try:
                self._watch(views, nodes, load, duration)
            except (KeyboardInterrupt, Terminated) as exc:
                log.info("stopping on %s", type(exc).__name__)
            finally:
                self.console.print("\nstopping...")
                codes = group.stop([c for c in group.children if c not in nodes])
                codes |= group.stop(nodes)
        failed = False
        for view, node in zip(views, nodes, strict=True):
            view.poll()  # the final status written on the way out
            if codes[node.name] != 0:
                view.exit_code = codes[node.name]
                failed = True
        print_whole(self.console, summary(views))  # whole names in a log file too
        if rate:
            self.console.print(client_line(read_status(self._client_status)))
        if failed:
            self.console.print("[red]some validators did not exit cleanly: see node-*/node.log "
                               "and node-*/stdout.log[/]")
        return 1 if failed else 0

    @property
    def _client_status(self) -> Path:
        return self.directory / "client" / "status.json"

    def _watch(self, views: list[NodeView], nodes: list[Child],
               start_client: Callable[[], Child] | None, duration: float | None) -> None:
        """Refresh the table until ``duration`` passes or every validator has exited; start
        the load client once every validator reports (or after :data:`CLIENT_DELAY`)."""
        started = time.monotonic()
        client: Child | None = None

        def table() -> Table:
            elapsed = time.monotonic() - started
            title = (f"narwhal-py testnet — {elapsed:5.1f}s"
                     + (f" of {duration:g}s" if duration else " (Ctrl-C to stop)"))
            load = read_status(self._client_status) if client else None
            return render(views, title, load or ({} if start_client else None))

        with Live(table(), console=self.console, refresh_per_second=2) as live:
            while duration is None or time.monotonic() - started < duration:
                time.sleep(REFRESH)
                for view, node in zip(views, nodes, strict=True):
                    view.poll()
                    view.exit_code = node.returncode
                if start_client and client is None and (
                        all(v.doc for v in views) or time.monotonic() - started > CLIENT_DELAY):
                    client = start_client()
                live.update(table())
                if all(node.returncode is not None for node in nodes):
                    log.error("every validator exited")
                    return
