"""What clients are served, checked for safety; the load whose loss is checked.

Why from the client's side: a node's stored output records can look right while what it
serves has stopped (issue 11). So the checks here take the items an
:class:`~narwhal.client.OutputSubscriber` yielded from index 1 on each node and find:

- **gaps or repeats**: one node's indexes are not 1, 2, 3, ... (contiguous);
- **disagreement**: two nodes served something different at one index (the outputs must be
  prefixes of one another; only their lengths may differ);
- **a certificate served twice** (at two indexes);
- **lost acknowledged transactions**: a transaction of a batch a quorum of workers stored,
  its author's among them (the only promise a worker makes), that a node never served.

The tagged load (:func:`tagged_load`) makes every transaction distinct and names the node
whose worker took it, so the author of a stored batch is read off its transactions.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from narwhal import messages
from narwhal.client import OutputItem
from narwhal.net.retry import RetryConfig
from narwhal.node.files import LocalNetwork
from narwhal.node.status import read_status
from narwhal.store import Store

__all__ = ["SUBSCRIBE_RETRY", "author_of", "consensus_index", "lost_transactions",
           "output_violations", "quorum_acknowledged_transactions", "tagged_load"]

#: Reconnect quickly: a subscriber is also how a checker sees a node come back.
SUBSCRIBE_RETRY = RetryConfig(initial_interval=0.1, max_interval=1.0)


def consensus_index(net: LocalNetwork, index: int) -> int:
    """Node ``index``'s consensus index, from its status file (0 before its first)."""
    status = read_status(net.node_dir(index) / "status.json") or {}
    return int((status.get("primary") or {}).get("consensus_index", 0))


def output_violations(served: Mapping[int, Sequence[OutputItem]], from_index: int = 1) -> list[str]:
    """Every safety violation in what each node served from ``from_index`` (empty: safe)."""
    violations: list[str] = []
    for node, items in served.items():
        indexes = [item[0] for item in items]
        if indexes != list(range(from_index, from_index + len(items))):
            first_bad = next(i for i, (got, want) in enumerate(zip(indexes, range(from_index, 1 << 62)))
                             if got != want)
            violations.append(f"node {node}: index {indexes[first_bad]} served where "
                              f"{from_index + first_bad} was due (gap or repeat)")
        certificates = [item[3] for item in items]
        if len(certificates) != len(set(certificates)):
            violations.append(f"node {node}: a certificate was served at two indexes")
    longest_node = max(served, key=lambda n: len(served[n]), default=None)
    if longest_node is not None:
        longest = served[longest_node]
        for node, items in served.items():
            for mine, theirs in zip(items, longest):
                if mine != theirs:
                    violations.append(f"nodes {node} and {longest_node} disagree at index "
                                      f"{mine[0]}: outputs are not prefixes of one another")
                    break
    return violations


def lost_transactions(served: Mapping[int, Sequence[OutputItem]],
                      acknowledged: set[bytes]) -> dict[int, int]:
    """Per node: how many ``acknowledged`` transactions it never served."""
    return {node: len(acknowledged - {tx for item in items for tx in item[4]})
            for node, items in served.items()}


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
    for i in nodes:
        store = Store.open(net.node_dir(i) / "worker-0.db")
        try:
            for digest, body in store.items("batches"):
                holders.setdefault(digest, set()).add(i)
                if digest not in batches:
                    batches[digest] = messages.decode_as(messages.Batch, body)
        finally:
            asyncio.run(store.close())
    quorum = net.committee.quorum_threshold()
    return {tx for digest, held in holders.items()
            if len(held) >= quorum and author_of(batches[digest]) in held
            for tx in batches[digest].transactions}
