"""The ``fuzz`` hypothesis profile of ``test_properties.py``: 10,000 examples per property.

It is a named profile used by those tests only (``settings.get_profile("fuzz")``), so the rest
of the suite keeps hypothesis's defaults. ``NARWHAL_FUZZ_EXAMPLES`` overrides the count: more
for a nightly run, fewer while editing (CI uses the default).
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

settings.register_profile(
    "fuzz",
    max_examples=int(os.environ.get("NARWHAL_FUZZ_EXAMPLES", "10000")),
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
