"""When each batch was created and first committed, read from the nodes' logs.

A worker logs ``Created batch <digest> txs=N`` when it seals a batch and a primary logs
``Committed batch <digest>`` when consensus orders it. The time between the two is the
batch's *consensus latency*, what the Narwhal paper and the reference implementations'
benchmarks report. ``bench/local.py`` measures it for a whole run; ``bench/chaos.py``
measures it per phase and per author, to see whether a faulty validator slows the others.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterable
from pathlib import Path

import attrs

__all__ = ["BatchTimes", "read_batch_logs", "read_each"]

LINE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) .*?(Created batch|Committed batch) "
                  r"([0-9a-f]{64})(?: txs=(\d+))?")


@attrs.define
class BatchTimes:
    """Wall-clock seconds: batch -> when it was created, batch -> its first commit (at any
    node read), batch -> its transactions."""

    created: dict[str, float] = attrs.field(factory=dict)
    committed: dict[str, float] = attrs.field(factory=dict)
    counts: dict[str, int] = attrs.field(factory=dict)

    def latencies(self, start: float, end: float, authors: Iterable[str] | None = None) -> list[float]:
        """Consensus latency (seconds) of the committed batches created in [start, end],
        of ``authors``' batches only if given (digests, see :func:`read_batch_logs`)."""
        among = self.created if authors is None else {d: self.created[d] for d in authors}
        return [self.committed[d] - t for d, t in among.items()
                if start <= t <= end and d in self.committed]


def read_each(paths: Iterable[Path]) -> tuple[list[set[str]], BatchTimes]:
    """(the batches each log's node created, every log's times merged)."""
    times, created_by = BatchTimes(), []
    for path in paths:
        one = read_batch_logs([path])
        created_by.append(set(one.created))
        for table, theirs in ((times.created, one.created), (times.committed, one.committed)):
            for digest, stamp in theirs.items():
                table[digest] = min(stamp, table.get(digest, stamp))
        times.counts.update(one.counts)
    return created_by, times


def read_batch_logs(paths: Iterable[Path], into: BatchTimes | None = None) -> BatchTimes:
    """The batch lines of the logs at ``paths``, read line by line (logs of long runs are
    large), merged into ``into`` (the earliest time of each batch wins)."""
    times = BatchTimes() if into is None else into
    for path in paths:
        with path.open(errors="replace") as lines:
            for line in lines:
                match = LINE.match(line)
                if not match:
                    continue
                stamp = dt.datetime.strptime(match[1], "%Y-%m-%d %H:%M:%S,%f").timestamp()
                table = times.created if match[2] == "Created batch" else times.committed
                digest = match[3]
                table[digest] = min(stamp, table.get(digest, stamp))
                if match[4]:
                    times.counts[digest] = int(match[4])
    return times
