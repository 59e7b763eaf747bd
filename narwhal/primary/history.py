"""Retention of a primary's history: what is older than ``retain_seconds`` leaves the disk.

A primary writes, for every round, its votes and the headers it voted for, every
certificate (and its round index), a payload record per batch, and one output record per
committed certificate. Nothing needs them for ever: the core and consensus forget rounds
below the GC horizon within seconds; peers catching up ask for recent rounds; subscribers
replay the retained output. Kept for ever they grew without bound and made every restart
slower. So the history is kept for ``retain_seconds`` (the same window workers keep
batches for: :mod:`narwhal.worker.retention`), then deleted.

How the age of a round is known: at each GC the node calls :meth:`note` with the GC round
and the consensus index; a *mark* ``(time, gc round, index)`` is kept every
:data:`MARK_INTERVAL` seconds, persisted (``meta`` / ``b"retention_marks"``) so that a
restart does not restart the clock. Every :data:`PRUNE_INTERVAL` seconds, the newest mark
older than ``retain_seconds`` says what goes: rounds up to its GC round (certificates, their
round index and payload records, votes and the headers voted for, re-proposal records) and
output indexes below its index.

Off the event loop: which rows to delete is read on a reader thread
(:class:`narwhal.serving_reads.ServingReads`), and the deletions are writes on the store's
writer thread, at most :data:`MAX_ROWS_PER_PASS` certificates per pass.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from typing import Any

import cbor2

from narwhal import messages
from narwhal.consensus.records import CHECKPOINT_PREFIX  # checkpoints go with their rounds
from narwhal.messages import Certificate

__all__ = ["MARK_INTERVAL", "MAX_ROWS_PER_PASS", "PRUNE_INTERVAL", "HistoryRetention"]

log = logging.getLogger(__name__)

#: Seconds between two persisted marks (the precision of "older than retain_seconds").
MARK_INTERVAL = 10.0
#: Seconds between two pruning passes.
PRUNE_INTERVAL = 10.0
#: Certificates deleted per pass at most (a backlog goes over several passes).
MAX_ROWS_PER_PASS = 5_000
MARKS_KEY = b"retention_marks"

Op = tuple[str, bytes, bytes | None]


class HistoryRetention:
    def __init__(self, store: Any, *, retain_seconds: float, authorities: Iterable[bytes],
                 clock: Callable[[], float] = time.time) -> None:
        self._store = store
        self.retain_seconds = retain_seconds
        self._authorities = sorted(authorities)
        self._clock = clock
        blob = store.get("meta", MARKS_KEY)
        #: ``[time, gc round, consensus index]``, oldest first.
        self.marks: list[list[float]] = cbor2.loads(blob) if blob else []
        #: What went so far: rounds up to ``pruned_round``, indexes below ``pruned_index``.
        self.pruned_round = self.pruned_index = 0
        #: Rows deleted so far, by family.
        self.deleted = {"certificates": 0, "votes": 0, "headers": 0, "payload": 0, "output": 0}

    async def note(self, gc_round: int, consensus_index: int) -> None:
        """The node garbage-collected up to ``gc_round`` with ``consensus_index`` commits."""
        now = self._clock()
        if self.marks and now - self.marks[-1][0] < MARK_INTERVAL:
            return
        self.marks.append([now, gc_round, consensus_index])
        await self._save_marks()

    async def _save_marks(self) -> None:
        await self._store.write([("meta", MARKS_KEY, cbor2.dumps(self.marks))])

    async def prune(self, read_off_loop: Callable[[Callable[[Any], tuple[list[Op], bool]]], Any]) -> None:
        """One pass: delete what the newest mark older than ``retain_seconds`` allows.
        ``read_off_loop(f)`` runs ``f(reader)`` on a reader thread and returns its result."""
        cutoff = self._clock() - self.retain_seconds
        due = [m for m in self.marks if m[0] <= cutoff]
        if not due:
            return
        _, gc_round, index = due[-1]
        round_, index = int(gc_round), int(index)
        ops, complete = await read_off_loop(lambda reader: self._deletions(reader, round_, index))
        if ops:
            await self._store.write(ops)
        for family in self.deleted:
            self.deleted[family] += sum(1 for f, _, _ in ops if f == family)
        if complete:  # everything up to that mark is gone: its older marks too
            self.pruned_round, self.pruned_index = round_, index
            self.marks = [m for m in self.marks if m[0] > cutoff] or [due[-1]]
            await self._save_marks()
        if ops:
            log.info("retention: deleted %d ops of history up to round %d and index %d%s",
                     len(ops), round_, index, "" if complete else " (more to go)")

    def _deletions(self, reader: Any, up_to: int, below_index: int) -> tuple[list[Op], bool]:
        """Reader thread: delete ops for rounds <= ``up_to`` and output indexes below
        ``below_index``, at most MAX_ROWS_PER_PASS certificates and output records (and the
        votes of the rounds those certificates cover); True when nothing is left after."""
        end_round = up_to + 1
        rows = reader.items("certificates_by_round", end=end_round.to_bytes(8, "big"),
                            limit=MAX_ROWS_PER_PASS)
        complete = len(rows) < MAX_ROWS_PER_PASS
        if not complete:  # a backlog: this chunk's rounds only (its last one may be partial)
            end_round = int.from_bytes(rows[-1][0][:8], "big")
            rows = [row for row in rows if int.from_bytes(row[0][:8], "big") < end_round]
        end = end_round.to_bytes(8, "big")
        ops: list[Op] = []
        for (key, digest), blob in zip(rows, reader.get_many("certificates", [d for _, d in rows]),
                                       strict=True):
            ops += [("certificates_by_round", key, None), ("certificates", digest, None)]
            if blob is not None:
                header = messages.decode_as(Certificate, blob).header
                ops += [("payload", d + w.to_bytes(4, "big"), None) for d, w in header.payload]
        for author in self._authorities:
            for key, header_digest in reader.items("votes", start=author, end=author + end):
                ops += [("votes", key, None), ("headers", header_digest, None)]
        ops += [("reproposed", key, None) for key in reader.keys("reproposed", end=end)]
        ops += [("consensus", key, None) for key in reader.keys(
            "consensus", start=CHECKPOINT_PREFIX, end=CHECKPOINT_PREFIX + end)]
        outputs = reader.keys("output", end=below_index.to_bytes(8, "big"), limit=MAX_ROWS_PER_PASS)
        ops += [("output", key, None) for key in outputs]
        return ops, complete and len(outputs) < MAX_ROWS_PER_PASS

    def status(self) -> dict[str, Any]:
        oldest = self.marks[0][0] if self.marks else None
        return {"retain_seconds": self.retain_seconds, "pruned_round": self.pruned_round,
                "pruned_index": self.pruned_index, "deleted": dict(self.deleted),
                "oldest_mark_age_s": None if oldest is None else round(self._clock() - oldest, 1)}
