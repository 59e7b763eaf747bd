"""Safety and liveness of one simulated run, read from every validator's ordered output
(issue 14; the invariants of ``docs/protocol.md``).

Safety, at any time:

- each output is contiguous (indexes without gaps);
- outputs agree: where two validators hold an index, it is the same certificate (so every
  output is a prefix of the longest one);
- no certificate is output twice, and no two certificates of one (author, round);
- no batch is output twice.

Liveness, once the faults are healed (the run's last phase):

- every validator's output grew by at least ``min_commits_after_heal`` entries;
- every validator reaches at least the index any validator had output at the heal;
- every *acknowledged* batch (its author's primary stored the report) is in every
  validator's output, exactly once.

Each broken rule is one string in the list :func:`check` returns (empty when the run was
safe and live).
"""

from __future__ import annotations

import itertools
from collections import Counter

from narwhal.sim.cluster import OutputEntry

__all__ = ["check"]

#: At most this many examples of one rule's violations are listed.
EXAMPLES = 3


def check(outputs: dict[int, list[OutputEntry]], *, acknowledged: set[bytes],
          at_heal: dict[int, int], min_commits_after_heal: int) -> list[str]:
    violations: list[str] = []
    for node, entries in outputs.items():
        violations += _contiguous(node, entries)
        violations += _no_repeats(node, entries)
    violations += _agreement(outputs)
    reached = max(at_heal.values(), default=0)
    for node, entries in outputs.items():
        if len(entries) < reached:
            violations.append(f"liveness: node {node} output {len(entries)} entries, short of "
                              f"the {reached} another validator had output at the heal")
    for node, entries in outputs.items():
        grown = len(entries) - at_heal.get(node, 0)
        if grown < min_commits_after_heal:
            violations.append(f"liveness: node {node} output {grown} entries after the heal "
                              f"(at least {min_commits_after_heal} expected)")
        output_batches = {b for e in entries for b in e.batches}
        lost = acknowledged - output_batches
        if lost:
            violations.append(f"liveness: node {node} never output {len(lost)} acknowledged "
                              f"batches (e.g. {sorted(d.hex()[:16] for d in lost)[:EXAMPLES]})")
    return violations


def _contiguous(node: int, entries: list[OutputEntry]) -> list[str]:
    indexes = [e.index for e in entries]
    if indexes and indexes != list(range(indexes[0], indexes[0] + len(indexes))):
        gaps = [(a, b) for a, b in itertools.pairwise(indexes) if b != a + 1]
        return [f"safety: node {node} output has gaps at {gaps[:EXAMPLES]}"]
    return []


def _no_repeats(node: int, entries: list[OutputEntry]) -> list[str]:
    out = []
    for what, keys in (("certificates", [e.certificate for e in entries]),
                       ("(author, round) pairs", [(e.author, e.round) for e in entries]),
                       ("batches", [b for e in entries for b in e.batches])):
        twice = [k for k, n in Counter(keys).items() if n > 1]
        if twice:
            out.append(f"safety: node {node} output {len(twice)} {what} twice "
                       f"(e.g. {[_short(k) for k in twice[:EXAMPLES]]})")
    return out


def _agreement(outputs: dict[int, list[OutputEntry]]) -> list[str]:
    by_index: dict[int, dict[bytes, list[int]]] = {}
    for node, entries in outputs.items():
        for e in entries:
            by_index.setdefault(e.index, {}).setdefault(e.certificate, []).append(node)
    split = sorted(i for i, certificates in by_index.items() if len(certificates) > 1)
    if not split:
        return []
    first = split[0]
    views = {_short(c): nodes for c, nodes in by_index[first].items()}
    return [f"safety: outputs disagree at {len(split)} indexes, first {first}: {views}"]


def _short(key: object) -> str:
    if isinstance(key, bytes):
        return key.hex()[:16]
    if isinstance(key, tuple):
        return "/".join(_short(k) for k in key)
    return str(key)
