"""Three honest validator processes and one Byzantine peer, measured phase by phase.

:class:`AdversarialCluster` starts a committee of four on 127.0.0.1: authorities 0-2 are
real ``python -m narwhal.node run`` processes, authority 3's keys are held by a
:class:`~tests.adversarial.byzantine.ByzantinePeer` running in this process on its own
event loop (:class:`LoopThread`). Also on that loop: a steady client load on every honest
worker, and one output subscriber per honest node, as a client reads the output.

:meth:`AdversarialCluster.run_attack` measures one attack the way issue 12 asks, with the
same three honest nodes throughout: an attack-free phase (the Byzantine peer passive), then
the attack phase; for each honest node and phase

- **commit rate**: certificates *of honest authors* that reached its subscriber per second
  (a Byzantine author's certificates, which some attacks get committed, are not liveness);
- **latency**: median time from a load transaction's submission to its arrival in the
  ordered output;
- **peak RSS**: ``VmRSS`` of ``/proc/<pid>/status``, sampled every :data:`SAMPLE_EVERY`;

and the victim's ``/status`` (from its admin endpoint) before and after the attack, to read
the counter that shows it. :meth:`assert_agreement` reads every honest node's output over
the test's indexes with :mod:`tests.integration.output_check`.

New attacks need no new machinery: an :class:`Attack` is a coroutine run on the Byzantine
peer's loop until told to stop, plus the counter that must show it (see
``tests/adversarial/attacks.py``).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import logging
import statistics
import threading
import time
import urllib.request
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, Self

import attrs
import uvloop

from narwhal.client import OutputSubscriber, TransactionClient
from narwhal.client.transactions import parse_transaction
from narwhal.config import Parameters
from narwhal.crypto import AuthorityKeys
from narwhal.node.files import LocalNetwork, create_local
from narwhal.node.processes import Child, ProcessGroup
from tests.adversarial.byzantine import ByzantinePeer
from tests.integration.output_check import SUBSCRIBE_RETRY, assert_output_live_and_agreeing
from tests.node.helpers import wait_for
from tests.node.test_run import run_argv

__all__ = [
    "TEST_PARAMETERS",
    "AdversarialCluster",
    "Attack",
    "AttackContext",
    "AttackResult",
    "LoopThread",
    "Phase",
]

log = logging.getLogger(__name__)

MiB = 1024 * 1024
HONEST = (0, 1, 2)
BYZANTINE = 3
#: The honest node the attacks aim at (they may hit the others too).
VICTIM = 0
#: Seconds between two RSS samples.
SAMPLE_EVERY = 0.2
#: Liveness: an honest node under attack commits at >= LIVE_FRACTION of its attack-free
#: rate. One 6-second pair of phases on this 2-core box (three or four node processes, the
#: test's loop and the attacker's share two cores) lands below it now and then without any
#: fault of the defence (seen: 0.67x once for an attack measured 0.82-0.98x otherwise). So a
#: trial that misses is confirmed: after a miss, liveness is decided by a majority of
#: LIVE_TRIALS (attack-free, attack) pairs. An attack that really costs >20% misses them.
LIVE_FRACTION = 0.8
#: Seconds between two readings of the honest primaries' rounds (Attack.max_round_spread).
ROUND_SAMPLE_EVERY = 0.5
LIVE_TRIALS = 3
#: Client load per honest worker: transactions a second, and their size.
LOAD_RATE = 100
LOAD_TX_SIZE = 64
#: Rounds every honest node reaches before the first measurement: past gc_depth, so the DAG
#: and the stores are at their steady size (RSS no longer grows by itself).
WARM_ROUND = 70

#: The default parameters, except: batches of 100 KB (a light load seals them on the
#: 0.1 s timer anyway), and a storage quota per peer worker of 1 MB/s with a 2 MB burst
#: (the default 40 MB/s and 128 MiB would need a flood of >300 MB on this 2-core box
#: before the quota refused anything; 1 MB/s is still 20x what an honest peer sends here).
TEST_PARAMETERS = Parameters(batch_size=100_000, batch_quota_rate=1_000_000,
                             batch_quota_burst=2_000_000)


class LoopThread:
    """A uvloop event loop in a daemon thread: the test body stays synchronous (it sleeps,
    reads ``/proc`` and HTTP) while the Byzantine peer, the load and the subscribers run."""

    def __init__(self) -> None:
        self.loop = uvloop.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="byzantine-loop",
                                        daemon=True)
        self._thread.start()

    def call(self, coroutine: Coroutine[Any, Any, Any], timeout: float = 60.0) -> Any:
        """Run ``coroutine`` on the loop; its result (or exception) here."""
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def spawn(self, coroutine: Coroutine[Any, Any, Any]) -> concurrent.futures.Future[Any]:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop)

    def close(self) -> None:
        async def cancel_all() -> None:
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        with contextlib.suppress(Exception):
            self.call(cancel_all(), 30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)


@attrs.frozen
class AttackContext:
    """What an attack coroutine gets: the peer, whom to aim at, and when to stop."""

    peer: ByzantinePeer
    victim: bytes
    honest: list[bytes]
    stop: asyncio.Event

    async def unless_stopped(self, awaitable: Awaitable[Any]) -> bool:
        """Wait for ``awaitable`` unless told to stop first (then cancel it): False once
        told to stop. What an attack blocked by the victim's backpressure waits with."""
        work = asyncio.ensure_future(awaitable)
        stopped = asyncio.ensure_future(self.stop.wait())
        await asyncio.wait([work, stopped], return_when=asyncio.FIRST_COMPLETED)
        for task in (work, stopped):
            task.cancel()
        if work.done() and not work.cancelled():
            work.result()  # its exception, if it failed
        return not self.stop.is_set()

    async def pace(self, seconds: float) -> bool:
        """Sleep ``seconds`` unless told to stop first; False once told to stop."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.stop.wait(), seconds)
        return not self.stop.is_set()


@attrs.frozen
class Attack:
    """One attack: ``run(ctx)`` until ``ctx.stop``; ``counter`` reads, from the victim's
    ``/status``, the number that must grow while it runs (``counter_name`` names it);
    ``rss_bound``: how much the honest nodes' peak RSS may grow over the baseline's."""

    name: str
    run: Callable[[AttackContext], Awaitable[Any]]
    counter_name: str
    #: ``counter(victim_status, byzantine_authority)``.
    counter: Callable[[dict[str, Any], bytes], int]
    rss_bound: int = 48 * MiB
    #: If set: the honest primaries' rounds, read together every ROUND_SAMPLE_EVERY
    #: seconds during the attack, must stay within this many of one another (the
    #: fetcher jam's figure in issue 12: "every honest node within 2 rounds of the others").
    max_round_spread: int | None = None

    @property
    def description(self) -> str:
        """What the attack does: its coroutine's docstring."""
        return self.run.__doc__ or ""


@attrs.frozen
class Phase:
    """Per honest node index: honest certificates committed per second, median submit ->
    output latency (seconds, None without load in the window), peak RSS (bytes)."""

    seconds: float
    rates: dict[int, float]
    latencies: dict[int, float | None]
    peak_rss: dict[int, int]
    #: Largest difference between the honest primaries' rounds read together (None: not
    #: sampled), and how many times they were read.
    round_spread: int | None = None
    round_samples: int = 0


@attrs.frozen
class AttackResult:
    attack: Attack
    baseline: Phase
    under_attack: Phase
    before: dict[str, Any]  # the victim's /status when the attack started
    after: dict[str, Any]  # ... and when it ended
    first_index: int  # the lowest consensus index the honest nodes held at the start
    byzantine: bytes  # the Byzantine authority (its rows in the victim's peers)
    outcome: Any = None  # what the attack's coroutine answered (its own findings)
    #: Further (attack-free, attack) pairs run to confirm a miss (see LIVE_TRIALS).
    retrials: tuple[AttackResult, ...] = ()

    @property
    def trials(self) -> tuple[AttackResult, ...]:
        return (self, *self.retrials)

    def rate_ratio(self, node: int) -> float:
        base = self.baseline.rates[node]
        return self.under_attack.rates[node] / base if base else 0.0

    def latency_ratio(self, node: int) -> float | None:
        base, attacked = self.baseline.latencies[node], self.under_attack.latencies[node]
        return attacked / base if base and attacked is not None else None

    def rss_growth(self, node: int) -> int:
        return self.under_attack.peak_rss[node] - self.baseline.peak_rss[node]

    def counted(self, status: dict[str, Any]) -> int:
        return self.attack.counter(status, self.byzantine)

    @property
    def counter_increase(self) -> int:
        return self.counted(self.after) - self.counted(self.before)

    def min_rate_ratio(self) -> float:
        """This trial's worst honest node: its attack rate over its attack-free rate."""
        return min(self.rate_ratio(node) for node in HONEST)

    def is_live(self, fraction: float = LIVE_FRACTION) -> bool:
        """Every honest node committed at >= ``fraction`` of its attack-free rate."""
        return self.min_rate_ratio() >= fraction

    def verdict(self) -> bool | None:
        """Live if the first trial is; after a miss, what a majority of LIVE_TRIALS trials
        says; None while more trials could still change it."""
        if self.is_live():
            return True
        live = sum(t.is_live() for t in self.trials)
        if live > LIVE_TRIALS // 2:
            return True
        if len(self.trials) - live > LIVE_TRIALS // 2:
            return False
        return None

    def assert_live(self) -> None:
        """(b) Live by :meth:`verdict` (see LIVE_TRIALS); no trial without commits."""
        for trial in self.trials:
            for node in HONEST:
                assert trial.baseline.rates[node] > 0, f"node {node}: no commits without the attack"
        live = sum(t.is_live() for t in self.trials)
        assert self.verdict(), (
            f"{self.attack.name}: worst honest commit rate under attack over the attack-free "
            f"rate, per trial: {', '.join(f'{t.min_rate_ratio():.0%}' for t in self.trials)}; "
            f"{live} of {len(self.trials)} trials >= {LIVE_FRACTION:.0%}")

    def assert_rss_bounded(self) -> None:
        for trial in self.trials:
            for node in HONEST:
                growth = trial.rss_growth(node)
                assert growth <= self.attack.rss_bound, (
                    f"{self.attack.name}: node {node} RSS grew {growth / MiB:.1f} MiB over the "
                    f"baseline's peak (bound {self.attack.rss_bound / MiB:.0f} MiB)")

    def assert_counted(self) -> None:
        assert self.counter_increase > 0, (
            f"{self.attack.name}: {self.attack.counter_name} did not grow on the victim "
            f"({self.counted(self.before)} -> {self.counted(self.after)})")

    def assert_defended(self) -> None:
        """(b) liveness, (c) bounded RSS, (d) counted. (a) agreement is read separately
        (:meth:`AdversarialCluster.assert_agreement`): it reads the whole output again."""
        self.assert_live()
        self.assert_rss_bounded()
        self.assert_counted()
        self.assert_rounds_together()

    def assert_rounds_together(self) -> None:
        bound = self.attack.max_round_spread
        if bound is None:
            return
        attacked = self.under_attack
        assert attacked.round_samples >= 5, f"rounds read only {attacked.round_samples} times"
        assert attacked.round_spread is not None and attacked.round_spread <= bound, (
            f"honest rounds {attacked.round_spread} apart under {self.attack.name} (bound "
            f"{bound}; {self.baseline.round_spread} without attack)")

    def row(self) -> dict[str, Any]:
        """One line of the benchmark's table (JSON-ready)."""
        return {
            "attack": self.attack.name,
            "rate_ratio": statistics.median(t.min_rate_ratio() for t in self.trials),
            "rate_ratios": [round(t.min_rate_ratio(), 3) for t in self.trials],
            "latency_ratio": max((r for n in HONEST if (r := self.latency_ratio(n)) is not None),
                                 default=None),
            "baseline_rate": statistics.mean(self.baseline.rates.values()),
            "attack_rate": statistics.mean(self.under_attack.rates.values()),
            "victim_peak_rss_mib": self.under_attack.peak_rss[VICTIM] / MiB,
            "victim_rss_growth_mib": self.rss_growth(VICTIM) / MiB,
            "max_rss_growth_mib": max(self.rss_growth(n) for n in HONEST) / MiB,
            "counter": self.attack.counter_name,
            "counter_increase": self.counter_increase,
            **({"round_spread": self.under_attack.round_spread,
                "baseline_round_spread": self.baseline.round_spread}
               if self.attack.max_round_spread is not None else {}),
            **(self.outcome.row() if hasattr(self.outcome, "row") else {}),
        }


def rss_bytes(pid: int) -> int:
    """``VmRSS`` of ``pid`` in bytes (0 once it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except (FileNotFoundError, ProcessLookupError):
        pass
    return 0


class Observer:
    """One honest node's ordered output as a client reads it, with arrival times."""

    def __init__(self, cluster: AdversarialCluster, node: int) -> None:
        self.node = node
        self.authority = cluster.authorities[node]
        self.committee = cluster.net.committee
        self.honest = {cluster.authorities[i] for i in HONEST}
        #: (arrival, honest author?, latencies of the load's transactions) per index.
        self.items: list[tuple[float, bool, list[float]]] = []
        #: Why the subscription ended (it must not: a client's subscription outlives attacks).
        self.ended: str | None = None
        self.subscriber = OutputSubscriber(self.committee, self.authority, retry=SUBSCRIBE_RETRY)

    async def run(self) -> None:
        try:
            await self._follow()
            self.ended = "the output stream ended"
        except BaseException as exc:
            self.ended = f"{type(exc).__name__}: {exc}"
            raise

    async def _follow(self) -> None:
        async for _, _, author, _, transactions in self.subscriber.subscribe(1):
            now_ns = time.time_ns()
            latencies = []
            for tx in transactions:
                sent = parse_transaction(tx)[2] if len(tx) == LOAD_TX_SIZE else None
                if sent is not None:
                    latencies.append((now_ns - sent) / 1e9)
            self.items.append((time.monotonic(), author in self.honest, latencies))

    def window(self, start: float, end: float) -> tuple[float, float | None]:
        """(honest certificates a second, median latency) of what arrived in [start, end)."""
        inside = [item for item in self.items if start <= item[0] < end]
        latencies = [x for item in inside for x in item[2]]
        rate = sum(1 for item in inside if item[1]) / (end - start)
        return rate, (statistics.median(latencies) if latencies else None)


class AdversarialCluster:
    """See the module docstring. Use as a context manager (it stops everything)."""

    def __init__(self, directory: Path, parameters: Parameters = TEST_PARAMETERS, *,
                 cloned_key: bool = False) -> None:
        """``cloned_key``: authority 3 is a real node process too, and the Byzantine peer
        is a second holder of its keys (it listens on ephemeral ports and dials out),
        started by the attack itself."""
        self.net: LocalNetwork = create_local(directory, 4, 1, parameters=parameters)
        self.authorities = self.net.committee.authorities_sorted()
        self.group = ProcessGroup(grace=15)
        self.nodes: dict[int, Child] = {}
        self.cloned_key = cloned_key
        self.loop = LoopThread()
        keys = AuthorityKeys.load(self.net.key_files[BYZANTINE])
        self.peer = ByzantinePeer(keys, self.net.committee, parameters, listen=not cloned_key,
                                  name="clone" if cloned_key else "byzantine")
        self.observers = {i: Observer(self, i) for i in HONEST}
        self._background: list[concurrent.futures.Future[Any]] = []

    # -- lifecycle -----------------------------------------------------------------------------

    def __enter__(self) -> Self:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def start(self, warm_round: int = WARM_ROUND) -> None:
        if self.cloned_key:
            self.group.start(f"node-{BYZANTINE}", run_argv(self.net, BYZANTINE),
                             self.net.node_dir(BYZANTINE) / "stdout.log")
        else:
            self.loop.call(self.peer.start())
        for i in HONEST:
            self.nodes[i] = self.group.start(f"node-{i}", run_argv(self.net, i),
                                             self.net.node_dir(i) / "stdout.log")
        wait_for(lambda: all(self._round(i) >= 1 for i in HONEST), 60, "honest primaries started")
        if not self.cloned_key:
            self.loop.call(self.peer.connected())
        self._background += [self.loop.spawn(self._load(i)) for i in HONEST]
        self._background += [self.loop.spawn(o.run()) for o in self.observers.values()]
        wait_for(lambda: all(self._round(i) >= warm_round for i in HONEST), 120,
                 f"honest primaries at round {warm_round}")

    def close(self) -> None:
        for future in self._background:
            future.cancel()
        with contextlib.suppress(Exception):
            self.loop.call(self.peer.stop(), 30)
        self.loop.close()
        codes = self.group.stop()
        crashed = {name: code for name, code in codes.items() if code != 0}
        if crashed:
            log.error("honest nodes did not exit cleanly: %s", crashed)

    async def _load(self, node: int) -> None:
        client = TransactionClient(self.net.committee, self.authorities[node], 0)
        await client.submit_at_rate(LOAD_RATE, LOAD_TX_SIZE)

    # -- observing -----------------------------------------------------------------------------

    def status(self, node: int, what: str = "status") -> Any:
        """The node's admin ``/status`` (a dict) or ``/metrics`` (text), read now."""
        address = self.net.committee.authorities[self.authorities[node]].primary.admin_address
        with urllib.request.urlopen(f"http://{address}/{what}", timeout=10) as answer:
            body = answer.read().decode()
        return json.loads(body) if what == "status" else body

    def _round(self, node: int) -> int:
        with contextlib.suppress(OSError, ValueError):
            return int((self.status(node).get("primary") or {}).get("round", 0))
        return 0

    def consensus_index(self, node: int) -> int:
        return int((self.status(node).get("primary") or {}).get("consensus_index", 0))

    def check_alive(self) -> None:
        dead = {i: c.returncode for i, c in self.nodes.items() if c.returncode is not None}
        assert not dead, f"honest nodes exited: {dead} (see node-*/stdout.log)"
        ended = {i: o.ended for i, o in self.observers.items() if o.ended is not None}
        assert not ended, f"output subscribers gave up: {ended}"

    def measure(self, seconds: float, *, rounds: bool = False) -> Phase:
        """Watch the honest nodes for ``seconds``: commit rates, latencies, peak RSS, and
        with ``rounds`` how far apart their primaries' rounds get."""
        start = time.monotonic()
        peaks = dict.fromkeys(HONEST, 0)
        spreads: list[int] = []
        next_rounds = start
        with concurrent.futures.ThreadPoolExecutor(len(HONEST)) as readers:
            while time.monotonic() - start < seconds:
                self.check_alive()
                for i, child in self.nodes.items():
                    peaks[i] = max(peaks[i], rss_bytes(child.process.pid))
                if rounds and time.monotonic() >= next_rounds:
                    # read at once (one thread each), so the spread is the nodes', not
                    # the time between three sequential reads
                    read = list(readers.map(self._round, HONEST))
                    if all(read):
                        spreads.append(max(read) - min(read))
                    next_rounds = time.monotonic() + ROUND_SAMPLE_EVERY
                time.sleep(SAMPLE_EVERY)
        end = time.monotonic()  # the subscribers stamp each index as it arrives: no wait
        windows = {i: self.observers[i].window(start, end) for i in HONEST}
        return Phase(end - start, {i: w[0] for i, w in windows.items()},
                     {i: w[1] for i, w in windows.items()}, peaks,
                     max(spreads) if spreads else None, len(spreads))

    # -- attacks -------------------------------------------------------------------------------

    def context(self, stop: asyncio.Event) -> AttackContext:
        return AttackContext(self.peer, self.authorities[VICTIM],
                             [self.authorities[i] for i in HONEST], stop)

    def run_attack(self, attack: Attack, baseline: float = 8.0, duration: float = 8.0) -> AttackResult:
        """A trial of ``attack`` (:meth:`trial`), and as many more as it takes to decide
        liveness by a majority of LIVE_TRIALS."""
        result = self.trial(attack, baseline, duration)
        while result.verdict() is None:
            log.info("%s: trial %d missed, confirming", attack.name, len(result.trials))
            again = self.trial(attack, baseline, duration)
            result = attrs.evolve(result, retrials=(*result.retrials, again))
        log.info("%s: %s", attack.name, result.row())
        return result

    def trial(self, attack: Attack, baseline: float, duration: float) -> AttackResult:
        """An attack-free phase, then ``attack`` for ``duration`` seconds (see the module
        docstring); the attack is stopped (and must undo its links) before returning."""
        first = min(self.consensus_index(i) for i in HONEST) + 1
        rounds = attack.max_round_spread is not None
        quiet = self.measure(baseline, rounds=rounds)
        before = self.status(VICTIM)
        stop = self.loop.call(_new_event())
        running = self.loop.spawn(attack.run(self.context(stop)))
        try:
            attacked = self.measure(duration, rounds=rounds)
            after = self.status(VICTIM)
        finally:
            self.loop.loop.call_soon_threadsafe(stop.set)
            try:
                outcome = running.result(30)
            except concurrent.futures.TimeoutError:
                running.cancel()
                raise AssertionError(f"{attack.name}: the attack did not stop within 30 s") from None
        self.check_alive()
        return AttackResult(attack, quiet, attacked, before, after, first,
                            self.authorities[BYZANTINE], outcome)

    def assert_agreement(self, first: int) -> None:
        """(a) Every honest node serves the same output, from ``first`` to the highest index
        any of them holds now (within output_check's bound)."""
        assert_output_live_and_agreeing(self.net, HONEST, from_index=first)


async def _new_event() -> asyncio.Event:
    return asyncio.Event()


def peer_row(status: dict[str, Any], local: str | int, authority: bytes) -> dict[str, Any]:
    """In a node's ``/status``: its role ``local``'s row for ``authority``'s same role."""
    role = status["primary"] if local == "primary" else status["workers"][str(local)]
    short = authority.hex()[:8]
    rows = [r for r in role["peers"] if r["name"].startswith(short)
            and (r["role"] == "primary") == (local == "primary")]
    assert len(rows) == 1, f"no single row for {short} in {local}'s peers"
    return rows[0]


@contextlib.contextmanager
def cluster_in(directory: Path, parameters: Parameters = TEST_PARAMETERS) -> Iterator[AdversarialCluster]:
    with AdversarialCluster(directory, parameters) as cluster:
        yield cluster
