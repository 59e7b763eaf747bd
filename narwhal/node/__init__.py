"""The node's command line: ``python -m narwhal.node`` (also the ``narwhal`` console script)."""
