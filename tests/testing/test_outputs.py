"""The safety checker finds each kind of violation it names, and passes prefixes."""

from __future__ import annotations

from narwhal.testing.outputs import lost_transactions, output_violations


def item(index: int, cert: bytes | None = None, txs: list[bytes] | None = None):
    return (index, index, b"a" * 32, cert or bytes([index]) * 32, txs or [b"tx%d" % index])


def test_prefixes_of_different_lengths_are_safe():
    assert output_violations({0: [item(1), item(2), item(3)], 1: [item(1)], 2: []}) == []


def test_gap_repeat_disagreement_and_double_certificate_are_found():
    assert "gap or repeat" in output_violations({0: [item(1), item(3)]})[0]
    assert "gap or repeat" in output_violations({0: [item(1), item(1)]})[0]
    found = output_violations({0: [item(1), item(2)], 1: [item(1), item(2, cert=b"x" * 32)]})
    assert len(found) == 1 and "disagree at index 2" in found[0]
    twice = output_violations({0: [item(1), item(2, cert=bytes([1]) * 32)]})
    assert twice == ["node 0: a certificate was served at two indexes"]


def test_lost_transactions_counts_per_node():
    served = {0: [item(1, txs=[b"a", b"b"])], 1: [item(1, txs=[b"a"])]}
    assert lost_transactions(served, {b"a", b"b"}) == {0: 0, 1: 1}
