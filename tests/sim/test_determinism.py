"""Same seed, same run: two processes running one seed print the same trace hash (every
delivery, request and fault, in order) and the same result; another seed takes another
path. And a seed's run is refused where string hashing is randomized (it could not be
replayed)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from narwhal.sim.run import simulate


def run_seed(*args: str) -> dict:
    done = subprocess.run([sys.executable, "-m", "narwhal.sim", *args, "--json"],
                          check=False, capture_output=True, text=True, timeout=120)
    assert done.returncode in (0, 1), done.stderr
    return json.loads(done.stdout)


@pytest.mark.timeout(300)
def test_the_same_seed_replays_the_same_trace_in_another_process():
    """Seeds 12 and 1 pause, crash and partition validators (seed 12 found the workers'
    unseeded and wall-clock reads: the synchronizer's random peers, the quotas' clock)."""
    hashes = []
    for seed in ("12", "1"):
        first, again = (run_seed("--seed", seed, "--duration", "25"),
                        run_seed("--seed", seed, "--duration", "25"))
        assert first["trace_hash"] == again["trace_hash"], seed
        assert first["events"] > 1_000 and any("crash" in f for f in first["faults"])
        first.pop("wall_seconds"), again.pop("wall_seconds")
        assert first == again
        hashes.append(first["trace_hash"])
    assert hashes[0] != hashes[1]


@pytest.mark.timeout(300)
def test_a_seed_with_skewed_clocks_replays_the_same_trace_and_differs_from_true_clocks():
    first, again = (run_seed("--seed", "12", "--duration", "25", "--skew", "3"),
                    run_seed("--seed", "12", "--duration", "25", "--skew", "3"))
    first.pop("wall_seconds"), again.pop("wall_seconds")
    assert first == again and first["violations"] == []
    rates = first["clock_rates"]
    assert len(set(rates)) == 4 and all(1 / 3 <= r <= 3 for r in rates)
    true_clocks = run_seed("--seed", "12", "--duration", "25")
    assert true_clocks["faults"] == first["faults"]  # the same nemesis...
    assert true_clocks["trace_hash"] != first["trace_hash"]  # ...on other clocks


@pytest.mark.skipif(not sys.flags.hash_randomization, reason="this process hashes strings "
                    "with a fixed seed: nothing to refuse")
def test_a_run_that_could_not_be_replayed_is_refused():
    with pytest.raises(RuntimeError, match="PYTHONHASHSEED=0"):
        simulate(1)


@pytest.mark.parametrize(("args", "error"), [
    (["--seeds", "0"], "--seeds: at least 1"),
    (["--duration", "10"], "--duration must exceed the warm-up"),
    (["--validators", "0"], "--validators: at least 1"),
    (["--gc-depth", "0"], "--gc-depth: at least 1"),
    (["--skew", "0.5"], "--skew: a rate factor of at least 1"),
])
def test_bad_arguments_are_refused_with_a_clear_error(args: list[str], error: str):
    done = subprocess.run([sys.executable, "-m", "narwhal.sim", *args], check=False,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and error in done.stderr, done.stderr
