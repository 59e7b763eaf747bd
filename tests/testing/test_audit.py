"""The streaming output audit (``bench/local.py --audit``) finds each violation it names,
counts served transactions exactly per client, and passes prefixes."""

from __future__ import annotations

from narwhal.client import make_transaction
from narwhal.testing.audit import Acknowledged, ClientCounters, OutputAudit, acknowledged_lost


def item(index: int, cert: bytes | None = None, txs: list[bytes] | None = None):
    return (index, index, b"a" * 32, cert or index.to_bytes(32, "big"), txs or [])


def txs(client: int, *counters: int) -> list[bytes]:
    return [make_transaction(client, n, 64) for n in counters]


def test_counters_know_holes_and_repeats_across_byte_boundaries():
    seen = ClientCounters()
    for n in (0, 1, 2, 9, 9, 1000):
        seen.add(n)
    assert (seen.distinct, seen.top, seen.repeats) == (5, 1000, 1)
    assert seen.holes == 1001 - 5
    for n in range(1001):
        seen.add(n)
    assert seen.holes == 0 and seen.repeats == 6


def test_prefixes_are_safe_and_nothing_acknowledged_is_lost():
    audit = OutputAudit(["node-0", "node-1"])
    for i in (1, 2, 3):
        audit.add("node-0", item(i, txs=txs(7, 2 * i - 2, 2 * i - 1)))
    for i in (1, 2):
        audit.add("node-1", item(i, txs=txs(7, 2 * i - 2, 2 * i - 1)))
    summary = audit.summary()
    assert summary["violations"] == []
    assert summary["nodes"]["node-0"]["served"] == 3
    # client 7 was acknowledged 4 transactions: node-0 served 6, node-1 served 4 (0..3)
    assert acknowledged_lost(summary, {7: Acknowledged(4)}) == {"node-0": 0, "node-1": 0}
    assert acknowledged_lost(summary, {7: Acknowledged(5)}) == {"node-0": 0, "node-1": 1}
    assert acknowledged_lost(summary, {7: Acknowledged(1), 8: Acknowledged(3)}) == {"node-0": 3, "node-1": 3}


def test_a_hole_below_the_top_is_lost_whatever_the_count():
    audit = OutputAudit(["node-0"])
    audit.add("node-0", item(1, txs=txs(1, 0, 1, 3, 4)))  # 2 never served
    assert acknowledged_lost(audit.summary(), {1: Acknowledged(5)}) == {"node-0": 1}
    assert acknowledged_lost(audit.summary(), {1: Acknowledged(7)}) == {"node-0": 3}


def test_frames_refused_or_abandoned_are_not_counted_lost_and_the_rest_still_is():
    # a worker whose disk filled refused frames 10..19 and 30..39 (unacknowledged) while
    # frames in flight around them were accepted; 25 was acknowledged and never served
    audit = OutputAudit(["node-0"])
    served = [n for n in range(45) if not 10 <= n < 20 and not 30 <= n < 40 and n != 25]
    audit.add("node-0", item(1, txs=txs(1, *served)))
    summary = audit.summary()
    assert summary["nodes"]["node-0"]["clients"]["1"]["missing"] == [[10, 10], [25, 1], [30, 10]]
    ack = Acknowledged(50, [[10, 10], [30, 10], [45, 5]])  # 45..49: abandoned at the end
    assert ack.count == 25
    assert acknowledged_lost(summary, {1: ack}) == {"node-0": 1}
    # without knowing what was refused, every hole would look lost
    assert acknowledged_lost(summary, {1: Acknowledged(45)}) == {"node-0": 21}


def test_missing_ranges_are_bounded_and_then_every_hole_counts():
    seen = ClientCounters()
    for n in range(0, 20, 2):  # holes at 1, 3, ..., 17: nine ranges
        seen.add(n)
    assert seen.missing(limit=9) == [[n, 1] for n in range(1, 18, 2)]
    assert seen.missing(limit=8) is None
    audit = OutputAudit(["node-0"])
    audit.nodes["node-0"].clients[1] = seen
    summary = audit.summary()
    summary["nodes"]["node-0"]["clients"]["1"]["missing"] = None
    assert acknowledged_lost(summary, {1: Acknowledged(19, [[1, 1]])}) == {"node-0": 9}


def test_gap_repeat_double_certificate_and_disagreement_are_found():
    audit = OutputAudit(["node-0", "node-1"])
    audit.add("node-0", item(1))
    audit.add("node-0", item(3))
    audit.add("node-1", item(1))
    audit.add("node-1", item(2, cert=(1).to_bytes(32, "big")))
    found = audit.summary()["violations"]
    assert "node-0: index 3 served where 2 was due (gap or repeat)" in found
    assert any(v.startswith("node-1: index 2: certificate") and "served again" in v for v in found)
    assert "index 2: the nodes served 2 different certificates" in found
    audit.compare()  # checked indexes are not reported twice
    assert audit.summary()["violations"] == found


def test_a_disagreement_ahead_of_a_slower_node_is_reported_once():
    audit = OutputAudit(["node-0", "node-1", "node-2"])
    for name in ("node-0", "node-1"):
        audit.add(name, item(1, cert=name.encode().ljust(32)))
    audit.compare()
    audit.compare()
    assert audit.summary()["violations"] == ["index 1: the nodes served 2 different certificates"]
