"""Fixtures of the adversarial tests: one cluster (three honest node processes and the
Byzantine peer) per test module, since starting processes is the expensive part and each
attack undoes its links when it stops (see :mod:`tests.adversarial.cluster`)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.adversarial.cluster import AdversarialCluster


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AdversarialCluster]:
    with AdversarialCluster(tmp_path_factory.mktemp("adversarial")) as running:
        yield running
