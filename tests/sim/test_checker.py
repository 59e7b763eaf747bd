"""The checker flags each broken invariant, from outputs made to break it, and passes a real
simulated run (same process: ``replayable=False``)."""

from __future__ import annotations

import attrs

from narwhal.sim.checker import check
from narwhal.sim.cluster import OutputEntry
from narwhal.sim.run import simulate


def entry(index, round_, author=b"a", certificate=None, batches=()):
    return OutputEntry(index, round_, author, certificate or bytes([index]) * 32, tuple(batches))


def healthy():
    chain = [entry(1, 2, b"a", batches=[b"x"]), entry(2, 2, b"b"), entry(3, 4, b"a", batches=[b"y"])]
    return {0: list(chain), 1: list(chain), 2: chain[:2]}


def run_check(outputs, acknowledged=frozenset({b"x", b"y"}), at_heal=None, min_after=0):
    return check(outputs, acknowledged=set(acknowledged),
                 at_heal=at_heal if at_heal is not None else {}, min_commits_after_heal=min_after)


def test_a_healthy_set_of_outputs_passes_a_prefix_included():
    outputs = healthy()
    outputs[2].append(outputs[0][2])
    assert run_check(outputs) == []


def test_each_broken_rule_is_reported():
    outputs = healthy()
    outputs[0].pop(1)  # a gap
    assert any("gaps" in v for v in run_check(outputs, acknowledged=set()))

    outputs = healthy()
    outputs[1][2] = entry(3, 4, b"c", certificate=b"\xff" * 32, batches=[b"y"])  # a fork
    assert any("disagree at 1 indexes, first 3" in v for v in run_check(outputs))

    outputs = healthy()
    outputs[0].append(attrs.evolve(outputs[0][0], index=4))  # the same certificate twice
    violations = run_check(outputs)
    assert any("certificates twice" in v for v in violations)
    assert any("batches twice" in v for v in violations)

    outputs = healthy()
    outputs[0].append(entry(4, 4, b"a", certificate=b"\xee" * 32))  # two of (a, 4)
    assert any("(author, round) pairs twice" in v for v in run_check(outputs))

    outputs = healthy()
    lost = run_check(outputs, acknowledged={b"x", b"y", b"z"})
    assert sum("never output" in v for v in lost) == 3  # node 2 also lacks y (a prefix)

    stalled = run_check(healthy(), acknowledged={b"x"}, at_heal={0: 3, 1: 3, 2: 2}, min_after=1)
    assert sum("after the heal" in v for v in stalled) == 3
    # node 2 also never reached the index the others had output at the heal
    assert sum("short of the 3" in v for v in stalled) == 1


def test_a_real_run_without_faults_is_safe_and_live():
    result = simulate(3, duration=12.0, settle=5.0, faults=False, replayable=False)
    assert result.violations == []
    assert result.commits > 100 and result.acknowledged > 20
    assert result.sim_seconds == 12.0


def test_an_equivocating_withholding_validator_is_caught_and_the_honest_outputs_stay_safe_and_live():
    result = simulate(4, duration=15.0, settle=6.0, faults=False, byzantine=True, replayable=False)
    assert result.byzantine == 3 and result.equivocations > 10 and result.withheld > 5
    assert result.evidence > 0  # honest validators stored the two signed headers
    assert result.violations == []
