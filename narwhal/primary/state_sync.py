"""State transfer: how a node away longer than its peers keep history starts again.

Retention (:mod:`narwhal.primary.history`) deletes rounds older than ``retain_seconds``.
A node that comes back after longer than that finds every peer's ``FetchCertificates``
page starting past a gap (:class:`~narwhal.primary.fetcher.CertificateFetcher` sees it):
the certificates it would need to walk forward from its own DAG are gone everywhere.

What it needs instead is where consensus stood at some recent point, so that it can run
consensus forward from there over certificates the peers still hold: a
:class:`~narwhal.messages.Checkpoint`, the consensus state right after committing one
leader (its output index, and the highest committed round per authority). Every node
stores one per committed leader (``PrimaryNode._record_commits``); every honest node that
committed a leader holds the same one, because the committed leaders and their sub-DAGs
are the same everywhere.

A checkpoint is not signed, so one peer's word is not enough: :class:`CheckpointSync` asks
every peer and takes a checkpoint only when peers of at least f+1 stake (the validity
threshold: at least one honest among them) sent it identical. Peers at different heights
may name different leaders at first (each answers its *earliest* checkpoint at or above
the round asked); the rounds named are then asked again, highest first: from the highest
honest one, every honest peer that committed it names the same leader.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from narwhal.errors import NarwhalError
from narwhal.messages import Checkpoint, CheckpointRequest
from narwhal.net.retry import Backoff, RetryConfig
from narwhal.ports import LOOP_CLOCK, Clock

__all__ = ["CheckpointSync"]

log = logging.getLogger(__name__)

CHECKPOINT_TIMEOUT = 2.0
CHECKPOINT_BACKOFF = RetryConfig(initial_interval=0.2, max_interval=5.0, multiplier=2.0)


class CheckpointSync:
    """Finds a checkpoint peers of f+1 stake agree on (see the module docstring)."""

    def __init__(self, *, committee: Any, others: list[bytes],
                 request: Callable[[bytes, Any, float], Awaitable[Any]],
                 clock: Clock = LOOP_CLOCK) -> None:
        self._committee = committee
        self._others = others
        self._request = request
        self._clock = clock
        #: Questions asked so far (each one to every peer).
        self.asked = 0

    async def agree(self, min_round: int) -> Checkpoint:
        """A checkpoint of a leader round >= ``min_round`` that f+1 stake sent identical;
        asks again (after a pause) until there is one."""
        backoff = Backoff(CHECKPOINT_BACKOFF)
        while True:
            answers = await self._ask_all(min_round)
            agreed = self._agreed(answers, min_round)
            # Peers answer their *earliest* checkpoint at or above the round asked, so they
            # may name different leaders (one pruned the one another still has). Ask again
            # from each higher round named, highest first: from the highest honest one,
            # every honest peer names the same leader. A liar's made-up far-future round
            # costs one question (honest peers answer NOT_FOUND), then the next is asked.
            for round_ in sorted({a.leader_round for a in answers if a is not None
                                  and a.leader_round > min_round}, reverse=True):
                if agreed is not None:
                    break
                agreed = self._agreed(await self._ask_all(round_), round_)
            if agreed is not None:
                return agreed
            log.info("no checkpoint at or above round %d is held by peers of f+1 stake yet "
                     "(%d answers); asking again", min_round, sum(a is not None for a in answers))
            await backoff.pause(self._clock.sleep)

    async def _ask_all(self, min_round: int) -> list[Checkpoint | None]:
        self.asked += 1
        return list(await asyncio.gather(*(self._ask(peer, min_round) for peer in self._others)))

    def _agreed(self, answers: list[Checkpoint | None], min_round: int) -> Checkpoint | None:
        """The checkpoint (of a round >= ``min_round``) that peers of f+1 stake sent."""
        stake_of: dict[Checkpoint, int] = {}
        for peer, checkpoint in zip(self._others, answers, strict=True):
            if checkpoint is not None and checkpoint.leader_round >= min_round:
                stake_of[checkpoint] = stake_of.get(checkpoint, 0) + self._committee.stake(peer)
        agreed = [c for c, stake in stake_of.items() if stake >= self._committee.validity_threshold()]
        return min(agreed, key=lambda c: c.leader_round) if agreed else None

    async def _ask(self, peer: bytes, min_round: int) -> Checkpoint | None:
        try:
            answer = await self._request(peer, CheckpointRequest(min_round), CHECKPOINT_TIMEOUT)
        except (NarwhalError, OSError, TimeoutError) as exc:
            log.debug("checkpoint request to %s failed: %r", peer.hex()[:8], exc)
            return None
        return answer if isinstance(answer, Checkpoint) else None
