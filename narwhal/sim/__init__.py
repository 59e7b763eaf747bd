"""A deterministic whole-cluster simulator: real primary cores and consensus on virtual
time over simulated links, seeded faults, and a safety/liveness checker (issue 14).

``python -m narwhal.sim --help``; the design is in ``docs/simulator.md``.
"""
