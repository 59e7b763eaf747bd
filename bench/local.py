"""Cluster benchmark: N validator processes and a rate-controlled load on this machine.

Like the research prototype's ``fab local``: it creates keys and a committee in a temporary
directory, starts every validator as its own OS process (``narwhal run``), starts the load
client (``python -m narwhal.client submit``, one connection per worker, ``--rate`` tx/s in
total, transactions stamped with their send time), runs ``--duration`` seconds, stops
everything, and computes from what the nodes recorded:

- **consensus** TPS/BPS and latency: for every batch, from its ``Created batch`` log line
  (worker) to the first ``Committed batch`` line (any primary);
- **end-to-end** TPS/BPS and latency: for every committed transaction, from the send time
  the client stamped into it to its batch's first commit (transactions are read back from
  the workers' stores).

Only batches created after a warm-up (``--warmup``) and committed before the end count.
Timestamps come from log lines (millisecond resolution) and ``time.time_ns()`` in the
client: the same wall clock, on one machine.

    python bench/local.py --rate 10000 --duration 20 [--consensus tusk] [--json out.json]
    python bench/local.py --faults 1 --rate 10000          # 1 of 4 validators crashed at start
    python bench/local.py --sweep 10000,20000,35000,50000 --plot curve.png

``--faults F`` never starts the last F validators (the papers' crash-fault experiments):
the others must make progress with 2f+1 of 3f+1. ``--sweep`` runs one measurement per input
rate and prints a table (and draws latency against throughput with matplotlib, the
optional ``bench`` extra, when ``--plot`` is given).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

import attrs

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rich.console import Console  # noqa: E402
from rich.progress import Progress  # noqa: E402

from narwhal import messages  # noqa: E402
from narwhal.client import parse_transaction  # noqa: E402
from narwhal.config import Parameters  # noqa: E402
from narwhal.crypto import AuthorityKeys  # noqa: E402
from narwhal.node.files import create_local  # noqa: E402
from narwhal.node.processes import ProcessGroup, python_module  # noqa: E402
from narwhal.node.status import read_status  # noqa: E402
from narwhal.store import Store  # noqa: E402

console = Console(stderr=True)
LINE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) .*?(Created batch|Committed batch) ([0-9a-f]{64})")


def parse_logs(paths: list[Path]) -> tuple[dict[str, float], dict[str, float]]:
    """(batch -> creation time, batch -> first commit time) from the nodes' logs."""
    created: dict[str, float] = {}
    committed: dict[str, float] = {}
    for path in paths:
        for line in path.read_text(errors="replace").splitlines():
            match = LINE.match(line)
            if not match:
                continue
            stamp = dt.datetime.strptime(match[1], "%Y-%m-%d %H:%M:%S,%f").timestamp()
            table = created if match[2] == "Created batch" else committed
            digest = match[3]
            table[digest] = min(stamp, table.get(digest, stamp))
    return created, committed


def read_transactions(stores: list[Path], wanted: set[str]) -> dict[str, list[bytes]]:
    """The transactions of the ``wanted`` batches, from the workers' stores."""
    found: dict[str, list[bytes]] = {}
    for path in stores:
        store = Store.open(path)
        try:
            for key, body in store.items("batches"):
                digest = key.hex()
                if digest in wanted and digest not in found:
                    found[digest] = list(messages.decode(messages.tag_of(messages.Batch), body).transactions)
        finally:
            asyncio.run(store.close())
    return found


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p * len(ordered)))] if ordered else 0.0


def run(args: argparse.Namespace) -> dict[str, object]:
    directory = Path(tempfile.mkdtemp(prefix="narwhal-bench-"))
    parameters = attrs.evolve(Parameters(), consensus=args.consensus)
    net = create_local(directory, args.nodes, args.workers, parameters=parameters)
    logs = [net.node_dir(i) / "node.log" for i in range(args.nodes)]
    running = range(args.nodes - args.faults)  # the last F validators are crashed from the start
    logs = [logs[i] for i in running]
    with ProcessGroup(grace=15) as group:
        for i in running:
            group.start(f"node-{i}", python_module(
                "narwhal.node", "run", "--keys", str(net.key_files[i]), "--committee", str(net.committee_file),
                "--parameters", str(net.parameters_file), "--store", str(net.node_dir(i)),
                "--log-file", str(logs[i])), net.node_dir(i) / "stdout.log")
        deadline = time.monotonic() + 60
        while not all((read_status(net.node_dir(i) / "status.json") or {}).get("primary", {}).get("round", 0) >= 2
                      for i in running):
            if time.monotonic() > deadline or group.exited():
                raise SystemExit("validators did not start; see the logs in " + str(directory))
            time.sleep(0.2)
        started = time.time()
        # one client per live worker, the input rate split between them
        targets = [(i, w) for i in running for w in range(args.workers)]
        for i, w in targets:
            name = AuthorityKeys.load(net.key_files[i]).name.hex()
            group.start(f"client-{i}-{w}", python_module(
                "narwhal.client", "submit", "--committee", str(net.committee_file),
                "--worker", f"{name}:{w}", "--rate", str(max(1, args.rate // len(targets))),
                "--tx-size", str(args.tx_size), "--duration", str(args.duration)),
                directory / f"client-{i}-{w}.log")
        with Progress(console=console, transient=True) as progress:
            task = progress.add_task(f"{args.rate:,} tx/s for {args.duration:.0f} s", total=args.duration)
            while (elapsed := time.time() - started) < args.duration:
                progress.update(task, completed=elapsed)
                time.sleep(0.25)
        ended = time.time()
        time.sleep(2.0)  # let the last batches commit
        group.stop()
    created, committed = parse_logs(logs)
    window = [d for d, t in created.items() if started + args.warmup <= t <= ended and d in committed]
    consensus_latency = [committed[d] - created[d] for d in window]
    stores = [net.node_dir(i) / f"worker-{w}.db" for i in running for w in range(args.workers)]
    transactions = read_transactions(stores, set(window))
    e2e_latency, tx_count = [], 0
    for digest, txs in transactions.items():
        tx_count += len(txs)
        for tx in txs:
            _, _, sent_ns = parse_transaction(tx)
            if sent_ns:
                e2e_latency.append(committed[digest] - sent_ns / 1e9)
    measured = max(1e-9, ended - started - args.warmup)
    tps = tx_count / measured
    return {
        "nodes": args.nodes, "faults": args.faults, "workers": args.workers, "tx_size": args.tx_size,
        "input_rate": args.rate,
        "duration_s": args.duration, "consensus": args.consensus,
        "consensus_tps": tps, "consensus_bps": tps * args.tx_size,
        "consensus_latency_ms": 1000 * statistics.mean(consensus_latency) if consensus_latency else None,
        "consensus_latency_p50_ms": 1000 * percentile(consensus_latency, 0.5),
        "consensus_latency_p95_ms": 1000 * percentile(consensus_latency, 0.95),
        "e2e_tps": tps, "e2e_bps": tps * args.tx_size,
        "e2e_latency_ms": 1000 * statistics.mean(e2e_latency) if e2e_latency else None,
        "e2e_latency_p50_ms": 1000 * percentile(e2e_latency, 0.5),
        "e2e_latency_p95_ms": 1000 * percentile(e2e_latency, 0.95),
        "batches_measured": len(window), "directory": str(directory),
    }


def summary(result: dict) -> str:
    return f"""
-----------------------------------------
 SUMMARY:
-----------------------------------------
 + CONFIG:
 Faults: {result['faults']} node(s)
 Committee size: {result['nodes']} node(s)
 Worker(s) per node: {result['workers']} worker(s)
 Consensus: {result['consensus']}
 Input rate: {result['input_rate']:,} tx/s
 Transaction size: {result['tx_size']:,} B
 Execution time: {result['duration_s']:,.0f} s

 + RESULTS:
 Consensus TPS: {result['consensus_tps']:,.0f} tx/s
 Consensus BPS: {result['consensus_bps']:,.0f} B/s
 Consensus latency: {result['consensus_latency_ms'] or 0:,.0f} ms (p50 {result['consensus_latency_p50_ms']:,.0f}, p95 {result['consensus_latency_p95_ms']:,.0f})

 End-to-end TPS: {result['e2e_tps']:,.0f} tx/s
 End-to-end BPS: {result['e2e_bps']:,.0f} B/s
 End-to-end latency: {result['e2e_latency_ms'] or 0:,.0f} ms (p50 {result['e2e_latency_p50_ms']:,.0f}, p95 {result['e2e_latency_p95_ms']:,.0f})
-----------------------------------------"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, default=4)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--rate", type=int, default=10_000, help="total input rate, tx/s")
    parser.add_argument("--tx-size", type=int, default=512)
    parser.add_argument("--duration", type=float, default=20.0)
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds ignored at the start")
    parser.add_argument("--consensus", choices=["bullshark", "tusk"], default="bullshark")
    parser.add_argument("--faults", type=int, default=0, help="validators crashed from the start")
    parser.add_argument("--sweep", help="comma-separated input rates: one run each, then a table")
    parser.add_argument("--plot", type=Path, help="with --sweep: draw latency vs throughput (PNG)")
    parser.add_argument("--json", type=Path, help="also write the figures as JSON here")
    args = parser.parse_args(argv)
    problems = [msg for bad, msg in ((args.nodes < 1, "--nodes must be >= 1"),
                                     (args.workers < 1, "--workers must be >= 1"),
                                     (args.rate <= 0, "--rate must be > 0"),
                                     (args.tx_size < 24, "--tx-size must be >= 24 (the send-time stamp)"),
                                     (args.duration <= args.warmup, "--duration must exceed --warmup"),
                                     (not 0 <= args.faults <= (args.nodes - 1) // 3,
                                      "--faults must be between 0 and (nodes - 1) // 3"))
                if bad]
    if problems:
        parser.error("; ".join(problems))
    if args.sweep:
        results = [run(_with_rate(args, int(r))) for r in args.sweep.split(",")]
        print(sweep_table(results))
        if args.plot:
            plot(results, args.plot)
        if args.json:
            args.json.write_text(json.dumps(results, indent=2))
        return 0
    result = run(args)
    print(summary(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0


def _with_rate(args: argparse.Namespace, rate: int) -> argparse.Namespace:
    return argparse.Namespace(**{**vars(args), "rate": rate})


def sweep_table(results: list[dict]) -> str:
    rows = ["| input tx/s | consensus TPS | consensus latency ms (p50/p95) | end-to-end latency ms (p50/p95) |",
            "|---|---|---|---|"]
    for r in results:
        rows.append(f"| {r['input_rate']:,} | {r['consensus_tps']:,.0f} | {r['consensus_latency_ms'] or 0:,.0f} "
                    f"({r['consensus_latency_p50_ms']:,.0f}/{r['consensus_latency_p95_ms']:,.0f}) | "
                    f"{r['e2e_latency_ms'] or 0:,.0f} ({r['e2e_latency_p50_ms']:,.0f}/{r['e2e_latency_p95_ms']:,.0f}) |")
    return "\n".join(rows)


def plot(results: list[dict], path: Path) -> None:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        console.print("matplotlib is not installed (pip install 'narwhal-py[bench]'): no plot")
        return
    figure, axes = plt.subplots(figsize=(6, 4))
    axes.plot([r["consensus_tps"] for r in results], [r["consensus_latency_ms"] for r in results],
              marker="o", label="consensus")
    axes.plot([r["e2e_tps"] for r in results], [r["e2e_latency_ms"] for r in results],
              marker="s", label="end-to-end")
    axes.set_xlabel("throughput (tx/s)")
    axes.set_ylabel("latency (ms)")
    axes.legend()
    figure.tight_layout()
    figure.savefig(path)


if __name__ == "__main__":
    sys.exit(main())
