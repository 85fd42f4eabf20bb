"""The seams hold by construction: the code that serves clients and the API knows no cluster.

Read from the sources (their imports), not from a running gateway: ``api/``, the frame
handlers, the socket endpoint and the gateway import nothing of Redis or of the Redis
implementations (``server.cluster``), which only app wiring imports, and only for
``BROKER_URL=redis://``; no module of the cluster package grows past ~500 lines.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
#: Written once for every topology: they must not know which one they run on.
TOPOLOGY_FREE = sorted([*ROOT.glob("api/*.py"), *ROOT.glob("handlers/*.py"),
                        *(ROOT / "server" / name for name in (
                            "ws.py", "gateway.py", "seams.py", "sessions.py", "streams.py",
                            "router.py", "protocol.py", "tools.py", "webhooks.py",
                            "channels.py", "channel_history.py"))])
CLUSTER_MODULE_MAX_LINES = 500


def imported_modules(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


@pytest.mark.parametrize("path", TOPOLOGY_FREE, ids=lambda p: str(p.relative_to(ROOT)))
def test_the_topology_free_code_imports_no_cluster_module(path: Path) -> None:
    cluster = {name for name in imported_modules(path)
               if name.split(".")[0] == "redis" or name.startswith("server.cluster")}
    assert not cluster, f"{path.relative_to(ROOT)} imports {sorted(cluster)}"


def test_only_app_wiring_imports_the_cluster_package() -> None:
    importers = sorted(str(path.relative_to(ROOT)) for path in [
        *ROOT.glob("server/*.py"), *ROOT.glob("api/*.py"), *ROOT.glob("handlers/*.py")]
        if any(name.startswith("server.cluster") for name in imported_modules(path)))
    assert importers == ["server/app.py"]


@pytest.mark.parametrize("path", sorted((ROOT / "server" / "cluster").glob("*.py")),
                         ids=lambda p: p.name)
def test_no_cluster_module_is_over_500_lines(path: Path) -> None:
    lines = len(path.read_text().splitlines())
    assert lines <= CLUSTER_MODULE_MAX_LINES, f"{path.name}: {lines} lines"


def test_one_node_never_imports_redis() -> None:
    script = ("import sys\n"
              "from server.app import create_apps\n"
              "from server.config import Settings\n"
              "create_apps(Settings())\n"
              "print(sorted(m for m in sys.modules if m.split('.')[0] == 'redis'\n"
              "             or m.startswith('server.cluster')))\n")
    out = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True,
                         text=True, timeout=60, check=True)
    assert out.stdout.strip() == "[]", out.stdout
