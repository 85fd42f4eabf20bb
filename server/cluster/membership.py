"""Membership: which nodes are alive, by heartbeat.

Every ``HEARTBEAT_INTERVAL`` seconds a node sets ``sb:alive:{node}`` to expire
``NODE_TIMEOUT`` seconds later and, every third of the key TTL, refreshes the expiry of the
sessions it holds and of the broadcast bodies their histories hold. A node
whose alive key expired is dead: another node may take its sessions over. A node that stops
cleanly deletes its key at once (:meth:`Membership.leave`).
"""

from __future__ import annotations

import asyncio
import contextlib
import time

import structlog

from server.cluster.shared import SharedBodies
from server.cluster.store import (
    UNREACHABLE,
    RedisStore,
    alive_key,
    h_key,
    m_key,
    s_key,
    u_key,
)
from server.sessions import SessionRegistry

log = structlog.get_logger("switchboard.cluster.membership")

#: Seconds between heartbeats (alive key, counters, session TTL refresh).
HEARTBEAT_INTERVAL = 2.0
#: A node whose heartbeat is older than this is presumed dead.
NODE_TIMEOUT = 6.0


def key_ttl(session_ttl: float) -> int:
    """How long a session's keys live after its owner last refreshed them: its SESSION_TTL,
    plus the time it takes to notice the owner died, so another node can still take it."""
    return int(max(session_ttl, 1) + NODE_TIMEOUT + HEARTBEAT_INTERVAL)


class Membership:
    """This node's heartbeat, and what it knows of the others."""

    def __init__(self, store: RedisStore, registry: SessionRegistry, shared: SharedBodies
                 ) -> None:
        self.store = store
        self.registry = registry
        self.shared = shared
        self.refreshed_at = 0.0
        self._task: asyncio.Task[None] | None = None
        store.on_state_change(self._state_changed)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._beat_forever(),
                                                            name="cluster-heartbeat")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task

    async def leave(self) -> None:
        """This node is gone from now on (it stops)."""
        await self.store.redis.delete(alive_key(self.store.me))

    async def alive(self, node: str) -> bool:
        async with self.store.guard():
            return bool(await self.store.redis.exists(alive_key(node)))

    async def _state_changed(self, healthy: bool) -> None:
        if healthy:
            with contextlib.suppress(Exception):
                await self.beat()

    async def _beat_forever(self) -> None:
        while True:
            await asyncio.sleep(HEARTBEAT_INTERVAL)
            if not self.store.healthy:
                continue
            try:
                await self.beat()
            except UNREACHABLE as exc:
                self.store.report_failure(exc)
            except Exception:
                log.exception("cluster_heartbeat_failed")

    async def beat(self) -> None:
        store = self.store
        ttl = store.key_ttl
        pipe = store.redis.pipeline(transaction=False)
        pipe.set(alive_key(store.me), b"1", ex=int(NODE_TIMEOUT))
        now = time.monotonic()
        if now - self.refreshed_at >= ttl / 3:  # keep the sessions we hold from expiring
            self.refreshed_at = now
            for client_id in self.registry.sessions:
                pipe.expire(s_key(client_id), ttl)
                pipe.expire(h_key(client_id), ttl)
            for user_id in self.registry.users:
                pipe.expire(u_key(user_id), ttl)
            for message_id in self.shared.live():
                pipe.expire(m_key(message_id), ttl)
        await pipe.execute()
