"""The ordered output read as a client reads it, for the crash and restart tests.

Why: reading each node's output *records* from its store and checking that they are
prefixes of one another passed while a restarted node's output had stopped for good
(issue 11): a record is not the output. A client gets the output through the
subscription, with every batch's transactions fetched from the node's workers, and a
prefix check also holds when one output stops growing. So these helpers subscribe to every
node from index 1, as ``python -m narwhal.client subscribe --from 1`` does, and check:

- **liveness**: every node serves every index from 1 up to the same target within a stated
  bound (:data:`OUTPUT_BOUND`);
- **agreement**: what they serve is identical (index, round, author, certificate,
  transactions), hence prefixes of one another *and* of equal length;
- **integrity**: no certificate is served twice;
- **no loss**: every transaction of every quorum-acknowledged batch (a batch stored at a
  quorum of workers, its author's among them: the only promise a worker makes) is served,
  with its bytes, by every node.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable

from narwhal.client import OutputItem, OutputSubscriber
from narwhal.node.files import LocalNetwork
from narwhal.testing.outputs import (
    SUBSCRIBE_RETRY,
    consensus_index,
    lost_transactions,
    output_violations,
    quorum_acknowledged_transactions,
    tagged_load,
)

__all__ = ["OUTPUT_BOUND", "SUBSCRIBE_RETRY", "assert_acknowledged_served",
           "assert_output_live_and_agreeing", "quorum_acknowledged_transactions",
           "served_outputs", "tagged_load"]

#: Seconds every node gets to serve its whole output, from index 1, once the test asks.
OUTPUT_BOUND = 30.0


def served_outputs(net: LocalNetwork, nodes: Iterable[int], upto: int,
                   bound: float = OUTPUT_BOUND, from_index: int = 1) -> dict[int, list[OutputItem]]:
    """What each node serves from index ``from_index`` through ``upto``, read at the same
    time, each for at most ``bound`` seconds (a node that stalls returns what it served)."""
    async def read(index: int) -> list[OutputItem]:
        authority = net.committee.authorities_sorted()[index]
        items: list[OutputItem] = []
        try:
            async with asyncio.timeout(bound):
                async for item in OutputSubscriber(net.committee, authority,
                                                   retry=SUBSCRIBE_RETRY).subscribe(from_index):
                    items.append(item)
                    if item[0] >= upto:
                        break
        except TimeoutError:
            pass
        return items

    async def read_all() -> dict[int, list[OutputItem]]:
        nodes_ = list(nodes)
        return dict(zip(nodes_, await asyncio.gather(*(read(i) for i in nodes_))))

    return asyncio.run(read_all())


def assert_output_live_and_agreeing(net: LocalNetwork, nodes: Iterable[int],
                                    bound: float = OUTPUT_BOUND,
                                    from_index: int = 1) -> dict[int, list[OutputItem]]:
    """Every node serves indexes ``from_index``..N within ``bound`` seconds, N being the
    highest consensus index any of them reported when asked, and they serve the same thing
    (``from_index`` > 1: a long-running cluster checked over the indexes of one phase)."""
    nodes = list(nodes)
    upto = max(consensus_index(net, i) for i in nodes)
    assert upto >= from_index, f"no node has committed index {from_index}"
    started = time.monotonic()
    served = served_outputs(net, nodes, upto, bound, from_index)
    assert output_violations(served, from_index) == []
    for i, items in served.items():
        reached = items[-1][0] if items else from_index - 1
        assert reached == upto, (f"node {i} served indexes {from_index}..{reached} of "
                                 f"{from_index}..{upto} within {bound:.0f}s "
                                 f"(others: {[len(s) for s in served.values()]})")
    print(f"every node served indexes {from_index}..{upto} in {time.monotonic() - started:.1f}s")
    return served


def assert_acknowledged_served(served: dict[int, list[OutputItem]], acknowledged: set[bytes]) -> None:
    """Every acknowledged transaction is in every node's served output, byte for byte."""
    assert acknowledged, "no quorum-acknowledged transactions: the test made no load"
    lost = {i: n for i, n in lost_transactions(served, acknowledged).items() if n}
    assert not lost, (f"nodes never served (node: count) {lost} of {len(acknowledged)} "
                      "quorum-acknowledged transactions")
