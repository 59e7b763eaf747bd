"""Node parameters and the committee: attrs classes, validated, stored as JSON.

One job per module:

- :mod:`~narwhal.config.json_files`: strict JSON files (duplicate keys refused, atomic
  writes), :class:`JsonReader` and :class:`ConfigError`; also used for the key files of
  :mod:`narwhal.crypto`.
- :mod:`~narwhal.config.parameters`: :class:`Parameters`, every tunable of a node.
- :mod:`~narwhal.config.committee`: :class:`Committee` and its authorities, and the
  ``host:port`` addresses they listen on.
- :mod:`~narwhal.config.network`: the network layer's settings as plain values
  (``RetryConfig``, ``ConnectionConfig``, ``NetworkConfig``, ``PeerInfo``, ...), owned here
  so that configuration never imports ``narwhal.net`` or ``narwhal.wire``.
- :mod:`~narwhal.config.rate_limits`: the default per-route rate limits.

This module only re-exports them: import from ``narwhal.config``.
"""

from __future__ import annotations

from narwhal.config.committee import (
    Authority,
    AuthorityPublicKeys,
    Committee,
    Endpoint,
    PrimaryInfo,
    WorkerInfo,
    format_address,
    parse_address,
)
from narwhal.config.json_files import (
    KEY_SIZE,
    ConfigError,
    JsonReader,
    PathLike,
    as_tuple,
    canonical_json,
    load_json,
    parse_hex,
    save_json,
    short_hex,
)
from narwhal.config.parameters import CONSENSUS_PROTOCOLS, DEFAULT_RETRY, Parameters

__all__ = [
    "CONSENSUS_PROTOCOLS", "DEFAULT_RETRY", "KEY_SIZE", "Authority", "AuthorityPublicKeys",
    "Committee", "ConfigError", "Endpoint", "JsonReader", "Parameters", "PathLike",
    "PrimaryInfo", "WorkerInfo", "as_tuple", "canonical_json", "format_address", "load_json",
    "parse_address", "parse_hex", "save_json", "short_hex",
]
