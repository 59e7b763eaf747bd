"""What consensus leaves in a primary's store: the ordered output records and the
consensus state, with their keys and codecs.

Both live in the store next to the DAG (families ``output`` and ``consensus``) and are
written together, atomically, in commit order (``narwhal/primary/node.py``). The output
service reads the records back to serve subscribers, a restart reads the state, a peer that
fell behind the others' retention asks for a checkpoint (``wire_spec.md`` 9.3), and the
simulator reads every validator's output to check it: one codec for all of them, here,
beside the protocol that produces what they encode.

- ``output`` / ``index`` (u64, big-endian) -> ``[index, round, author, certificate digest,
  [[batch digest, worker id], ...]]`` (canonical CBOR);
- ``consensus`` / ``state`` -> ``{"index", "last_committed_round", "last_committed":
  [[authority, round], ...]}``: the state after the last written commit;
- ``consensus`` / ``checkpoint/`` + leader round (u64) -> the same map, the state right
  after that leader's commit (what state transfer installs);
- ``consensus`` / ``output_floor`` -> u64: indexes below it were never computed here (a
  state transfer skipped them).
"""

from __future__ import annotations

import cbor2

from narwhal.consensus.protocols import ConsensusState
from narwhal.messages import Certificate, Checkpoint

__all__ = ["CHECKPOINT_PREFIX", "CONSENSUS_STATE_KEY", "OUTPUT_FLOOR_KEY", "OutputRecord",
           "checkpoint_key", "decode_consensus_state", "decode_output_record", "decode_state",
           "encode_consensus_state", "encode_output_record", "encode_state"]

CONSENSUS_STATE_KEY = b"state"
#: ``consensus`` key of the lowest output index this node can serve after a state transfer
#: (the indexes below it were never computed here).
OUTPUT_FLOOR_KEY = b"output_floor"
#: ``consensus`` keys of the per-leader checkpoints: this prefix and the leader's round.
CHECKPOINT_PREFIX = b"checkpoint/"

#: index, round, author, certificate digest, payload ((batch digest, worker id), ...).
OutputRecord = tuple[int, int, bytes, bytes, list[tuple[bytes, int]]]


def encode_output_record(index: int, certificate: Certificate) -> bytes:
    """One entry of the ordered output: what a subscriber needs to fetch the transactions."""
    header = certificate.header
    return cbor2.dumps([index, header.round, header.author, certificate.digest(),
                        [list(p) for p in header.payload]], canonical=True)


def decode_output_record(blob: bytes) -> OutputRecord:
    index, round_, author, digest, payload = cbor2.loads(blob)
    return index, round_, author, digest, [(d, w) for d, w in payload]


def encode_consensus_state(state: ConsensusState, index: int) -> bytes:
    return encode_state(index, state.last_committed_round, state.last_committed)


def encode_state(index: int, last_committed_round: int, last_committed: dict[bytes, int]) -> bytes:
    return cbor2.dumps({"index": index, "last_committed_round": last_committed_round,
                        "last_committed": sorted(last_committed.items())}, canonical=True)


def checkpoint_key(leader_round: int) -> bytes:
    """Key, in the ``consensus`` family, of the checkpoint of a committed leader's round."""
    return CHECKPOINT_PREFIX + leader_round.to_bytes(8, "big")


def decode_state(blob: bytes) -> Checkpoint:
    """A persisted consensus state (:func:`encode_state`): the consensus state itself, or
    the checkpoint of a committed leader (its round is then ``last_committed_round``)."""
    value = cbor2.loads(blob)
    return Checkpoint(value["last_committed_round"], int(value["index"]),
                      tuple((bytes(a), r) for a, r in value["last_committed"]))


def decode_consensus_state(blob: bytes, state: ConsensusState) -> int:
    """Load a persisted consensus state into ``state``; return the consensus index."""
    decoded = decode_state(blob)
    state.last_committed = dict(decoded.last_committed)
    state.last_committed_round = decoded.leader_round
    return decoded.index
