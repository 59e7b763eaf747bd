"""``--dial-map``: a node-local file read and checked against the committee; the committee
and its network id are untouched by it (the relayed cluster runs on it in
tests/testing/test_chaos.py)."""

from __future__ import annotations

import json

import pytest

from narwhal.config import ConfigError
from narwhal.node.__main__ import build_parser
from narwhal.node.dial_map import load_dial_map, save_dial_map
from tests.node.helpers import local_network


def test_dial_map_round_trips_and_refuses_addresses_outside_the_committee(tmp_path):
    net = local_network(tmp_path / "net", nodes=4, workers=1)
    other = net.committee.authorities[net.committee.authorities_sorted()[1]]
    primary = tuple(other.primary.address.rsplit(":", 1))
    mapping = {(primary[0], int(primary[1])): ("127.0.0.1", 9)}
    save_dial_map(tmp_path / "map.json", mapping)
    assert load_dial_map(tmp_path / "map.json", net.committee) == mapping

    (tmp_path / "bad.json").write_text(json.dumps({"127.0.0.1:1": "127.0.0.1:2"}))
    with pytest.raises(ConfigError, match="not a primary or worker address"):
        load_dial_map(tmp_path / "bad.json", net.committee)
    (tmp_path / "worse.json").write_text(json.dumps({other.primary.address: "nowhere"}))
    with pytest.raises(ConfigError, match="port"):
        load_dial_map(tmp_path / "worse.json", net.committee)


def test_run_documents_the_dial_map_flag():
    run = build_parser()._subparsers._group_actions[0].choices["run"]
    assert "--dial-map" in run.format_help()
    assert "network id" in run.format_help()
