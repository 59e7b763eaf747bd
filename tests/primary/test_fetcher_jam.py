"""Issue 12, finding 2: a Byzantine validator must not be able to jam the certificate
fetcher of an honest one.

The attack, in the simulator (real PrimaryNodes, in-memory network): the Byzantine
authority sends the victim headers naming many made-up parent certificates (validly
signed, so they pass every check but the parents'), then goes silent. One certificate
for the victim is lost on the way, so the victim must fetch it. Before the fix the
made-up digests filled the wanted set for ever and the fetcher kept asking the silent
attacker first; the victim stayed behind while the others went on.
"""

from __future__ import annotations

import os

import attrs
import pytest

from narwhal.errors import RequestRejected
from narwhal.messages import Certificate, Header

from .sim import Simulation


def signed_header(keys, round_, parents):
    unsigned = Header(keys.name, round_, (), tuple(sorted(parents)), (), bytes(64))
    return attrs.evolve(unsigned, signature=keys.signing.sign(unsigned.digest()))


@pytest.mark.parametrize("headers, fake_parents", [
    (20, 1_000),  # the attack: refused at once (more parents than authorities)
    (250, 4),  # within the parent limit: 1,000 made-up wants, asked of a silent attacker first
])
async def test_made_up_parents_from_a_silent_byzantine_peer_do_not_stall_an_honest_node(
        headers, fake_parents):
    sim = Simulation(4)
    victim, byzantine = sim.names[0], sim.keys[3]
    lost: list[bytes] = []

    def drop(sender, receiver, message):  # one certificate never reaches the victim
        if (receiver == victim and isinstance(message, Certificate) and not lost
                and message.header.round == 6 and message.header.author == sim.names[1]):
            lost.append(message.digest())
            return True
        return False

    sim.drop = drop  # before the start: a loaded machine may pass round 6 while we flood
    try:
        sim.start()
        node = sim.nodes[victim].node
        for round_ in range(2, 2 + headers):
            header = signed_header(byzantine, round_, [os.urandom(32) for _ in range(fake_parents)])
            if fake_parents > len(sim.names):
                with pytest.raises(RequestRejected):
                    await node.on_header(byzantine.name, header)
            else:  # parked, its made-up parents wanted from the attacker first
                await node.on_header(byzantine.name, header)
        if fake_parents <= len(sim.names):
            assert node.fetcher.wanted >= headers * fake_parents
        await sim.run_until(lambda: lost, timeout=30)
        sim.down.add(byzantine.name)  # the attacker goes silent; the other three go on
        honest = [n for n in sim.names if n != byzantine.name]
        others = [n for n in honest if n != victim]
        start = max(sim.nodes[n].node.core.dag.highest_round for n in others)
        await sim.run_until(lambda: min(sim.nodes[n].node.core.dag.highest_round
                                        for n in others) >= start + 30, timeout=60)
        await sim.run_until(lambda: node.core.dag.highest_round >= max(
            sim.nodes[n].node.core.dag.highest_round for n in others) - 2, timeout=10)
        assert lost[0] in node.core.dag or node.core.gc_round >= 6
        # made-up wants go with the GC horizon; at most the attacker's share meanwhile
        assert node.fetcher.wanted <= node.fetcher.share
    finally:
        await sim.stop()


async def test_wants_are_shared_per_source_and_dropped_at_the_gc_horizon():
    from narwhal.primary.fetcher import CertificateFetcher

    async def never(source, request, timeout):
        raise TimeoutError("silent")

    async def deliver(certificate, source):
        raise AssertionError("nothing can arrive")

    fetcher = CertificateFetcher(others=[b"x" * 32, b"y" * 32, b"z" * 32], request=never,
                                 deliver=deliver, have=lambda digest: False)
    try:
        fetcher.fetch([os.urandom(32) for _ in range(fetcher.share + 10)], b"x" * 32, 5)
        assert fetcher.wanted == fetcher.share and fetcher.refused == 10  # x's share is full
        fetcher.fetch([os.urandom(32)], b"y" * 32, 9)  # ...which does not touch y's
        assert fetcher.wanted == fetcher.share + 1
        fetcher.garbage_collect(5)
        assert fetcher.wanted == 1  # round 5 is gone; y's round-9 want stays
        fetcher.fetch([os.urandom(32)], b"x" * 32, 4)  # below the horizon: not wanted
        assert fetcher.wanted == 1
    finally:
        await fetcher.close()
