"""Fixtures of the worker tests: ``make_cluster(n=4, **parameters)`` builds a Cluster that is
closed (workers stopped, stores closed, sockets released) when the test ends."""

from __future__ import annotations

import pytest

from .harness import Cluster, fast_parameters


@pytest.fixture
async def make_cluster(tmp_path):
    made: list[Cluster] = []

    def make(n: int = 4, **parameters) -> Cluster:
        cluster = Cluster(tmp_path / f"cluster{len(made)}", n, fast_parameters(**parameters))
        made.append(cluster)
        return cluster

    yield make
    for cluster in made:
        await cluster.close()
