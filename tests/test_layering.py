"""The package layering of docs/architecture.md, asserted.

Configuration sits below the network stack: loading a committee, parameters or key files
must not load ``narwhal.net`` or ``narwhal.wire`` (a simulator or a tool reads them without
sockets), and ``narwhal.crypto`` imports ``narwhal.config`` but never the reverse.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

from narwhal.config import Parameters
from narwhal.config.network import NetworkConfig

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("import_graph", ROOT / "tools" / "import_graph.py")
assert _spec is not None and _spec.loader is not None
import_graph = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(import_graph)

FORBIDDEN_IN_CONFIG = ("narwhal.net", "narwhal.wire", "narwhal.crypto")


def _is_within(module: str, packages: tuple[str, ...]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in packages)


def test_loading_config_and_crypto_loads_no_network_stack():
    code = ("import sys, narwhal.config, narwhal.crypto, narwhal.config.rate_limits\n"
            "print('\\n'.join(m for m in sys.modules if m.startswith('narwhal')))")
    loaded = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True,
                            text=True, cwd=ROOT).stdout.split()
    assert "narwhal.config.parameters" in loaded  # the probe really loaded configuration
    assert [m for m in loaded if _is_within(m, ("narwhal.net", "narwhal.wire"))] == []


def test_config_package_imports_nothing_from_net_wire_or_crypto():
    """Every import counts, including those under TYPE_CHECKING and inside functions."""
    sources = sorted((ROOT / "narwhal" / "config").glob("*.py"))
    assert len(sources) >= 5
    offending = {path.name: sorted(m for m in import_graph.narwhal_imports(path)
                                   if _is_within(m, FORBIDDEN_IN_CONFIG))
                 for path in sources}
    assert {name: found for name, found in offending.items() if found} == {}


def test_limits_module_imports_nothing_from_narwhal():
    """narwhal/limits.py is shared by wire and config because it depends on neither."""
    assert import_graph.narwhal_imports(ROOT / "narwhal" / "limits.py") == set()


def test_parameter_defaults_are_the_network_layers_defaults():
    """Each network default is written once (narwhal/config/network.py): the config the
    default Parameters build is exactly the network layer's default config."""
    assert Parameters().network_config() == NetworkConfig()


def test_the_output_service_and_the_simulator_read_records_from_consensus_not_the_node():
    """The ordered output's records are consensus's (narwhal/consensus/records.py): the
    output service and the simulator decode them without importing the primary node."""
    for path in ("narwhal/primary/output.py", "narwhal/consensus/records.py"):
        assert "narwhal.primary.node" not in import_graph.narwhal_imports(ROOT / path), path
    assert "narwhal.consensus.records" in import_graph.narwhal_imports(ROOT / "narwhal/sim/cluster.py")
