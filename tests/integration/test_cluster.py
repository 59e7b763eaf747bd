"""Four validators as separate OS processes over Noise on 127.0.0.1: the mempool end to end.

One scenario, in phases (starting four processes is the expensive part):

1. transactions are submitted to every worker through its Noise-NK client port;
2. every primary reaches round >= 20;
3. one validator is killed (SIGKILL): the other three keep advancing rounds;
4. it is restarted from its stores: it catches up and proposes again;
5. every node's output is read through the subscription, as a client reads it, from
   index 1: all four serve the same indexes up to the highest any reached, within a bound,
   with every submitted transaction (:mod:`tests.integration.output_check`); no node
   rate-limited any of this honest traffic, the catch-up included;
6. everything stops; the stores are then read directly and checked:
   - every submitted transaction is stored at every worker,
   - every certificate carries 2f+1 signers,
   - no two stores hold different certificates for one (author, round),
   - the restarted node holds the batches of the certificates it caught up on.
"""

from __future__ import annotations

import asyncio
import os
import signal

from narwhal import messages
from narwhal.client import TransactionClient
from narwhal.node.processes import ProcessGroup, python_module
from narwhal.node.status import read_status
from narwhal.store import Store
from tests.integration.output_check import (
    assert_acknowledged_served,
    assert_output_live_and_agreeing,
)
from tests.node.helpers import local_network, wait_for
from tests.node.test_run import run_argv

TARGET_ROUND = 20
TX_PER_WORKER = 300


def status_of(net, index: int) -> dict:
    return read_status(net.node_dir(index) / "status.json") or {}


def primary(net, index: int) -> dict:
    return status_of(net, index).get("primary") or {}


def worker(net, index: int) -> dict:
    return (status_of(net, index).get("workers") or {}).get("0") or {}


def submit_everywhere(net) -> set[bytes]:
    """Submit distinct transactions to every worker; return them all."""
    async def submit(index: int) -> list[bytes]:
        txs = [b"tx-%d-%d-" % (index, i) + os.urandom(40) for i in range(TX_PER_WORKER)]
        client = TransactionClient(net.committee, net.committee.authorities_sorted()[index], 0)
        await client.connect()
        try:
            assert await client.submit(txs) == len(txs)
        finally:
            await client.close()
        return txs

    async def all_workers() -> set[bytes]:
        lists = await asyncio.gather(*(submit(i) for i in range(4)))
        return {tx for txs in lists for tx in txs}

    return asyncio.run(all_workers())


def stored_transactions(path) -> set[bytes]:
    store = Store.open(path)
    try:
        txs: set[bytes] = set()
        for _, body in store.items("batches"):
            txs.update(messages.decode(messages.tag_of(messages.Batch), body).transactions)
        return txs
    finally:
        asyncio.run(store.close())


def stored_certificates(path) -> list[messages.Certificate]:
    store = Store.open(path)
    try:
        return [messages.decode(messages.tag_of(messages.Certificate), value)
                for _, value in store.items("certificates")]
    finally:
        asyncio.run(store.close())


def stored_batch_digests(path) -> set[bytes]:
    store = Store.open(path)
    try:
        return set(store.keys("batches"))
    finally:
        asyncio.run(store.close())


def test_four_validator_processes_replicate_certify_survive_a_crash_and_catch_up(tmp_path):
    net = local_network(tmp_path, nodes=4, workers=1)
    with ProcessGroup(grace=15) as group:
        nodes = [group.start(f"node-{i}", run_argv(net, i), net.node_dir(i) / "stdout.log")
                 for i in range(4)]
        wait_for(lambda: all(primary(net, i).get("round", 0) >= 2 for i in range(4)), 60,
                 "all primaries started")

        # 1. transactions to every worker, in batches a quorum acknowledged (accepted ones
        #    are only in the batch maker: a crash before their batch's quorum loses them)
        submitted = submit_everywhere(net)
        wait_for(lambda: all(worker(net, i).get("txs_sealed", 0) >= TX_PER_WORKER
                             and worker(net, i).get("pending_tx_bytes", 1) == 0 for i in range(4)),
                 60, "every worker's transactions in quorum-acknowledged batches")

        # 2. rounds advance everywhere
        wait_for(lambda: all(primary(net, i).get("round", 0) >= TARGET_ROUND for i in range(4)),
                 90, f"every primary at round >= {TARGET_ROUND}")

        # background load from here on, so batches are made while a validator is down
        group.start("load", python_module(
            "narwhal.client", "submit", "--committee", str(net.committee_file), "--all-workers",
            "--rate", "400", "--tx-size", "64", "--duration", "60"), tmp_path / "load.log")

        # 3. crash one validator; the others keep going
        victim = 3
        os.kill(nodes[victim].process.pid, signal.SIGKILL)
        nodes[victim].process.wait(timeout=10)
        at_crash = max(primary(net, i)["round"] for i in range(3))
        wait_for(lambda: all(primary(net, i)["round"] >= at_crash + 10 for i in range(3)), 60,
                 "the three survivors advancing 10 rounds")
        victim_round_before = primary(net, victim).get("round", 0)

        # 4. restart it from its stores: it catches up and proposes again
        restarted = group.start(f"node-{victim}-restarted", run_argv(net, victim),
                                net.node_dir(victim) / "stdout-restarted.log")
        others_now = max(primary(net, i)["round"] for i in range(3))
        wait_for(lambda: status_of(net, victim).get("pid") == restarted.process.pid
                 and primary(net, victim).get("dag_round", 0) >= others_now, 90,
                 "the restarted validator catching up on certificates")
        proposed_at_catch_up = primary(net, victim)["last_proposed"]
        formed = primary(net, victim)["certificates_formed"]
        wait_for(lambda: primary(net, victim)["last_proposed"] >= proposed_at_catch_up + 5
                 and primary(net, victim)["certificates_formed"] >= formed + 3, 60,
                 "the restarted validator proposing and certifying again")
        assert primary(net, victim)["counters"].get("equivocation", 0) == 0
        assert victim_round_before < others_now

        # 5. what clients get: every node, the restarted one too, serves the same output
        #    from index 1, with every submitted transaction (load still running)
        served = assert_output_live_and_agreeing(net, range(4))
        assert_acknowledged_served(served, submitted)

        # honest traffic, the restarted node's catch-up and the others' flush of what they
        # queued for it included, never hit a rate limit (wire_spec.md section 6)
        limited = {(i, role): counts for i in range(4)
                   for role, counts in (("primary", primary(net, i)["rate_limited"]),
                                        ("worker", worker(net, i)["rate_limited"]))
                   if counts}
        assert limited == {}, limited

        codes = group.stop()
    assert all(code == 0 for name, code in codes.items() if name.startswith("node-")
               and name != f"node-{victim}"), codes

    # 6. what the stores hold
    quorum = net.committee.quorum_threshold()
    by_author_round: dict[tuple[bytes, int], bytes] = {}
    for i in range(4):
        transactions = stored_transactions(net.node_dir(i) / "worker-0.db")
        missing = submitted - transactions
        assert not missing, f"worker {i} lacks {len(missing)} of {len(submitted)} transactions"
        certificates = stored_certificates(net.node_dir(i) / "primary.db")
        assert max(c.header.round for c in certificates) >= TARGET_ROUND
        for certificate in certificates:
            assert len(certificate.votes) >= quorum
            key = (certificate.header.author, certificate.header.round)
            assert by_author_round.setdefault(key, certificate.digest()) == certificate.digest()
    # the restarted node fetched the batches of the certificates it caught up on (all but
    # the newest few rounds, which may still be in flight when it stopped)
    victim_certificates = stored_certificates(net.node_dir(victim) / "primary.db")
    newest = max(c.header.round for c in victim_certificates)
    wanted = {d for c in victim_certificates if c.header.round <= newest - 5 for d, _ in c.header.payload}
    held = stored_batch_digests(net.node_dir(victim) / "worker-0.db")
    assert wanted and wanted <= held, f"{len(wanted - held)} of {len(wanted)} batches missing"
    # batches were made while it was down (the background load), and it fetched them
    assert len(wanted) > 20, f"only {len(wanted)} batches in the caught-up certificates"
