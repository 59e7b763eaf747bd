"""ParkedHeaders: one header per (author, round), a share per author."""

from __future__ import annotations

from narwhal.messages import Header
from narwhal.primary.parked import Parked, ParkedHeaders

A, B = b"a" * 32, b"b" * 32


def header(author: bytes, round_: int, tag: int = 0) -> Header:
    return Header(author, round_, (), (bytes([tag]) * 32,), (), bytes(64))


def test_one_header_per_author_and_round_and_a_share_per_author():
    parked = ParkedHeaders(per_author=2)
    assert parked.add(header(A, 5)) is Parked.ADDED
    assert parked.add(header(A, 5)) is Parked.PRESENT
    assert parked.add(header(A, 5, tag=1)) is Parked.CONFLICT
    assert parked.add(header(B, 1)) is Parked.ADDED
    assert parked.add(header(A, 7)) is Parked.ADDED
    assert parked.add(header(A, 6)) is Parked.ADDED  # over A's share: A's oldest (5) goes
    assert not parked.holds(header(A, 5)) and parked.dropped == 1
    assert parked.holds(header(B, 1)) and len(parked) == 3
    parked.remove(header(A, 6, tag=1))  # not the parked one: nothing happens
    assert parked.holds(header(A, 6))
    parked.remove(header(A, 6))
    parked.drop_through(1)
    assert [h.round for h in parked] == [7]
    assert parked.add(header(A, 8)) is Parked.ADDED and parked.dropped == 1  # room again
