"""Chaos: real validator processes under a nemesis, their served output checked.

Each scenario starts a fresh local cluster (:class:`~narwhal.testing.cluster.RelayedCluster`:
validator processes on 127.0.0.1 whose validator-to-validator links all cross the link
emulator of :mod:`narwhal.testing.links`), a tagged load on every worker, and one output
follower per node (:class:`~narwhal.client.OutputSubscriber`, from index 1, reconnecting
across kills and restarts). Phases, all in one invocation::

    start -> baseline (healthy) -> fault (the nemesis, --duration s) -> after (healed)
          -> load stopped, settle -> followers read up to the last index -> stop -> check

Scenarios (``--scenario``, repeatable, or ``all``):

- ``kill``: kill -9 a random validator every 5-15 s, restart it after 1-10 s (one down at a
  time: f = 1 of 4);
- ``partition``: 2|2 (no side has a quorum: commits must stop) for up to 30 s, then heal,
  repeated;
- ``pause``: SIGSTOP one validator for the whole fault phase (60 s at most), then SIGCONT;
- ``minority-down``: f+1 validators killed: commits must stop; restarted: they resume;
- ``asymmetric``: one validator can send but not receive (every link into it cut);
- ``slow-link``: every link of one validator at 100 kbit/s;
- ``loss``: 2% segment loss on every link (TCP retransmission stalls, see the emulator);
- ``staggered-start``: every validator but one stopped, then started again one by one;
  recovery is measured from each start that brings a quorum up, over the validators up
  (fewer than a quorum cannot commit, and a validator not yet started serves nothing).

Checked at the end, on what every node served from index 1 (:mod:`narwhal.testing.outputs`):
indexes contiguous, outputs prefixes of one another, no certificate twice (``safety_ok``,
``violations``), and every quorum-acknowledged transaction served by every node
(``acked_lost``: how many were not, on the worst node). Figures: committed tx/s in each
phase on the fastest node (``tps_baseline``, ``tps_during``, ``tps_after``: same
invocation), ``recovery_s`` (the longest, over heal/restart events, from the event until
every node served an index beyond the highest any node had served at the event), peak RSS
of any validator (``max_rss_mb``), the emulator's link counters, and the orphan figures
(``weak_links_proposed``, ``batches_reproposed``, ``batches_reproposed_at_horizon``: summed
over the validators' last status). Head-of-line blocking:
``others_latency_ms``, the median consensus latency (``Created batch`` to the first
``Committed batch``, from the nodes' logs) of the batches the validators *not* hit by the
nemesis created in each phase, and ``others_latency_ratio`` (during / baseline). ``ok`` is
safety, no acknowledged loss, recovery within ``--recovery-bound`` (15 s), and, for
``pause`` and ``slow-link``, ``others_latency_ratio`` within ``--latency-bound`` (1.10: a
slow or paused validator must not slow the others) and the others' per-peer queues toward
it within their bounds (``queues_to_faulty``: the largest ``pending`` jobs and
``queued_bytes`` sampled every 0.5 s during the fault, beside ``max_pending`` and
``outbound_budget``).

    python bench/chaos.py --scenario kill --duration 60 --json
    python bench/chaos.py --scenario all --duration 30

Exit code 0 when every scenario is ok, 1 otherwise, 2 for bad arguments.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import random
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import attrs

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from narwhal.client import OutputItem, OutputSubscriber
from narwhal.testing.batch_log import read_each
from narwhal.testing.cluster import CHAOS_PARAMETERS, RelayedCluster
from narwhal.testing.outputs import (
    SUBSCRIBE_RETRY,
    consensus_index,
    lost_transactions,
    output_violations,
    quorum_acknowledged_transactions,
)

log = logging.getLogger("chaos")

#: Seconds from a heal or restart within which every node must commit again.
RECOVERY_BOUND = 15.0
#: During a pause or a slow link, the others' median consensus latency may be at most this
#: many times the baseline's (no head-of-line blocking behind the faulty validator).
LATENCY_BOUND = 1.10
#: Scenarios whose faulty validator must not slow the others.
NO_HEAD_OF_LINE = ("pause", "slow-link")
#: 100 kbit/s in bytes a second (slow-link).
SLOW_LINK = 100_000 / 8
#: Segment loss of the loss scenario.
LOSS = 0.02
#: Seconds after the fault starts before a stall is required (minority-down): what was
#: already in flight may still commit.
STALL_GRACE = 3.0


@attrs.define
class Follower:
    """One node's served output, each item with the time it arrived."""

    node: int
    items: list[OutputItem] = attrs.field(factory=list)
    times: list[float] = attrs.field(factory=list)

    def index_at(self, t: float) -> int:
        """Highest index served by time ``t`` (0: none)."""
        best = 0
        for when, item in zip(self.times, self.items):
            if when > t:
                break
            best = item[0]
        return best

    def first_beyond(self, index: int, after: float) -> float | None:
        return next((when for when, item in zip(self.times, self.items)
                     if when >= after and item[0] > index), None)

    def transactions_between(self, start: float, end: float) -> int:
        return sum(len(item[4]) for when, item in zip(self.times, self.items) if start <= when < end)


@attrs.define
class Run:
    """One scenario's cluster, followers and the times the nemesis wrote down."""

    cluster: RelayedCluster
    duration: float
    rng: random.Random
    followers: list[Follower]
    #: Heals and restarts: (when, the nodes that must all commit again; None: every node).
    events: list[tuple[float, frozenset[int] | None]] = attrs.field(factory=list)
    notes: dict[str, Any] = attrs.field(factory=dict)

    def event(self, nodes: frozenset[int] | None = None) -> None:
        """A heal or restart now: from here ``nodes`` (default: every node) must commit
        again within the recovery bound."""
        self.events.append((time.monotonic(), nodes))

    async def sleep_until(self, deadline: float) -> None:
        await asyncio.sleep(max(0.0, deadline - time.monotonic()))

    def served_max(self) -> int:
        return max((f.items[-1][0] for f in self.followers if f.items), default=0)


# -- the nemesis, one coroutine per scenario ------------------------------------------------------


async def kill(run: Run) -> None:
    cluster, end = run.cluster, time.monotonic() + run.duration
    while time.monotonic() < end - 2:
        victim = run.rng.randrange(cluster.size)
        killed_at = time.monotonic()
        await cluster.kill(victim)
        await run.sleep_until(min(end, killed_at + run.rng.uniform(1, 10)))
        cluster.start(victim)
        run.event()
        run.notes.setdefault("killed", []).append(victim)
        await run.sleep_until(max(time.monotonic() + 1, killed_at + run.rng.uniform(5, 15)))


async def partition(run: Run) -> None:
    emulator, end = run.cluster.emulator, time.monotonic() + run.duration
    half = run.cluster.size // 2
    cycle, committed_while_cut = 0, 0
    while time.monotonic() < end - 1:
        cut = min(30.0, max(STALL_GRACE + 1, 0.6 * (end - time.monotonic())))
        emulator.partition(range(half), range(half, run.cluster.size))
        await asyncio.sleep(STALL_GRACE)  # what had a quorum before the cut may still commit
        frozen = run.served_max()
        await asyncio.sleep(cut - STALL_GRACE)
        committed_while_cut += run.served_max() - frozen  # neither side has a quorum: 0
        emulator.heal()
        run.event()
        cycle += 1
        await asyncio.sleep(min(10.0, max(0.0, end - time.monotonic())))
    run.notes["partitions"] = cycle
    run.notes["committed_while_cut"] = committed_while_cut


async def pause(run: Run) -> None:
    victim = run.rng.randrange(run.cluster.size)
    run.notes["paused"] = victim
    run.cluster.pause(victim)
    await asyncio.sleep(min(60.0, run.duration))
    run.cluster.resume(victim)
    run.event()


async def minority_down(run: Run) -> None:
    cluster = run.cluster
    victims = run.rng.sample(range(cluster.size), cluster.f + 1)
    run.notes["stopped"] = victims
    for victim in victims:
        await cluster.kill(victim)
    started = time.monotonic()
    await asyncio.sleep(STALL_GRACE)
    frozen = run.served_max()
    await asyncio.sleep(max(0.0, run.duration - STALL_GRACE))
    run.notes["committed_while_down"] = run.served_max() - frozen
    run.notes["down_s"] = round(time.monotonic() - started, 1)
    for victim in victims:
        cluster.start(victim)
    run.event()


async def asymmetric(run: Run) -> None:
    victim = run.rng.randrange(run.cluster.size)
    run.notes["deaf"] = victim
    emulator = run.cluster.emulator
    emulator.cut(emulator.inbound(victim))
    await asyncio.sleep(run.duration)
    emulator.heal()
    run.event()


async def slow_link(run: Run) -> None:
    victim = run.rng.randrange(run.cluster.size)
    run.notes["slow"] = victim
    emulator = run.cluster.emulator
    emulator.shape(emulator.touching(victim), bandwidth=SLOW_LINK)
    await asyncio.sleep(run.duration)
    emulator.shape(emulator.touching(victim), bandwidth=None)
    run.event()


async def loss(run: Run) -> None:
    run.cluster.emulator.shape(loss=LOSS)
    await asyncio.sleep(run.duration)
    run.cluster.emulator.shape(loss=0.0)
    run.event()


async def staggered_start(run: Run) -> None:
    cluster = run.cluster
    later = list(range(1, cluster.size))
    await asyncio.gather(*(asyncio.to_thread(cluster.group.stop, [cluster.nodes[i]]) for i in later))
    step = run.duration / len(later)
    quorum = cluster.size - cluster.f
    for count, i in enumerate(later, start=2):
        await asyncio.sleep(step)
        cluster.start(i)
        if count >= quorum:  # fewer than a quorum up cannot commit: nothing to recover yet
            run.event(frozenset(range(count)))


SCENARIOS: dict[str, Callable[[Run], Awaitable[None]]] = {
    "kill": kill, "partition": partition, "pause": pause, "minority-down": minority_down,
    "asymmetric": asymmetric, "slow-link": slow_link, "loss": loss,
    "staggered-start": staggered_start}


# -- one scenario -------------------------------------------------------------------------------


async def follow(cluster: RelayedCluster, follower: Follower) -> None:
    authority = cluster.net.committee.authorities_sorted()[follower.node]
    subscriber = OutputSubscriber(cluster.net.committee, authority, retry=SUBSCRIBE_RETRY)
    async for item in subscriber.subscribe(1):
        follower.items.append(item)
        follower.times.append(time.monotonic())


async def sample_rss(cluster: RelayedCluster, peak: list[float]) -> None:
    while True:
        peak[0] = max([peak[0], *(cluster.rss_mb(i) for i in range(cluster.size))])
        await asyncio.sleep(1.0)


async def sample_queues(cluster: RelayedCluster, victims: Callable[[], set[int]],
                        seen: dict[str, int]) -> None:
    """Every 0.5 s, the largest per-peer queues the other validators hold toward the
    validators the nemesis hit: jobs pending (bounded by ``max_pending``) and bytes queued
    on the connection (held near ``outbound_budget``)."""
    names = [str(cluster.primary(i).get("authority", ""))[:8] for i in range(cluster.size)]
    while True:
        hit = victims()
        prefixes = tuple(f"{names[v]}/" for v in hit if names[v])
        for i in range(cluster.size):
            if i in hit or not prefixes:
                continue
            for peer in cluster.peers(i):
                if str(peer.get("name", "")).startswith(prefixes):
                    for key, value in (("pending", peer.get("pending")),
                                       ("max_pending", peer.get("max_pending")),
                                       ("queued_bytes", peer.get("queued_outbound")),
                                       ("outbound_budget", peer.get("outbound_budget"))):
                        if isinstance(value, int):
                            seen[key] = max(seen.get(key, 0), value)
        await asyncio.sleep(0.5)


#: Summed over the validators' last status (a restarted one counts from its restart): weak
#: links their headers carried, and their batches proposed again, at once or after waiting
#: for the GC horizon (the latency tail weak links remove).
ORPHAN_FIGURES = ("weak_links_proposed", "batches_reproposed", "batches_reproposed_at_horizon")


def within_bounds(queues: dict[str, int]) -> bool:
    """The others' queues toward the faulty validator were sampled and stayed at their
    bounds (jobs: a hard bound; bytes: the budget past which its reads are paused)."""
    return bool(queues) and queues.get("pending", 0) <= queues.get("max_pending", 0) \
        and queues.get("queued_bytes", 0) <= queues.get("outbound_budget", 0)


def faulty(notes: dict[str, Any]) -> set[int]:
    """The validators the nemesis hit (from its notes)."""
    hit: set[int] = set()
    for key in ("paused", "slow", "deaf", "killed", "stopped"):
        value = notes.get(key)
        hit.update(value if isinstance(value, list) else [] if value is None else [value])
    return hit


def others_latency(cluster: RelayedCluster, hit: set[int],
                   phases: dict[str, tuple[float, float]]) -> dict[str, float | None]:
    """Median consensus latency (ms) of the batches the validators not in ``hit`` created
    in each phase (wall-clock bounds)."""
    created_by, times = read_each(cluster.net.node_dir(i) / "node.log" for i in range(cluster.size))
    theirs = set().union(*(created_by[i] for i in range(cluster.size) if i not in hit))
    medians: dict[str, float | None] = {}
    for phase, (start, end) in phases.items():
        latencies = sorted(times.latencies(start, end, theirs))
        medians[phase] = round(1000 * latencies[len(latencies) // 2], 1) if latencies else None
    return medians


def recovery(followers: list[Follower], event: float,
             nodes: frozenset[int] | None = None) -> float | None:
    """Seconds from ``event`` until every node (of ``nodes``, if given: those up) served an
    index beyond the highest any node had served at ``event`` (None: some node never did)."""
    frontier = max(f.index_at(event) for f in followers)
    firsts = [f.first_beyond(frontier, event) for f in followers if nodes is None or f.node in nodes]
    return None if None in firsts else max(firsts) - event  # type: ignore[operator]


async def run_scenario(name: str, args: argparse.Namespace, directory: Path) -> dict[str, Any]:
    rng = random.Random(args.seed)
    cluster = await RelayedCluster.create(directory, args.nodes, seed=args.seed,
                                          parameters=attrs.evolve(CHAOS_PARAMETERS, consensus=args.consensus))
    run = Run(cluster, args.duration, rng, [Follower(i) for i in range(cluster.size)])
    window = args.window or min(10.0, max(4.0, args.duration / 2))
    peak = [0.0]
    queues: dict[str, int] = {}
    tasks = [asyncio.ensure_future(follow(cluster, f)) for f in run.followers]
    tasks.append(asyncio.ensure_future(sample_rss(cluster, peak)))
    result: dict[str, Any] = {"scenario": name, "nodes": cluster.size, "duration_s": args.duration,
                              "window_s": window, "seed": args.seed, "directory": str(directory)}
    try:
        for i in range(cluster.size):
            cluster.start(i)
        await cluster.wait_for(lambda: all(cluster.primary(i).get("round", 0) >= 3
                                           for i in range(cluster.size)), 60, "every primary started")
        total = 2 * window + args.duration + 30
        for i in range(cluster.size):
            cluster.start_load(i, args.rate / cluster.size, total)
        t0 = time.monotonic()
        to_wall = time.time() - t0  # the logs' clock
        await asyncio.sleep(window)
        t1 = time.monotonic()
        sampler = asyncio.ensure_future(sample_queues(cluster, lambda: faulty(run.notes), queues))
        try:
            await SCENARIOS[name](run)
        finally:
            sampler.cancel()
        t2 = time.monotonic()
        await asyncio.sleep(window)
        t3 = time.monotonic()
        await cluster.stop_load()
        # every node up and committing; the GC horizon passes every round that carried load,
        # so batches of orphaned headers have been proposed again and committed
        settle = max(cluster.primary(i).get("committed_round", 0) for i in range(cluster.size)) \
            + 2 * cluster.net.parameters.gc_depth + 5
        await cluster.wait_for(lambda: all(cluster.primary(i).get("committed_round", 0) >= settle
                                           for i in range(cluster.size)), 60, "settling")
        # and every batch a node proposed is committed (none pending, none in a header
        # still uncommitted): a slow node's orphaned batches are proposed again meanwhile
        await settled(cluster, args.settle_bound)
        result["settle_s"] = round(time.monotonic() - t3, 1)
        upto = max(consensus_index(cluster.net, i) for i in range(cluster.size))
        await cluster.wait_for(lambda: all(f.items and f.items[-1][0] >= upto for f in run.followers),
                               30, f"every node serving up to index {upto}")
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        counters = cluster.emulator.counters()
        orphans = {key: sum(int(cluster.primary(i).get(key) or 0) for i in range(cluster.size))
                   for key in ORPHAN_FIGURES}
        result["exit_codes"] = await cluster.stop()
    served = {f.node: f.items for f in run.followers}
    violations = output_violations(served)
    acknowledged = await asyncio.to_thread(quorum_acknowledged_transactions, cluster.net, range(cluster.size))
    lost = lost_transactions(served, acknowledged)
    recoveries = [recovery(run.followers, at, nodes) for at, nodes in run.events]
    phases = {"baseline": (t0, t1), "during": (t1, t2), "after": (t2, t3)}
    latency = await asyncio.to_thread(others_latency, cluster, faulty(run.notes),
                                      {k: (a + to_wall, b + to_wall) for k, (a, b) in phases.items()})
    ratio = round(latency["during"] / latency["baseline"], 2) \
        if latency["during"] and latency["baseline"] else None
    recovery_s = (None if None in recoveries else round(max(recoveries), 2)  # type: ignore[type-var]
                  ) if recoveries else 0.0

    def tps(start: float, end: float) -> float:
        return round(max(f.transactions_between(start, end) for f in run.followers) / (end - start), 1)

    result.update({
        "safety_ok": not violations, "violations": violations,
        "tps_baseline": tps(t0, t1), "tps_during": tps(t1, t2), "tps_after": tps(t2, t3),
        "recovery_s": recovery_s, "recoveries_s": [None if r is None else round(r, 2) for r in recoveries],
        "others_latency_ms": latency, "others_latency_ratio": ratio,
        "queues_to_faulty": queues,
        "max_rss_mb": round(peak[0], 1), "acked": len(acknowledged),
        "acked_lost": max(lost.values(), default=0),
        "acked_lost_per_node": lost, "indexes": run.served_max(),
        "links": link_totals(counters), **orphans, **run.notes})
    result["ok"] = bool(result["safety_ok"] and result["acked_lost"] == 0 and acknowledged
                        and recovery_s is not None and recovery_s <= args.recovery_bound
                        and result.get("committed_while_down", 0) == 0
                        and result.get("committed_while_cut", 0) == 0
                        and (name not in NO_HEAD_OF_LINE
                             or (ratio is not None and ratio <= args.latency_bound
                                 and within_bounds(queues))))
    return result


#: Consecutive half-second polls that must all see nothing pending (status files are
#: written once a second, and a batch being proposed again is briefly in neither count).
SETTLED_POLLS = 7


async def settled(cluster: RelayedCluster, bound: float) -> None:
    """Until, on :data:`SETTLED_POLLS` polls in a row (3 s), no node holds a batch it has
    not proposed (``pending_digests``) or proposed in a header not yet committed
    (``uncommitted_batches``): everything acknowledged has been committed."""
    quiet = 0

    def nothing_pending() -> bool:
        nonlocal quiet
        idle = all(cluster.primary(i).get("pending_digests", 1) == 0
                   and cluster.primary(i).get("uncommitted_batches", 1) == 0
                   for i in range(cluster.size))
        quiet = quiet + 1 if idle else 0
        return quiet >= SETTLED_POLLS
    await cluster.wait_for(nothing_pending, bound, "every proposed batch committed")


def link_totals(counters: dict[str, dict[str, Any]]) -> dict[str, int]:
    """The emulator's counters summed over every directed link."""
    totals: dict[str, int] = {}
    for link in counters.values():
        for key, value in link.items():
            if isinstance(value, int):
                totals[key] = totals.get(key, 0) + value
    return totals


def summary(result: dict[str, Any]) -> str:
    ratio = (result["tps_during"] / result["tps_baseline"]) if result["tps_baseline"] else 0.0
    return (f"{result['scenario']:16} {'ok ' if result['ok'] else 'BAD'} safety="
            f"{'ok' if result['safety_ok'] else 'VIOLATED'} acked_lost={result['acked_lost']}/"
            f"{result['acked']} recovery={result['recovery_s']}s tps baseline/during/after="
            f"{result['tps_baseline']}/{result['tps_during']}/{result['tps_after']} "
            f"(during/baseline {ratio:.2f}) rss<={result['max_rss_mb']}MB indexes={result['indexes']}"
            + "".join(f"\n    violation: {v}" for v in result["violations"]))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bench/chaos.py", description=__doc__.split("\n\n")[0],
        epilog="Scenarios: " + ", ".join(SCENARIOS) + ". See the module docstring and "
               "docs/reliability.md.")
    parser.add_argument("--scenario", action="append", choices=[*SCENARIOS, "all"],
                        help="scenario to run (repeatable; 'all': every one; default kill)")
    parser.add_argument("--duration", type=float, default=30.0,
                        help="seconds of the fault phase (default 30)")
    parser.add_argument("--window", type=float, default=None,
                        help="seconds of the baseline and after phases (default: duration/2 "
                             "within 4..10)")
    parser.add_argument("--nodes", type=int, default=4, help="validators (default 4)")
    parser.add_argument("--rate", type=float, default=800.0,
                        help="total load, tx/s of 64 B (default 800)")
    parser.add_argument("--consensus", choices=["bullshark", "tusk"], default="bullshark")
    parser.add_argument("--seed", type=int, default=None, help="the nemesis' random seed")
    parser.add_argument("--latency-bound", type=float, default=LATENCY_BOUND,
                        help="pause and slow-link: the others' median consensus latency during "
                             f"the fault over the baseline's, at most (default {LATENCY_BOUND:g})")
    parser.add_argument("--recovery-bound", type=float, default=RECOVERY_BOUND,
                        help=f"seconds within which nodes must commit again (default {RECOVERY_BOUND:g})")
    parser.add_argument("--settle-bound", type=float, default=60.0,
                        help="seconds the load-free settle may take (default 60)")
    parser.add_argument("--dir", type=Path, default=None,
                        help="folder for the runs (default: a new temporary folder)")
    parser.add_argument("--json", action="store_true",
                        help="print each scenario's result as one JSON object per line")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.duration <= 0 or args.nodes < 4 or args.rate <= 0:
        parser.error("--duration and --rate must be > 0, --nodes >= 4")
    if args.seed is None:
        args.seed = random.randrange(1 << 30)
    names = list(SCENARIOS) if "all" in (args.scenario or []) else (args.scenario or ["kill"])
    base = args.dir or Path(tempfile.mkdtemp(prefix="narwhal-chaos-"))
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    ok = True
    for name in names:
        result = asyncio.run(run_scenario(name, args, base / name))
        ok &= result["ok"]
        print(json.dumps(result) if args.json else summary(result), flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
