"""A peer that lost its connection without the other side noticing is let back in at once.

A power cut, or a crash behind a relay or NAT, sends no FIN: the surviving side keeps the
old connection open until its idle timeout (30 s by default). When the lost peer restarts
and dials again, the duplicate-connection tie-break (``wire_spec.md`` section 1) used to
keep that dead connection and refuse every new one with ``DUPLICATE_CONNECTION`` -- and the
restarted peer redialed at once, hundreds of times a second, for the whole idle timeout.
Seen in ``bench/chaos.py --scenario kill``: ~600 refused handshakes a second for 23 s and a
recovery of 24.5 s after a restart.

Here the lost connection runs through :class:`SilentRelay`; ``cut()`` makes it silent both
ways without closing it, exactly what the surviving side sees after a power cut. The idle
timeout is 30 s, so only the fix can reconnect the nodes within the test's few seconds:

- the old connection was dialed by the *surviving* side (kept by the tie-break): the
  survivor checks it when the peer dials again and aborts it after ``stale_check_timeout``
  of silence; the restarted peer backs off instead of hammering;
- it was dialed by the *restarted* side: a peer dials only when it holds no usable
  connection, so the newer of two connections dialed by one endpoint wins at once.
"""

from __future__ import annotations

import asyncio

import attrs

from narwhal.net.connection import Connection
from narwhal.net.network import NetworkConfig

from .cluster import FAST, Node, eventually, make_nodes, settled_link, stop_all

#: Idle timeout far beyond what the test waits: reconnecting cannot come from it.
LONG_IDLE = attrs.evolve(FAST, connection=attrs.evolve(FAST.connection, idle_timeout=30.0),
                         stale_check_timeout=0.5)
#: Reconnected within this many seconds (the idle timeout is 30).
RECONNECT_WITHIN = 4.0


class SilentRelay:
    """A TCP relay to ``target``; ``cut()`` silences the connections it carries, both ways,
    without closing them (bytes are read and dropped, EOFs not passed on). Connections
    made after the cut are carried normally."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.epoch = 0
        self.writers: list[asyncio.StreamWriter] = []
        self._server: asyncio.Server | None = None

    async def start(self) -> tuple[str, int]:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self._server.sockets[0].getsockname()[:2]

    def cut(self) -> None:
        self.epoch += 1

    async def close(self) -> None:
        assert self._server is not None
        self._server.close()
        for writer in self.writers:
            writer.transport.abort()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(*self.target)
        self.writers += [writer, up_writer]
        epoch = self.epoch
        await asyncio.gather(self._pipe(reader, up_writer, epoch),
                             self._pipe(up_reader, writer, epoch), return_exceptions=True)

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                    epoch: int) -> None:
        while data := await reader.read(65536):
            if self.epoch == epoch:
                writer.write(data)
        if self.epoch == epoch:
            writer.close()


async def _through_relay(peer: Node) -> tuple[SilentRelay, NetworkConfig]:
    """A relay to ``peer`` and the config of a node that reaches ``peer`` through it."""
    assert peer.info.address is not None
    relay = SilentRelay(peer.info.address)
    address = await relay.start()
    return relay, attrs.evolve(LONG_IDLE, dial_overrides={peer.info.address: address})


def _ordered(nodes: list[Node]) -> tuple[Node, Node]:
    smaller, larger = sorted(nodes, key=lambda n: n.key)
    return smaller, larger


async def _power_cut_and_restart(survivor: Node, lost: Node, relay: SilentRelay,
                                 config: NetworkConfig) -> None:
    """``lost`` loses power (its FIN never reaches ``survivor``) and starts again."""
    peers = [survivor.info, lost.info]
    relay.cut()
    await lost.stop()
    await lost.start(peers, config)


async def _reconnected(survivor: Node, lost: Node, old: Connection) -> None:
    """Both hold the two ends of one new connection (the survivor no longer the old one)."""
    def one_new_connection() -> bool:
        assert survivor.manager is not None and lost.manager is not None
        ours = survivor.manager.connection_nowait(lost.key)
        theirs = lost.manager.connection_nowait(survivor.key)
        return (ours is not None and theirs is not None and ours is not old and ours.is_open
                and theirs.is_open and ours.initiator != theirs.initiator)

    await eventually(one_new_connection, RECONNECT_WITHIN)


async def test_a_connection_the_survivor_dialed_is_checked_and_dropped_when_the_peer_dials_again():
    survivor, lost = _ordered(make_nodes(2))  # the survivor's dial wins the tie-break
    relay, relayed = await _through_relay(lost)
    await survivor.start([survivor.info, lost.info], relayed)
    await lost.start([survivor.info, lost.info], LONG_IDLE)
    try:
        old = await settled_link(survivor, lost)
        assert old.initiator  # the survivor dialed it, through the relay
        await _power_cut_and_restart(survivor, lost, relay, LONG_IDLE)
        await _reconnected(survivor, lost, old)
        assert old.close_reason is not None and "liveness check" in str(old.close_reason)
        stats = survivor.manager.snapshot()  # type: ignore[union-attr]
        row = next(r for r in stats if r["name"] == lost.info.name)
        assert row["stale_aborts"] == 1
    finally:
        await stop_all([survivor, lost])
        await relay.close()


async def test_a_connection_the_lost_peer_dialed_is_replaced_by_its_new_dial():
    lost, survivor = _ordered(make_nodes(2))  # the lost peer's dial wins the tie-break
    relay, relayed = await _through_relay(survivor)
    await survivor.start([survivor.info, lost.info], LONG_IDLE)
    await lost.start([survivor.info, lost.info], relayed)
    try:
        old = await settled_link(survivor, lost)
        assert not old.initiator  # the lost peer dialed it, through the relay
        await _power_cut_and_restart(survivor, lost, relay, relayed)
        await _reconnected(survivor, lost, old)
        assert not old.is_open  # replaced, not waited out
    finally:
        await stop_all([survivor, lost])
        await relay.close()
