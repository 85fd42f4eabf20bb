"""Channels in a cluster: who is in each channel (presence) and each channel's recent frames
(its history), in Redis, shared by every node.

Presence
    ``sb:p:{channel}`` maps each member's client_id to its user_id. The node holding a session
    records its joins and leaves there (one script call per batch, ``presence.lua``): a
    join that adds a member, or a leave that removes one, is a change, and only the node
    whose call made it fires the change's frames and events — each once over the cluster,
    however many nodes see it. A session moving between nodes keeps its membership (no
    leave, no join). A member whose session is gone without leaving (its node died and the
    session expired in Redis) is *stale*: a presence read or the periodic sweep records its
    leave. Before recording joins the journal is flushed, so a member's session is always in
    Redis by the time it is listed (a member without one is truly gone).

History
    ``sb:ch:{channel}`` holds the channel's recent frames (``channel_history.lua``): at most
    the rule's ``history`` frames and CHANNEL_HISTORY_BYTES bytes (``sb:chb:{channel}``), for
    CHANNEL_HISTORY_TTL seconds after the last one; ``sb:chidx`` orders the channels by last
    write, and beyond CHANNEL_HISTORY_CHANNELS the oldest ring is dropped.
"""

from __future__ import annotations

import time
from typing import Any

from server.cluster.journal import RedisJournal
from server.cluster.store import PREFIX, RedisStore, s_key, text
from server.config import Settings
from server.metrics import HOT
from server.seams import Member, MemberChange, Presence
from server.sessions import SessionRegistry

#: Changes recorded by one script call.
BATCH = 256
PCH_KEY = f"{PREFIX}pch"
CHIDX_KEY = f"{PREFIX}chidx"


def p_key(channel: str) -> str:
    return f"{PREFIX}p:{channel}"


def ch_key(channel: str) -> str:
    return f"{PREFIX}ch:{channel}"


def chb_key(channel: str) -> str:
    return f"{PREFIX}chb:{channel}"


class ClusterChannels:
    def __init__(self, store: RedisStore, registry: SessionRegistry, journal: RedisJournal,
                 settings: Settings) -> None:
        self.store = store
        self.registry = registry
        self.journal = journal
        self.history_bytes = settings.channel_history_bytes
        self.history_channels = settings.channel_history_channels
        self.history_ttl = int(settings.channel_history_ttl)

    # --- presence -------------------------------------------------------------------------

    async def record(self, changes: list[MemberChange]) -> list[tuple[bool, bool]]:
        if any(change.joined for change in changes):
            await self.journal.flush()
        out: list[tuple[bool, bool]] = []
        store = self.store
        for start in range(0, len(changes), BATCH):
            args: list[str] = []
            for joined, channel, client_id, user_id in changes[start:start + BATCH]:
                args += ("j" if joined else "l", channel, client_id, user_id or "")
            async with store.guard():
                result = await store.scripts["presence"](args=args)
            out += [(bool(result[i]), bool(result[i + 1])) for i in range(0, len(result), 2)]
        return out

    async def presence(self, channel: str, limit: int) -> Presence:
        store = self.store
        async with store.guard():
            total = int(await store.redis.hlen(p_key(channel)))
            if total <= limit:
                rows = await store.redis.hgetall(p_key(channel))
            else:
                rows = {}
                async for key, value in store.redis.hscan_iter(p_key(channel), count=limit):
                    rows[key] = value
                    if len(rows) >= limit:
                        break
            listed = {text(k): text(v) or None for k, v in rows.items()}
            states = await self._states(list(listed))
        members, stale = [], []
        for client_id in sorted(listed):
            state = states[client_id]
            if state is None:
                stale.append(MemberChange(False, channel, client_id, listed[client_id]))
            else:
                members.append(Member(client_id, listed[client_id], state))
        return Presence(members, total - len(stale), stale)

    async def _states(self, ids: list[str]) -> dict[str, bool | None]:
        """Whether each session is connected (None: it is gone); this node's from memory."""
        held = self.registry.sessions
        out: dict[str, bool | None] = {i: held[i].connected for i in ids if i in held}
        remote = [i for i in ids if i not in held]
        if remote:
            pipe = self.store.redis.pipeline(transaction=False)
            for client_id in remote:
                pipe.hget(s_key(client_id), "connected")
            for client_id, value in zip(remote, await pipe.execute(), strict=True):
                out[client_id] = None if value is None else value == b"1"
        return out

    async def stale(self, budget: int) -> list[MemberChange]:
        store = self.store
        found: list[MemberChange] = []
        async with store.guard():
            channels = [text(c) for c in await store.redis.srandmember(PCH_KEY, 16) or ()]
            for channel in channels:
                if budget <= 0:
                    break
                rows: dict[Any, Any] = {}
                async for key, value in store.redis.hscan_iter(p_key(channel), count=budget):
                    rows[key] = value
                    if len(rows) >= budget:
                        break
                budget -= len(rows)
                listed = {text(k): text(v) or None for k, v in rows.items()}
                states = await self._states(list(listed))
                found += [MemberChange(False, channel, cid, user)
                          for cid, user in listed.items() if states[cid] is None]
        return found

    # --- history --------------------------------------------------------------------------

    async def record_frame(self, channel: str, frame: bytes, keep: int) -> None:
        if len(frame) > self.history_bytes:
            HOT.limit_hit("channel_history_bytes")
            return
        store = self.store
        async with store.guard():
            by_bytes, rings = await store.scripts["channel_history"](
                keys=[ch_key(channel), chb_key(channel), CHIDX_KEY],
                args=[frame, keep, self.history_bytes, self.history_ttl, repr(time.time()),
                      self.history_channels, channel])
        if by_bytes:
            HOT.limit_hit("channel_history_bytes", int(by_bytes))
        if rings:
            HOT.limit_hit("channel_history_channels", int(rings))

    async def frames(self, channel: str, limit: int) -> list[bytes]:
        store = self.store
        async with store.guard():
            return list(await store.redis.lrange(ch_key(channel), -limit, -1))
