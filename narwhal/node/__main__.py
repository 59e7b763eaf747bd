"""``python -m narwhal.node`` (also ``narwhal``): the node's command line.

Subcommands (each has ``--help``):

- ``keys generate``  a key file for one authority (signing key, network keys);
- ``committee new``  a committee file from key files and addresses, or a whole local
                     network (keys, committee, parameters) with ``--local N``;
- ``run``            one authority: its primary and workers in one process (or one role);
- ``testnet``        a local network of N validator processes plus a load client, with a
                     live table, stopped by Ctrl-C or after ``--duration``;
- ``evidence list``  the equivocation evidence a primary's store holds, each piece
                     checked against the committee when ``--committee`` is given.

Exit codes: 0 success, 1 runtime failure, 2 bad input (arguments, files, ports in use),
130 interrupted twice.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

from narwhal.config import Committee, ConfigError, Parameters
from narwhal.crypto import AuthorityKeys
from narwhal.node import files
from narwhal.node.arguments import (
    add_logging,
    fail,
    non_negative_float,
    non_negative_int,
    positive_float,
    positive_int,
    run_until_signal,
    setup_logging,
)
from narwhal.node.dial_map import load_dial_map
from narwhal.store import StoreError, read_family


def _add_overrides(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="NAME=VALUE",
                        help="override a parameter (JSON value), e.g. --set max_header_delay=0.05;"
                             " repeatable")


def _command_group(sub: Any, name: str, help_: str, description: str) -> Any:
    """A subcommand made of actions (``narwhal NAME ACTION``): its actions' subparsers."""
    group = sub.add_parser(name, help=help_, description=description)
    return group.add_subparsers(dest="action", required=True, metavar="ACTION")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="narwhal", description="narwhal-py validator node")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    keys_sub = _command_group(sub, "keys", "key files", "Manage key files.")
    gen = keys_sub.add_parser("generate", help="write a new key file for one authority",
                              description="Generate the signing key and the network keys of "
                                          "an authority's primary and workers (mode 0600).")
    gen.add_argument("--workers", type=positive_int, default=1, help="workers (default 1)")
    gen.add_argument("--out", type=Path, required=True, help="key file to write")
    gen.add_argument("--force", action="store_true", help="overwrite an existing file")

    committee_sub = _command_group(sub, "committee", "committee files", "Manage committee files.")
    new = committee_sub.add_parser(
        "new", help="write a committee (or a whole local network)",
        description="Either from key files (--keys, with --hosts and --base-port), or "
                    "--local N: generate N key files, parameters.json and committee.json "
                    "with 127.0.0.1 ports in --dir.")
    mode = new.add_mutually_exclusive_group(required=True)
    mode.add_argument("--keys", type=Path, nargs="+", metavar="KEYFILE",
                      help="the authorities' key files")
    mode.add_argument("--local", type=positive_int, metavar="N",
                      help="generate a local network of N authorities")
    new.add_argument("--out", type=Path, help="committee file (--keys; default with --local: "
                                               "DIR/committee.json)")
    new.add_argument("--hosts", nargs="+", default=["127.0.0.1"], metavar="HOST",
                     help="one host for all authorities or one per key file (--keys)")
    new.add_argument("--base-port", type=positive_int, default=None,
                     help="first port; each authority takes 3 + 2*workers consecutive ports "
                          "(default 4000 with --keys, free ports with --local)")
    new.add_argument("--workers", type=positive_int, default=None,
                     help="workers per authority (default 1 with --local; with --keys the "
                          "fewest the key files have)")
    new.add_argument("--dir", type=Path, help="folder of the local network (--local)")
    new.add_argument("--force", action="store_true", help="overwrite existing files")
    _add_overrides(new)

    run = sub.add_parser(
        "run", help="run one authority",
        description="Run an authority's primary and all its workers in one process and one "
                    "event loop (or a single role). Stops cleanly on SIGTERM/SIGINT. Writes "
                    "DIR/status.json every second.")
    run.add_argument("--keys", type=Path, required=True, help="this authority's key file")
    run.add_argument("--committee", type=Path, required=True, help="committee file")
    run.add_argument("--parameters", type=Path, default=None,
                     help="parameters file (default: the built-in defaults)")
    run.add_argument("--store", type=Path, required=True, metavar="DIR",
                     help="folder for the stores and the status file")
    run.add_argument("--role", choices=["all", "primary", "worker"], default="all",
                     help="what to run (default all)")
    run.add_argument("--worker-id", type=non_negative_int, default=None,
                     help="which worker, with --role worker")
    run.add_argument("--dial-map", type=Path, default=None, metavar="FILE",
                     help="JSON object 'committee host:port' -> 'host:port to dial': reach "
                          "those peers through a relay (link emulator, tunnel); node-local, "
                          "changes neither the committee nor the network id")
    add_logging(run)

    testnet = sub.add_parser(
        "testnet", help="run a local network with a load client and a live table",
        description="Create keys, committee and parameters in a folder, start N validator "
                    "processes and a load client, show their progress live, and stop "
                    "everything on Ctrl-C or after --duration.")
    testnet.add_argument("--nodes", type=positive_int, default=4, help="validators (default 4)")
    testnet.add_argument("--workers", type=positive_int, default=1,
                         help="workers per validator (default 1)")
    testnet.add_argument("--dir", type=Path, default=None,
                         help="folder for keys, stores and logs (default: a new temp folder)")
    testnet.add_argument("--duration", type=positive_float, default=None,
                         help="stop after this many seconds (default: run until Ctrl-C)")
    testnet.add_argument("--rate", type=non_negative_float, default=1000.0,
                         help="client load in transactions per second, 0 for none "
                              "(default 1000)")
    testnet.add_argument("--tx-size", type=positive_int, default=512,
                         help="bytes per transaction (default 512)")
    testnet.add_argument("--consensus", choices=["bullshark", "tusk"], default=None,
                         help="consensus protocol (default: the parameters' default)")
    testnet.add_argument("--base-port", type=positive_int, default=None,
                         help="first port (default: free ports chosen by the kernel)")
    _add_overrides(testnet)
    add_logging(testnet)

    evidence_sub = _command_group(sub, "evidence", "equivocation evidence",
                                  "Equivocation evidence kept by a primary.")
    listing = evidence_sub.add_parser(
        "list", help="print the evidence a primary's store holds",
        description="Print each piece of equivocation evidence the primary's store holds: the "
                    "equivocating authority, the round, and the digests of its two conflicting "
                    "signed headers (or of the two headers one voter voted for). With "
                    "--committee each piece is verified (both signatures, by a member, on "
                    "conflicting messages) and the exit code is 1 if one fails. Safe while "
                    "the node runs (read-only, no lock).")
    listing.add_argument("--store", type=Path, required=True, metavar="DIR",
                         help="the node's store folder (as given to run --store), or its "
                              "primary.db file")
    listing.add_argument("--committee", type=Path, default=None,
                         help="committee file: verify the signatures")
    listing.add_argument("--json", action="store_true",
                         help="one JSON array instead of text lines")
    return parser


def _keys_generate(args: argparse.Namespace) -> int:
    keys = files.generate_keys(args.out, args.workers, force=args.force)
    print(f"{keys.name.hex()}  {args.out}")
    return 0


def _committee_new(args: argparse.Namespace) -> int:
    parameters = files.parameters_with(files.parse_overrides(args.overrides))
    if args.local is not None:
        if args.dir is None:
            return fail("--local needs --dir")
        network = files.create_local(args.dir, args.local, args.workers or 1,
                                     parameters=parameters, base_port=args.base_port,
                                     force=args.force)
        if args.out is not None:
            files.refuse_overwrite([args.out], args.force)
            network.committee.save(args.out)
        print(f"{args.local} authorities in {args.dir}: keys/, committee.json, parameters.json")
        return 0
    if args.out is None:
        return fail("--keys needs --out")
    if args.overrides:
        return fail("--set goes with --local (write parameters files yourself otherwise)")
    files.refuse_overwrite([args.out], args.force)
    public = [AuthorityKeys.load(path).public() for path in args.keys]
    committee = files.committee_from_keys(public, hosts=args.hosts, workers=args.workers,
                                          base_port=args.base_port or 4000)
    committee.save(args.out)
    print(f"committee of {committee.size} authorities x {len(committee.worker_ids)} workers: "
          f"{args.out}")
    return 0


def _run(args: argparse.Namespace) -> int:
    from narwhal.node.runner import AuthorityRunner

    if (args.role == "worker") != (args.worker_id is not None):
        return fail("--worker-id goes with --role worker, and --role worker needs it")
    keys = AuthorityKeys.load(args.keys)
    committee = Committee.load(args.committee)
    parameters = Parameters.load(args.parameters) if args.parameters else Parameters()
    dial_map = load_dial_map(args.dial_map, committee) if args.dial_map else None
    last_error = setup_logging(args.log_level, args.log_file)
    runner = AuthorityRunner(keys, committee, parameters, args.store, role=args.role,
                             worker_id=args.worker_id, last_error=last_error,
                             dial_overrides=dial_map)

    async def main(stop) -> int:  # type: ignore[no-untyped-def]
        return 0 if await runner.run(stop) else 1
    if profile := os.environ.get("NARWHAL_PROFILE"):  # developers: where the loop's time goes
        import cProfile

        with cProfile.Profile() as profiler:
            try:
                return run_until_signal(main)
            finally:
                profiler.dump_stats(f"{profile}.{os.getpid()}")
    return run_until_signal(main)


def _testnet(args: argparse.Namespace) -> int:
    from narwhal.node.testnet import Testnet

    overrides = files.parse_overrides(args.overrides)
    if args.consensus is not None:
        overrides["consensus"] = args.consensus
    directory = args.dir or Path(tempfile.mkdtemp(prefix="narwhal-testnet-"))
    directory.mkdir(parents=True, exist_ok=True)
    setup_logging(args.log_level, directory / "testnet.log")
    testnet = Testnet.create(
        nodes=args.nodes, workers=args.workers, directory=directory,
        parameters=files.parameters_with(overrides), base_port=args.base_port,
        log_level=args.log_level)
    return testnet.run(duration=args.duration, rate=args.rate, tx_size=args.tx_size)


def _evidence_list(args: argparse.Namespace) -> int:
    from narwhal.primary.evidence import FAMILY, EvidenceError, read_evidence, verify

    committee = Committee.load(args.committee) if args.committee is not None else None
    path = args.store / "primary.db" if args.store.is_dir() else args.store
    pieces = read_evidence(read_family(path, FAMILY))
    rows: list[dict[str, Any]] = []
    for piece in pieces:
        if isinstance(piece, EvidenceError):
            rows.append({"error": str(piece), "signatures_valid": False if committee else None})
        else:
            rows.append({**piece.summary(),
                         "signatures_valid": None if committee is None else verify(piece, committee)})
    if args.json:
        print(json.dumps(rows, indent=1))
    else:
        for row in rows:
            print(_evidence_line(row))
        print(f"{len(rows)} pieces of equivocation evidence in {path}")
    return 1 if any(row["signatures_valid"] is False for row in rows) else 0


def _evidence_line(row: dict[str, Any]) -> str:
    check = {None: "", True: "  signatures valid", False: "  SIGNATURES INVALID"}[
        row["signatures_valid"]]
    if "error" in row:
        return f"undecodable: {row['error']}{check}"
    when = datetime.datetime.fromtimestamp(row["detected_at"], datetime.UTC).isoformat(
        timespec="seconds")
    origin = f" of {row['origin']}" if "origin" in row else ""
    first, second = row["digests"]
    return (f"{row['kind']:6} author {row['author']} round {row['round']}{origin}: "
            f"{first} vs {second}  detected {when}{check}")


COMMANDS = {("keys", "generate"): _keys_generate, ("committee", "new"): _committee_new,
            ("run", None): _run, ("testnet", None): _testnet,
            ("evidence", "list"): _evidence_list}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    command = COMMANDS[(args.command, getattr(args, "action", None))]
    try:
        return command(args)
    except (ConfigError, StoreError) as exc:
        return fail(str(exc))
    except OSError as exc:
        return fail(f"{exc.filename or ''}: {exc.strerror or exc}".lstrip(": "), code=1)


if __name__ == "__main__":
    sys.exit(main())
