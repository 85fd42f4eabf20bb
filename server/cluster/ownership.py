"""Ownership and migration: which node holds each session, and moving it (the Redis
:class:`~server.seams.Directory`).

Every session has exactly one *owner*: the node that last held its WebSocket. The owner keeps
it in its registry (connected, or offline until ``SESSION_TTL`` runs out, exactly as on one
node), numbers its frames and journals it to Redis, where ``sb:s:{id}`` names the owner.

Moving a session
    A client resuming on node B a session owned by A: B checks the token against the digest
    in Redis, asks A to hand the session over (``takeover``); A closes its connection (4000,
    replaced), writes everything it noted, records B as the owner and answers; B loads state
    and history from Redis. Requests that reach a node while a session moves there or away
    wait (:meth:`RedisDirectory.held`) and are then re-routed, and broadcasts that cross the
    move are applied after it (:meth:`RedisDirectory.delivering`), so nothing is lost or
    delivered twice.

Taking over
    When the owner is gone (it released the session when it stopped: owner ``""``; or it
    died: nobody listens on its channel and its alive key expired), the node that needs the
    session takes it with an atomic compare-and-set on the owner. A node that died may have
    numbered frames it never wrote: the session continues at the next seq epoch
    (:meth:`~server.sessions.Session.mark_crash_gap`) and a resume from before says
    ``recovered: false``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import time
from collections.abc import Iterator
from typing import Any

import structlog

from server.cluster.bus import RedisPeers
from server.cluster.channels import ClusterChannels
from server.cluster.journal import RedisJournal
from server.cluster.membership import Membership
from server.cluster.store import IDX_KEY, RedisStore, s_key, text
from server.cluster.users import ClusterUsers
from server.cluster.views import ClusterViews
from server.errors import (
    ClientNotFound,
    CloseCode,
    PeerUnreachable,
    SessionMoved,
    Unavailable,
)
from server.seams import (
    Broadcast,
    MemberChange,
    Presence,
    SessionInfo,
    Where,
    may_resume,
)
from server.sessions import Session, SessionRegistry, token_digest

log = structlog.get_logger("switchboard.cluster.ownership")

#: Re-routing attempts when a session moves while we look for it.
MAX_HOPS = 4
#: How long the owner may take to hand a session over.
TAKEOVER_TIMEOUT = 5.0
#: How long a hand-over waits for the broadcasts this node is sending to reach every node.
INFLIGHT_WAIT = 2.0


def _not_found(client_id: str) -> ClientNotFound:
    return ClientNotFound(f"no session with client_id {client_id!r} (unknown or expired)")


class RedisDirectory:
    """Where sessions are, in a cluster: this node's registry, and Redis for the rest."""

    def __init__(self, store: RedisStore, registry: SessionRegistry, journal: RedisJournal,
                 membership: Membership, peers: RedisPeers, views: ClusterViews,
                 users: ClusterUsers, channels: ClusterChannels, *, history_limit: int
                 ) -> None:
        self.store = store
        self.registry = registry
        self.journal = journal
        self.membership = membership
        self.peers = peers
        self.views = views
        self.users = users
        self.channels = channels
        self.history_limit = history_limit
        #: Sessions being loaded here (resume / take-over): requests for them wait.
        self.claiming: dict[str, asyncio.Future[None]] = {}
        #: Sessions being handed to another node: requests for them wait, then re-route.
        self.releasing: dict[str, asyncio.Future[None]] = {}
        #: Broadcasts that reached this node while a session was being loaded here.
        self.parked: dict[str, list[Broadcast]] = {}
        #: Broadcasts this node is delivering (its own, until every node answered), each with
        #: a future done when it is.
        self.inflight: dict[Broadcast, asyncio.Future[None]] = {}
        peers.handle("takeover", self._takeover_for_peer)
        journal.on_lost = self._lost

    @property
    def me(self) -> str:
        return self.store.me

    # --- Directory ----------------------------------------------------------------------------

    def here(self, client_id: str) -> Session | None:
        if self.store.closing or client_id in self.releasing:
            return None
        return self.registry.get(client_id)

    async def locate(self, client_id: str) -> Where:
        if self.store.closing:
            self.store.require_healthy()  # 503: retry on another node
        local = self.here(client_id)
        if local is not None:
            return Where(local, self.me)
        for _ in range(MAX_HOPS):
            session = await self.held(client_id)
            if session is not None:
                return Where(session, self.me)
            owner = await self.store.owner(client_id)
            if owner is None:
                raise _not_found(client_id)
            if owner not in (self.me, ""):
                return Where(None, owner)
            # Released by a node that stopped (""), or ours in Redis but not held here (an
            # earlier process with this NODE_ID died): take it.
            session = await self._adopt(client_id, owner)
            if session is not None:
                return Where(session, self.me)
        raise Unavailable(f"client {client_id!r} kept moving between nodes; retry")

    async def held(self, client_id: str) -> Session | None:
        await self._settle(client_id)
        return self.registry.get(client_id)

    async def take_over(self, client_id: str, node: str) -> None:
        if await self.membership.alive(node):
            raise Unavailable(f"node {node!r} holding client {client_id!r} is not reachable "
                              f"right now; retry shortly")
        await self._adopt(client_id, node)  # None: another node has it now (asked next)

    async def claim_id(self, client_id: str, user_id: str | None = None,
                       per_user: int = 0) -> str | None:
        if self.registry.get(client_id) is not None:
            return None
        if user_id is not None:
            return await self.users.claim(client_id, user_id, per_user)
        async with self.store.guard():
            ok = await self.store.scripts["reserve_id"](
                keys=[s_key(client_id), IDX_KEY],
                args=[self.me, self.store.key_ttl, client_id, repr(time.time())])
        return client_id if ok == 1 else None

    async def resume(self, client_id: str, token: str | None,
                     user_id: str | None = None) -> Session | None:
        local = await self.held(client_id)
        if local is not None:
            return local if self._may_resume(local, token, user_id) else None
        self.store.require_healthy()
        asked_to_write = False
        for _ in range(MAX_HOPS):
            async with self.store.guard():
                digest, owner, owner_user = (text(v) for v in await self.store.redis.hmget(
                    s_key(client_id), ["token", "node", "user_id"]))
            if not digest and owner and owner != self.me and not asked_to_write:
                # A reservation: the session was opened on ``owner`` an instant ago and is not
                # written yet. Have it written, then look again.
                asked_to_write = True
                with contextlib.suppress(Unavailable):
                    await self.peers.request(owner, "flush", {}, timeout=TAKEOVER_TIMEOUT)
                continue
            if not digest or not may_resume(owner_user or None, user_id, token is not None) or (
                    token is not None and not hmac.compare_digest(
                        digest.encode(), token_digest(token).encode())):
                return None  # unknown, expired, the wrong token or another user's
            local = await self._settled_local(client_id)
            if local is not None:  # a send took it over here while we read Redis
                return local if self._may_resume(local, token, user_id) else None
            future = self._begin_claim(client_id)
            try:
                crashed = await self._take_from(client_id, owner)
                if crashed is None:
                    continue  # someone else took it meanwhile: ask them
                fields, session = await self.store.load(client_id, self.history_limit,
                                                        self.journal.shared)
                if session is None:
                    return None
                if text(fields.get(b"node")) != self.me:
                    continue
                if token is not None:
                    session.token_matches(token)  # checked above; now the session knows it
                if crashed:
                    session.mark_crash_gap()
                    log.warning("session_taken_from_dead_node", client_id=client_id,
                                previous_node=owner, gap=session.gap)
                if session.disconnected_at is None:
                    session.disconnected_at = time.time()
                self.registry.adopt(session)
                return session
            except ClientNotFound:
                return None
            finally:
                self._end_claim(client_id, future)
        raise Unavailable(f"session {client_id!r} kept moving between nodes; retry")

    @staticmethod
    def _may_resume(session: Session, token: str | None, user_id: str | None) -> bool:
        return may_resume(session.user_id, user_id, token is not None) and (
            token is None or session.token_matches(token))

    async def user_clients(self, user_id: str) -> list[str]:
        return await self.users.clients(user_id)

    async def ended(self, client_id: str) -> None:
        await self.journal.flush()

    @contextlib.contextmanager
    def delivering(self, broadcast: Broadcast) -> Iterator[None]:
        for parked in self.parked.values():
            parked.append(broadcast)
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.inflight[broadcast] = done
        try:
            yield
        finally:
            del self.inflight[broadcast]
            done.set_result(None)

    async def sessions(self, *, channel: str | None = None, client_type: str | None = None,
                       connected: bool | None = None, user_id: str | None = None
                       ) -> list[SessionInfo]:
        ids = None if user_id is None else await self.users.clients(user_id)
        return await self.views.sessions(channel=channel, client_type=client_type,
                                         connected=connected, user_id=user_id, ids=ids)

    async def channel_counts(self) -> dict[str, int]:
        return await self.views.channel_counts()

    async def status(self, here: dict[str, Any]) -> dict[str, Any]:
        return await self.views.status(here)

    async def record_membership(self, changes: list[MemberChange]) -> list[tuple[bool, bool]]:
        return await self.channels.record(changes)

    async def presence(self, channel: str, limit: int) -> Presence:
        return await self.channels.presence(channel, limit)

    async def stale_members(self, budget: int) -> list[MemberChange]:
        return await self.channels.stale(budget)

    async def record_channel_frame(self, channel: str, frame: bytes, keep: int) -> None:
        await self.channels.record_frame(channel, frame, keep)

    async def channel_frames(self, channel: str, limit: int) -> list[bytes]:
        return await self.channels.frames(channel, limit)

    # --- leaving ------------------------------------------------------------------------------

    async def leave(self, timeout: float) -> None:  # noqa: ASYNC109 - a bound
        """This node stops: from now on the API answers 503 here, and everything it holds is
        written with no owner (""), so whichever node its clients reach next takes their
        sessions without a crash gap."""
        self.store.closing = True
        for session in self.registry.sessions.values():
            self.journal.hand_over(session, "")
        if not self.store.healthy:
            return
        with contextlib.suppress(Exception):
            async with asyncio.timeout(timeout):
                await self.journal.flush()
                await self.membership.leave()

    # --- moving sessions ----------------------------------------------------------------------

    async def _settle(self, client_id: str) -> None:
        """Wait while a session is being loaded here or handed over from here."""
        for _ in range(MAX_HOPS):
            pending = self.claiming.get(client_id) or self.releasing.get(client_id)
            if pending is None:
                return
            with contextlib.suppress(Exception):
                await asyncio.shield(pending)

    async def _settled_local(self, client_id: str) -> Session | None:
        """The session held here once no load or hand-over of it is in progress. Nothing may
        be awaited between this and :meth:`_begin_claim`: a claim must never start while
        another one (a resume racing a send that wants to take it over) is under way, or two
        copies of the session would exist here."""
        await self._settle(client_id)
        if client_id in self.claiming or client_id in self.releasing:
            raise Unavailable(f"session {client_id!r} is being moved; retry shortly")
        return self.registry.get(client_id)

    async def _take_from(self, client_id: str, owner: str) -> bool | None:
        """Make this node the owner in Redis: asked of a live owner, atomically from a gone
        one. Returns whether the owner died (frames may be lost), None when a third node has
        the session now; raises ClientNotFound when it vanished, Unavailable when the owner
        may be alive but does not answer."""
        if owner in (self.me, ""):
            died = owner == self.me  # an earlier process of ours died holding it
        else:
            try:
                await self.peers.request(owner, "takeover", {"client_id": client_id},
                                         timeout=TAKEOVER_TIMEOUT)
                return False
            except PeerUnreachable:
                if await self.membership.alive(owner):
                    raise Unavailable(f"node {owner!r} holding the session is not reachable "
                                      f"right now") from None
            except SessionMoved:
                pass  # the owner in Redis does not hold it (it lost it): take it
            died = True
        result = await self.store.cas_owner(client_id, owner)
        if result == -1:
            raise _not_found(client_id)
        return died if result == 1 else None

    async def _adopt(self, client_id: str, owner: str) -> Session | None:
        """Take a session whose owner is gone and hold it here offline. Returns None when
        someone else owns it now (the caller asks again)."""
        local = await self._settled_local(client_id)
        if local is not None:
            return local  # resumed or taken over here while we asked Redis who owns it
        future = self._begin_claim(client_id)
        try:
            result = await self.store.cas_owner(client_id, owner)
            if result == -1:
                raise _not_found(client_id)
            if result != 1:
                return None
            _, session = await self.store.load(client_id, self.history_limit,
                                               self.journal.shared)
            if session is None:
                raise _not_found(client_id)
            if session.disconnected_at is None:
                session.disconnected_at = time.time()
            if owner:  # "" = released cleanly by a node that stopped: no gap
                session.mark_crash_gap()
            self.registry.adopt(session)
            log.info("session_adopted", client_id=client_id, node=self.me,
                     previous_node=owner, crashed=bool(owner))
            return session
        finally:
            self._end_claim(client_id, future)

    def _begin_claim(self, client_id: str) -> asyncio.Future[None]:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.claiming[client_id] = future
        self.parked[client_id] = list(self.inflight)
        return future

    def _end_claim(self, client_id: str, future: asyncio.Future[None]) -> None:
        if self.claiming.get(client_id) is future:
            del self.claiming[client_id]
        parked = self.parked.pop(client_id, [])
        session = self.registry.get(client_id)
        if session is not None:
            for broadcast in parked:
                self._apply_parked(session, broadcast)
        if not future.done():
            future.set_result(None)

    def _apply_parked(self, session: Session, broadcast: Broadcast) -> None:
        if not broadcast.matches(session):
            return
        marker = b'"message_id":"%s"' % broadcast.message_id.encode()
        if any(marker in data for _, outbound, data, _ in session.history if outbound):
            return  # the previous owner delivered it before handing over
        self.registry.deliver(session, broadcast.body)

    async def _takeover_for_peer(self, header: dict[str, Any], body: bytes) -> dict[str, Any]:
        client_id = header["client_id"]
        session = await self.held(client_id)
        if session is None:
            raise SessionMoved(f"session {client_id!r} is not held here")
        await self._release(session, header["from"])
        return {"released": True}

    async def _release(self, session: Session, to_node: str) -> None:
        """Hand a session to ``to_node``: close our connection, write everything, record the
        new owner."""
        client_id = session.client_id
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.releasing[client_id] = future
        try:
            self.registry.let_go(client_id)
            if session.outbox is not None:
                session.outbox.close_soon(int(CloseCode.REPLACED),
                                          CloseCode.REPLACED.explanation)
            # Broadcasts this node delivered to the session before letting go must reach the
            # new owner before our answer does (it then knows them: no second delivery).
            sending = list(self.inflight.values())
            if sending:
                await asyncio.wait(sending, timeout=INFLIGHT_WAIT)
            self.journal.hand_over(session, to_node)
            try:
                await self.journal.flush()
            except Exception:
                self.journal.keep(client_id)
                self.registry.adopt(session)  # keep it: the other node could not get it
                raise
            log.info("session_handed_over", client_id=client_id, to=to_node)
        finally:
            del self.releasing[client_id]
            future.set_result(None)

    def _lost(self, client_id: str) -> None:
        """Another node owns a session we still hold (we were cut off and it took it over):
        let go, and make our client reconnect (it resumes wherever it lands)."""
        session = self.registry.let_go(client_id)
        if session is None:
            return
        log.warning("session_lost_to_other_node", client_id=client_id)
        if session.outbox is not None:
            session.outbox.close_soon(int(CloseCode.GOING_AWAY),
                                      CloseCode.GOING_AWAY.explanation)
