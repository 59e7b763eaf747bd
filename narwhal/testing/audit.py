"""A streaming audit of what every node serves, for long runs: ``bench/local.py --audit``.

:func:`~narwhal.testing.outputs.output_violations` checks lists of served items held in
memory: right for a chaos test's minute, not for thirty minutes at 30,000 tx/s (54 million
transactions). :class:`OutputAudit` checks the same promises as the items arrive:

- each node's indexes are 1, 2, 3, ... (no gap, no repeat) and no certificate comes twice;
- the nodes agree index by index (their outputs are prefixes of one another);
- per load client, which transaction counters a node served: a bit each, so a client's
  *holes* (counters below its highest served one that were never served) and *repeats*
  are known exactly. A :func:`~narwhal.client.make_transaction` transaction names its
  client and a counter that client numbers from 0 up, without gaps.

Memory grows with the indexes (one certificate digest each: a few MB an hour), not with
the transactions (a bit each). :func:`acknowledged_lost` then sets the clients' own
acknowledgement counts against what each node served.

Run as a process beside the validators, until SIGTERM or SIGINT::

    python -m narwhal.testing.audit --committee committee.json --out audit.json

It follows every primary of the committee from index 1 and rewrites ``--out`` (a JSON
summary, :meth:`OutputAudit.summary`) about once a second and when it stops.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import re
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs

from narwhal.client import OutputItem, OutputPruned, OutputSubscriber, parse_transaction
from narwhal.config import Committee, ConfigError
from narwhal.node.files import LocalNetwork
from narwhal.node.processes import Child, ProcessGroup, python_module
from narwhal.node.status import read_status

__all__ = ["Acknowledged", "AuditRun", "ClientCounters", "NodeAudit", "OutputAudit", "acknowledged_lost", "main"]

#: Violations kept per node: the first ones tell the story; a broken run would flood.
MAX_VIOLATIONS = 20
#: Ranges of unserved counters listed per client and node; beyond, every hole counts as lost.
MAX_MISSING_RANGES = 1_000
_NOT_FULL = re.compile(rb"[^\xff]+")


class ClientCounters:
    """Which counters of one load client a node served: one bit each."""

    def __init__(self) -> None:
        self.bits = bytearray()
        self.distinct = 0
        self.repeats = 0
        self.top = -1  # the highest counter served

    def add(self, counter: int) -> None:
        byte, bit = counter >> 3, 1 << (counter & 7)
        if byte >= len(self.bits):
            self.bits.extend(bytes(max(byte + 1 - len(self.bits), len(self.bits))))
        if self.bits[byte] & bit:
            self.repeats += 1
            return
        self.bits[byte] |= bit
        self.distinct += 1
        self.top = max(self.top, counter)

    @property
    def holes(self) -> int:
        """Counters below the highest served one that were never served."""
        return self.top + 1 - self.distinct

    def missing(self, limit: int = MAX_MISSING_RANGES) -> list[list[int]] | None:
        """The holes as ``[first counter, count]`` ranges, at most ``limit`` of them (None if
        there are more). The bitmap is scanned for bytes not all ones, in C."""
        ranges: list[list[int]] = []
        for run in _NOT_FULL.finditer(self.bits, 0, (self.top >> 3) + 1):
            for byte in range(run.start(), run.end()):
                value = self.bits[byte]
                for bit in range(8):
                    counter = (byte << 3) | bit
                    if counter > self.top or value & (1 << bit):
                        continue
                    if ranges and ranges[-1][0] + ranges[-1][1] == counter:
                        ranges[-1][1] += 1
                    elif len(ranges) == limit:
                        return None
                    else:
                        ranges.append([counter, 1])
        return ranges

    def summary(self) -> dict[str, Any]:
        return {"distinct": self.distinct, "top": self.top, "holes": self.holes,
                "repeats": self.repeats, "missing": self.missing()}


class NodeAudit:
    """What one node served, checked as it arrives."""

    def __init__(self) -> None:
        self.certificates: list[bytes] = []  # at index i + 1
        self._seen: set[bytes] = set()
        self.clients: dict[int, ClientCounters] = {}
        self.violations: list[str] = []
        self.foreign = 0  # transactions too short to name a client
        self.ended: str | None = None  # why the subscription ended, if it did

    @property
    def served(self) -> int:
        return len(self.certificates)

    def add(self, item: OutputItem) -> None:
        index, _round, _author, certificate, transactions = item
        if index != self.served + 1:
            self._violation(f"index {index} served where {self.served + 1} was due (gap or repeat)")
        if certificate in self._seen:
            self._violation(f"index {index}: certificate {certificate.hex()[:16]} served again")
        self._seen.add(certificate)
        self.certificates.append(certificate)
        for tx in transactions:
            if len(tx) < 16:
                self.foreign += 1
                continue
            client, counter, _ = parse_transaction(tx)
            counters = self.clients.get(client)
            if counters is None:
                counters = self.clients[client] = ClientCounters()
            counters.add(counter)

    def _violation(self, text: str) -> None:
        if len(self.violations) < MAX_VIOLATIONS:
            self.violations.append(text)


class OutputAudit:
    """:class:`NodeAudit` per node, and their agreement (see the module docstring)."""

    def __init__(self, nodes: Sequence[str]) -> None:
        self.nodes = {name: NodeAudit() for name in nodes}
        self.agreed = 0  # indexes checked on every node that served them
        self.disagreements: dict[int, str] = {}  # by index: one a node ahead is seen again

    def add(self, node: str, item: OutputItem) -> None:
        self.nodes[node].add(item)

    def compare(self) -> None:
        """Check the indexes that every node has served since the last call, and the ones
        only some served against each other (the outputs must be prefixes of one another)."""
        longest = max(audit.served for audit in self.nodes.values())
        for index in range(self.agreed, longest):
            digests = {audit.certificates[index] for audit in self.nodes.values()
                       if audit.served > index}
            if len(digests) > 1 and len(self.disagreements) < MAX_VIOLATIONS:
                self.disagreements[index + 1] = (f"index {index + 1}: the nodes served "
                                                 f"{len(digests)} different certificates")
        self.agreed = max(self.agreed, min(audit.served for audit in self.nodes.values()))

    def violations(self) -> list[str]:
        return [f"{name}: {text}" for name, audit in self.nodes.items() for text in audit.violations] \
            + [f"{name}: subscription ended: {audit.ended}" for name, audit in self.nodes.items()
               if audit.ended] + list(self.disagreements.values())

    def summary(self) -> dict[str, Any]:
        self.compare()
        return {
            "violations": self.violations(),
            "nodes": {name: {"served": audit.served, "foreign": audit.foreign,
                             "clients": {str(c): counters.summary()
                                         for c, counters in audit.clients.items()}}
                      for name, audit in self.nodes.items()},
        }


@attrs.frozen
class Acknowledged:
    """What a load client was told was accepted: counters ``0 .. sent - 1`` but those of the
    frames in ``unaccepted`` (``[first, count]`` ranges; see ``ClientStats.unaccepted``)."""

    sent: int
    unaccepted: Sequence[Sequence[int]] = ()

    @property
    def count(self) -> int:
        return self.sent - sum(overlap(r, (0, self.sent)) for r in self.unaccepted)


def overlap(a: Sequence[int], b: Sequence[int]) -> int:
    """How many counters two ``[first, count]`` ranges share."""
    return max(0, min(a[0] + a[1], b[0] + b[1]) - max(a[0], b[0]))


def acknowledged_lost(summary: Mapping[str, Any], acked: Mapping[int, Acknowledged]) -> dict[str, int]:
    """Per node, acknowledged transactions it did not serve: for every client (its id ->
    what it was told was accepted), the acknowledged counters among the node's holes (those
    below its highest served counter) plus the acknowledged ones above that counter.

    Exact while the audit lists a client's holes (:data:`MAX_MISSING_RANGES` ranges); past
    that, every hole counts as lost (an overestimate: a failed audit, never a missed loss)."""
    lost: dict[str, int] = {}
    for name, node in summary["nodes"].items():
        total = 0
        for client, ack in acked.items():
            served = node["clients"].get(str(client))
            if served is None:
                total += ack.count
                continue
            top = served["top"]
            above = (top + 1, max(0, ack.sent - top - 1))
            total += above[1] - sum(overlap(r, above) for r in ack.unaccepted)
            missing = served.get("missing")
            if missing is None:
                total += served["holes"]
            else:
                total += sum(m[1] - sum(overlap(m, r) for r in ack.unaccepted) for m in missing)
        lost[name] = total
    return lost


class AuditRun:
    """The audit as a process beside a local network's validators (``bench/local.py
    --audit``): start it before the load, give each load client :meth:`client_options`, and
    :meth:`finish` once the load has ended, while the validators still run."""

    def __init__(self, group: ProcessGroup, net: LocalNetwork, directory: Path) -> None:
        self.net, self.directory = net, directory
        self.out = directory / "audit.json"
        self.child = group.start("audit", python_module(
            "narwhal.testing.audit", "--committee", str(net.committee_file), "--out", str(self.out)),
            directory / "audit.log")
        self.group = group
        self._client_files: dict[Path, int] = {}  # status file -> the validator it loads

    def client_options(self, name: str, node: int) -> list[str]:
        """Options of load client ``name`` of validator ``node``'s worker: its status file
        names its client id and counts."""
        path = self.directory / f"{name}.json"
        self._client_files[path] = node
        return ["--status-file", str(path)]

    def _primary(self, node: int, figure: str) -> int:
        status = read_status(self.net.node_dir(node) / "status.json") or {}
        return int((status.get("primary") or {}).get(figure, 0))

    def finish(self, nodes: Sequence[int], clients: Sequence[Child], killed: Sequence[int] = (),
               timeout: float = 120.0) -> dict[str, Any]:
        """Wait for the clients to exit, two GC depths of commits, and every node in
        ``nodes`` to have served what any of them had ordered by then (at most ``timeout``
        seconds in all), stop the audit, and return its
        verdict: ``audit_violations`` (empty: contiguous, agreed), ``acked_lost`` (the most
        acknowledged transactions any node did not serve), per node figures, ``acked``.

        The clients of a validator in ``killed`` (kill -9 during the run) are counted apart,
        in ``acked_lost_at_kill``: an acknowledgement says the transactions entered the
        worker's pipeline, not that they are durable (``wire_spec.md``, SubmitTransactions);
        what a kill takes from the pipeline is lost by design, and bounded by it."""
        deadline = time.monotonic() + timeout
        while any(c.returncode is None for c in clients) and time.monotonic() < deadline:
            time.sleep(0.25)
        # The last acknowledged batches reach a certificate and a commit. A batch whose
        # header was orphaned (certified, never referenced by a committed leader) is
        # proposed again once the GC horizon has passed that header: wait for two GC depths
        # of commits after the load, so that every acknowledged batch had its chance.
        settle = max(self._primary(i, "committed_round") for i in nodes) \
            + 2 * self.net.parameters.gc_depth + 10
        while (min(self._primary(i, "committed_round") for i in nodes) < settle
               and time.monotonic() < deadline):
            time.sleep(0.25)
        target = max(self._primary(i, "consensus_index") for i in nodes)
        names = [f"node-{i}" for i in nodes]
        while time.monotonic() < deadline:
            summary = read_status(self.out) or {"nodes": {}}
            if all(summary["nodes"].get(n, {}).get("served", 0) >= target for n in names):
                break
            time.sleep(0.5)
        self.group.stop([self.child])
        summary = read_status(self.out) or {"nodes": {}, "violations": ["the audit wrote nothing"]}
        served = {n: summary["nodes"].get(n, {}).get("served", 0) for n in names}
        violations = list(summary["violations"]) + [
            f"{n}: served {count:,} indexes of the {target:,} ordered when the load ended "
            f"(within {timeout:.0f} s)" for n, count in served.items() if count < target]
        accepted: dict[int, Acknowledged] = {}
        at_kill: dict[int, Acknowledged] = {}
        for path, node in self._client_files.items():
            status = read_status(path) or {}
            ids = status.get("client_ids") or []
            if len(ids) != 1:
                violations.append(f"{path.name}: no single client id ({ids})")
                continue
            (at_kill if node in killed else accepted)[ids[0]] = Acknowledged(
                int(status.get("sent", 0)), status.get("unaccepted") or ())
        lost = acknowledged_lost(summary, accepted)
        lost_at_kill = acknowledged_lost(summary, at_kill)
        return {"audit_violations": violations, "acked": sum(a.count for a in (*accepted.values(), *at_kill.values())),
                "acked_lost": max((lost.get(n, 0) for n in names), default=0),
                "acked_lost_by_node": lost,
                "acked_lost_at_kill": max((lost_at_kill.get(n, 0) for n in names), default=0),
                "audit_served": served,
                "audit_repeats": {n: sum(c["repeats"] for c in summary["nodes"].get(n, {}).get(
                    "clients", {}).values()) for n in names}}


async def follow(audit: OutputAudit, name: str, subscriber: OutputSubscriber) -> None:
    """Feed one node's output into the audit until cancelled; a permanent refusal (the node
    pruned what we had not read yet) ends it, recorded."""
    try:
        async for item in subscriber.subscribe(1):
            audit.add(name, item)
    except OutputPruned as exc:
        audit.nodes[name].ended = str(exc)


async def run(committee: Committee, out: Path, stop: asyncio.Event, interval: float = 1.0) -> int:
    from narwhal.node.status import write_status
    from narwhal.testing.outputs import SUBSCRIBE_RETRY

    names = committee.authorities_sorted()
    audit = OutputAudit([f"node-{i}" for i in range(len(names))])
    tasks = [asyncio.create_task(follow(audit, f"node-{i}", OutputSubscriber(
        committee, authority, retry=SUBSCRIBE_RETRY))) for i, authority in enumerate(names)]
    try:
        while not stop.is_set():
            write_status(out, audit.summary())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), interval)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        write_status(out, audit.summary())
    return 0


def main(argv: list[str] | None = None) -> int:
    from narwhal.node.arguments import fail, run_until_signal

    parser = argparse.ArgumentParser(
        prog="python -m narwhal.testing.audit",
        description="Follow every node's ordered output from index 1 and check it as it arrives "
                    "(contiguous, agreed, which load transactions were served); write a JSON "
                    "summary to --out every second and at SIGTERM/SIGINT.")
    parser.add_argument("--committee", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True, help="the JSON summary, rewritten")
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between two summaries")
    args = parser.parse_args(argv)
    try:
        committee = Committee.load(args.committee)
    except (ConfigError, OSError) as exc:
        return fail(str(exc))
    return run_until_signal(lambda stop: run(committee, args.out, stop, args.interval))


if __name__ == "__main__":
    raise SystemExit(main())
