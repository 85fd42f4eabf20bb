"""The broker seam: how one node's API reaches clients held by other nodes.

As small as encode/broadcaster's: ``start(on_message)``, ``publish(topic, payload)``, ``stop()``
and a ``healthy`` flag. Fan-out to local sockets always happens in one place
(:meth:`server.sessions.SessionRegistry.fan_out`); a broker only carries a message to the other
nodes, each of which then fans out locally.

* ``memory://`` (default): one process, nothing to carry; publishing is a no-op.
* ``redis://`` / ``rediss://``: imported lazily from :mod:`server.redis_broker` so the default
  install never touches redis-py; it keeps its own reconnect/backoff.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Awaitable, Callable
from importlib import import_module
from urllib.parse import urlsplit

from server.errors import ConfigError

OnMessage = Callable[[str, bytes], Awaitable[None]]


class Broker:
    """Base class and in-memory implementation (single node)."""

    scheme = "memory"

    def __init__(self, url: str, node_id: str = "") -> None:
        self.url = url
        self.node_id = node_id or f"{socket.gethostname()}-{os.getpid()}"
        self._on_message: OnMessage | None = None

    @property
    def healthy(self) -> bool:
        """False while the backend is unreachable (readiness and API answers reflect it)."""
        return True

    @property
    def distributed(self) -> bool:
        """True when other nodes may hold clients (the API then asks them too)."""
        return False

    async def start(self, on_message: OnMessage) -> None:
        """Begin receiving messages published by other nodes."""
        self._on_message = on_message

    async def stop(self) -> None:
        self._on_message = None

    async def publish(self, topic: str, payload: bytes) -> None:
        """Carry ``payload`` to every other node subscribed to ``topic``. No-op in memory."""

    def describe(self) -> dict[str, object]:
        return {"backend": self.scheme, "node_id": self.node_id, "healthy": self.healthy}


MemoryBroker = Broker

_BACKENDS = {
    "memory": ("server.broker", "MemoryBroker"),
    "redis": ("server.redis_broker", "RedisBroker"),
    "rediss": ("server.redis_broker", "RedisBroker"),
}


def create_broker(url: str, node_id: str = "") -> Broker:
    """The broker for ``BROKER_URL``, chosen by its scheme and imported lazily."""
    scheme = urlsplit(url).scheme
    try:
        module_name, class_name = _BACKENDS[scheme]
    except KeyError:
        raise ConfigError(f"BROKER_URL: unsupported scheme {scheme!r}") from None
    cls = getattr(import_module(module_name), class_name)
    return cls(url, node_id)
