"""Narwhal worker: transaction intake, batch maker, quorum waiter, batch receipt, batch
serving and synchronization (see :mod:`narwhal.worker.worker` for how they are wired)."""

from narwhal.worker.worker import Worker

__all__ = ["Worker"]
