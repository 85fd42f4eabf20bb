"""Security tests use the shared fixtures of ``tests/conftest.py``, which start both apps with
production's ``AppRunner`` options (access log off, REQUEST_HEADER_TIMEOUT as the keep-alive and
header timer), so "the secret never reaches the logs" or "a slow client is cut off" is proved
of the real setup.

``edge_server`` is one real gateway process (``run_websocket_server.py``, configured through
the environment) shared by the tests that attack the edge from outside (issue 11); each test
that needs other settings starts its own with :func:`tests.processes.spawn_ready`. Every test
using it checks afterwards that its log holds no traceback.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.processes import Node, spawn_ready

#: The shared process's settings (small limits keep the attacks quick).
EDGE_ENV = {"MAX_MESSAGE_SIZE": "4096", "WS_COMPRESSION": "true",
            "SEND_QUEUE_BYTES": "1048576", "HISTORY_BYTES": "2097152", "WS_RATE_LIMIT": "0",
            "CALL_TOOL_TIMEOUT": "2", "PERMISSION_TIMEOUT": "1", "LOG_FORMAT": "json",
            "CHANNELS": "news,alerts"}


def no_traceback(node: Node, since: int = 0) -> None:
    """The process's log (from byte ``since``) holds no traceback and no crash event."""
    with node.log.open("rb") as log_file:
        log_file.seek(since)
        log = log_file.read().decode(errors="replace")
    for marker in ("Traceback", "handler_crashed", "api_crashed", "background_task_failed"):
        assert marker not in log, f"{marker} in the server log:\n{log[-4000:]}"


@pytest.fixture(scope="session")
def edge_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    node = spawn_ready(Path(tmp_path_factory.mktemp("edge")), "edge", **EDGE_ENV)
    try:
        yield node
    finally:
        node.stop()


@pytest.fixture
def edge(edge_server: Node) -> Iterator[Node]:
    """The shared process, checked for tracebacks (written during the test) afterwards."""
    start = edge_server.log.stat().st_size
    yield edge_server
    no_traceback(edge_server, start)
