"""Fixtures of the primary's tests."""

from __future__ import annotations

import pytest

from .sim import Simulation


@pytest.fixture
async def sim():
    """Four simulated primaries (not started), stopped at the end."""
    simulation = Simulation(4)
    try:
        yield simulation
    finally:
        await simulation.stop()
