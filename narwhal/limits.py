"""Wire-protocol limits that more than one layer needs, in a module that imports nothing.

The frame codec (:mod:`narwhal.wire`) enforces them and the configuration
(:mod:`narwhal.config`) offers them as defaults; neither of those layers may import the
other (``docs/architecture.md``), so the number lives here, once.
"""

from __future__ import annotations

from typing import Final

__all__ = ["DEFAULT_MAX_FRAME_SIZE"]

#: Largest accepted value of a frame's length field (8 MiB, as in both reference Narwhals;
#: ``wire_spec.md`` section 5). Protects against a peer declaring a huge frame to make us
#: buffer it.
DEFAULT_MAX_FRAME_SIZE: Final = 8 * 1024 * 1024
