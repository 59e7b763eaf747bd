"""The node's command line: every subcommand's --help, the files it writes, bad input."""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from narwhal.config import Committee, ConfigError, Parameters
from narwhal.crypto import AuthorityKeys
from narwhal.node.__main__ import main
from narwhal.node.runner import bind_listener

from .helpers import child_env, local_network

SUBCOMMANDS = [[], ["keys"], ["keys", "generate"], ["committee"], ["committee", "new"], ["run"],
               ["testnet"], ["evidence"], ["evidence", "list"]]


@pytest.mark.parametrize("words", SUBCOMMANDS, ids=lambda w: " ".join(w) or "narwhal")
def test_help_of_every_subcommand_exits_0(words, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([*words, "--help"])
    assert exit_.value.code == 0
    assert "usage:" in capsys.readouterr().out


def test_python_m_and_console_script_run(tmp_path):
    script = Path(sys.executable).parent / "narwhal"  # installed by pip install -e .
    for argv in ([sys.executable, "-m", "narwhal.node", "--help"], [str(script), "--help"],
                 [sys.executable, "-m", "narwhal.client", "submit", "--help"]):
        result = subprocess.run(argv, capture_output=True, text=True, timeout=30, cwd=tmp_path,
                                env=child_env(), check=False)
        assert result.returncode == 0, result.stderr
        assert "usage:" in result.stdout


def test_keys_generate_writes_a_loadable_private_file_and_refuses_to_overwrite(tmp_path, capsys):
    out = tmp_path / "k.json"
    assert main(["keys", "generate", "--workers", "3", "--out", str(out)]) == 0
    keys = AuthorityKeys.load(out)
    assert len(keys.workers) == 3 and keys.name.hex() in capsys.readouterr().out
    assert out.stat().st_mode & 0o077 == 0
    assert main(["keys", "generate", "--out", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert AuthorityKeys.load(out) == keys
    assert main(["keys", "generate", "--out", str(out), "--force"]) == 0
    assert AuthorityKeys.load(out) != keys


def test_committee_new_from_key_files_and_hosts(tmp_path):
    paths = [tmp_path / f"k{i}.json" for i in range(3)]
    for path in paths:
        assert main(["keys", "generate", "--workers", "2", "--out", str(path)]) == 0
    out = tmp_path / "committee.json"
    assert main(["committee", "new", "--keys", *map(str, paths), "--out", str(out),
                 "--hosts", "10.0.0.1", "10.0.0.2", "node3.example", "--base-port", "7000"]) == 0
    committee = Committee.load(out)
    assert committee.size == 3 and len(committee.worker_ids) == 2
    for path in paths:
        committee.check_keys(AuthorityKeys.load(path).public())
    first = committee.authorities[AuthorityKeys.load(paths[0]).name]
    assert first.primary.address == "10.0.0.1:7000"
    assert first.workers[1].transactions_address == "10.0.0.1:7006"


def test_committee_new_local_writes_a_whole_network(tmp_path):
    net = tmp_path / "net"
    assert main(["committee", "new", "--local", "4", "--workers", "2", "--dir", str(net),
                 "--set", "max_header_delay=0.05", "--set", "consensus=tusk"]) == 0
    committee = Committee.load(net / "committee.json")
    assert committee.size == 4 and len(committee.worker_ids) == 2
    for i in range(4):
        committee.check_keys(AuthorityKeys.load(net / "keys" / f"node-{i}.json").public())
    parameters = Parameters.load(net / "parameters.json")
    assert parameters.max_header_delay == 0.05 and parameters.consensus == "tusk"
    hosts = {a.primary.address.split(":")[0] for a in committee.authorities.values()}
    assert hosts == {"127.0.0.1"}


def test_node_i_is_the_i_th_authority_in_key_order_for_every_tool(tmp_path, capsys):
    """One index, one authority: keys/node-i.json, testnet's node-i label and the client's
    ``--node i``/``--worker i`` (7 nodes: unsorted keys would pass by chance 1 in 5040)."""
    from narwhal.client import resolve_authority, resolve_workers
    from narwhal.client.cli import main as client_main
    from narwhal.peer_top.source import testnet_targets

    net = local_network(tmp_path, nodes=7)
    committee = Committee.load(net.committee_file)
    names = committee.authorities_sorted()
    labels = {t.admin: t.label for t in testnet_targets(tmp_path)}
    for i, path in enumerate(net.key_files):
        assert path == tmp_path / "keys" / f"node-{i}.json" and path.stat().st_mode & 0o077 == 0
        assert AuthorityKeys.load(path).name == names[i]
        assert resolve_authority(committee, str(i)) == names[i]
        assert resolve_workers(committee, f"{i}:0") == [(names[i], 0)]
        assert labels[committee.authorities[names[i]].primary.admin_address] == f"node-{i}"
    for command in ("subscribe", "submit"):
        with pytest.raises(SystemExit):
            client_main([command, "--help"])
        assert "position in key order, which is the testnet's node-N" in " ".join(
            capsys.readouterr().out.split())
    with pytest.raises(ConfigError, match="already exists"):
        local_network(tmp_path, nodes=7)


BAD_INPUT = [
    (["keys", "generate", "--workers", "0", "--out", "x.json"], "must be >= 1"),
    (["committee", "new", "--local", "0", "--dir", "d"], "must be >= 1"),
    (["committee", "new", "--local", "2", "--workers", "0", "--dir", "d"], "must be >= 1"),
    (["committee", "new", "--local", "2"], "--local needs --dir"),
    (["committee", "new", "--local", "2", "--dir", "d", "--set", "nope=1"], "unknown field"),
    (["committee", "new", "--local", "2", "--dir", "d", "--set", "gc_depth=-1"],
     "positive integer"),
    (["committee", "new", "--keys", "missing.json", "--out", "c.json"], "file not found"),
    (["run", "--keys", "missing.json", "--committee", "c.json", "--store", "s"],
     "file not found"),
    (["testnet", "--nodes", "0"], "must be >= 1"),
    (["testnet", "--workers", "0"], "must be >= 1"),
    (["testnet", "--rate", "-5"], "must be >= 0"),
]


@pytest.mark.parametrize(("argv", "message"), BAD_INPUT, ids=lambda v: " ".join(v)
                         if isinstance(v, list) else None)
def test_bad_input_exits_2_with_a_clear_message(argv, message, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    try:
        code = main(argv)
    except SystemExit as exit_:  # argparse
        code = exit_.code
    assert code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "d").exists()  # nothing half-written


@pytest.fixture
def net(tmp_path):
    return local_network(tmp_path / "net", nodes=4, workers=2)


def _run(net, *extra, keys=0, committee=None):
    return main(["run", "--keys", str(net.key_files[keys]),
                 "--committee", str(committee or net.committee_file),
                 "--parameters", str(net.parameters_file),
                 "--store", str(net.directory / "store"), *extra])


def test_run_refuses_a_key_file_of_another_committee(net, tmp_path, capsys):
    stranger = tmp_path / "stranger.json"
    AuthorityKeys.generate(2).save(stranger)
    assert main(["run", "--keys", str(stranger), "--committee", str(net.committee_file),
                 "--store", str(tmp_path / "s")]) == 2
    assert "is not in the committee" in capsys.readouterr().err


def test_run_refuses_a_key_file_whose_network_keys_differ(net, tmp_path, capsys):
    forged = AuthorityKeys.load(net.key_files[0])
    forged = AuthorityKeys(forged.signing, AuthorityKeys.generate(1).primary, forged.workers)
    forged.save(tmp_path / "forged.json")
    assert main(["run", "--keys", str(tmp_path / "forged.json"),
                 "--committee", str(net.committee_file), "--store", str(tmp_path / "s")]) == 2
    assert "does not match the key file" in capsys.readouterr().err


def test_run_refuses_a_bad_committee_file(net, tmp_path, capsys):
    bad = tmp_path / "bad.json"
    document = json.loads(net.committee_file.read_text())
    next(iter(document["authorities"].values()))["stake"] = 0
    bad.write_text(json.dumps(document))
    assert _run(net, committee=bad) == 2
    assert "stake: must be a positive integer" in capsys.readouterr().err


@pytest.mark.parametrize(("extra", "message"), [
    (["--role", "worker"], "--role worker needs it"),
    (["--worker-id", "1"], "--worker-id goes with --role worker"),
    (["--role", "worker", "--worker-id", "2"], "must be in 0..1"),
])
def test_run_checks_role_arguments(net, extra, message, capsys):
    assert _run(net, *extra) == 2
    assert message in capsys.readouterr().err


def test_run_refuses_a_port_in_use_before_starting_anything(net, capsys):
    me = net.committee.authorities[AuthorityKeys.load(net.key_files[0]).name]
    with bind_listener(me.workers[1].worker_address, "test") as taken:
        taken.listen()
        assert _run(net) == 2
    error = capsys.readouterr().err
    assert "worker 1 address" in error and "port already in use" in error
    assert not (net.directory / "store" / "primary.db").exists()


def test_bind_listener_falls_back_to_all_interfaces_for_a_foreign_address():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with bind_listener(f"192.0.2.1:{port}", "test") as sock:  # TEST-NET-1: never local
        assert sock.getsockname() == ("0.0.0.0", port)


async def test_evidence_list_prints_and_verifies_what_a_primary_stored(net, tmp_path, capsys):
    """Evidence a primary stored (two signed headers of one author for one round), listed
    with ``narwhal evidence list``: in-process, and as a child process while the store is
    still open (the node running: read-only, no lock)."""
    import attrs

    from narwhal.messages import Header
    from narwhal.primary.evidence import FAMILY, EvidenceRecorder
    from narwhal.store import Store

    byzantine = AuthorityKeys.load(net.key_files[1])

    def header(payload):
        unsigned = Header(byzantine.name, 5, payload, (), (), bytes(64))
        return attrs.evolve(unsigned, signature=byzantine.signing.sign(unsigned.digest()))

    a, b = header(()), header(((b"\x01" * 32, 0),))
    store_dir = tmp_path / "store"
    argv = ["evidence", "list", "--store", str(store_dir), "--committee", str(net.committee_file)]
    async with Store.open(store_dir / "primary.db", synchronous="NORMAL") as store:
        await EvidenceRecorder(store).headers(a, b)
        result = await asyncio.to_thread(
            subprocess.run, [sys.executable, "-m", "narwhal.node", *argv], capture_output=True,
            text=True, timeout=60, env=child_env(), check=False)
        assert result.returncode == 0, result.stderr
        [line, total] = result.stdout.splitlines()
        assert f"author {byzantine.name.hex()} round 5" in line and "signatures valid" in line
        assert a.digest().hex() in line and b.digest().hex() in line
        assert total.startswith("1 pieces of equivocation evidence")
        [(key, value)] = store.items(FAMILY)
        forged = value.replace(a.signature, bytes(64)) if a.signature in value else value.replace(
            b.signature, bytes(64))
        await store.put(FAMILY, key, forged)
    assert main([*argv, "--json"]) == 1  # a piece that fails verification: exit code 1
    [row] = json.loads(capsys.readouterr().out)
    assert row["author"] == byzantine.name.hex() and row["round"] == 5
    assert row["signatures_valid"] is False and row["kind"] == "header"
    assert main(["evidence", "list", "--store", str(store_dir / "primary.db")]) == 0
    assert "signatures" not in capsys.readouterr().out  # nothing checked without a committee
    assert main(["evidence", "list", "--store", str(tmp_path / "nowhere")]) == 2
    assert "no store at" in capsys.readouterr().err
