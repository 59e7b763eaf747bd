"""A Byzantine validator holding a real committee key, against three honest node processes.

For every attack of :data:`tests.adversarial.attacks.ATTACKS` (the ones whose defences have
landed), in one test each, on the module's cluster: an attack-free phase with the
Byzantine peer passive, then the attack, and

(a) agreement: every honest node serves the same ordered output over the test's indexes;
(b) liveness: every honest node commits honest certificates at >= 80% of its own
    attack-free rate;
(c) bounded memory: no honest node's peak RSS grows more than the attack's bound over the
    attack-free phase's peak (48 MiB; 64 MiB for amplification, the issue's figure);
(d) the attack shows in the named counter of the victim's ``/status``;
(e) for the fetcher jam: the honest primaries' rounds, read together every 0.5 s, stay
    within 2 of one another (``Attack.max_round_spread``).
"""

from __future__ import annotations

import pytest

from tests.adversarial.attacks import ATTACKS
from tests.adversarial.cluster import AdversarialCluster

#: Seconds of each phase: long enough for ~100 honest certificates each, short enough for
#: the module to stay well within CI's time on a 2-core box.
BASELINE = 6.0
ATTACK = 6.0


@pytest.mark.parametrize("name", list(ATTACKS))
def test_an_honest_committee_survives(cluster: AdversarialCluster, name: str) -> None:
    result = cluster.run_attack(ATTACKS[name], baseline=BASELINE, duration=ATTACK)
    print(result.row())
    result.assert_defended()
    cluster.assert_agreement(result.first_index)
