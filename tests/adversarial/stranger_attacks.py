"""The attacks of strangers (no committee key) on the adversarial cluster (issue 12, item 7).

Each is an :class:`~tests.adversarial.cluster.Attack` whose coroutine (on the cluster's
loop) tells the :class:`~tests.adversarial.stranger.Stranger` process to run a plan
against the victim and, while it runs, has a **real client** (the ``narwhal.client`` API,
from 127.0.0.1) connect to the victim's worker, submit a transaction, and subscribe to the
victim's output, again and again (:class:`ClientProbe`). The coroutine answers a
:class:`StrangerOutcome` (``AttackResult.outcome``): the probe's rounds and the plan's
report. ``tests/adversarial/test_strangers.py`` asserts each one; ``bench/attacks.py``
measures them (``--strangers``).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import time
import urllib.request
from typing import Any

import attrs

from narwhal.client import OutputSubscriber, TransactionClient
from narwhal.client.transactions import DEFAULT_RETRY
from narwhal.config import Committee, Parameters
from narwhal.net.retry import Backoff, is_transient
from tests.adversarial.attacks import Counter, total, worker_errors
from tests.adversarial.cluster import Attack, AttackContext, MiB
from tests.adversarial.stranger import Stranger

__all__ = ["PROBE_ATTEMPTS", "PROBE_BOUND", "STRANGER_ATTACKS", "ClientProbe", "StrangerOutcome",
           "stranger_attacks"]

#: Seconds of the attack before the first probe: the floods build up.
RAMP = 1.0
#: Seconds between the end of a probe round and the next.
PROBE_PAUSE = 0.5
#: The bound a real client is held to during an attack: a probe round (connect, one
#: transaction accepted, a live output index received) within PROBE_BOUND seconds, its
#: connection to the worker within PROBE_ATTEMPTS attempts (the client's own backoff
#: between them: 0.2 s, then growing).
PROBE_BOUND = 5.0
PROBE_ATTEMPTS = 5
#: Each attack's name, in the order the test module runs them (on one cluster). ``client_10x``
#: goes last: it leaves the victim up to twice its pending budget of batches that the
#: others store only at their per-peer quota (TEST_PARAMETERS: 1 MB/s, so a minute or
#: more), and the attacks that ran after it measured that residue, not their own cost
#: (stalled_subscribers 0.57-0.74x right after it, 0.94-0.96x on a fresh cluster).
STRANGER_ATTACKS = ["connection_flood", "silent", "handshakes", "stalled_subscribers",
                    "slow_loris", "garbage", "client_10x"]


@attrs.frozen
class ProbeRound:
    attempts: int  # connection attempts to the worker's transactions port
    connect: float  # seconds to a connection
    submit: float  # ... to the transaction accepted
    subscribe: float  # ... to the first live output index
    error: str | None = None  # the round did not finish within PROBE_BOUND: why


@attrs.frozen
class StrangerOutcome:
    rounds: list[ProbeRound]
    report: dict[str, int]  # the stranger's counters of the plan

    def assert_clients_served(self) -> None:
        assert self.rounds, "the real client was never probed during the attack"
        for i, r in enumerate(self.rounds):
            assert r.error is None, f"probe {i}: no connect/submit/subscribe within {PROBE_BOUND} s: {r.error}"
            assert r.attempts <= PROBE_ATTEMPTS, f"probe {i}: {r.attempts} attempts to connect"

    def row(self) -> dict[str, Any]:
        done = [r for r in self.rounds if r.error is None]
        return {"probes": len(self.rounds), "probe_failures": len(self.rounds) - len(done),
                "probe_attempts_max": max((r.attempts for r in self.rounds), default=0),
                "probe_connect_max_s": max((r.connect for r in done), default=None),
                "probe_round_max_s": max((r.subscribe for r in done), default=None),
                "stranger": self.report}


def victim_index(committee: Committee, victim: bytes) -> int:
    """The victim's consensus index, from its admin ``/status`` (blocking)."""
    address = committee.authorities[victim].primary.admin_address
    with urllib.request.urlopen(f"http://{address}/status", timeout=5) as answer:
        return int(json.loads(answer.read())["primary"]["consensus_index"])


class ClientProbe:
    """A real client of the victim, one round after another (see :data:`PROBE_BOUND`)."""

    def __init__(self, committee: Committee, victim: bytes) -> None:
        self.committee, self.victim = committee, victim
        self.rounds: list[ProbeRound] = []

    async def run(self, ctx: AttackContext) -> None:
        if not await ctx.pace(RAMP):
            return
        while True:
            start = time.monotonic()
            progress = {"attempts": 0, "connect": 0.0, "submit": 0.0}
            try:
                async with asyncio.timeout(PROBE_BOUND):
                    await self._round(start, progress)
                self.rounds.append(ProbeRound(**progress, subscribe=time.monotonic() - start))
            except Exception as exc:  # noqa: BLE001 -- any failure is the finding
                self.rounds.append(ProbeRound(**progress, subscribe=0.0,
                                              error=f"{type(exc).__name__}: {exc}"))
            if not await ctx.pace(PROBE_PAUSE):
                return

    async def _round(self, start: float, progress: dict[str, Any]) -> None:
        client = TransactionClient(self.committee, self.victim, 0)
        try:
            backoff = Backoff(DEFAULT_RETRY)
            while True:
                progress["attempts"] += 1
                try:
                    await client.connect()
                    break
                except Exception as exc:
                    if not is_transient(exc):
                        raise
                    await asyncio.sleep(backoff.next_delay() or DEFAULT_RETRY.max_interval)
            progress["connect"] = time.monotonic() - start
            accepted = await client.submit(client.next_transactions(1, 64))
            assert accepted == 1, f"{accepted} of 1 transaction accepted"
            progress["submit"] = time.monotonic() - start
        finally:
            await client.close()
        loop = asyncio.get_running_loop()
        index = await loop.run_in_executor(None, victim_index, self.committee, self.victim)
        subscriber = OutputSubscriber(self.committee, self.victim)
        async with contextlib.aclosing(subscriber.subscribe(index + 1)) as output:
            await anext(output)


def _admission(*keys: str) -> Counter:
    """The sum of ``keys`` over the victim's four listeners' admission counters."""
    def read(status: dict[str, Any], _: bytes) -> int:
        listeners = [*status["primary"]["admission"].values(),
                     *status["workers"]["0"]["admission"].values()]
        return sum(snap.get(k, 0) for snap in listeners for k in keys)
    return read


def _output(*keys: str) -> Counter:
    def read(status: dict[str, Any], _: bytes) -> int:
        output = status["primary"]["output"]
        return sum(output.get(k, 0) + output["refused"].get(k, 0) for k in keys)
    return read


def _worker(*keys: str) -> Counter:
    return lambda status, _: sum(status["workers"]["0"].get(k, 0) for k in keys)


SILENT = ("evicted_per_source", "evicted_overall")
HANDSHAKES = ("replayed", "throttled_per_source", "throttled_overall")


def stranger_attacks(stranger: Stranger, parameters: Parameters) -> dict[str, Attack]:
    """The attacks, run by ``stranger`` (the committee's ``parameters`` size the 10x client)."""

    def attack(name: str, doc: str, counter_name: str, counter: Counter, *,
               rss_bound: int = 48 * MiB, **options: Any) -> Attack:
        async def run(ctx: AttackContext) -> StrangerOutcome:
            loop = asyncio.get_running_loop()
            await loop.run_in_executor(None, functools.partial(stranger.begin, name, **options))
            probe = ClientProbe(ctx.peer.committee, ctx.victim)
            try:
                await probe.run(ctx)
            finally:
                report = await loop.run_in_executor(None, stranger.end)
            return StrangerOutcome(probe.rounds, report)
        run.__doc__ = doc
        return Attack(name, run, counter_name, counter, rss_bound=rss_bound)

    #: What the committee can store of one worker's batches: each peer worker's storage
    #: quota for it (TEST_PARAMETERS: 1 MB/s). 10x that is the client's rate.
    capacity = parameters.batch_quota_rate
    return {a.name: a for a in [
        attack("connection_flood",
               "5,000 silent connections over the victim's four ports from 40 addresses, "
               "plus a handshake flood (IK and NK message 1s, replayed and fresh) from one",
               "admission: evicted + replayed + throttled (4 listeners)",
               _admission(*SILENT, *HANDSHAKES)),
        attack("silent", "5,000 silent connections over the four ports, from 40 addresses",
               "admission: evicted_per_source + evicted_overall (4 listeners)", _admission(*SILENT)),
        attack("handshakes", "handshake message 1s from one address, IK and NK, replayed and fresh",
               "admission: replayed + throttled_per_source + throttled_overall (4 listeners)",
               _admission(*HANDSHAKES)),
        attack("garbage", "random bytes for a handshake, garbage message 1s behind a valid "
               "preamble, random bytes after a completed NK handshake",
               "admission: abandoned + throttled (4 listeners)",
               _admission("abandoned", "throttled_per_source", "throttled_overall")),
        attack("slow_loris", "a byte every 0.5 s: of message 1s (150 per port), and of a frame "
               "after the NK handshake (300 per client port, one address)",
               "admission: timed_out + evicted (4 listeners) + client ports' refused",
               total(_admission("timed_out", *SILENT),
                     lambda s, _: s["workers"]["0"]["clients"]["refused"])),
        attack("client_10x", f"one client submitting {10 * capacity / 1e6:g} MB/s, 10x what "
               "the committee stores of one worker", "workers.0: pending_tx_bytes (gauge; "
               "the pending budget bounds it) + submissions_slowed + errors.overloaded",
               total(_worker("pending_tx_bytes", "submissions_slowed"), worker_errors("overloaded")),
               # what the worker may hold of a client's transactions: the pending budget
               # (accepted, not yet in a batch with a quorum) and as much again in the late
               # sends of batches past their quorum (narwhal/worker/late_sends.py)
               rss_bound=2 * parameters.max_pending_transactions_bytes + 16 * MiB, rate=10 * capacity),
        attack("stalled_subscribers", "9 subscribers from one address asking for the whole "
               "output and never reading (8 per address admitted)",
               "primary.output: pauses + refused.per_address", _output("pauses", "per_address"),
               count=parameters.max_subscribers_per_address + 1),
    ]}

