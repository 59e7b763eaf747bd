"""What each Byzantine-validator attack costs the honest nodes, against no attack, same run.

For each attack of ``tests/adversarial/attacks.py`` (and the cloned key, and the strangers'
attacks of ``tests/adversarial/stranger_attacks.py``, run from a stranger process), a fresh cluster
(three honest node processes, authority 3's real keys held by the test's Byzantine peer;
see ``tests/adversarial/cluster.py``) runs an attack-free phase of ``--duration`` seconds
with the Byzantine peer passive, then the attack for as long, and one table row says:

- ``rate``: the honest nodes' commit rate under attack / without (the worst honest node;
  honest authors' certificates reaching each node's output subscriber per second);
- ``latency``: median submit -> output latency of the client load, under attack / without
  (the worst honest node);
- ``victim RSS``: the victim's peak VmRSS under attack, and its growth over the attack-free
  phase's peak (``max growth``: the worst honest node);
- the victim's counter that shows the attack, and by how much it grew;
- for a stranger's attack: the real client's probes during it (connect, submit, subscribe).

The amplification attack (issue 12, finding 1) must cost the victim <= 64 MiB (RSS growth).

Usage: ``python bench/attacks.py [--duration S] [--only NAME ...] [--json PATH]``
(run it under ``flock /tmp/narwhal-heavy.lock nice -n 5`` on a shared machine).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.adversarial.attacks import ATTACKS, CLONED_KEY
from tests.adversarial.cluster import TEST_PARAMETERS, VICTIM, AdversarialCluster, Attack, MiB
from tests.adversarial.stranger import Stranger
from tests.adversarial.stranger_attacks import STRANGER_ATTACKS, stranger_attacks

#: The issue's bound on the victim's cost under the amplification attack.
AMPLIFICATION_BOUND = 64 * MiB


def measure(attack: Attack | str, duration: float) -> dict[str, Any]:
    """One row; ``attack`` a stranger's attack is named (it needs the cluster's stranger)."""
    cloned = attack is CLONED_KEY
    with tempfile.TemporaryDirectory(prefix="attack-") as directory, \
            AdversarialCluster(Path(directory), cloned_key=cloned) as cluster:
        if isinstance(attack, str):
            with Stranger(cluster.net.committee_file, cluster.authorities[VICTIM]) as stranger:
                return _row(cluster, stranger_attacks(stranger, TEST_PARAMETERS)[attack], duration)
        return _row(cluster, attack, duration)


def _row(cluster: AdversarialCluster, attack: Attack, duration: float) -> dict[str, Any]:
    result = cluster.run_attack(attack, baseline=duration, duration=duration)
    row = result.row()
    row["rss_bound_mib"] = attack.rss_bound / MiB
    return row


def table(rows: list[dict[str, Any]]) -> str:
    lines = [(f"{'attack':<20} {'rate':>6} {'latency':>8} {'victim RSS':>11} {'growth':>7} "
             f"{'max growth':>10}  counter (increase)")]
    for r in rows:
        latency = "-" if r["latency_ratio"] is None else f"{r['latency_ratio']:.2f}x"
        lines.append(
            f"{r['attack']:<20} {r['rate_ratio']:>5.2f}x {latency:>8} "
            f"{r['victim_peak_rss_mib']:>7.1f} MiB {r['victim_rss_growth_mib']:>3.1f} MiB "
            f"{r['max_rss_growth_mib']:>6.1f} MiB  {r['counter']} (+{r['counter_increase']})"
            + (f"; real client: {r['probes']} probes, {r['probe_failures']} failed, connect "
               f"<= {r['probe_connect_max_s'] or 0:.2f} s in <= {r['probe_attempts_max']} attempts, "
               f"round <= {r['probe_round_max_s'] or 0:.2f} s" if "probes" in r else ""))
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=10.0,
                        help="seconds of each phase, attack-free and attack (default 10)")
    parser.add_argument("--only", nargs="*", default=None, help="attack names to run")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows here")
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)  # the Byzantine peer's own links fail by design
    attacks: list[Attack | str] = [*ATTACKS.values(), CLONED_KEY, *STRANGER_ATTACKS]
    if args.only:
        attacks = [a for a in attacks if (a if isinstance(a, str) else a.name) in args.only]
    rows = []
    for attack in attacks:
        name = attack if isinstance(attack, str) else attack.name
        print(f"running {name} ({args.duration:g} s without, {args.duration:g} s with)...",
              file=sys.stderr, flush=True)
        rows.append(measure(attack, args.duration))
    print(table(rows))
    amplification = [r for r in rows if r["attack"] == "amplification"]
    for r in amplification:
        verdict = "within" if r["victim_rss_growth_mib"] * MiB <= AMPLIFICATION_BOUND else "OVER"
        print(f"amplification: the victim's RSS grew {r['victim_rss_growth_mib']:.1f} MiB, "
              f"{verdict} the issue's 64 MiB bound")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return 0 if all(r["victim_rss_growth_mib"] * MiB <= AMPLIFICATION_BOUND
                    for r in amplification) else 1


if __name__ == "__main__":
    sys.exit(main())
