"""Cluster-wide views: ``GET /clients``, ``GET /channels`` and ``GET /status`` over every node.

A view first asks every node to write out what its journal noted, the counters of the sessions
it holds included, and to report its own counters (``flush``: a barrier a few milliseconds
long), then reads the sessions from Redis (this
node's own from memory), so it shows what the API did just before, wherever that happened.
Views are linear in the number of sessions (one ``HGETALL`` each, pipelined). A node that
does not answer within SYNC_TIMEOUT is missing from ``/status``'s node list and counters; its
sessions are listed as Redis last saw them.
"""

from __future__ import annotations

from typing import Any

import structlog

from server.cluster.bus import RedisPeers
from server.cluster.journal import RedisJournal
from server.cluster.store import IDX_KEY, RedisStore, s_key, session_from_redis, text
from server.seams import SessionInfo
from server.sessions import SessionRegistry

log = structlog.get_logger("switchboard.cluster.views")

#: How long a listing waits for the other nodes to write out what they noted.
SYNC_TIMEOUT = 2.0
#: The counters each node keeps (``GET /status`` sums them over the nodes).
COUNTERS = frozenset({"total_messages_sent", "total_messages_received", "total_messages",
                      "total_connections_ever", "total_connections", "total_broadcasts",
                      "total_resumes", "total_sessions_expired", "total_slow_disconnects"})


class ClusterViews:
    def __init__(self, store: RedisStore, registry: SessionRegistry, journal: RedisJournal,
                 peers: RedisPeers) -> None:
        self.store = store
        self.registry = registry
        self.journal = journal
        self.peers = peers
        peers.handle("flush", self._flush_for_peer)

    async def _flush_for_peer(self, header: dict[str, Any], body: bytes) -> dict[str, Any]:
        await self.journal.flush(counters=bool(header.get("counters")))
        return self._report()

    def _report(self) -> dict[str, Any]:
        """This node's own counts and counters."""
        stats = self.registry.stats()
        return {"node_id": self.store.me, "sessions": stats["total_sessions"],
                "connected": stats["connected_clients"],
                "counters": {k: v for k, v in stats.items() if k in COUNTERS}}

    async def _sync(self) -> list[dict[str, Any]]:
        """Return once every node (that answers within SYNC_TIMEOUT) wrote what it noted; the
        reports of those nodes, this one first."""
        others = await self.peers.publish_all("flush", {"counters": True})
        await self.journal.flush(counters=True)
        return [self._report(), *await others.replies(SYNC_TIMEOUT)]

    async def everything(self, ids: list[str] | None = None) -> list[SessionInfo]:
        """Every session in the cluster (or those of ``ids``) with its node (this node's own
        from memory), as of the last :meth:`_sync`."""
        store = self.store
        held = self.registry.sessions
        async with store.guard():
            if ids is None:
                ids = [text(i) for i in await store.redis.zrange(IDX_KEY, 0, -1)]
                mine = list(held.values())
            else:
                mine = [held[i] for i in ids if i in held]
            remote_ids = [i for i in ids if i not in held]
            pipe = store.redis.pipeline(transaction=False)
            for client_id in remote_ids:
                pipe.hgetall(s_key(client_id))
            rows = await pipe.execute() if remote_ids else []
            gone = [cid for cid, row in zip(remote_ids, rows, strict=True) if not row]
            if gone:
                await store.redis.zrem(IDX_KEY, *gone)
        out = [SessionInfo.of(s, store.me) for s in mine]
        for client_id, row in zip(remote_ids, rows, strict=True):
            if not row or b"token" not in row:
                continue  # a reservation for a session being opened
            session = session_from_redis(client_id, row, (), 1)
            out.append(SessionInfo(session, text(row.get(b"node")),
                                   row.get(b"connected") == b"1",
                                   int(row.get(b"history_size") or 0)))
        return out

    async def sessions(self, *, channel: str | None = None, client_type: str | None = None,
                       connected: bool | None = None, user_id: str | None = None,
                       ids: list[str] | None = None) -> list[SessionInfo]:
        """The sessions matching the filters (among ``ids`` when given)."""
        await self._sync()
        return [info for info in await self.everything(ids)
                if (channel is None or channel in info.session.channels)
                and (client_type is None or info.session.client_type == client_type)
                and (connected is None or info.connected == connected)
                and (user_id is None or info.session.user_id == user_id)]

    async def channel_counts(self) -> dict[str, int]:
        await self._sync()
        return _channel_counts(await self.everything())

    async def status(self, here: dict[str, Any]) -> dict[str, Any]:
        """The cluster's counts and counters at the top level (as one node shows its own),
        this node's own counts under ``local``, the nodes that answered under ``cluster``."""
        nodes = await self._sync()
        sessions = await self.everything()
        totals: dict[str, int] = {}
        for node in nodes:
            for key, value in node["counters"].items():
                totals[key] = totals.get(key, 0) + int(value)
        connected = sum(1 for info in sessions if info.connected)
        channels = _channel_counts(sessions)
        out = {**here, **totals, "local": {k: here[k] for k in (
            "connected_clients", "total_sessions", "offline_sessions", "total_channels")}}
        out.update({
            "connected_clients": connected, "total_clients": connected,
            "active_connections": connected, "total_sessions": len(sessions),
            "offline_sessions": len(sessions) - connected,
            "total_channels": len(channels), "channel_stats": channels,
            "active_channels": list(channels),
            "cluster": {"nodes": [{k: node[k] for k in ("node_id", "sessions", "connected")}
                                  for node in sorted(nodes, key=lambda n: n["node_id"])],
                        "node_count": len(nodes), "counters": totals},
        })
        return out


def _channel_counts(sessions: list[SessionInfo]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for info in sessions:
        for channel in info.session.channels:
            counts[channel] = counts.get(channel, 0) + 1
    return dict(sorted(counts.items()))
