"""The transaction client: frames, backpressure window, retries, reconnects, pacing, CLI."""

from __future__ import annotations

import asyncio
import json
import re
import signal
import sys

import attrs
import pytest

from narwhal import messages
from narwhal.client import (
    MAX_LAG,
    TransactionClient,
    make_transaction,
    parse_transaction,
    resolve_authority,
    resolve_workers,
)
from narwhal.config import Committee, ConfigError, Parameters, parse_address
from narwhal.crypto import AuthorityKeys
from narwhal.errors import ErrorCode, RemoteError, RequestRejected
from narwhal.net.clients import ClientServer
from narwhal.net.retry import RetryConfig
from narwhal.net.rpc import Router
from narwhal.store import Store
from narwhal.wire.noise import HandshakePayload
from narwhal.worker import Worker

from .net.cluster import eventually

FAST_RETRY = RetryConfig(initial_interval=0.02, max_interval=0.1)


class FakeWorker:
    """A worker's transactions port that records what it accepts; ``behaviour`` may delay
    or refuse a submission."""

    def __init__(self, keys: AuthorityKeys, committee: Committee) -> None:
        self.keys, self.committee = keys, committee
        self.received: list[bytes] = []
        self.in_flight = self.max_in_flight = 0
        self.gate: asyncio.Event | None = None  # when set, handlers wait for it
        self.refuse: list[ErrorCode] = []  # answer these errors first, one per submission
        self.server: ClientServer | None = None

    async def on_submit(self, peer, message: messages.SubmitTransactions):
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if self.gate is not None:
                await self.gate.wait()
            if self.refuse:
                raise RequestRejected(self.refuse.pop(0), "test refusal")
            self.received.extend(message.transactions)
            return messages.TransactionsAccepted(len(message.transactions))
        finally:
            self.in_flight -= 1

    async def start(self) -> None:
        router = Router()
        router.route(messages.SubmitTransactions, self.on_submit)
        self.server = ClientServer(
            local_static=self.keys.workers[0].private, network_id=self.committee.network_id(),
            router=router, local_payload=HandshakePayload("worker", authority=self.keys.name,
                                                          worker_id=0))
        info = self.committee.authorities[self.keys.name].workers[0]
        await self.server.start(*parse_address(info.transactions_address))

    async def stop(self) -> None:
        await self.server.stop()


@pytest.fixture
def keys():
    return AuthorityKeys.generate(1)


@pytest.fixture
def committee(keys):
    return Committee.local([keys.public()], 1)


@pytest.fixture
async def worker(keys, committee):
    fake = FakeWorker(keys, committee)
    await fake.start()
    yield fake
    await fake.stop()


def client(committee, keys, **kwargs) -> TransactionClient:
    return TransactionClient(committee, keys.name, 0, retry=FAST_RETRY, **kwargs)


def test_transactions_are_unique_and_parse_back():
    tx = make_transaction(7, 42, 512, now_ns=123)
    assert len(tx) == 512 and parse_transaction(tx) == (7, 42, 123)
    assert parse_transaction(make_transaction(7, 42, 16)) == (7, 42, None)
    with pytest.raises(ValueError):
        make_transaction(7, 42, 15)


async def test_submit_sends_frames_and_counts_what_was_accepted(worker, committee, keys):
    async with client(committee, keys, frame_transactions=100) as c:
        txs = c.next_transactions(1_050, 64)
        assert await c.submit(txs) == 1_050
    assert worker.received == txs and len(set(txs)) == 1_050
    assert c.stats.frames == 11 and c.stats.accepted == c.stats.sent == 1_050
    assert {parse_transaction(t)[0] for t in txs} == {c.client_id}


async def test_frames_stay_below_the_byte_budget(committee, keys):
    c = client(committee, keys, frame_transactions=1_000)
    frames = list(c.frames([bytes(100_000)] * 12))
    assert [len(f) for f in frames] == [5, 5, 2]


async def test_in_flight_frames_never_exceed_the_window(worker, committee, keys):
    worker.gate = asyncio.Event()
    async with client(committee, keys, frame_transactions=10, max_in_flight=3) as c:
        submit = asyncio.ensure_future(c.submit(c.next_transactions(200, 32)))
        await eventually(lambda: worker.in_flight == 3)
        await asyncio.sleep(0.1)  # time for a fourth frame, were the window not enforced
        assert worker.in_flight == 3 and not submit.done()
        worker.gate.set()
        assert await submit == 200
    assert worker.max_in_flight == 3


async def test_overloaded_is_retried_and_a_permanent_refusal_raised(worker, committee, keys):
    worker.refuse = [ErrorCode.OVERLOADED, ErrorCode.OVERLOADED]
    async with client(committee, keys) as c:
        assert await c.submit(c.next_transactions(10, 32)) == 10
        assert c.stats.resent == 2
        worker.refuse = [ErrorCode.TOO_LARGE]
        with pytest.raises(RemoteError) as info:
            await c.submit(c.next_transactions(10, 32))
        assert info.value.code is ErrorCode.TOO_LARGE
        # an audit knows exactly which counters were not acknowledged: the refused frame's
        assert c.stats.unaccepted == [[10, 10]]
        assert c.stats.accepted == 10 and c.stats.sent == 20
    assert len(worker.received) == 10


async def test_reconnects_when_the_worker_restarts(worker, committee, keys):
    async with client(committee, keys) as c:
        assert await c.submit(c.next_transactions(5, 32)) == 5
        await worker.stop()
        pending = asyncio.ensure_future(c.submit(c.next_transactions(5, 32)))
        await asyncio.sleep(0.3)
        assert not pending.done()
        await worker.start()
        assert await asyncio.wait_for(pending, 10) == 5
        assert c.stats.reconnects >= 1
    assert len(worker.received) == 10


async def test_submit_at_rate_paces_and_skips_what_a_stalled_worker_cannot_take(
        worker, committee, keys):
    async with client(committee, keys, max_in_flight=2) as c:
        stats = attrs.evolve(await c.submit_at_rate(2_000, 64, duration=1.0))
        assert 1_800 <= stats.accepted + stats.lagged <= 2_100
        assert stats.accepted == len(worker.received) and stats.sent == stats.accepted
        worker.gate = asyncio.Event()  # a stall: the window fills, the loop must not burst
        asyncio.get_running_loop().call_later(2.5, worker.gate.set)
        before = c.stats.accepted
        second = await c.submit_at_rate(1_000, 64, duration=2.0)
        sent = second.accepted - before
        assert sent <= 1_000 * MAX_LAG + 200  # a few frames, then one catch-up burst at most
        assert 1_800 <= sent + second.lagged - stats.lagged <= 2_100


def test_resolve_workers(committee, keys):
    two = Committee.local([keys.public(), AuthorityKeys.generate(2).public()], 1)
    names = two.authorities_sorted()
    assert resolve_workers(two, "1") == [(names[1], 0)]
    assert resolve_workers(two, f"{names[0].hex()[:10]}:0") == [(names[0], 0)]
    assert resolve_workers(two, "all") == [(names[0], 0), (names[1], 0)]
    for bad, message in (("2", "out of range"), ("0:1", "worker id 1"), ("0:x", "not a number"),
                         ("abcd", "at least 8 hex digits"), ("f" * 12, "0 authorities match")):
        with pytest.raises(ConfigError, match=message):
            resolve_workers(two, bad)


async def test_a_real_worker_counts_what_the_client_submits(keys, committee, tmp_path):
    parameters = Parameters(batch_size=10_000, max_batch_delay=0.05)
    store = Store.open(tmp_path / "worker.db")
    real = Worker(keys, committee, parameters, 0, store)
    await real.start()
    try:
        async with client(committee, keys) as c:
            stats = await c.submit_at_rate(2_000, 128, duration=0.5)
        status = real.status()
        assert status["txs_received"] == stats.accepted > 0
        assert status["tx_bytes_received"] == 128 * stats.accepted
    finally:
        await real.stop()
        await store.close()


async def run_cli(*argv: str, stdin: bytes | None = None) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "narwhal.client", *argv, stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(process.communicate(stdin), 30)
    return process.returncode, out.decode(), err.decode()


@pytest.mark.parametrize("rate", ["1000", "0"])
async def test_cli_submits_at_a_rate_and_writes_its_counters(worker, committee, keys, tmp_path,
                                                             rate):
    committee.save(tmp_path / "committee.json")
    code, out, err = await run_cli(
        "submit", "--committee", str(tmp_path / "committee.json"), "--worker", "0",
        "--rate", rate, "--tx-size", "100", "--duration", "1",
        "--status-file", str(tmp_path / "status.json"))
    assert code == 0, err
    status = json.loads((tmp_path / "status.json").read_text())
    assert status["accepted"] == len(worker.received) > 0 and "accepted" in out
    if rate != "0":  # what was due in 1 s was sent, or counted as lagged behind
        assert 900 <= status["accepted"] + status["lagged"] <= 1_100
    assert {len(t) for t in worker.received} == {100}


async def test_cli_sends_the_lines_of_stdin(worker, committee, keys, tmp_path):
    committee.save(tmp_path / "committee.json")
    lines = [f"tx-{i}".encode() for i in range(1_000)]
    code, _, err = await run_cli(
        "submit", "--committee", str(tmp_path / "committee.json"), "--all-workers", "--stdin",
        stdin=b"\n".join(lines) + b"\n\n")
    assert code == 0, err
    assert sorted(worker.received) == sorted(lines)  # frames in flight may overtake


@pytest.mark.parametrize(("argv", "message"), [
    (["--worker", "0", "--tx-size", "8"], "--tx-size must be >= 16"),
    (["--worker", "5"], "out of range"),
    (["--worker", "0", "--from-file", "/nonexistent/file"], "No such file"),
])
async def test_cli_bad_input_exits_2(committee, tmp_path, argv, message):
    committee.save(tmp_path / "committee.json")
    code, _, err = await run_cli("submit", "--committee", str(tmp_path / "committee.json"), *argv)
    assert code == 2 and message in err


# --- the ordered-output subscriber (against 4 real primaries and workers) -----------------


async def test_cli_subscribe_prints_one_line_per_index(tmp_path):
    from tests.primary.test_output import network

    async with network(tmp_path) as net:
        net.committee.save(tmp_path / "committee.json")
        node = net.name(2).hex()[:10]
        code, out, err = await run_cli("subscribe", "--committee", str(tmp_path / "committee.json"),
                                       "--node", node, "--from", "3", "--count", "4", "--json")
        assert code == 0, err
        lines = [json.loads(line) for line in out.splitlines()]
        assert [line["index"] for line in lines] == [3, 4, 5, 6]
        assert all(line["author"] in {net.name(i).hex() for i in range(4)} for line in lines)
        code, out, err = await run_cli("subscribe", "--committee", str(tmp_path / "committee.json"),
                                       "--node", "1", "--count", "2")
        assert code == 0, err
        assert [line.split()[0] for line in out.splitlines()] == ["1", "2"]
        code, _, err = await run_cli("subscribe", "--committee", str(tmp_path / "committee.json"),
                                     "--node", "9")
        assert code == 2 and "out of range" in err
        # a frame limit below the output's parts: a permanent refusal, said once, exit 1
        await net.submit(1, 20, size=200)
        code, _, err = await run_cli("subscribe", "--committee", str(tmp_path / "committee.json"),
                                     "--node", "0", "--max-frame-size", "1024")
        assert code == 1 and "TOO_LARGE" in err and "max_frame_size 1024" in err
        code, _, err = await run_cli("subscribe", "--committee", str(tmp_path / "committee.json"),
                                     "--node", "0", "--max-frame-size", "1000")
        assert code == 2 and "--max-frame-size" in err


async def test_cli_subscribe_says_which_index_to_start_from_when_output_was_pruned(tmp_path, monkeypatch):
    from narwhal.primary import history
    from narwhal.primary import node as primary_node
    from tests.primary.test_output import network

    monkeypatch.setattr(history, "MARK_INTERVAL", 0.05)
    monkeypatch.setattr(primary_node, "HISTORY_PRUNE_INTERVAL", 0.1)
    async with network(tmp_path, retain_seconds=1.0) as net:
        net.committee.save(tmp_path / "committee.json")
        node = net.primaries[1].node
        await eventually(lambda: node.history.pruned_index > 5, timeout=20)
        floor = node.history.pruned_index  # it only grows
        code, out, err = await run_cli("subscribe", "--committee", str(tmp_path / "committee.json"),
                                       "--node", "1", "--from", "1")
        assert code == 1 and out == "", err
        earliest = int(re.search(r"run again with --from (\d+)", err)[1])
        assert earliest >= floor > 5
        assert "no longer keeps index 1" in err and "Traceback" not in err


def test_resolve_authority_names_the_option(committee, keys):
    with pytest.raises(ConfigError, match="--node: authority index 7"):
        resolve_authority(committee, "7")
    assert resolve_authority(committee, keys.name.hex()[:8]) == keys.name


# --- subscribe --stall-warning: saying so when nothing arrives ------------------------------


def stall_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("subscribe: ")]


async def test_subscribe_reports_a_stall_at_most_once_per_period(committee, keys, capsys):
    """Nothing listens on the committee's ports: every dial is refused, nothing arrives."""
    from narwhal.client import OutputSubscriber
    from narwhal.client.cli import follow_output

    subscriber = OutputSubscriber(committee, keys.name, retry=FAST_RETRY)
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(follow_output(subscriber, 5, None, False, stall_warning=0.2,
                                             node="node 0"), 0.75)
    out, err = capsys.readouterr()
    lines = stall_lines(err)
    assert out == "" and 2 <= len(lines) <= 3  # at 0.2, 0.4 (and 0.6) s
    address = committee.authorities[keys.name].primary.client_address
    assert lines[0].startswith(f"subscribe: nothing received for 0.2 s (waiting for index 5 "
                               f"from node 0 at {address}; reconnects 0; last error: ")
    assert "ConnectionRefusedError" in lines[0]
    waited = [float(line.split(" for ")[1].split()[0]) for line in lines]
    assert waited == sorted(waited) and waited[-1] - waited[0] >= 0.2 * (len(lines) - 1) - 0.1


class QuietSubscriber:
    """Yields ``from_index`` at once, then nothing for ``pause`` seconds, then the next."""

    authority, address = bytes(32), ("127.0.0.1", 9)
    reconnects, last_error = 2, "ConnectionClosed: gone"

    def __init__(self, pause: float) -> None:
        self.pause = pause

    async def subscribe(self, from_index: int):
        yield (from_index, 3, b"\xaa" * 32, b"\xbb" * 32, [b"tx"])
        await asyncio.sleep(self.pause)
        yield (from_index + 1, 4, b"\xaa" * 32, b"\xbb" * 32, [])


async def test_subscribe_says_what_it_waits_for_and_when_output_resumes(capsys):
    from narwhal.client.cli import follow_output

    assert await follow_output(QuietSubscriber(0.3), 7, 2, False, stall_warning=0.2,
                               node="node 1") == 2
    out, err = capsys.readouterr()
    assert [line.split()[0] for line in out.splitlines()] == ["7", "8"]
    lines = stall_lines(err)
    assert len(lines) >= 2 and all("nothing received for 0." in line for line in lines[:-1])
    assert lines[0].endswith(" s (waiting for index 8 from node 1 at 127.0.0.1:9; reconnects 2; "
                             "last error: ConnectionClosed: gone)")  # index 7 arrived at once
    assert re.fullmatch(r"subscribe: receiving again: index 8 after 0\.\d s without output",
                        lines[-1])
    assert await follow_output(QuietSubscriber(0.3), 7, 2, False, stall_warning=0) == 2
    assert stall_lines(capsys.readouterr().err) == []  # 0 disables


async def test_cli_subscribe_stall_warning_goes_to_stderr(committee, tmp_path):
    committee.save(tmp_path / "committee.json")
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "narwhal.client", "subscribe", "--committee",
        str(tmp_path / "committee.json"), "--node", "0", "--from", "3", "--stall-warning", "0.2",
        "--log-level", "WARNING", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        line = await asyncio.wait_for(process.stderr.readline(), 10)
    finally:
        process.send_signal(signal.SIGINT)
        out, _ = await asyncio.wait_for(process.communicate(), 10)
    assert line.decode().startswith("subscribe: nothing received for 0.2 s (waiting for index "
                                    "3 from node 0 (")
    assert process.returncode == 0 and out == b""
