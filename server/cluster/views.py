"""Cluster-wide views: ``GET /clients``, ``GET /channels`` and ``GET /status`` over every node.

A listing first asks every node to write out what its journal noted (``flush``, a barrier a
few milliseconds long), then reads the sessions from Redis (this node's own from memory), so
it shows what the API did just before, wherever that happened. Listings are linear in the
number of sessions (one ``HGETALL`` each, pipelined).
"""

from __future__ import annotations

from typing import Any

import structlog

from server.cluster.bus import RedisPeers
from server.cluster.journal import RedisJournal
from server.cluster.membership import Membership
from server.cluster.store import IDX_KEY, RedisStore, s_key, session_from_redis, text
from server.seams import SessionInfo
from server.sessions import SessionRegistry

log = structlog.get_logger("switchboard.cluster.views")

#: How long a listing waits for the other nodes to write out what they noted.
SYNC_TIMEOUT = 2.0


class ClusterViews:
    def __init__(self, store: RedisStore, registry: SessionRegistry, journal: RedisJournal,
                 membership: Membership, peers: RedisPeers) -> None:
        self.store = store
        self.registry = registry
        self.journal = journal
        self.membership = membership
        self.peers = peers
        peers.handle("flush", self._flush_for_peer)

    async def _flush_for_peer(self, header: dict[str, Any], body: bytes) -> dict[str, Any]:
        await self.journal.flush()
        return {}

    async def _sync(self) -> None:
        """Return once every node (that answers within SYNC_TIMEOUT) wrote what it noted."""
        others = await self.peers.publish_all("flush", {})
        await self.journal.flush()
        await others.replies(SYNC_TIMEOUT)

    async def everything(self) -> list[SessionInfo]:
        """Every session in the cluster with its node (this node's own from memory)."""
        await self._sync()
        store = self.store
        held = self.registry.sessions
        async with store.guard():
            ids = [text(i) for i in await store.redis.zrange(IDX_KEY, 0, -1)]
            remote_ids = [i for i in ids if i not in held]
            pipe = store.redis.pipeline(transaction=False)
            for client_id in remote_ids:
                pipe.hgetall(s_key(client_id))
            rows = await pipe.execute() if remote_ids else []
            gone = [cid for cid, row in zip(remote_ids, rows, strict=True) if not row]
            if gone:
                await store.redis.zrem(IDX_KEY, *gone)
        out = [SessionInfo.of(s, store.me) for s in held.values()]
        for client_id, row in zip(remote_ids, rows, strict=True):
            if not row or b"token" not in row:
                continue  # a reservation for a session being opened
            session = session_from_redis(client_id, row, (), 1)
            out.append(SessionInfo(session, text(row.get(b"node")),
                                   row.get(b"connected") == b"1",
                                   int(row.get(b"history_size") or 0)))
        return out

    async def sessions(self, *, channel: str | None = None, client_type: str | None = None,
                       connected: bool | None = None) -> list[SessionInfo]:
        return [info for info in await self.everything()
                if (channel is None or channel in info.session.channels)
                and (client_type is None or info.session.client_type == client_type)
                and (connected is None or info.connected == connected)]

    async def channel_counts(self) -> dict[str, int]:
        return _channel_counts(await self.everything())

    async def status(self, here: dict[str, Any]) -> dict[str, Any]:
        """This node's view (under ``local`` for its own counts) with the cluster's counts at
        the top level and the live nodes under ``cluster``."""
        sessions = await self.everything()
        nodes = await self.membership.nodes()
        totals: dict[str, int] = {}
        for info in nodes:
            for key, value in info.items():
                if key.startswith("total_") and isinstance(value, int):
                    totals[key] = totals.get(key, 0) + value
        connected = sum(1 for info in sessions if info.connected)
        channels = _channel_counts(sessions)
        out = {**here, "local": {k: here[k] for k in (
            "connected_clients", "total_sessions", "offline_sessions", "total_channels")}}
        out.update({
            "connected_clients": connected, "total_clients": connected,
            "active_connections": connected, "total_sessions": len(sessions),
            "offline_sessions": len(sessions) - connected,
            "total_channels": len(channels), "channel_stats": channels,
            "active_channels": list(channels),
            "cluster": {"nodes": [{"node_id": n["node_id"], "sessions": n.get("sessions", 0),
                                   "connected": n.get("connected", 0)} for n in nodes],
                        "node_count": len(nodes), "counters": totals},
        })
        return out


def _channel_counts(sessions: list[SessionInfo]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for info in sessions:
        for channel in info.session.channels:
            counts[channel] = counts.get(channel, 0) + 1
    return dict(sorted(counts.items()))
