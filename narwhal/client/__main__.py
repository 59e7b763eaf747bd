"""``python -m narwhal.client submit|subscribe``: see :mod:`narwhal.client.cli`."""

from .cli import main

raise SystemExit(main())
