"""Many processes and machines acting as one gateway, over Redis (``BROKER_URL=redis://…``).

The Redis implementations of the seams in :mod:`server.seams`, one module per concern.
Imported only by app wiring (:func:`server.app.create_backend`) when ``BROKER_URL`` is
``redis://`` or ``rediss://``; the one-node path never imports it (nor redis-py).

=================  =====================================================================
``store``          the Redis connection and its health, the key schema, the Lua scripts
                   (``lua/*.lua``), sessions to and from their Redis form
``bus``            :class:`~server.seams.Peers`: requests between nodes over pub/sub
``journal``        :class:`~server.sessions.Journal`: the registry's changes, written behind
``shared``         broadcast frames stored once (bodies by message id, references in
                   histories) and how long a body lives
``membership``     heartbeats: which nodes are alive
``ownership``      :class:`~server.seams.Directory`: who holds each session, moving it
``views``          listings, channel counts and status over every node
``users``          the sessions of each user, and MAX_SESSIONS_PER_USER across nodes
``channels``       presence (each channel's members) and channel history
``idempotency``    :class:`~server.seams.Idempotency`: keys shared by every node
=================  =====================================================================

See docs/ARCHITECTURE.md for how a delivery travels, and docs/SCALING.md for operating it.
"""

from __future__ import annotations

from typing import Any

from server.cluster.bus import RedisPeers
from server.cluster.channels import ClusterChannels
from server.cluster.idempotency import RedisIdempotency
from server.cluster.journal import RedisJournal
from server.cluster.membership import Membership, key_ttl
from server.cluster.ownership import RedisDirectory
from server.cluster.store import RedisStore
from server.cluster.users import ClusterUsers
from server.cluster.views import ClusterViews
from server.config import Settings
from server.seams import default_node_id
from server.sessions import SessionRegistry

__all__ = ["RedisBackend"]


class RedisBackend:
    """One node of a cluster: the Redis seams, wired together (the registry's journal too)."""

    def __init__(self, settings: Settings, registry: SessionRegistry) -> None:
        self.node_id = settings.node_id or default_node_id()
        self.shutdown_timeout = settings.shutdown_timeout or 1.0
        self.store = RedisStore(settings.broker_url, self.node_id,
                                key_ttl=key_ttl(settings.session_ttl))
        self.peers = RedisPeers(self.store)
        self.journal = RedisJournal(self.store, registry, history_limit=settings.history_limit)
        registry.journal = self.journal
        self.membership = Membership(self.store, registry, self.journal.shared)
        views = ClusterViews(self.store, registry, self.journal, self.peers)
        self.directory = RedisDirectory(self.store, registry, self.journal, self.membership,
                                        self.peers, views, ClusterUsers(self.store, registry),
                                        ClusterChannels(self.store, registry, self.journal,
                                                        settings),
                                        history_limit=settings.history_limit)
        self.idempotency = RedisIdempotency(self.store, settings.idempotency_ttl)

    @property
    def healthy(self) -> bool:
        """Redis reachable, and this node not leaving."""
        return self.store.healthy and not self.store.closing

    async def start(self) -> None:
        self.journal.start()
        self.membership.start()
        await self.peers.start()

    async def stop(self) -> None:
        # Stop taking other nodes' requests first (they see this node gone and take over or
        # answer 503), then write everything out and leave.
        await self.peers.stop()
        await self.directory.leave(self.shutdown_timeout)
        await self.journal.stop()
        await self.membership.stop()
        await self.store.close()

    def describe(self) -> dict[str, Any]:
        return self.store.describe()
