"""CheckpointSync takes a checkpoint only when peers of f+1 stake sent it identical: one
lying peer cannot make a node resume from a made-up state, nor stall the search by naming
a far-future round; peers at different heights converge on one leader."""

from __future__ import annotations

import asyncio

import pytest

from narwhal.errors import ErrorCode, RequestRejected
from narwhal.messages import Checkpoint, CheckpointRequest
from narwhal.primary import state_sync
from narwhal.primary.state_sync import CheckpointSync

A, B, C = b"a" * 32, b"b" * 32, b"c" * 32


class FourEqual:
    """A committee of four with stake 1 each: f = 1, validity threshold 2."""

    def stake(self, name: bytes) -> int:
        return 1

    def validity_threshold(self) -> int:
        return 2


def checkpoint(round_: int, index: int | None = None) -> Checkpoint:
    return Checkpoint(round_, index if index is not None else 10 * round_, ((A, round_), (B, round_ - 1)))


class Peers:
    """Each peer's checkpoints by leader round; None: the peer does not answer."""

    def __init__(self, held: dict[bytes, list[Checkpoint] | None]) -> None:
        self.held = held
        self.asked: list[tuple[bytes, int]] = []

    async def request(self, peer: bytes, message: CheckpointRequest, timeout: float) -> Checkpoint:
        self.asked.append((peer, message.min_round))
        held = self.held[peer]
        if held is None:
            raise TimeoutError("silent")
        found = [c for c in held if c.leader_round >= message.min_round]
        if not found:
            raise RequestRejected(ErrorCode.NOT_FOUND, "none")
        return min(found, key=lambda c: c.leader_round)


@pytest.fixture(autouse=True)
def no_pause(monkeypatch):
    monkeypatch.setattr(state_sync, "CHECKPOINT_BACKOFF", state_sync.RetryConfig(
        initial_interval=0.001, max_interval=0.001, multiplier=1.0))


def sync(peers: Peers) -> CheckpointSync:
    return CheckpointSync(committee=FourEqual(), others=[A, B, C], request=peers.request)


async def test_two_honest_peers_outvote_a_liar():
    liar = Checkpoint(50, 1, ((A, 50),))  # a made-up state for a real round
    peers = Peers({A: [liar], B: [checkpoint(50)], C: [checkpoint(50)]})
    assert await sync(peers).agree(40) == checkpoint(50)


async def test_peers_at_different_heights_converge_on_one_leader():
    # B holds the checkpoints of leaders 42 and 44, C only from 44 on (it pruned 42
    # already), A is silent: the first answers differ; asked again from 44, they agree
    peers = Peers({A: None, B: [checkpoint(42), checkpoint(44)], C: [checkpoint(44), checkpoint(46)]})
    search = sync(peers)
    assert await search.agree(40) == checkpoint(44)
    assert search.asked == 2 and (B, 44) in peers.asked


async def test_a_far_future_round_from_one_liar_does_not_move_the_search():
    peers = Peers({A: [checkpoint(10**9)], B: [checkpoint(42), checkpoint(44)], C: [checkpoint(44)]})
    search = sync(peers)
    assert await search.agree(40) == checkpoint(44)
    assert search.asked == 3  # 40, then the liar's round (nobody else has it), then 44


async def test_one_peer_alone_is_never_enough():
    peers = Peers({A: [checkpoint(50)], B: None, C: None})
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(sync(peers).agree(40), 0.5)
    assert len(peers.asked) >= 6  # it kept asking everyone
