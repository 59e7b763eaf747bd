"""Fuzzing of the wire decoders: hypothesis properties (``test_properties.py``, in CI) and
coverage-guided targets (``targets.py``, run for a fixed time by ``run.py``; see README.md)."""
