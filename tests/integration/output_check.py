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
from pathlib import Path

from narwhal import messages
from narwhal.client import OutputItem, OutputSubscriber
from narwhal.net.retry import RetryConfig
from narwhal.node.files import LocalNetwork
from narwhal.node.status import read_status
from narwhal.store import Store

#: Seconds every node gets to serve its whole output, from index 1, once the test asks.
OUTPUT_BOUND = 30.0
#: Reconnect quickly: a subscriber is also how the test sees a node come back.
SUBSCRIBE_RETRY = RetryConfig(initial_interval=0.1, max_interval=1.0)


def consensus_index(net: LocalNetwork, index: int) -> int:
    status = read_status(net.node_dir(index) / "status.json") or {}
    return int((status.get("primary") or {}).get("consensus_index", 0))


def served_outputs(net: LocalNetwork, nodes: Iterable[int], upto: int,
                   bound: float = OUTPUT_BOUND) -> dict[int, list[OutputItem]]:
    """What each node serves from index 1 through ``upto``, read at the same time, each
    for at most ``bound`` seconds (a node that stalls returns what it served)."""
    async def read(index: int) -> list[OutputItem]:
        authority = net.committee.authorities_sorted()[index]
        items: list[OutputItem] = []
        try:
            async with asyncio.timeout(bound):
                async for item in OutputSubscriber(net.committee, authority,
                                                   retry=SUBSCRIBE_RETRY).subscribe(1):
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
                                    bound: float = OUTPUT_BOUND) -> dict[int, list[OutputItem]]:
    """Every node serves indexes 1..N within ``bound`` seconds, N being the highest
    consensus index any of them reported when asked, and they serve the same thing."""
    nodes = list(nodes)
    upto = max(consensus_index(net, i) for i in nodes)
    assert upto > 0, "no node has committed anything"
    started = time.monotonic()
    served = served_outputs(net, nodes, upto, bound)
    for i, items in served.items():
        reached = items[-1][0] if items else 0
        assert [item[0] for item in items] == list(range(1, reached + 1)), f"node {i}: gap"
        assert reached == upto, (f"node {i} served indexes 1..{reached} of 1..{upto} within "
                                 f"{bound:.0f}s (others: {[len(s) for s in served.values()]})")
    first = served[nodes[0]]
    for i, items in served.items():
        assert items == first, f"node {i} serves a different output than node {nodes[0]}"
    certificates = [item[3] for item in first]
    assert len(certificates) == len(set(certificates)), "a certificate was served twice"
    print(f"every node served indexes 1..{upto} in {time.monotonic() - started:.1f}s")
    return served


def tagged_load(directory: Path, index: int, count: int, size: int = 64) -> Path:
    """A file of ``count`` distinct transactions for node ``index``'s worker, each naming
    that node (``node-<index>/<n>``): who made a batch is then read off its transactions."""
    path = directory / f"load-{index}.txt"
    with open(path, "wb") as out:
        out.writelines(b"node-%d/%012d/" % (index, n) + b"x" * (size - 27) + b"\n" for n in range(count))
    return path


def author_of(batch: messages.Batch) -> int:
    """The node whose worker made ``batch`` of :func:`tagged_load` transactions."""
    return int(batch.transactions[0].split(b"/", 1)[0].removeprefix(b"node-"))


def quorum_acknowledged_transactions(net: LocalNetwork, nodes: Iterable[int]) -> set[bytes]:
    """The transactions of every batch a quorum of workers stored, its author's worker among
    them (read after the nodes stopped: a store is opened by one process at a time).

    Why the author: it stores its own batch while the batch is already on its way to the
    others, and counts its quorum (and acknowledges it to its primary) only once its own
    copy is durable. Killed in between, it made no promise — yet the others may hold it."""
    holders: dict[bytes, set[int]] = {}
    batches: dict[bytes, messages.Batch] = {}
    tag = messages.tag_of(messages.Batch)
    for i in nodes:
        store = Store.open(net.node_dir(i) / "worker-0.db")
        try:
            for digest, body in store.items("batches"):
                holders.setdefault(digest, set()).add(i)
                if digest not in batches:
                    batches[digest] = messages.decode(tag, body)
        finally:
            asyncio.run(store.close())
    quorum = net.committee.quorum_threshold()
    return {tx for digest, held in holders.items()
            if len(held) >= quorum and author_of(batches[digest]) in held
            for tx in batches[digest].transactions}


def assert_acknowledged_served(served: dict[int, list[OutputItem]], acknowledged: set[bytes]) -> None:
    """Every acknowledged transaction is in every node's served output, byte for byte."""
    assert acknowledged, "no quorum-acknowledged transactions: the test made no load"
    for i, items in served.items():
        output = {tx for item in items for tx in item[4]}
        lost = acknowledged - output
        assert not lost, (f"node {i} never served {len(lost)} of {len(acknowledged)} "
                          "quorum-acknowledged transactions")
