"""One seeded simulation run: a cluster, a nemesis drawn from the seed, the checker.

A run has three phases (virtual seconds):

1. warm-up (``WARM_UP``): no faults;
2. faults until ``duration - settle``: one fault at a time, each drawn from the seed --
   crash a validator and restart it from its store, a partition of f validators from the
   others (1|3 with four), a one-way cut (one validator can send but not receive, or the
   reverse), a pause (a validator's traffic held, as bytes wait in TCP buffers, and
   delivered on resume), a slow validator (its
   links 20 times slower while it lasts), or quiet -- never more than f validators
   affected at once;
3. settle (``settle`` seconds): every fault healed, the workers stop sealing new batches,
   and the run must finish what it acknowledged.

Options that hold for the whole run: a Byzantine validator (``byzantine``: equivocation
and withholding; ``jam``: a certificate-fetcher jam; ``forge``: forged certificates and
votes, replayed headers) and clock skew (``skew``: a clock per validator, its own rate).

Then :func:`narwhal.sim.checker.check` reads every output. The result's ``trace_hash`` is
the SHA-256 of every delivery, request and fault in order (``narwhal.sim.cluster``).
"""

from __future__ import annotations

import asyncio
import math
import random
import sys
import time
from typing import Any

import attrs

from narwhal import messages
from narwhal.messages import Certificate
from narwhal.sim.checker import check
from narwhal.sim.cluster import SimCluster, SimValidator
from narwhal.sim.loop import SkewedClock, run_virtual
from narwhal.sim.network import LinkModel

__all__ = ["SimResult", "simulate"]

WARM_UP = 3.0
#: The commits every validator must add once the faults are healed ...
MIN_COMMITS_AFTER_HEAL = 4
#: ... the first of them within this many seconds of the heal (commits resume).
RECOVERY_BOUND = 10.0
#: A fault shorter than this is not started (the fault phase is over).
MIN_FAULT = 0.5
#: A slow validator's links are this many times slower (20 ms median -> 400 ms).
SLOW_LINK_FACTOR = 20.0
#: How often the validators' consensus indexes are read after the heal (virtual seconds).
RECOVERY_SAMPLE = 0.05


@attrs.frozen
class SimResult:
    seed: int
    trace_hash: str
    commits: int
    violations: list[str]
    sim_seconds: float
    wall_seconds: float
    events: int
    faults: list[str]
    acknowledged: int
    rejections: dict[str, int]
    byzantine: int | None = None
    #: Twin headers the Byzantine validator sent, and pieces of equivocation evidence the
    #: honest validators stored.
    equivocations: int = 0
    withheld: int = 0
    evidence: int = 0
    #: Headers naming made-up parents the jamming validator sent (``jam``).
    jam_headers: int = 0
    #: Forged certificates and votes, and replayed headers, the Byzantine validator sent
    #: (``forge``).
    forged: int = 0
    #: Each validator's clock rate (``skew``; None: every clock true).
    clock_rates: list[float] | None = None
    #: Seconds from the heal until every honest validator committed something new.
    recovery_s: float | None = None
    #: Weak links in the certificates the first honest validator stored (issue 16), and
    #: headers whose batches honest validators proposed again (orphaned: never certified,
    #: passed over, or below the GC horizon uncommitted).
    weak_links: int = 0
    reproposed_headers: int = 0

    def as_json(self) -> dict[str, Any]:
        return attrs.asdict(self)


def simulate(seed: int, *, duration: float = 30.0, settle: float = 12.0, n: int = 4,
             faults: bool = True, consensus: str = "bullshark",
             link: LinkModel = LinkModel(), replayable: bool = True,  # noqa: B008
             byzantine: bool = False, jam: bool = False, forge: bool = False,
             skew: float | None = None,
             **parameters: Any) -> SimResult:
    """Run seed ``seed`` to the end and check it (see the module docstring).

    ``replayable``: refuse to run unless string hashing is fixed (``PYTHONHASHSEED=0``),
    without which the same seed can take another path in another process. Tests that only
    compare runs within one process pass False. ``parameters`` override the validators'
    (``narwhal.sim.cluster.SIM_PARAMETERS``). ``byzantine``: the last validator equivocates
    (``SimCluster.equivocate``); ``jam``: it tries to jam one honest validator's
    certificate fetcher (``SimCluster.jam``); ``forge``: it also sends forged certificates
    and votes and replays its headers (``SimCluster.forgeries``). With any, the checker
    reads the honest
    validators' outputs and the batches honest validators acknowledged. ``skew`` (>= 1):
    each validator's clock runs at its own rate, drawn log-uniformly from [1/skew, skew],
    and reads up to an hour apart from the others (:func:`skew_clocks`)."""
    if replayable and sys.flags.hash_randomization:
        raise RuntimeError("a simulation is replayable only with PYTHONHASHSEED=0 "
                           "(python -m narwhal.sim sets it)")
    started = time.perf_counter()
    cluster = SimCluster(seed=seed, n=n, link=link, consensus=consensus, **parameters)
    if skew is not None:
        skew_clocks(cluster, seed, skew)
    if byzantine or jam or forge:
        cluster.byzantine = n - 1
        cluster.equivocates, cluster.jams, cluster.forges = byzantine, jam, forge
    fault_log: list[str] = []
    at_heal: dict[int, int] = {}
    recovered: dict[int, float] = {}  # honest validator -> seconds from the heal to a commit

    async def main() -> float:
        loop = asyncio.get_running_loop()
        begin = loop.time()
        cluster.start()
        await asyncio.sleep(WARM_UP)
        if faults:
            await _nemesis(cluster, begin=begin, until=begin + duration - settle, log=fault_log)
        else:
            await asyncio.sleep(max(0.0, begin + duration - settle - loop.time()))
        at_heal.update({i: len(o) for i, o in cluster.outputs().items()})
        cluster.sealing = False
        watch = asyncio.ensure_future(_recovery(cluster, recovered))
        await asyncio.sleep(max(0.0, begin + duration - loop.time()))
        watch.cancel()
        elapsed = loop.time() - begin
        await cluster.stop()
        return elapsed

    sim_seconds = run_virtual(main())
    honest = {v.index for v in cluster.honest()}
    outputs = {i: o for i, o in cluster.outputs().items() if i in honest}
    promised = {d for d, author in cluster.acknowledged.items() if author in honest}
    violations = check(outputs, acknowledged=promised, at_heal=at_heal,
                       min_commits_after_heal=MIN_COMMITS_AFTER_HEAL)
    late = sorted(i for i in honest if recovered.get(i, math.inf) > RECOVERY_BOUND)
    if late:
        violations.append(f"liveness: validators {late} committed nothing within "
                          f"{RECOVERY_BOUND:g} s of the heal ({recovered})")
    recovery = max((recovered.get(i, math.inf) for i in honest), default=0.0)
    return SimResult(seed=seed, trace_hash=cluster.trace_hash,
                     commits=min(len(o) for o in outputs.values()), violations=violations,
                     sim_seconds=round(sim_seconds, 3),
                     wall_seconds=round(time.perf_counter() - started, 3), events=cluster.events,
                     faults=fault_log, acknowledged=len(promised), byzantine=cluster.byzantine,
                     equivocations=cluster.twins, withheld=cluster.withheld,
                     jam_headers=cluster.jam_headers, forged=cluster.forged,
                     clock_rates=None if skew is None else [v.clock.rate for v in cluster.validators],
                     evidence=sum(len(v.store.keys("evidence")) for v in cluster.honest()),
                     rejections=dict(sorted(cluster.rejections.items())),
                     recovery_s=round(recovery, 3) if recovery != math.inf else None,
                     weak_links=_weak_links(cluster.honest()[0]),
                     reproposed_headers=sum(len(v.store.keys("reproposed")) for v in cluster.honest()))


def _weak_links(validator: SimValidator) -> int:
    return sum(len(messages.decode_as(Certificate, blob).header.weak_links)
               for _, blob in validator.store.items("certificates"))


def skew_clocks(cluster: SimCluster, seed: int, skew: float) -> None:
    """Give every validator a clock of its own: a rate in [1/skew, skew] (log-uniform) and
    an offset of up to an hour, drawn from a source of their own (the nemesis draws the
    same faults with and without skew)."""
    if skew < 1:
        raise ValueError("skew: at least 1 (a rate factor)")
    rng = random.Random(f"{seed}/skew")
    for validator in cluster.validators:
        validator.clock = SkewedClock(rate=skew ** rng.uniform(-1.0, 1.0),
                                      offset=rng.uniform(0.0, 3_600.0))


async def _recovery(cluster: SimCluster, recovered: dict[int, float]) -> None:
    """Note when each honest validator first commits after the heal."""
    loop = asyncio.get_running_loop()
    healed = loop.time()
    start = {v.index: v.node.consensus_index for v in cluster.honest() if v.node is not None}
    while len(recovered) < len(start):
        for v in cluster.honest():
            if v.index not in recovered and v.node is not None \
                    and v.node.consensus_index > start.get(v.index, 0):
                recovered[v.index] = loop.time() - healed
        await asyncio.sleep(RECOVERY_SAMPLE)


async def _nemesis(cluster: SimCluster, *, begin: float, until: float, log: list[str]) -> None:
    """One fault at a time, each drawn from the cluster's seeded source, until ``until``."""
    loop = asyncio.get_running_loop()
    rng, links, n = cluster.rng, cluster.links, len(cluster.validators)
    f = (n - 1) // 3
    while until - loop.time() >= MIN_FAULT:
        kind = rng.choice(["crash", "partition", "one_way", "pause", "slow", "quiet"])
        length = min(rng.uniform(1.0, 6.0), max(0.0, until - loop.time()))
        victims = sorted(rng.sample(range(n), f))
        cluster.record("fault", kind, victims, round(length, 6))
        log.append(f"{loop.time() - begin:.2f}s {kind} {victims} {length:.2f}s")
        if kind == "crash":
            for v in victims:
                await cluster.validators[v].crash()
                links.down.add(v)
            await asyncio.sleep(length)
            for v in victims:
                links.down.discard(v)
                cluster.validators[v].start()
        elif kind == "partition":
            others = [i for i in range(n) if i not in victims]
            links.partition([victims, others])
            await asyncio.sleep(length)
            links.heal()
        elif kind == "one_way":
            others = [i for i in range(n) if i not in victims]
            if rng.random() < 0.5:
                links.cut_one_way(victims, others)  # they can receive but not send
            else:
                links.cut_one_way(others, victims)  # they can send but not receive
            await asyncio.sleep(length)
            links.heal()
        elif kind == "slow":
            for v in victims:
                links.slow[v] = SLOW_LINK_FACTOR
            await asyncio.sleep(length)
            links.slow.clear()
        elif kind == "pause":
            for v in victims:
                links.hold(v)
            await asyncio.sleep(length)
            for v in victims:
                links.release(v)
        else:
            await asyncio.sleep(length)
        # a breath between faults, so that each is one fault, not a blend of two
        await asyncio.sleep(min(rng.uniform(0.5, 2.0), max(0.0, until - loop.time())))
