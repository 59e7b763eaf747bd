"""Equivocation evidence: the module alone, then a primary that a Byzantine author
equivocates to (real signatures, a real sqlite store restarted under it)."""

from __future__ import annotations

import asyncio
import logging
import os

import attrs
import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from narwhal.crypto import AuthorityKeys
from narwhal.messages import Certificate, Header, Vote
from narwhal.metrics import node_registry
from narwhal.primary.aggregators import signed_vote
from narwhal.primary.evidence import (
    FAMILY,
    HEADER,
    MAX_PER_AUTHOR,
    MAX_TOTAL,
    VOTE,
    Evidence,
    EvidenceError,
    EvidenceRecorder,
    verify,
)
from narwhal.store import Store

from .sim import MemoryStore
from .test_primary_logic import genesis_digests, signed_header

EVIDENCE_LOG = "narwhal.primary.evidence"


@pytest.fixture(scope="module")
def keys():
    return [AuthorityKeys.generate(1) for _ in range(4)]


@pytest.fixture
def committee(keys):
    from narwhal.config import Committee
    return Committee.local([k.public() for k in keys], 1)


def twin_headers(author, round_=3):
    parents = [os.urandom(32) for _ in range(3)]
    return (signed_header(author, round_, parents),
            signed_header(author, round_, parents, payload=[(os.urandom(32), 0)]))


def signed(keys, vote):
    return attrs.evolve(vote, signature=keys.signing.sign(vote.digest()))


def warnings_of(caplog):
    return [r for r in caplog.records if r.name == EVIDENCE_LOG and r.levelno == logging.WARNING]


# -- the module alone ------------------------------------------------------------------------


def test_a_pair_of_headers_is_one_record_whatever_the_order_and_round_trips(keys, committee):
    a, b = twin_headers(keys[1])
    one, other = Evidence.of_headers(a, b, now=5.0), Evidence.of_headers(b, a, now=5.0)
    assert one == other and one.key() == other.key()
    assert one.key() == keys[1].name + (3).to_bytes(8, "big") + b"\x01"
    assert Evidence.decode(one.key(), one.encode()) == one
    assert set(one.digests()) == {a.digest(), b.digest()}
    assert verify(one, committee)
    with pytest.raises(ValueError):
        Evidence.of_headers(a, a)  # the same header twice proves nothing
    with pytest.raises(ValueError):
        Evidence.of_headers(a, signed_header(keys[1], 4, []))


def test_verify_refuses_what_is_not_a_proof(keys, committee):
    a, b = twin_headers(keys[1])
    good = Evidence.of_headers(a, b)
    forged = attrs.evolve(b, signature=keys[2].signing.sign(b.digest()))  # signed by another
    assert not verify(Evidence.of_headers(a, forged), committee)
    outsider = AuthorityKeys.generate(1)
    assert not verify(Evidence.of_headers(*twin_headers(outsider)), committee)
    other_round = signed_header(keys[1], 4, [])
    mixed = attrs.evolve(good, second=Evidence.of_headers(other_round, attrs.evolve(
        other_round, payload=((b"\x01" * 32, 0),))).second)
    assert not verify(mixed, committee)  # two headers, but not of one round
    assert not verify(attrs.evolve(good, second=good.first), committee)
    assert not verify(attrs.evolve(good, first=b"garbage"), committee)
    with pytest.raises(EvidenceError):
        Evidence.decode(good.key(), b"\xff\x00")
    # the key names another author than the one who signed: decodes, proves nothing
    assert not verify(Evidence.decode(keys[2].name + good.key()[32:], good.encode()), committee)
    with pytest.raises(EvidenceError):  # the key's kind and the value's disagree
        Evidence.decode(good.key()[:40] + b"\x02", good.encode())


def test_conflicting_votes_are_evidence_against_the_voter(keys, committee):
    a, b = twin_headers(keys[1])
    va = signed(keys[2], Vote(a.digest(), 3, keys[1].name, keys[2].name, bytes(64)))
    vb = signed(keys[2], Vote(b.digest(), 3, keys[1].name, keys[2].name, bytes(64)))
    piece = Evidence.of_votes(va, vb)
    assert piece.kind == VOTE and piece.author == keys[2].name and piece.origin == keys[1].name
    assert set(piece.digests()) == {a.digest(), b.digest()} and verify(piece, committee)
    assert Evidence.decode(piece.key(), piece.encode()) == piece
    assert not verify(attrs.evolve(piece, author=keys[3].name), committee)
    with pytest.raises(ValueError):
        Evidence.of_votes(va, va)


async def test_each_piece_is_stored_and_logged_once(keys, caplog):
    caplog.set_level(logging.WARNING, EVIDENCE_LOG)
    store = MemoryStore()
    recorder = EvidenceRecorder(store)
    a, b = twin_headers(keys[1])
    c = signed_header(keys[1], 3, [], payload=[(b"\x05" * 32, 0)])  # a third header
    assert await recorder.headers(a, b)
    assert not await recorder.headers(b, a) and not await recorder.headers(a, c)
    assert len(store.families[FAMILY]) == 1 and len(warnings_of(caplog)) == 1
    assert recorder.known(keys[1].name, 3, HEADER) and not recorder.known(keys[1].name, 4)
    status = recorder.status()
    assert status["stored"] == 1 and status["detected"] == 1
    assert status["by_author"] == {keys[1].name.hex(): 1}
    assert status["latest"][0]["round"] == 3


async def test_caps_per_author_and_in_total(keys, caplog):
    """Stated bounds: at most ``per_author`` pieces of one equivocator, ``total`` in all;
    the first ones are kept, the others counted (and logged once each)."""
    assert MAX_PER_AUTHOR == 16 and MAX_TOTAL == 1_024  # the bounds docs/security.md states
    caplog.set_level(logging.WARNING, EVIDENCE_LOG)
    store = MemoryStore()
    recorder = EvidenceRecorder(store, per_author=3, total=5)
    for round_ in range(1, 6):
        await recorder.headers(*twin_headers(keys[1], round_))
    assert recorder.by_author[keys[1].name] == 3 and recorder.not_stored == 2
    assert sorted(int.from_bytes(k[32:40], "big") for k in store.families[FAMILY]) == [1, 2, 3]
    for round_ in range(1, 4):
        await recorder.headers(*twin_headers(keys[2], round_))
    assert len(store.families[FAMILY]) == 5 and recorder.by_author[keys[2].name] == 2
    assert recorder.not_stored == 3 and recorder.detected == 8
    await recorder.headers(*twin_headers(keys[1], 5))  # refused before: not logged again
    assert recorder.detected == 8 and len(warnings_of(caplog)) == 8
    recorder.garbage_collect(4)
    assert recorder.known(keys[1].name, 5) and not recorder.known(keys[1].name, 4)


async def test_evidence_survives_a_restart_of_the_store(keys, committee, tmp_path):
    a, b = twin_headers(keys[1], 7)
    async with Store.open(tmp_path / "p.db", synchronous="NORMAL") as store:
        assert await EvidenceRecorder(store).headers(a, b)
    async with Store.open(tmp_path / "p.db", synchronous="NORMAL") as store:
        recorder = EvidenceRecorder(store)
        recorder.load()
        assert recorder.known(keys[1].name, 7) and recorder.by_author == {keys[1].name: 1}
        assert not await recorder.headers(b, a) and recorder.detected == 0
        [(key, value)] = store.items(FAMILY)
        assert verify(Evidence.decode(key, value), committee)
        assert recorder.status()["latest"][0]["digests"] == sorted(
            [a.digest().hex(), b.digest().hex()])


# -- a primary that a Byzantine author equivocates to ------------------------------------------


def evidence_metrics(node) -> dict:
    text = generate_latest(node_registry(lambda: {"primary": node.status()})).decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for f in text_string_to_metric_families(text) for s in f.samples
            if "equivocation" in s.name}


async def test_two_signed_headers_for_one_round_make_one_record_that_survives_a_restart(
        sim, tmp_path, caplog):
    caplog.set_level(logging.WARNING, EVIDENCE_LOG)
    victim_keys, byzantine = sim.keys[0], sim.keys[1]
    store = Store.open(tmp_path / "primary.db", synchronous="NORMAL")
    victim = sim.nodes[victim_keys.name] = sim._make(victim_keys, store)
    node = victim.node
    node.restore()
    first = signed_header(byzantine, 1, genesis_digests(sim))
    second = signed_header(byzantine, 1, genesis_digests(sim), payload=[(b"\x07" * 32, 0)])
    await node.core.batch_available(b"\x07" * 32, 0)
    await node.on_header(byzantine.name, first)  # voted for
    for _ in range(3):  # the second, sent again and again
        await node.on_header(byzantine.name, second)
    assert node.core.counters["votes_cast"] == 1 and node.core.counters["equivocation"] == 3
    [(key, value)] = store.items(FAMILY)
    piece = Evidence.decode(key, value)
    assert (piece.kind, piece.author, piece.round) == (HEADER, byzantine.name, 1)
    assert set(piece.digests()) == {first.digest(), second.digest()}
    assert verify(piece, sim.committee) and len(warnings_of(caplog)) == 1
    status = node.status()["evidence"]
    assert status["stored"] == 1 and status["by_author"] == {byzantine.name.hex(): 1}
    assert status["latest"][0]["digests"] == sorted([first.digest().hex(), second.digest().hex()])
    metrics = evidence_metrics(node)
    assert metrics[("narwhal_equivocation_evidence", (("author", byzantine.name.hex()),))] == 1
    assert metrics[("narwhal_equivocation_detected_total", ())] == 1

    await store.close()  # the victim restarts: memory lost, the store reopened
    store = Store.open(tmp_path / "primary.db", synchronous="NORMAL")
    try:
        victim = sim.nodes[victim_keys.name] = sim._make(victim_keys, store)
        node = victim.node
        node.restore()
        assert node.status()["evidence"]["by_author"] == {byzantine.name.hex(): 1}
        assert evidence_metrics(node)[
            ("narwhal_equivocation_evidence", (("author", byzantine.name.hex()),))] == 1
        await node.on_header(byzantine.name, second)  # still refused, not recorded again
        assert node.core.counters["votes_cast"] == 0 and node.core.counters["equivocation"] == 1
        assert len(store.items(FAMILY)) == 1 and len(warnings_of(caplog)) == 1
        assert node.status()["evidence"]["detected"] == 0
    finally:
        await store.close()


async def test_a_conflicting_parked_header_is_reported_once_not_at_every_retry(sim, caplog):
    """Before: a parked header conflicting with one voted for stayed parked and was
    counted and logged again at every retry of the parked headers."""
    caplog.set_level(logging.WARNING, EVIDENCE_LOG)
    node = sim.nodes[sim.names[0]].node
    byzantine = sim.keys[1]
    waiting = signed_header(byzantine, 1, genesis_digests(sim), payload=[(b"\x01" * 32, 0)])
    complete = signed_header(byzantine, 1, genesis_digests(sim))
    await node.on_header(byzantine.name, waiting)  # parked: its batch is missing
    await node.on_header(byzantine.name, complete)  # voted for
    for tag in range(1, 5):  # batches arrive: each retries the parked headers
        await node.core.batch_available(bytes([tag]) * 32, 0)
    assert node.core.counters["equivocation"] == 1 and node.core.counters["votes_cast"] == 1
    assert len(warnings_of(caplog)) == 1 and len(node.core._parked_headers) == 0
    [(key, value)] = sim.nodes[sim.names[0]].store.items(FAMILY)
    assert set(Evidence.decode(key, value).digests()) == {waiting.digest(), complete.digest()}


async def test_two_headers_parked_for_one_round_are_evidence(sim):
    node = sim.nodes[sim.names[0]].node
    byzantine = sim.keys[1]
    parents = [os.urandom(32) for _ in range(3)]  # unknown: both would be parked
    await node.on_header(byzantine.name, signed_header(byzantine, 2, parents))
    await node.on_header(byzantine.name, signed_header(byzantine, 2, parents[:2]))
    assert node.status()["evidence"]["by_author"] == {byzantine.name.hex(): 1}


async def test_a_voter_signing_two_votes_for_our_round_is_evidence(sim):
    me = sim.keys[0]
    node = sim.nodes[me.name].node
    ours = signed_header(me, 1, genesis_digests(sim))
    await node.core.propose(ours)
    await sim.run_until(lambda: node.core.counters["certificates_formed"] == 1)
    voter = next(k for k in sim.keys[1:] if node.core._current.vote_of(k.name) is not None)
    other = signed_header(me, 1, [])  # a header of ours we never made: signed by the voter
    twin = signed(voter, Vote(other.digest(), 1, me.name, voter.name, bytes(64)))
    with pytest.raises(Exception, match="second vote"):
        await node.on_vote(voter.name, twin)
    bad = attrs.evolve(twin, header_digest=os.urandom(32))  # its signature does not match
    with pytest.raises(Exception, match="did not send"):
        await node.on_vote(voter.name, bad)
    [(key, value)] = sim.nodes[me.name].store.items(FAMILY)
    piece = Evidence.decode(key, value)
    assert (piece.kind, piece.author, piece.origin) == (VOTE, voter.name, me.name)
    assert verify(piece, sim.committee) and node.core.counters["vote_equivocation"] == 1


async def test_two_certificates_for_one_round_are_evidence_against_author_and_voters(sim):
    node = sim.nodes[sim.names[0]].node
    byzantine = sim.keys[1]
    voters = sim.keys[1:]  # a quorum (3 of 4) signing both headers
    a, b = (signed_header(byzantine, 1, genesis_digests(sim), payload=p)
            for p in ((), [(b"\x03" * 32, 0)]))

    def certificate(header: Header) -> Certificate:
        return Certificate(header, tuple(sorted(
            (k.name, k.signing.sign(signed_vote(header, k.name, bytes(64)).digest()))
            for k in voters)))

    await node.on_certificate(byzantine.name, certificate(a))
    await node.on_certificate(sim.names[2], certificate(b))
    await asyncio.sleep(0)
    pieces = [Evidence.decode(k, v) for k, v in sim.nodes[sim.names[0]].store.items(FAMILY)]
    assert sorted((p.kind, p.author) for p in pieces) == sorted(
        [(HEADER, byzantine.name)] + [(VOTE, k.name) for k in voters])
    assert all(verify(p, sim.committee) for p in pieces)
    assert node.core.counters["certificate_conflict"] == 1
