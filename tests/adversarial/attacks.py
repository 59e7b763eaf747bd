"""The attacks of a Byzantine validator whose defences have landed (issue 12), one each.

Each is an :class:`~tests.adversarial.cluster.Attack`: a coroutine the
:class:`~tests.adversarial.byzantine.ByzantinePeer` runs until told to stop, the counter of
the victim's ``/status`` that must show it, and the bound on the honest nodes' RSS growth.
``tests/adversarial/test_byzantine_validator.py`` asserts each one; ``bench/attacks.py``
measures them. Adding an attack is adding an entry to :data:`ATTACKS`.

Rates are moderate on purpose: the attacker shares this 2-core box with the three honest
nodes, so its own CPU would otherwise be measured as the victim's slowdown. Per-peer rate
limits (another part of issue 12) are what will bound a faster attacker.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
from collections.abc import Callable, Iterable
from typing import Any

import attrs
import cbor2

from narwhal import messages
from narwhal.errors import ConnectionClosed
from narwhal.messages import (
    Batch,
    Certificate,
    Cleanup,
    FetchCertificates,
    OthersBatch,
    OurBatch,
    RequestBatches,
    Synchronize,
    Vote,
)
from narwhal.primary.checks import MAX_ROUNDS_AHEAD
from narwhal.wire.frames import FrameKind, encode_frame, frame_header
from tests.adversarial.byzantine import PRIMARY, encoded, fake_digest, send_plaintext
from tests.adversarial.cluster import Attack, AttackContext, MiB, peer_row

__all__ = ["ATTACKS", "CLONED_KEY", "attack"]

#: Request ids of frames we write ourselves: far from the ones our RpcChannel allocates.
_RAW_IDS = itertools.count(0x8000_0000)
#: The Byzantine worker's id (the committee has one worker per authority).
WORKER = 0


def _raw_id() -> int:
    return next(_RAW_IDS) % 0xFFFF_FFFF or 1


Counter = Callable[[dict[str, Any], bytes], int]


def primary_counter(*names: str) -> Counter:
    """Reads the sum of the victim primary's ``counters`` ``names``."""
    return lambda status, _: sum(status["primary"]["counters"].get(n, 0) for n in names)


def worker_errors(*kinds: str) -> Counter:
    """Reads the sum of the victim worker's ``errors`` ``kinds``."""
    return lambda status, _: sum(status["workers"][str(WORKER)]["errors"].get(k, 0)
                                 for k in kinds)


def peer_counter(local: str | int, *keys: str, errors: Iterable[str] = ()) -> Counter:
    """Reads, from the victim's row for the Byzantine authority's role ``local``, the sum
    of the row's ``keys`` and of its ``errors`` kinds."""
    kinds = tuple(errors)

    def read(status: dict[str, Any], byzantine: bytes) -> int:
        row = peer_row(status, local, byzantine)
        return sum(row.get(k, 0) for k in keys) + sum(row["errors"].get(k, 0) for k in kinds)
    return read


def total(*counters: Counter) -> Counter:
    return lambda status, byzantine: sum(c(status, byzantine) for c in counters)


async def _flood(ctx: AttackContext, role: str | int, tag: int, body: bytes) -> None:
    """Send ``tag``/``body`` as requests on the link to the victim, never reading a byte of
    the answers, as long as the link takes them (TCP backpressure stops us)."""
    conn = await ctx.peer.connection(role, ctx.victim)
    assert conn._transport is not None
    conn._transport.pause_reading()
    try:
        while conn.can_send and await ctx.unless_stopped(conn.wait_writable()):
            conn.send_frame(FrameKind.REQUEST, _raw_id(), tag, body)
            await asyncio.sleep(0)
    except ConnectionClosed:
        pass  # the victim gave up on us (its budget timeout): the defence, not our failure
    finally:
        conn.abort()  # the next attack gets a fresh link (our manager redials)


async def amplification(ctx: AttackContext) -> None:
    """Finding 1: requests whose answers are large, and never a byte read. Our worker
    first stores ~3 MB of batches at the victim's (within its quota), then asks for all of
    them at once, again and again (~3 MB answered per 1 KB request); our primary asks for
    every certificate it holds (``FetchCertificates``, up to 4 MiB per answer)."""
    peer = ctx.peer
    digests = []
    while len(digests) < 16 and not ctx.stop.is_set():
        batch = Batch((os.urandom(100_000), os.urandom(100_000)))
        answer = await peer.request(WORKER, ctx.victim, batch)
        if isinstance(answer, messages.Ack):
            digests.append(batch.digest())
        else:
            await ctx.pace(0.2)  # over quota: the victim refuses until its bucket refills
    fetch = FetchCertificates(max(0, peer.highest_round - 45), 1000)
    await asyncio.gather(_flood(ctx, WORKER, *encoded(RequestBatches(tuple(digests)))),
                         _flood(ctx, PRIMARY, *encoded(fetch)))


async def fetcher_jam(ctx: AttackContext) -> None:
    """Finding 2: signed headers of ever higher rounds, each naming as many made-up parent
    certificates as the committee has authorities (more are refused before the signature
    is checked), sent to every honest node: each parks them and wants their parents."""
    peer = ctx.peer
    size = len(peer.committee.authorities)
    round_ = peer.highest_round + 1
    while await ctx.pace(0.02):
        if round_ > peer.highest_round + MAX_ROUNDS_AHEAD - 50:
            round_ = peer.highest_round + 1
        header = peer.header(round_, tuple(fake_digest() for _ in range(size)))
        await peer.broadcast(PRIMARY, header, timeout=2.0)
        round_ += 1


async def _own_header(ctx: AttackContext) -> messages.Header:
    """A valid header of ours the victim votes for (on the honest certificates we hold)."""
    peer = ctx.peer
    while True:
        round_ = peer.highest_round + 1
        parents = peer.parents_for(round_)
        if parents:
            header = peer.header(round_, parents)
            if isinstance(await peer.request(PRIMARY, ctx.victim, header), messages.Ack):
                return header
        await asyncio.sleep(0.1)


async def replayed_headers(ctx: AttackContext) -> None:
    """Finding 4: a header the victim already verified (ours, voted for), replayed ~2,500
    times a second, plus honest authors' headers replayed by us (not their sender)."""
    peer = ctx.peer
    ours = encoded(await _own_header(ctx))
    while await ctx.pace(0.01):
        newest = max(peer.headers, default=None)
        theirs = [encoded(h) for h in peer.headers.get(newest, {}).values()][:1]
        conn = await peer.connection(PRIMARY, ctx.victim)
        for tag, body in [ours] * 24 + theirs:
            conn.send_frame(FrameKind.REQUEST, _raw_id(), tag, body)
        await conn.wait_writable()


async def equivocation(ctx: AttackContext) -> None:
    """Each round, two valid headers of ours: one to the first two honest nodes, the other
    to the third; the first is certified (our vote and theirs) and broadcast; then each
    honest node is sent the header it did not get."""
    peer = ctx.peer
    done = 0
    first_half, second_half = ctx.honest[:2], ctx.honest[2:]
    while await ctx.pace(0.02):
        round_ = peer.highest_round + 1
        parents = peer.parents_for(round_)
        if round_ <= done or not parents or not peer.batches:
            continue
        done = round_
        a = peer.header(round_, parents)
        b = peer.header(round_, parents, payload=((next(reversed(peer.batches)), WORKER),))
        certified = peer.collect_votes(a)
        await asyncio.gather(peer.broadcast(PRIMARY, a, to=first_half),
                             peer.broadcast(PRIMARY, b, to=second_half))
        with contextlib.suppress(TimeoutError):
            certificate = await asyncio.wait_for(certified, 2.0)
            await peer.broadcast(PRIMARY, certificate)
        await asyncio.gather(peer.broadcast(PRIMARY, b, to=first_half),
                             peer.broadcast(PRIMARY, a, to=second_half))


async def unknown_votes(ctx: AttackContext) -> None:
    """Votes for headers the victim never proposed, votes with a bad signature for its
    real header, and votes in another voter's name, ~300 a second."""
    peer = ctx.peer
    other = ctx.honest[1]
    while await ctx.pace(0.01):
        newest = max(peer.headers, default=0)
        real = peer.headers.get(newest, {}).get(ctx.victim)
        unknown = peer.header(newest + 1, ())  # never sent: its digest is unknown
        votes = [attrs_evolve_vote(peer.vote(unknown), origin=ctx.victim)]
        if real is not None:
            votes.append(attrs_evolve_vote(peer.vote(real), signature=os.urandom(64)))
            votes.append(attrs_evolve_vote(peer.vote(real), author=other))
        conn = await peer.connection(PRIMARY, ctx.victim)
        for vote in votes:
            conn.send_frame(FrameKind.REQUEST, _raw_id(), *encoded(vote))


def attrs_evolve_vote(vote: Vote, **changes: Any) -> Vote:
    """``vote`` with fields changed; its signature still covers the old ones (forged)."""
    return attrs.evolve(vote, **changes)


def _votes_body(certificate: Certificate, votes: list[tuple[bytes, bytes]]) -> bytes:
    """The wire body of ``certificate`` with ``votes`` as they are: unsorted or repeated
    signers, which no encoder of ours would write."""
    header = cbor2.loads(messages.encode(certificate.header))
    return cbor2.dumps([header, [list(v) for v in votes]], canonical=True)


async def forged_certificates(ctx: AttackContext) -> None:
    """Certificates for our header and for honest headers with forged signatures, with too
    few signatures (ours only), and with one signer repeated (a body no encoder writes)."""
    peer = ctx.peer
    tag = messages.tag_of(Certificate)
    while await ctx.pace(0.02):
        round_ = peer.highest_round + 1
        ours = peer.header(round_, peer.parents_for(round_))
        own_vote = (peer.name, peer.vote(ours).signature)
        forged = [own_vote, *((a, os.urandom(64)) for a in ctx.honest)]
        newest = max(peer.headers, default=0)
        theirs = next(iter(peer.headers.get(newest, {}).values()), None)
        certificates = [peer.certificate(ours, dict(forged)), peer.certificate(ours, dict([own_vote]))]
        if theirs is not None:
            certificates.append(peer.certificate(theirs, {a: os.urandom(64) for a in ctx.honest}))
        conn = await peer.connection(PRIMARY, ctx.victim)
        for certificate in certificates:
            conn.send_frame(FrameKind.REQUEST, _raw_id(), *encoded(certificate))
        repeated = _votes_body(peer.certificate(ours, {}), [own_vote, own_vote, forged[1]])
        conn.send_frame(FrameKind.REQUEST, _raw_id(), tag, repeated)


async def rounds_far_ahead(ctx: AttackContext) -> None:
    """Headers and certificates more than ``MAX_ROUNDS_AHEAD`` rounds past the newest."""
    peer = ctx.peer
    while await ctx.pace(0.01):
        far = peer.highest_round + MAX_ROUNDS_AHEAD + 10
        header = peer.header(far, tuple(fake_digest() for _ in ctx.honest))
        certificate = peer.certificate(header, {a: os.urandom(64) for a in [peer.name, *ctx.honest]})
        conn = await peer.connection(PRIMARY, ctx.victim)
        for message in (header, certificate):
            conn.send_frame(FrameKind.REQUEST, _raw_id(), *encoded(message))


async def oversize_batches(ctx: AttackContext) -> None:
    """Batches over ``batch_size + max_transaction_size`` (but within a frame), and once a
    second a frame header declaring more than the frame limit (the link is closed)."""
    peer = ctx.peer
    limit = peer.parameters.batch_size + peer.parameters.max_transaction_size
    tx = os.urandom(peer.parameters.max_transaction_size)
    big = encoded(Batch((tx,) * (limit // len(tx) + 1)))
    ticks = 0
    while await ctx.pace(0.05):
        conn = await peer.connection(WORKER, ctx.victim, timeout=10.0)
        ticks += 1
        if ticks % 20 == 0:
            too_long = peer.parameters.max_frame_size + 1
            send_plaintext(conn, frame_header(FrameKind.REQUEST, _raw_id(), big[0], too_long))
            continue
        conn.send_frame(FrameKind.REQUEST, _raw_id(), *big)


async def replayed_frames(ctx: AttackContext) -> None:
    """Noise messages recorded and sent again (a stale nonce), on the primary and the
    worker link in turn: the victim must drop that connection, not misread it."""
    peer = ctx.peer
    for role in itertools.cycle((PRIMARY, WORKER)):
        if not await ctx.pace(0.5):
            return
        with contextlib.suppress(Exception):  # no link right now: the victim dropped it
            conn = await peer.connection(role, ctx.victim, timeout=5.0)
            sealed = send_plaintext(conn, encode_frame(FrameKind.PING, _raw_id(), 0, b""))
            assert conn._transport is not None
            conn._transport.write(sealed)
            await asyncio.wait_for(asyncio.shield(conn.closed), 5.0)


async def wrong_links(ctx: AttackContext) -> None:
    """Messages of one role on another role's link: worker messages (batches, a worker's
    reports to its own primary, a primary's orders to its workers) on the primary link,
    primary messages and primary-only orders on the worker link."""
    peer = ctx.peer
    on_primary = [Batch((b"x",)), RequestBatches((fake_digest(),)), OurBatch(fake_digest(), 0, 1),
                  OthersBatch(fake_digest(), 0, 1), Synchronize((fake_digest(),), ctx.victim),
                  Cleanup(10**6)]
    on_worker = [Synchronize((fake_digest(),), ctx.victim), Cleanup(10**6),
                 peer.header(1, ()), OurBatch(fake_digest(), 0, 1)]
    while await ctx.pace(0.02):
        for role, batch in ((PRIMARY, on_primary), (WORKER, on_worker)):
            conn = await peer.connection(role, ctx.victim)
            for message in batch:
                conn.send_frame(FrameKind.REQUEST, _raw_id(), *encoded(message))


async def batch_flood(ctx: AttackContext) -> None:
    """Finding 4: distinct valid batches (~100 KB) as fast as the victim answers, 8 in
    flight: over the storage quota they are refused ``OVERLOADED``."""
    peer = ctx.peer

    async def sender() -> None:
        while not ctx.stop.is_set():
            await peer.request(WORKER, ctx.victim, Batch((os.urandom(100_000),)))

    await asyncio.gather(*(sender() for _ in range(8)))


async def cloned_key(ctx: AttackContext) -> None:
    """A second holder of a validator's keys (the validator's own process keeps running):
    it dials every honest node with the same static keys, learns the newest certificates
    and proposes, each round, a header of its own, conflicting with the real one."""
    peer = ctx.peer
    await peer.start()
    try:
        done = 0
        for source in itertools.cycle(ctx.honest):
            if not await ctx.pace(0.05):
                return
            await peer.catch_up(source)
            round_ = peer.highest_round + 1
            parents = peer.parents_for(round_)
            if round_ <= done or not parents:
                continue
            done = round_
            batch = next(reversed(peer.batches)) if peer.batches else fake_digest()
            await peer.broadcast(PRIMARY, peer.header(round_, parents, ((batch, WORKER),)),
                                 timeout=2.0)
    finally:
        await peer.stop()


#: For a cluster whose authority 3 is a real node process (``cloned_key=True``).
CLONED_KEY = Attack("cloned_key", cloned_key,
                    "primary.counters.equivocation + peers[authority 3].reconnects",
                    total(primary_counter("equivocation"), peer_counter(PRIMARY, "reconnects")))

ATTACKS: dict[str, Attack] = {a.name: a for a in [
    Attack("amplification", amplification,
           "peers[byzantine].budget_throttles + read_pauses (worker-0, primary)",
           total(peer_counter(WORKER, "budget_throttles", "read_pauses"),
                 peer_counter(PRIMARY, "budget_throttles", "read_pauses")),
           rss_bound=64 * MiB),
    Attack("fetcher_jam", fetcher_jam, "primary.counters.header_parked",
           primary_counter("header_parked"), max_round_spread=2),
    Attack("replayed_headers", replayed_headers,
           "primary.counters.header_duplicate + header_wrong_sender",
           primary_counter("header_duplicate", "header_wrong_sender")),
    Attack("equivocation", equivocation, "primary.counters.equivocation",
           primary_counter("equivocation")),
    Attack("unknown_votes", unknown_votes,
           "primary.counters.vote_unexpected + vote_bad_signature + vote_wrong_sender",
           primary_counter("vote_unexpected", "vote_bad_signature", "vote_wrong_sender")),
    Attack("forged_certificates", forged_certificates,
           "primary.counters.certificate_bad_signature + certificate_insufficient_stake "
           "+ peers[byzantine].errors.rpc_malformed",
           total(primary_counter("certificate_bad_signature", "certificate_insufficient_stake"),
                 peer_counter(PRIMARY, errors=["rpc_malformed"]))),
    Attack("rounds_far_ahead", rounds_far_ahead,
           "primary.counters.header_too_far_ahead + certificate_too_far_ahead",
           primary_counter("header_too_far_ahead", "certificate_too_far_ahead")),
    Attack("oversize_batches", oversize_batches, "workers.0.errors.batch_too_large",
           worker_errors("batch_too_large")),
    Attack("replayed_frames", replayed_frames,
           "peers[byzantine].errors.connection (primary, worker-0)",
           total(peer_counter(PRIMARY, errors=["connection"]),
                 peer_counter(WORKER, errors=["connection"]))),
    Attack("wrong_links", wrong_links,
           "workers.0.errors.unauthorized + peers[byzantine].errors.rpc_unauthorized "
           "+ rpc_unknown_type (primary)",
           total(worker_errors("unauthorized"),
                 peer_counter(PRIMARY, errors=["rpc_unauthorized", "rpc_unknown_type"]))),
    Attack("batch_flood", batch_flood, "workers.0.errors.batch_quota_exceeded",
           worker_errors("batch_quota_exceeded")),
]}


def attack(name: str) -> Attack:
    return ATTACKS[name]
