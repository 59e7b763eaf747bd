"""bench/chaos.py end to end: real validator processes, real sockets through the link
emulator, real stores. Each scenario must keep the served outputs safe (contiguous,
prefixes of one another, no certificate twice), lose no quorum-acknowledged transaction,
and commit again on every node within 15 s of the heal or restart; a paused or slowed
validator must not stall the others (their queues toward it within bounds, their median
consensus latency not 1.5x the baseline's; the issue's 1.10x is the benchmark's verdict,
``bench/chaos.py``'s ``ok``).

In CI: ``kill`` (kill -9 and restart), ``partition`` (2|2, then heal), ``pause`` and
``slow-link``, short. The other scenarios, and longer runs, with ``--long``."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
import chaos

#: The others' latency during a pause or a slow link, over the baseline's, beyond which the
#: short runs fail: a stall behind the faulty validator, not noise of 3-second windows.
GROSS_STALL = 1.5


def run(capsys, tmp_path, scenario: str, duration: float, window: float) -> dict:
    code = chaos.main(["--scenario", scenario, "--duration", str(duration), "--window",
                       str(window), "--seed", "7", "--dir", str(tmp_path), "--json"])
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["scenario"] == scenario
    assert result["safety_ok"], result["violations"]
    assert result["acked"] > 0 and result["acked_lost"] == 0, result
    # no quorum (2|2 partition, f+1 down): nothing may commit
    assert result.get("committed_while_cut", 0) == result.get("committed_while_down", 0) == 0
    assert result["recovery_s"] is not None, result
    assert result["recovery_s"] <= 15, result
    if scenario in chaos.NO_HEAD_OF_LINE:
        # the 1.10x latency figure is the benchmark's verdict (``ok``), not a timed test's:
        # here, the queues toward the faulty validator stay bounded and the others do not
        # stall behind it (a head-of-line stall costs several times the latency)
        assert chaos.within_bounds(result["queues_to_faulty"]), result["queues_to_faulty"]
        assert result["others_latency_ratio"] <= GROSS_STALL, result["others_latency_ms"]
    else:
        assert code == 0 and result["ok"]
    return result


@pytest.mark.parametrize("scenario", ["kill", "partition", "pause", "slow-link"])
def test_short_scenario_is_safe_loses_nothing_and_recovers(capsys, tmp_path, scenario):
    # kill: recovery was 18-26 s until the restarted node stopped being refused as a
    # duplicate of its own lost connection (docs/reliability.md, finding 3); 1.7-5.3 s since
    result = run(capsys, tmp_path, scenario, duration=8, window=3)
    if scenario == "kill":
        assert result["killed"] and result["exit_codes"]  # a validator really was killed
    elif scenario in chaos.NO_HEAD_OF_LINE:
        assert result["queues_to_faulty"]  # sampled while the fault lasted
    else:
        assert result["partitions"] >= 1 and result["links"]["bytes_in"] > 0
        assert result["committed_while_cut"] == 0  # 2|2: no side has a quorum


@pytest.mark.long
@pytest.mark.parametrize("scenario", [
    "pause", "minority-down", "asymmetric", "slow-link", "loss", "staggered-start"])  # longer
def test_other_scenarios(capsys, tmp_path, scenario):
    run(capsys, tmp_path, scenario, duration=15, window=5)


@pytest.mark.long
@pytest.mark.parametrize("scenario", ["kill", "partition"])
def test_long_scenarios(capsys, tmp_path, scenario):
    run(capsys, tmp_path, scenario, duration=60, window=10)


def follower(node: int, served: list[tuple[float, int]]) -> chaos.Follower:
    """A follower that served index ``i`` at time ``t`` for each (t, i)."""
    return chaos.Follower(node, [(i, 0, b"", b"", ()) for _, i in served], [t for t, _ in served])


def test_recovery_counts_the_nodes_that_must_commit_again_only():
    """From the event, every node of the set (default: all) must serve past the frontier
    any node had at the event; a node not started yet is left out when the event says so
    (staggered-start: a start that brings a quorum up, finding 6)."""
    followers = [follower(0, [(1.0, 5), (3.0, 6)]), follower(1, [(1.0, 5), (4.5, 6)]),
                 follower(2, [(1.0, 5)])]  # node 2 never serves past 5
    assert chaos.recovery(followers, 2.0) is None
    assert chaos.recovery(followers, 2.0, frozenset({0, 1})) == 2.5
    assert chaos.recovery(followers, 2.0, frozenset({0})) == 1.0


def test_the_nemesis_notes_name_the_validators_it_hit_and_queues_are_checked_against_bounds():
    assert chaos.faulty({"paused": 2}) == {2}
    assert chaos.faulty({"killed": [1, 3], "slow": 0, "partitions": 2}) == {0, 1, 3}
    assert chaos.within_bounds({"pending": 30, "max_pending": 20_000, "queued_bytes": 10,
                                "outbound_budget": 1 << 24})
    assert not chaos.within_bounds({})  # nothing sampled is no proof
    assert not chaos.within_bounds({"pending": 30, "max_pending": 20, "queued_bytes": 0,
                                    "outbound_budget": 1})
