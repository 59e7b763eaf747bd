"""Consensus on the certificate DAG: Bullshark (default) and Tusk."""

from narwhal.consensus.protocols import Bullshark, ConsensusState, Tusk, leader_of

__all__ = ["Bullshark", "ConsensusState", "Tusk", "leader_of"]
