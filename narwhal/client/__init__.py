"""Clients of a validator: submit transactions to a worker, and follow the ordered output
of a primary. A Python API and ``python -m narwhal.client submit|subscribe``.

- :mod:`narwhal.client.transactions`: :class:`TransactionClient` (frames, backpressure
  window, reconnects, pacing) and the transactions it makes.
- :mod:`narwhal.client.output`: :class:`OutputSubscriber`, every consensus index once, in
  order, across reconnects.
- :mod:`narwhal.client.cli`: the command line.
"""

from narwhal.client.cli import MIN_KEY_PREFIX, main, resolve_authority, resolve_workers
from narwhal.client.output import SUBSCRIBER_BUFFER, OutputItem, OutputPruned, OutputSubscriber
from narwhal.client.transactions import (
    DEFAULT_FRAME_TRANSACTIONS,
    DEFAULT_MAX_IN_FLIGHT,
    DEFAULT_RETRY,
    DRAIN_TIMEOUT,
    MAX_FRAME_BYTES,
    MAX_LAG,
    MIN_TRANSACTION_SIZE,
    REQUEST_TIMEOUT,
    TICK,
    ClientStats,
    TransactionClient,
    line_source,
    make_transaction,
    parse_transaction,
    submit_load,
)

__all__ = [
    "DEFAULT_FRAME_TRANSACTIONS", "DEFAULT_MAX_IN_FLIGHT", "DEFAULT_RETRY", "DRAIN_TIMEOUT",
    "MAX_FRAME_BYTES", "MAX_LAG", "MIN_KEY_PREFIX", "MIN_TRANSACTION_SIZE", "REQUEST_TIMEOUT",
    "SUBSCRIBER_BUFFER", "TICK", "ClientStats", "OutputItem", "OutputPruned", "OutputSubscriber",
    "TransactionClient", "line_source", "main", "make_transaction", "parse_transaction",
    "resolve_authority", "resolve_workers", "submit_load",
]
