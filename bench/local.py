"""Cluster benchmark: N validator processes and a rate-controlled load on this machine.

Like the research prototype's ``fab local``: it creates keys and a committee in a temporary
directory, starts every validator as its own OS process (``narwhal run``), starts the load
client (``python -m narwhal.client submit``, one connection per worker, ``--rate`` tx/s in
total, transactions stamped with their send time), runs ``--duration`` seconds, stops
everything, and computes from what the nodes recorded:

- **consensus** TPS/BPS and latency: for every batch, from its ``Created batch`` log line
  (worker) to the first ``Committed batch`` line (any primary);
- **end-to-end** TPS/BPS and latency: for every committed transaction, from the send time
  the client stamped into it to its batch's first commit (transactions are read back from
  the workers' stores).

Only batches created after a warm-up (``--warmup``) and committed before the end count.
Timestamps come from log lines (millisecond resolution) and ``time.time_ns()`` in the
client: the same wall clock, on one machine.

    python bench/local.py --rate 10000 --duration 20 [--consensus tusk] [--json out.json]
    python bench/local.py --faults 1 --rate 10000          # 1 of 4 validators crashed at start
    python bench/local.py --sweep 10000,20000,35000,50000 --plot curve.png

``--faults F`` never starts the last F validators (the papers' crash-fault experiments):
the others must make progress with 2f+1 of 3f+1. ``--sweep`` runs one measurement per input
rate and prints a table (and draws latency against throughput with matplotlib, the
optional ``bench`` extra, when ``--plot`` is given), ending with the maximum sustainable
rate: the highest rate that keeps up (committed >= 95% of the input) with latency flat,
both along the curve (mean <= 2x the lowest rate's) and through the run (the last
quarter's median latency <= 1.5x the first quarter's: no backlog building up).

**Memory**: once the load starts, the resident memory (RSS, ``VmRSS`` of ``/proc/<pid>/status``)
of every validator process is sampled about once a second. The summary gives, for the
largest node, the RSS at the start and end of the run, the peak, and the growth: the
least-squares slope in MB/min (MiB) of the samples after the warm-up, the largest over the
nodes. A flat memory profile is a growth near 0 over a long run (``--duration 300``); the
JSON has every sample (``rss_samples``: per node, a list of ``[seconds, MB]``). The space
each validator's store takes on disk (allocated blocks of its folder) is sampled the same way:
``disk_mb_end`` (largest node at the end) and ``disk_growth_mb_per_min`` (fitted over the
second half of the run), with ``disk_samples``.

**Latency tail**: p50, p95, p99 and max of consensus latency (every batch measured) and of
end-to-end latency (the transactions of a uniform sample of at most 2,000 batches).

**Parameters and restarts**: ``--set NAME=VALUE`` overrides a node parameter as ``narwhal
testnet --set`` does (the JSON has them under ``overrides``). ``--restart-at S`` kills -9 the
last live validator S seconds into the load and starts it again ``--restart-down`` seconds
later: ``restart_s`` is the time from that restart to its first vote, ``rejoin_s`` until it
commits the round the others had committed when it came back.

**Audit**: ``--audit`` follows every node's ordered output from index 1 while the load runs
(:mod:`narwhal.testing.audit`, a process of its own) and checks it as it arrives: indexes
contiguous, no certificate twice, the nodes agreeing index by index, and no transaction a
worker acknowledged to a load client missing from any node's output (``acked_lost``, exact
per client: a bit per transaction). After the load it waits (up to a minute) for every node
to serve what had been ordered; ``audit_violations`` lists what failed, and the exit code
is 1 if anything did. For soak runs: ``--duration 1800 --audit --set retain_seconds=60``.

**WAN**: ``--latency MS [--jitter MS]`` sends every validator-to-validator connection
through the link emulator (:mod:`narwhal.testing.links`, one relay per dialer and peer
endpoint, run on a thread of this process; each node gets ``--dial-map``), each direction
delayed MS one way (+-jitter per chunk, in order). Clients talk to their validators
directly, as they would to a nearby one.

**Failures**: bad arguments are refused before anything starts (exit 2). A validator that
exits during start-up or the run (it could not bind its ports: see ``--base-port``; it
crashed; it was killed), or a load client that fails, stops the benchmark: every other
process is stopped, the node and the tail of its logs are printed, and the exit code is 1.
Ctrl-C (SIGINT), SIGTERM or SIGHUP stop every validator and client too (exit 128 + the
signal number); a second signal during that stop kills them at once. Each run's files stay
in a ``narwhal-bench-*`` folder of the temporary directory (``TMPDIR``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import FrameType
from typing import Any

import attrs

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rich.console import Console
from rich.progress import Progress

from narwhal import messages
from narwhal.client import parse_transaction
from narwhal.config import ConfigError, Parameters
from narwhal.crypto import AuthorityKeys
from narwhal.node.files import create_local, parameters_with, parse_overrides, ports_per_authority
from narwhal.node.processes import (
    Child,
    ProcessGroup,
    Terminated,
    python_module,
    terminate_on_signal,
)
from narwhal.node.status import read_status
from narwhal.store import Store
from narwhal.testing.audit import AuditRun
from narwhal.testing.batch_log import read_batch_logs
from narwhal.testing.cluster import route_through
from narwhal.testing.links import EmulatorThread

console = Console(stderr=True)
#: Seconds the validators get to reach round 2 before the load starts.
START_TIMEOUT = 60.0
#: Seconds children get between SIGTERM and SIGKILL when the benchmark stops them.
GRACE = 15.0
#: Seconds between two RSS samples of every validator.
RSS_INTERVAL = 1.0
#: Lines of a dead process's logs printed in the error message.
LOG_TAIL = 15
#: The client stamps its send time into the first bytes of each transaction.
MIN_TX_SIZE = 24
#: Batches whose transactions are read back for the end-to-end latency: a uniform sample, so
#: that a long run (a 5-minute run stores ~30 GB of batches) is analysed in bounded memory.
E2E_SAMPLE_BATCHES = 2_000


def send_times(stores: list[Path], digests: list[str]) -> dict[str, list[int]]:
    """The client-stamped send times (ns) in each of ``digests``' batches, read one batch at
    a time from the first worker store holding it."""
    found: dict[str, list[int]] = {}
    opened = [Store.open(path) for path in stores]
    try:
        for digest in digests:
            key = bytes.fromhex(digest)
            body = next((b for store in opened if (b := store.get("batches", key)) is not None), None)
            if body is not None:
                batch = messages.decode_as(messages.Batch, body)
                found[digest] = [sent for tx in batch.transactions if (sent := parse_transaction(tx)[2])]
    finally:
        for store in opened:
            asyncio.run(store.close())
    return found


def node_figures(status_files: list[Path]) -> dict[str, Any]:
    """From the last status each node wrote: batches proposed again because their first
    header was orphaned (the latency tail), the garbage collector's full collections and
    longest pause, and the event-loop stalls (summed, or the max over the nodes). A figure
    is None when a status file is missing, unreadable or lacks it."""
    statuses = []
    for path in status_files:
        try:
            statuses.append(json.loads(path.read_text()))
        except (OSError, ValueError):
            return dict.fromkeys(NODE_FIGURES)

    def each(get: Callable[[dict[str, Any]], Any]) -> list[Any] | None:
        try:
            return [get(status) for status in statuses]
        except (KeyError, TypeError, AttributeError):
            return None

    figures: dict[str, Any] = {}
    for key, (get, combine) in NODE_FIGURES.items():
        values = each(get)
        figures[key] = combine(values) if values else None
    return figures


#: Figure -> (how to read it from one node's status, how to combine the nodes').
NODE_FIGURES: dict[str, tuple[Callable[[dict[str, Any]], Any], Callable[[list[Any]], Any]]] = {
    "batches_reproposed": (lambda s: s["primary"]["counters"].get("batches_reproposed", 0), sum),
    "batches_reproposed_at_horizon": (
        lambda s: s["primary"]["counters"].get("batches_reproposed_at_horizon", 0), sum),
    "gc_full_collections": (lambda s: s["gc_full_collections"], sum),
    "gc_max_pause_ms": (lambda s: s["gc_max_pause_ms"], max),
    "loop_stalls": (lambda s: s["loop_stalls"], sum),
    "loop_max_lag_ms": (lambda s: s["loop_max_lag_ms"], max),
}


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p * len(ordered)))] if ordered else 0.0


class BenchError(Exception):
    """The run cannot go on (a validator died, it did not start...): the message says why."""


def rss_mb(pid: int) -> float | None:
    """Resident memory of process ``pid`` in MB (MiB), None if it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024  # kB
        return None  # a zombie has no VmRSS
    except FileNotFoundError:
        if Path("/proc/self/status").exists():
            return None  # the process is gone
    except (OSError, ValueError, IndexError):
        return None
    try:  # no /proc (not Linux): ask ps
        out = subprocess.run(["ps", "-o", "rss=", "-p", str(pid)], capture_output=True, text=True,
                             timeout=5, check=False).stdout.strip()
        return int(out) / 1024 if out else None
    except (OSError, ValueError, subprocess.SubprocessError):
        return None


def store_mb(directory: Path) -> float | None:
    """Disk space allocated to the files under ``directory`` in MB (MiB): blocks actually
    allocated, not apparent sizes, so a sparse or preallocated file counts what it uses."""
    total = 0
    try:
        for path in directory.rglob("*"):
            with contextlib.suppress(OSError):  # a file deleted while we walk
                st = path.lstat()
                if not path.is_symlink() and path.is_file():
                    total += st.st_blocks * 512
    except OSError:
        return None
    return total / (1 << 20)


class Sampler:
    """Samples ``[seconds since the start, MB]`` of one measure (``measure(i)`` for live
    validator ``i``: its RSS, its store's size) about once a second."""

    def __init__(self, prefix: str, names: list[str], measure: Callable[[int], float | None],
                 started: float) -> None:
        self.prefix, self.measure, self.started = prefix, measure, started
        self.samples: dict[str, list[list[float]]] = {name: [] for name in names}
        self.last = float("-inf")

    def maybe_sample(self) -> None:
        now = time.time()
        if now - self.last < RSS_INTERVAL:
            return
        self.last = now
        for i, name in enumerate(self.samples):
            mb = self.measure(i)
            if mb is not None:
                self.samples[name].append([round(now - self.started, 2), round(mb, 2)])

    def figures(self, warmup: float) -> dict[str, object]:
        """Start, end and peak of the largest node, and the largest growth (MB/min:
        least-squares slope of a node's samples over the second half of the run, and after
        ``warmup``). Why the second half: a node's working set (the DAG's GC window, batches
        in flight, caches) builds up during the first minute at any rate; "flat" is about
        what happens after that. Keys are prefixed: ``rss_mb_end``, ``disk_growth_mb_per_min``."""
        series = [s for s in self.samples.values() if s]
        slopes, window = [], 0.0
        for s in series:
            after = [(t, mb) for t, mb in s if t >= max(warmup, s[-1][0] / 2)]
            if len(after) >= 2:
                ts, mbs = zip(*after, strict=True)
                slopes.append(60 * statistics.linear_regression(ts, mbs).slope)
                window = max(window, ts[-1] - ts[0])
        p = self.prefix
        return {
            f"{p}_mb_start": max((s[0][1] for s in series), default=None),
            f"{p}_mb_end": max((s[-1][1] for s in series), default=None),
            f"{p}_mb_max": max((mb for s in series for _, mb in s), default=None),
            f"{p}_growth_mb_per_min": max(slopes, default=None),
            f"{p}_growth_window_s": round(window, 2),  # the span of the samples fitted
            f"{p}_samples": self.samples,
        }


class Restart:
    """``--restart-at S``: kill -9 the last live validator S seconds into the load, start it
    again with the same command line ``--restart-down`` seconds later, and time how long it
    takes to cast its first vote (``restart_s``: from the restart to the first status file
    of the new process with ``votes_cast >= 1``; status files are written every second, so
    the figure is accurate to about a second) and how long it takes to commit again where
    the others were when it came back (``rejoin_s``: until its ``committed_round`` reaches
    the highest ``committed_round`` another node had at the restart)."""

    def __init__(self, args: argparse.Namespace, net: Any, group: ProcessGroup, nodes: list[Child],
                 started: float) -> None:
        self.at, self.down = args.restart_at, args.restart_down
        self.net, self.group, self.nodes, self.started = net, group, nodes, started
        self.index = len(nodes) - 1
        self.status_file = net.node_dir(self.index) / "status.json"
        self.restarted_at: float | None = None
        self.first_vote: float | None = None
        self.rejoin_round = 0  # the others' highest committed round at the restart
        self.rejoined: float | None = None

    @property
    def name(self) -> str:
        return self.nodes[self.index].name

    def step(self, elapsed: float) -> None:
        if self.restarted_at is None and elapsed >= self.at:
            self._kill_and_start()
        elif self.restarted_at is not None and (self.first_vote is None or self.rejoined is None):
            self._look_for_vote()

    def _kill_and_start(self) -> None:
        old = self.nodes[self.index]
        old.process.kill()
        old.process.wait()
        self.group.children.remove(old)
        time.sleep(self.down)
        self.rejoin_round = max((
            (read_status(self.net.node_dir(i) / "status.json") or {})
            .get("primary", {}).get("committed_round", 0)
            for i in range(len(self.nodes)) if i != self.index), default=0)
        self.restarted_at = time.time()
        self.nodes[self.index] = self.group.start(old.name, old.process.args, old.log_path)

    def _look_for_vote(self) -> None:
        status = read_status(self.status_file) or {}
        if status.get("time", 0) <= (self.restarted_at or 0):
            return  # the old process's file
        primary = status.get("primary", {})
        if self.first_vote is None and primary.get("votes_cast", 0) >= 1:
            self.first_vote = status["time"]
        if self.rejoined is None and primary.get("committed_round", 0) >= max(self.rejoin_round, 1):
            self.rejoined = status["time"]

    def settle(self) -> None:
        """One last look after the run (the vote may have come during the settling time)."""
        if self.restarted_at is not None and (self.first_vote is None or self.rejoined is None):
            self._look_for_vote()

    def restart_s(self) -> float | None:
        return self._since_restart(self.first_vote)

    def rejoin_s(self) -> float | None:
        return self._since_restart(self.rejoined)

    def _since_restart(self, moment: float | None) -> float | None:
        if self.restarted_at is None or moment is None:
            return None
        return round(moment - self.restarted_at, 2)


def _tail(path: Path, lines: int = LOG_TAIL) -> list[str]:
    try:
        return path.read_text(errors="replace").splitlines()[-lines:]
    except OSError:
        return []


def death_report(child: Child, logs: list[Path], when: str) -> str:
    """``node-0 (pid 12) exited with code 2 during start-up: <its last error line>`` and the
    tail of each of its logs."""
    code = child.returncode
    assert code is not None
    how = f"was killed by {signal.Signals(-code).name}" if code < 0 else f"exited with code {code}"
    reason = next((line.strip().removeprefix("error:").strip() for line in reversed(_tail(logs[0]))
                   if line.strip().startswith("error:")), None)
    lines = [f"{child.name} (pid {child.process.pid}) {how} {when}" + (f": {reason}" if reason else "")]
    for log_path in logs:
        tail = _tail(log_path)
        lines.append(f"  {log_path}" + (":" if tail else " (empty)"))
        lines.extend(f"  | {line}" for line in tail)
    return "\n".join(lines)


def stop_all(group: ProcessGroup) -> dict[str, int]:
    """``group.stop()`` (SIGTERM, grace, SIGKILL). A SIGINT/SIGTERM/SIGHUP meanwhile does not
    interrupt it (that could leave children behind): it SIGKILLs every child still alive."""
    def hurry(signum: int, frame: FrameType | None) -> None:
        for child in group.children:
            if child.process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(child.process.pid, signal.SIGKILL)

    previous = {sig: signal.signal(sig, hurry) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    try:
        return group.stop()
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


@contextlib.contextmanager
def children() -> Iterator[ProcessGroup]:
    """A ProcessGroup whose children are all stopped on the way out, however it is left."""
    group = ProcessGroup(grace=GRACE)
    try:
        yield group
    finally:
        stop_all(group)


def run(args: argparse.Namespace, directory: Path) -> dict[str, object]:
    parameters = parameters_with(parse_overrides(args.overrides),
                                 attrs.evolve(Parameters(), consensus=args.consensus))
    try:
        net = create_local(directory, args.nodes, args.workers, parameters=parameters,
                           base_port=args.base_port)
    except (ConfigError, OSError) as exc:  # e.g. no free ports left
        raise BenchError(f"cannot create the local network in {directory}: {exc}") from exc
    running = range(args.nodes - args.faults)  # the last F validators are crashed from the start
    logs = {f"node-{i}": [net.node_dir(i) / "stdout.log", net.node_dir(i) / "node.log"] for i in running}

    def check(nodes: list[Child], clients: list[Child], when: str) -> None:
        """BenchError for a validator that exited, or a client that failed."""
        for child in nodes:
            if child.returncode is not None:
                raise BenchError(death_report(child, logs[child.name], when))
        for child in clients:
            if child.returncode not in (None, 0):
                raise BenchError(death_report(child, [child.log_path], when))

    emulated = args.latency > 0 or args.jitter > 0
    with (EmulatorThread() if emulated else contextlib.nullcontext()) as links, children() as group:
        dial: dict[int, list[str]] = {i: [] for i in running}
        if links is not None:  # every validator-to-validator link through a delaying relay
            files = links.run(lambda emulator: route_through(emulator, net))
            dial = {i: ["--dial-map", str(files[i])] for i in running}

            async def shape(emulator: Any) -> None:
                emulator.shape(latency=args.latency / 1000, jitter=args.jitter / 1000)
            links.run(shape)
        nodes = [group.start(f"node-{i}", python_module(
            "narwhal.node", "run", "--keys", str(net.key_files[i]), "--committee", str(net.committee_file),
            "--parameters", str(net.parameters_file), "--store", str(net.node_dir(i)),
            "--log-file", str(net.node_dir(i) / "node.log"), *dial[i]), net.node_dir(i) / "stdout.log")
            for i in running]
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            check(nodes, [], "during start-up")
            rounds = {f"node-{i}": (read_status(net.node_dir(i) / "status.json") or {})
                      .get("primary", {}).get("round", 0) for i in running}
            if all(r >= 2 for r in rounds.values()):
                break
            if time.monotonic() > deadline:
                raise BenchError(
                    f"the validators did not reach round 2 within {START_TIMEOUT:.0f} s ("
                    + ", ".join(f"{name} at round {r}" for name, r in rounds.items())
                    + f"); see {directory}/node-*/node.log")
            time.sleep(0.2)
        started = time.time()
        names = [child.name for child in nodes]
        memory = Sampler("rss", names, lambda i: rss_mb(nodes[i].process.pid)
                         if nodes[i].returncode is None else None, started)
        disk = Sampler("disk", names, lambda i: store_mb(net.node_dir(running[i])), started)
        samplers = (memory, disk)
        restart = Restart(args, net, group, nodes, started) if args.restart_at is not None else None
        audit = AuditRun(group, net, directory) if args.audit else None
        watched = [audit.child] if audit is not None else []  # must not exit before the end
        for sampler in samplers:
            sampler.maybe_sample()
        # one client per live worker, the input rate split between them
        targets = [(i, w) for i in running for w in range(args.workers)]
        clients = []
        for i, w in targets:
            name = AuthorityKeys.load(net.key_files[i]).name.hex()
            clients.append(group.start(f"client-{i}-{w}", python_module(
                "narwhal.client", "submit", "--committee", str(net.committee_file),
                "--worker", f"{name}:{w}", "--rate", str(args.rate // len(targets)),
                "--tx-size", str(args.tx_size), "--duration", str(args.duration),
                *(audit.client_options(f"client-{i}-{w}", i) if audit is not None else [])),
                directory / f"client-{i}-{w}.log"))
        with Progress(console=console, transient=True) as progress:
            task = progress.add_task(f"{args.rate:,} tx/s for {args.duration:.0f} s", total=args.duration)
            while (elapsed := time.time() - started) < args.duration:
                if restart is not None:
                    restart.step(elapsed)
                check(nodes, clients + watched, f"during the run ({elapsed:.0f} s in)")
                for sampler in samplers:
                    sampler.maybe_sample()
                progress.update(task, completed=elapsed)
                time.sleep(0.25)
        ended = time.time()
        settle = time.monotonic() + 2.0  # let the last batches commit
        while time.monotonic() < settle:
            check(nodes, clients + watched, "at the end of the run")
            time.sleep(0.25)
        audited = audit.finish(list(running), clients, killed=[restart.index] if restart else []) \
            if audit is not None else {}
        codes = stop_all(group)
    if restart is not None:
        restart.settle()
    for child in nodes:  # SIGTERM makes a validator stop cleanly and exit 0
        if codes[child.name] != 0:
            console.print(f"warning: {child.name} exited with code {codes[child.name]} when stopped; "
                          f"see {logs[child.name][1]}", markup=False, highlight=False)
    times = read_batch_logs([logs[f"node-{i}"][1] for i in running])
    created, committed, counts = times.created, times.committed, times.counts
    window = [d for d, t in created.items() if started + args.warmup <= t <= ended and d in committed]
    consensus_latency = [committed[d] - created[d] for d in window]
    tx_count = sum(counts.get(d, 0) for d in window)
    stores = [net.node_dir(i) / f"worker-{w}.db" for i in running for w in range(args.workers)]
    sample = window[::max(1, -(-len(window) // E2E_SAMPLE_BATCHES))]
    e2e_latency = [committed[digest] - sent / 1e9
                   for digest, times in send_times(stores, sample).items() for sent in times]
    measured = max(1e-9, ended - started - args.warmup)
    tps = tx_count / measured
    return {
        "nodes": args.nodes, "faults": args.faults, "workers": args.workers, "tx_size": args.tx_size,
        "input_rate": args.rate, "link_latency_ms": args.latency, "link_jitter_ms": args.jitter,
        "duration_s": args.duration, "consensus": args.consensus,
        "consensus_tps": tps, "consensus_bps": tps * args.tx_size,
        "consensus_latency_ms": 1000 * statistics.mean(consensus_latency) if consensus_latency else None,
        "consensus_latency_p50_ms": 1000 * percentile(consensus_latency, 0.5),
        "consensus_latency_p95_ms": 1000 * percentile(consensus_latency, 0.95),
        "consensus_latency_p99_ms": 1000 * percentile(consensus_latency, 0.99),
        "consensus_latency_max_ms": 1000 * max(consensus_latency, default=0.0),
        "e2e_tps": tps, "e2e_bps": tps * args.tx_size,
        "e2e_latency_ms": 1000 * statistics.mean(e2e_latency) if e2e_latency else None,
        "e2e_latency_p50_ms": 1000 * percentile(e2e_latency, 0.5),
        "e2e_latency_p95_ms": 1000 * percentile(e2e_latency, 0.95),
        "e2e_latency_p99_ms": 1000 * percentile(e2e_latency, 0.99),
        "e2e_latency_max_ms": 1000 * max(e2e_latency, default=0.0),
        "batches_measured": len(window), "directory": str(directory),
        "latency_trend": latency_trend([(created[d], committed[d] - created[d]) for d in window]),
        **node_figures([net.node_dir(i) / "status.json" for i in running]),
        **memory.figures(args.warmup),
        **disk.figures(args.warmup),
        "restart_s": restart.restart_s() if restart is not None else None,
        "rejoin_s": restart.rejoin_s() if restart is not None else None,
        **({"restarted": restart.name} if restart is not None else {}),
        **audited,
        "parameters": {name: getattr(parameters, name) for name in PROTOTYPE_PARAMETERS},
        "overrides": parse_overrides(args.overrides),
    }


#: The parameters the research prototype's summary prints, and their units there.
PROTOTYPE_PARAMETERS = {"header_size": ("Header size", "B"), "max_header_delay": ("Max header delay", "ms"),
                        "gc_depth": ("GC depth", "round(s)"), "sync_retry_delay": ("Sync retry delay", "ms"),
                        "sync_retry_nodes": ("Sync retry nodes", "node(s)"), "batch_size": ("Batch size", "B"),
                        "max_batch_delay": ("Max batch delay", "ms")}
#: What ``asonnino/narwhal`` publishes for ``fab local`` (4 nodes x 1 worker, 512 B, 50,000
#: tx/s, these parameters; Rust, on a larger machine): a published figure, not measured here.
PROTOTYPE_PUBLISHED = {"consensus_tps": 46_478, "consensus_latency_ms": 464,
                       "e2e_tps": 46_149, "e2e_latency_ms": 557}


def parameters_block(result: dict[str, Any]) -> str:
    lines = []
    for name, (label, unit) in PROTOTYPE_PARAMETERS.items():
        value = result.get("parameters", {}).get(name)
        if value is not None:
            value = value * 1000 if unit == "ms" else value
            lines.append(f" {label}: {value:,.0f} {unit}")
    return "\n".join(lines)


def versus_prototype(result: dict[str, Any]) -> str:
    """Our figures over the prototype's published ones (TPS: higher is better; latency: lower)."""
    ratios = []
    for key, label in (("consensus_tps", "consensus TPS"), ("consensus_latency_ms", "consensus latency"),
                       ("e2e_latency_ms", "end-to-end latency")):
        if result.get(key):
            ratios.append(f"{label} {result[key] / PROTOTYPE_PUBLISHED[key]:.2f}x")
    return ", ".join(ratios) or "n/a"


def _mb(value: float | None) -> str:
    return "n/a" if value is None else f"{value:,.0f} MB"


def memory_line(result: dict[str, Any], prefix: str = "rss") -> str:
    """Start, end, peak and growth of one sampled measure (``rss``: memory, ``disk``: store)."""
    growth = result.get(f"{prefix}_growth_mb_per_min")
    slope = ("n/a" if growth is None
             else f"{growth:+,.1f} MB/min over {result.get(f'{prefix}_growth_window_s', 0):,.0f} s")
    return (f"start {_mb(result.get(f'{prefix}_mb_start'))}, end {_mb(result.get(f'{prefix}_mb_end'))}, "
            f"max {_mb(result.get(f'{prefix}_mb_max'))} (growth {slope})")


def percentiles(result: dict[str, Any], kind: str) -> str:
    """``(p50 310, p95 520, p99 880, max 1,240)`` for ``consensus`` or ``e2e`` latency, in ms."""
    return "(" + ", ".join(f"{label} {result.get(f'{kind}_latency_{label}_ms') or 0:,.0f}"
                           for label in ("p50", "p95", "p99", "max")) + ")"


def restart_line(result: dict[str, Any]) -> str:
    if result.get("restart_s") is None and "restarted" not in result:
        return ""
    seconds = result.get("restart_s")
    took = "did not vote before the run ended" if seconds is None else f"{seconds:,.1f} s to its first vote"
    rejoin = result.get("rejoin_s")
    caught_up = ("did not commit where the others were before the run ended" if rejoin is None
                 else f"{rejoin:,.1f} s to commit where the others were at its restart")
    return (f"\n Restart: {result.get('restarted', 'a validator')} killed (-9) and restarted, "
            f"{took}, {caught_up}")


def audit_lines(result: dict[str, Any]) -> str:
    if "audit_violations" not in result:
        return ""
    served = result["audit_served"]
    verdict = "\n   ".join(result["audit_violations"]) or (
        f"every node served {min(served.values()):,}-{max(served.values()):,} indexes, "
        "contiguous and agreed")
    at_kill = (f" (and {result['acked_lost_at_kill']:,} of the killed validator's client, in its "
               "worker's pipeline at the kill: acknowledged, not yet durable)"
               if result.get("acked_lost_at_kill") else "")
    return (f"\n Output audit: {verdict}\n Acknowledged transactions: {result['acked']:,}, "
            f"not served by some node: {result['acked_lost']:,}{at_kill}")


def failed_audit(result: dict[str, Any]) -> bool:
    return bool(result.get("audit_violations") or result.get("acked_lost"))


def _count(value: int | None) -> str:
    return "n/a" if value is None else f"{value:,}"


def summary(result: dict[str, Any]) -> str:
    return f"""
-----------------------------------------
 SUMMARY:
-----------------------------------------
 + CONFIG:
 Faults: {result['faults']} node(s)
 Committee size: {result['nodes']} node(s)
 Worker(s) per node: {result['workers']} worker(s)
 Consensus: {result['consensus']}
 Input rate: {result['input_rate']:,} tx/s
 Transaction size: {result['tx_size']:,} B
 Execution time: {result['duration_s']:,.0f} s
 Link latency (one way): {result.get('link_latency_ms', 0):g} ms +- {result.get('link_jitter_ms', 0):g} ms

{parameters_block(result)}

 + RESULTS:
 Consensus TPS: {result['consensus_tps']:,.0f} tx/s
 Consensus BPS: {result['consensus_bps']:,.0f} B/s
 Consensus latency: {result['consensus_latency_ms'] or 0:,.0f} ms {percentiles(result, 'consensus')}

 End-to-end TPS: {result['e2e_tps']:,.0f} tx/s
 End-to-end BPS: {result['e2e_bps']:,.0f} B/s
 End-to-end latency: {result['e2e_latency_ms'] or 0:,.0f} ms {percentiles(result, 'e2e')}

 Batches proposed again, their header orphaned: {_count(result.get('batches_reproposed'))}, of which after waiting for the GC horizon: {_count(result.get('batches_reproposed_at_horizon'))} (whole run; {result['batches_measured']:,} batches measured)
 Event-loop stalls (> 250 ms, start-up and shutdown included): {_count(result.get('loop_stalls'))}, longest lag {_count(result.get('loop_max_lag_ms'))} ms; garbage collector: {_count(result.get('gc_full_collections'))} full collection(s), longest pause {_count(result.get('gc_max_pause_ms'))} ms

 Node memory (RSS): {memory_line(result, 'rss')}
 Node store on disk: {memory_line(result, 'disk')}{restart_line(result)}{audit_lines(result)}

 + VERSUS the Rust prototype's published fab-local figures (46,478 tx/s at 464 ms,
   end-to-end 557 ms; not measured here): {versus_prototype(result)}
-----------------------------------------"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, default=4)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--rate", type=int, default=10_000, help="total input rate, tx/s")
    parser.add_argument("--tx-size", type=int, default=512)
    parser.add_argument("--duration", type=float, default=20.0)
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds ignored at the start")
    parser.add_argument("--consensus", choices=["bullshark", "tusk"], default="bullshark")
    parser.add_argument("--faults", type=int, default=0, help="validators crashed from the start")
    parser.add_argument("--sweep", help="comma-separated input rates: one run each, then a table")
    parser.add_argument("--plot", type=Path, help="with --sweep: draw latency vs throughput (PNG)")
    parser.add_argument("--json", type=Path, help="also write the figures as JSON here")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="NAME=VALUE",
                        help="override a node parameter (JSON value), e.g. --set max_header_delay=0.05;"
                             " repeatable")
    parser.add_argument("--compare", metavar="NAME=V1,V2[,...]",
                        help="paired runs: one run per value of parameter NAME (the first is the baseline),"
                             " then a table of each figure and its ratio to the baseline's")
    parser.add_argument("--restart-at", type=float, default=None, metavar="SECONDS",
                        help="kill -9 the last live validator this many seconds into the load, restart it,"
                             " and report restart_s (restart to its first vote)")
    parser.add_argument("--restart-down", type=float, default=1.0, metavar="SECONDS",
                        help="with --restart-at: seconds the validator stays down (default 1)")
    parser.add_argument("--base-port", type=int, default=None,
                        help="the committee's ports from here on (default: free ports the kernel picks)")
    parser.add_argument("--keep", action="store_true",
                        help="keep each run's directory (stores, logs, status files; a 5-minute "
                             "run at 50,000 tx/s leaves ~17 GB): by default it is deleted once "
                             "the run's figures are read, and kept only when a run fails")
    parser.add_argument("--audit", action="store_true",
                        help="follow and check every node's output: contiguous, agreed, no "
                             "acknowledged transaction lost (exit 1 if not)")
    parser.add_argument("--latency", type=float, default=0.0, metavar="MS",
                        help="one-way latency of every validator-to-validator link, through the link "
                             "emulator (narwhal/testing/links.py); default 0: direct connections")
    parser.add_argument("--jitter", type=float, default=0.0, metavar="MS",
                        help="with --latency: each chunk's delay varies uniformly by +-MS")
    return parser


def problems(args: argparse.Namespace) -> list[str]:
    """What is wrong with the arguments (empty: nothing)."""
    found = []
    max_tx = Parameters().max_transaction_size
    live_workers = max(1, args.nodes - args.faults) * max(1, args.workers)
    max_faults = max(0, (args.nodes - 1) // 3)
    ports = max(1, args.nodes) * ports_per_authority(max(1, args.workers))
    rates = []
    if args.sweep is not None:
        try:
            rates = [int(r) for r in args.sweep.split(",")]
        except ValueError:
            rates = []
        if not rates or min(rates) <= 0:
            found.append(f"--sweep must be comma-separated rates > 0, got {args.sweep!r}")
    for bad, message in (
            (args.nodes < 1, f"--nodes must be >= 1, got {args.nodes}"),
            (args.workers < 1, f"--workers must be >= 1, got {args.workers}"),
            (args.rate <= 0, f"--rate must be > 0, got {args.rate}"),
            (0 < min([args.rate, *rates]) < live_workers,
             f"the input rate must be at least 1 tx/s per live worker ({live_workers})"),
            (args.tx_size < MIN_TX_SIZE,
             f"--tx-size must be >= {MIN_TX_SIZE} (the send-time stamp), got {args.tx_size}"),
            (args.tx_size > max_tx,
             f"--tx-size must be <= {max_tx} (the nodes' max_transaction_size), got {args.tx_size}"),
            (args.warmup < 0, f"--warmup must be >= 0, got {args.warmup:g}"),
            (args.duration <= args.warmup,
             f"--duration must exceed --warmup ({args.duration:g} <= {args.warmup:g})"),
            (args.nodes >= 1 and not 0 <= args.faults <= max_faults,
             f"--faults must be between 0 and (nodes - 1) // 3 = {max_faults}, got {args.faults}"),
            (args.plot is not None and args.sweep is None, "--plot needs --sweep"),
            (args.base_port is not None and not 1 <= args.base_port <= 65536 - ports,
             f"--base-port must leave room for {ports} ports below 65536, got {args.base_port}")):
        if bad:
            found.append(message)
    try:
        parameters_with(parse_overrides(args.overrides))
    except ConfigError as exc:
        found.append(f"--set: {exc}")
    if args.compare is not None:
        try:
            compare_overrides(args.compare, args.overrides)
        except ConfigError as exc:
            found.append(f"--compare: {exc}")
        if args.sweep is not None:
            found.append("--compare and --sweep do not go together")
    if args.restart_at is not None and not 0 <= args.restart_at < args.duration:
        found.append(f"--restart-at must be within the run (0 <= S < {args.duration:g}), got {args.restart_at:g}")
    if args.latency < 0 or args.jitter < 0 or args.jitter > args.latency:
        found.append(f"--latency and --jitter must be >= 0 and jitter <= latency, got "
                     f"{args.latency:g} and {args.jitter:g}")
    if args.restart_down < 0:
        found.append(f"--restart-down must be >= 0, got {args.restart_down:g}")
    for option, path in (("--json", args.json), ("--plot", args.plot)):
        if path is not None and not path.resolve().parent.is_dir():
            found.append(f"{option} {path}: folder {path.resolve().parent} does not exist")
    return found


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if found := problems(args):
        parser.error("; ".join(found))  # exit 2
    directory: Path | None = None
    results: list[dict[str, Any]] = []
    try:
        with terminate_on_signal():  # SIGTERM/SIGHUP raise Terminated, as Ctrl-C raises KeyboardInterrupt
            for variant in variants(args):
                directory = Path(tempfile.mkdtemp(prefix="narwhal-bench-"))
                results.append(run(variant, directory))
                if args.keep or failed_audit(results[-1]):
                    print(f"the files of this run are in {directory}", file=sys.stderr)
                else:  # its stores fill the disk within a few long runs otherwise
                    shutil.rmtree(directory, ignore_errors=True)
    except BenchError as exc:
        _partial(results)
        print(f"error: {exc}\nevery validator and client was stopped; the files are in {directory}",
              file=sys.stderr)
        return 1
    except (KeyboardInterrupt, Terminated) as exc:
        name = exc.args[0] if isinstance(exc, Terminated) else "SIGINT"
        _partial(results)
        print(f"interrupted by {name}: every validator and client was stopped"
              + (f"; the files are in {directory}" if directory else ""), file=sys.stderr)
        return 128 + signal.Signals[name].value
    if args.sweep:
        print(sweep_table(results))
        if args.plot:
            plot(results, args.plot)
    elif args.compare:
        print(compare_table(results))
    else:
        print(summary(results[0]))
    if args.json:
        several = args.sweep or args.compare
        args.json.write_text(json.dumps(results if several else results[0], indent=2))
    if any(failed_audit(result) for result in results):
        print("error: the output audit failed (see above)", file=sys.stderr)
        return 1
    return 0


def _partial(results: list[dict[str, Any]]) -> None:
    """The runs of a sweep that completed before it was cut short."""
    if results:
        print(sweep_table(results))
        print(f"(the sweep stopped after {len(results)} run(s))", file=sys.stderr)


def variants(args: argparse.Namespace) -> list[argparse.Namespace]:
    """One set of arguments per run: per rate of ``--sweep``, per value of ``--compare``."""
    if args.sweep:
        return [argparse.Namespace(**{**vars(args), "rate": int(r)}) for r in args.sweep.split(",")]
    if args.compare:
        return [argparse.Namespace(**{**vars(args), "overrides": o})
                for o in compare_overrides(args.compare, args.overrides)]
    return [args]


def compare_overrides(spec: str, overrides: list[str]) -> list[list[str]]:
    """``"store_sync=process,normal"`` -> the ``--set`` lists of each run (validated)."""
    name, sep, values = spec.partition("=")
    choices = [v for v in values.split(",") if v]
    if not sep or not name or len(choices) < 2:
        raise ConfigError(f"expected NAME=V1,V2[,...], got {spec!r}")
    runs = [[*overrides, f"{name}={value}"] for value in choices]
    for run_overrides in runs:
        parameters_with(parse_overrides(run_overrides))
    return runs


#: The figures ``--compare`` puts side by side: (key, label).
COMPARED = [("consensus_tps", "consensus TPS"),
            ("consensus_latency_p50_ms", "consensus latency p50 ms"),
            ("consensus_latency_p99_ms", "consensus latency p99 ms"),
            ("e2e_latency_p50_ms", "end-to-end latency p50 ms"),
            ("e2e_latency_p99_ms", "end-to-end latency p99 ms"),
            ("rss_mb_max", "node RSS max MB"),
            ("disk_mb_end", "node store MB (end)"),
            ("disk_growth_mb_per_min", "node store growth MB/min (second half)"),
            ("loop_max_lag_ms", "longest event-loop lag ms (any node)")]


def compare_table(results: list[dict[str, Any]]) -> str:
    """Each figure of each run and its ratio to the first run's (the baseline)."""
    labels = [", ".join(f"{k}={v}" for k, v in r["overrides"].items()) or "defaults" for r in results]
    rows = ["| figure | " + " | ".join(labels) + " |", "|---|" + "---|" * len(results)]
    base = results[0]
    for key, label in COMPARED:
        cells = []
        for r in results:
            value, first = r.get(key), base.get(key)
            cell = "n/a" if value is None else f"{value:,.0f}"
            if r is not base and value is not None and first:
                cell += f" ({value / first:.2f}x)"
            cells.append(cell)
        rows.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


#: "Latency stays flat" (RESULTS.md's maximum sustainable rate), as ``bench/local.py``
#: decides it in a sweep: a run's mean consensus latency at most this many times the
#: lowest-rate run's (the flat part of the latency-throughput curve, before its knee)...
FLAT_CURVE = 2.0
#: ...and no backlog building up during the run: the median latency of the batches created
#: in the last quarter of the measured window at most this many times the first quarter's.
FLAT_RUN = 1.5
#: "Keeps up": committed TPS at least this share of the input rate.
KEEPS_UP = 0.95


def latency_trend(samples: list[tuple[float, float]]) -> float | None:
    """Median latency of the batches created in the last quarter of the window over the
    first quarter's (``samples``: (creation time, latency)). Above 1 when a backlog grows:
    a rate the cluster cannot sustain shows as latency rising through the run."""
    if len(samples) < 8:
        return None
    samples = sorted(samples)
    quarter = len(samples) // 4
    first = statistics.median(latency for _, latency in samples[:quarter])
    last = statistics.median(latency for _, latency in samples[-quarter:])
    return last / first if first > 0 else None


def sustainable(result: dict[str, Any], baseline_latency_ms: float) -> bool:
    """Did this run keep up with its input rate with latency still flat? (See FLAT_CURVE.)"""
    latency, trend = result["consensus_latency_ms"], result.get("latency_trend")
    return (result["consensus_tps"] >= KEEPS_UP * result["input_rate"]
            and latency is not None and latency <= FLAT_CURVE * baseline_latency_ms
            and trend is not None and trend <= FLAT_RUN)


def max_sustainable(results: list[dict[str, Any]]) -> str:
    """The sweep's verdict: the highest input rate that is sustainable, and the rule."""
    ordered = sorted(results, key=lambda r: r["input_rate"])
    base = ordered[0]
    if base["consensus_latency_ms"] is None:
        return "maximum sustainable rate: none (nothing was committed at the lowest rate)"
    ok = [r["input_rate"] for r in ordered if sustainable(r, base["consensus_latency_ms"])]
    rule = (f"committed >= {KEEPS_UP:.0%} of the input, mean consensus latency <= "
            f"{FLAT_CURVE:g}x the {base['input_rate']:,} tx/s run's "
            f"({base['consensus_latency_ms']:,.0f} ms), and the last quarter's median latency "
            f"<= {FLAT_RUN:g}x the first quarter's")
    if not ok:
        return f"maximum sustainable rate: none of the rates swept ({rule})"
    return f"maximum sustainable rate: {max(ok):,} tx/s ({rule})"


def sweep_table(results: list[dict[str, Any]]) -> str:
    base = min(results, key=lambda r: r["input_rate"])["consensus_latency_ms"]
    rows = [("| input tx/s | consensus TPS | consensus latency ms (p50/p95) "
             "| end-to-end latency ms (p50/p95) | node RSS MB (end/max) | RSS growth MB/min "
             "| latency trend | sustainable |"),
            "|---|---|---|---|---|---|---|---|"]
    for r in results:
        growth, trend = r.get("rss_growth_mb_per_min"), r.get("latency_trend")
        verdict = "yes" if base is not None and sustainable(r, base) else "no"
        rows.append(f"| {r['input_rate']:,} | {r['consensus_tps']:,.0f} | {r['consensus_latency_ms'] or 0:,.0f} "
                    f"({r['consensus_latency_p50_ms']:,.0f}/{r['consensus_latency_p95_ms']:,.0f}) | "
                    f"{r['e2e_latency_ms'] or 0:,.0f} ({r['e2e_latency_p50_ms']:,.0f}/{r['e2e_latency_p95_ms']:,.0f}) | "
                    f"{r.get('rss_mb_end') or 0:,.0f}/{r.get('rss_mb_max') or 0:,.0f} | "
                    f"{'n/a' if growth is None else f'{growth:+,.1f}'} | "
                    f"{'n/a' if trend is None else f'{trend:.2f}x'} | {verdict} |")
    return "\n".join(rows) + "\n\n" + max_sustainable(results)


def plot(results: list[dict[str, Any]], path: Path) -> None:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        console.print("matplotlib is not installed (pip install 'narwhal-py[bench]'): no plot")
        return
    figure, axes = plt.subplots(figsize=(6, 4))
    axes.plot([r["consensus_tps"] for r in results], [r["consensus_latency_ms"] for r in results],
              marker="o", label="consensus")
    axes.plot([r["e2e_tps"] for r in results], [r["e2e_latency_ms"] for r in results],
              marker="s", label="end-to-end")
    axes.set_xlabel("throughput (tx/s)")
    axes.set_ylabel("latency (ms)")
    axes.legend()
    figure.tight_layout()
    figure.savefig(path)


if __name__ == "__main__":
    sys.exit(main())
