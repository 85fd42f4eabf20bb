"""Many processes and machines acting as one gateway, over Redis (``BROKER_URL=redis://…``).

Only used when the broker is distributed; the memory path never imports this module.

Ownership
    Every session has exactly one *owner*: the node that last held its WebSocket. The owner
    keeps the session in its local :class:`ClusterRegistry` (connected, or offline until
    ``SESSION_TTL`` runs out, exactly as in one process), assigns its ``seq`` and writes it
    through to Redis. The registry stays synchronous: delivery and fan-out are the same tight
    loops, and each history entry is also handed to a per-node write-behind buffer that one task
    flushes with pipelined Lua scripts (so one Redis round trip carries many frames).

Redis holds the shared state
    ``sb:s:{id}`` a hash (SHA-256 of the token, client_type, node = the owner, connected, times, channels,
    seq, counters), ``sb:h:{id}`` a list of the last ``HISTORY_LIMIT`` history entries (capped
    with LTRIM), ``sb:idx`` a sorted set of session ids (for ``GET /clients``), ``sb:nodes``
    each node's last heartbeat and counters, ``sb:alive:{node}`` a key that expires
    ``NODE_TIMEOUT`` seconds after the node's last heartbeat. Session keys expire
    ``SESSION_TTL + NODE_TIMEOUT`` seconds after the owner last refreshed them, so sessions a
    dead node held are reclaimed after their TTL.

Routing
    An API call for a session another node owns is published on that node's channel
    (``sb:node:{owner}``); the owner performs it locally and answers on the caller's channel.
    ``call_tool`` therefore runs on the owner (which also receives the client's ``tool_result``)
    and its answer travels back to the node holding the HTTP request. A broadcast is published
    once on ``sb:all``; every node fans out to the sessions it owns (live ones get it now,
    offline ones keep it for resume) and answers with its counts. PUBLISH says how many nodes
    listen, so the caller waits for exactly that many answers (bounded by
    ``BROADCAST_REPLY_TIMEOUT``; the answer says how many nodes answered).

Moving a session
    A client resuming on node B a session owned by A: B checks the token against Redis, asks A
    to hand the session over; A closes its old connection (4000, replaced), flushes everything
    it wrote, records B as the owner and answers; B loads state and history from Redis. Requests
    that reach a node while a session is moving are parked and replayed afterwards, so nothing
    is lost or delivered twice. If the owner is dead (nobody listens on its channel and its
    ``sb:alive`` key expired), the caller adopts the session with an atomic compare-and-set.

Redis trouble
    While Redis is unreachable, API calls that need it answer 503, local delivery goes on in
    the registry, and the write-behind buffer is dropped (memory stays bounded): when Redis is
    back, the owner rewrites those sessions in full, or every session it holds when Redis lost
    its data (the ``sb:boot`` marker changed), so sessions and history survive even a Redis
    restart without persistence: the owners still hold them.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import secrets
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import orjson
import structlog
from redis.asyncio import Redis

from server import protocol
from server.config import Settings
from server.errors import (
    ClientNotFound,
    CloseCode,
    SwitchboardError,
    Unavailable,
)
from server.gateway import SYSTEM_CHANNELS, Gateway
from server.redis_broker import ALL_TOPIC, PREFIX, UNREACHABLE, RedisBroker, node_topic
from server.sessions import HistoryEntry, Session, SessionRegistry
from server.tools import ToolRegistry, default_tools

log = structlog.get_logger("switchboard.cluster")

#: Seconds between heartbeats (alive key, counters, session TTL refresh).
HEARTBEAT_INTERVAL = 2.0
#: A node whose heartbeat is older than this is presumed dead.
NODE_TIMEOUT = 6.0
#: How long a request to another node may take (send, disconnect, takeover).
REQUEST_TIMEOUT = 5.0
#: How long a broadcast waits for the other nodes' counts.
BROADCAST_REPLY_TIMEOUT = 2.0
#: Re-routing attempts when a session moves while a request travels.
MAX_HOPS = 4
#: Sessions written by one progress script call (bounds how long Redis is busy with it).
PROGRESS_BATCH = 256
#: Extra seconds a remote call_tool waits beyond the call's own timeout.
CALL_MARGIN = 2.0
#: How long a retried request waits for the first one (same idempotency_key, another node).
IDEMPOTENCY_WAIT = 30.0


def s_key(client_id: str) -> str:
    return f"{PREFIX}s:{client_id}"


def h_key(client_id: str) -> str:
    return f"{PREFIX}h:{client_id}"


IDX_KEY = f"{PREFIX}idx"
#: Set once per Redis dataset and never expired: if it changes, Redis lost our data.
BOOT_KEY = f"{PREFIX}boot"
#: Private meta key of listing copies: the history size stored in Redis.
HISTORY_SIZE = "_history_size"
NODES_KEY = f"{PREFIX}nodes"


def alive_key(node: str) -> str:
    return f"{PREFIX}alive:{node}"


# --- Lua scripts (each runs atomically in Redis) ----------------------------------------------

#: Write one session's state and new history entries, if this node still owns it.
#: KEYS: s, h, idx. ARGV: me, ttl, limit, full, score, id, nfields, fields…, entries…
#: Returns 0 (another node owns it), 1 (written) or 2 (the hash was missing: resync needed).
WRITE_SESSION = """
local node = redis.call('HGET', KEYS[1], 'node')
if node and node ~= ARGV[1] then return 0 end
local nf = tonumber(ARGV[7])
local first = 8
for i = first, first + 2 * nf - 1, 2 do
  redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
end
local e = first + 2 * nf
if ARGV[4] == '1' then redis.call('DEL', KEYS[2]) end
if #ARGV >= e then
  for j = e, #ARGV, 500 do
    redis.call('RPUSH', KEYS[2], unpack(ARGV, j, math.min(j + 499, #ARGV)))
  end
  redis.call('LTRIM', KEYS[2], -tonumber(ARGV[3]), -1)
end
redis.call('EXPIRE', KEYS[1], ARGV[2])
redis.call('EXPIRE', KEYS[2], ARGV[2])
redis.call('ZADD', KEYS[3], ARGV[5], ARGV[6])
if (not node) and ARGV[4] ~= '1' then return 2 end
return 1
"""

#: The frequent write, for many sessions in one call: counters and new history entries only
#: (static fields untouched). ARGV: me, limit, ttl, then per session: id, seq, messages_in,
#: messages_out, last_activity, history_size, n, entries (n entries concatenated, each as
#: ``<length>:<bytes>``, so a flush costs a few arguments per session, not one per frame).
#: Returns one code per session:
#: 0 (another node owns it), 1 (written), 2 (hash missing: resync needed).
#: Keys are derived from the ids (``sb:s:``/``sb:h:``): a single Redis (or a primary behind
#: Sentinel), not Redis Cluster.
WRITE_PROGRESS = """
local me, limit, ttl = ARGV[1], tonumber(ARGV[2]), ARGV[3]
local out = {}
local i = 4
while i <= #ARGV do
  local id, n, blob = ARGV[i], tonumber(ARGV[i + 6]), ARGV[i + 7]
  local sk, hk = 'sb:s:' .. id, 'sb:h:' .. id
  local node = redis.call('HGET', sk, 'node')
  local r = 1
  if not node then
    r = 2
  elseif node ~= me then
    r = 0
  else
    redis.call('HSET', sk, 'seq', ARGV[i + 1], 'messages_in', ARGV[i + 2],
               'messages_out', ARGV[i + 3], 'last_activity', ARGV[i + 4],
               'history_size', ARGV[i + 5])
    if n > 0 then
      local items, pos = {}, 1
      for _ = 1, n do
        local colon = string.find(blob, ':', pos, true)
        local len = tonumber(string.sub(blob, pos, colon - 1))
        items[#items + 1] = string.sub(blob, colon + 1, colon + len)
        pos = colon + len + 1
      end
      for j = 1, n, 500 do
        redis.call('RPUSH', hk, unpack(items, j, math.min(j + 499, n)))
      end
      -- Keep what the owner's registry keeps (HISTORY_LIMIT frames and HISTORY_BYTES bytes,
      -- issue 11): its history_size, never more than the frame limit.
      redis.call('LTRIM', hk, -math.min(limit, tonumber(ARGV[i + 5])), -1)
      if redis.call('TTL', hk) < 0 then redis.call('EXPIRE', hk, ttl) end
    end
  end
  out[#out + 1] = r
  i = i + 8
end
return out
"""

#: Forget a session, if this node owns it. KEYS: s, h, idx. ARGV: me, id.
DELETE_SESSION = """
local node = redis.call('HGET', KEYS[1], 'node')
if node and node ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1], KEYS[2])
redis.call('ZREM', KEYS[3], ARGV[2])
return 1
"""

#: Reserve a fresh client id for this node. KEYS: s, idx. ARGV: me, ttl, id, score.
RESERVE_ID = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], 'node', ARGV[1], 'connected', '0', 'seq', '0')
redis.call('EXPIRE', KEYS[1], ARGV[2])
redis.call('ZADD', KEYS[2], ARGV[4], ARGV[3])
return 1
"""

#: Take ownership from ``expected`` (a dead or absent owner). KEYS: s. ARGV: expected, me.
#: Returns 1 (taken), -1 (no such session) or the current owner (someone else has it).
CAS_OWNER = """
local node = redis.call('HGET', KEYS[1], 'node')
if not node then return -1 end
if node ~= ARGV[1] and node ~= ARGV[2] then return node end
redis.call('HSET', KEYS[1], 'node', ARGV[2], 'connected', '0')
return 1
"""


# --- history entries on the wire --------------------------------------------------------------


def pack_entry(entry: HistoryEntry) -> bytes:
    pos, outbound, data, at = entry
    return b"%d %d %d " % (1 if outbound else 0, pos, int(at * 1000)) + data


def unpack_entry(raw: bytes) -> HistoryEntry:
    outbound, pos, at, data = raw.split(b" ", 3)
    return (int(pos), outbound == b"1", data, int(at) / 1000)


def _s(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode()
    return "" if value is None else str(value)


#: After a node crash, a session's seq continues at the next multiple of this.
SEQ_EPOCH = 1 << 20


def token_digest(token: str) -> str:
    """What Redis keeps of a session token: its SHA-256 (a Redis dump reveals no token)."""
    return hashlib.sha256(token.encode("utf-8", "replace")).hexdigest()


class ClusterSession(Session):
    """A session loaded from Redis: the token itself is unknown until the client presents it
    (Redis only has its digest)."""

    __slots__ = ("gap", "token_hash")

    def __init__(self, client_id: str, client_type: str, history_limit: int,
                 meta: dict[str, Any] | None = None, token_hash: str = "") -> None:
        super().__init__(client_id, client_type, history_limit, meta)
        self.token = ""
        self.token_hash = token_hash
        #: (last seq in Redis, first seq after it) when the session was taken from a node
        #: that died: frames that node numbered but had not written yet are lost.
        self.gap: tuple[int, int] | None = None

    def mark_crash_gap(self) -> None:
        """The owner died: it may have numbered (and even delivered) frames after the last
        one it wrote to Redis. Continue at the next multiple of ``SEQ_EPOCH`` so no new frame
        reuses such a seq, and make resumes from before the gap say ``recovered: false``."""
        start = (self.seq // SEQ_EPOCH + 1) * SEQ_EPOCH
        self.gap = (self.seq, start)
        self.seq = start - 1

    def replay_after(self, last_seq: int) -> tuple[list[bytes], bool]:
        frames, complete = super().replay_after(last_seq)
        if self.gap is not None and last_seq < self.gap[1]:
            complete = False  # some frames died with the previous node
        return frames, complete

    def token_matches(self, token: str) -> bool:
        if self.token:
            return super().token_matches(token)
        if not self.token_hash or not hmac.compare_digest(token_digest(token).encode(),
                                                          self.token_hash.encode()):
            return False
        self.token = token  # proven: from now on it is known (and sent back on resume)
        return True


def session_fields(session: Session, node: str, history_len: int) -> dict[str, str]:
    """The hash ``sb:s:{id}`` for a session (no history)."""
    meta = {k: v for k, v in session.meta.items() if k in ("remote", "user_agent")}
    known = session.token or not isinstance(session, ClusterSession)
    return {
        "token": token_digest(session.token) if known
        else session.token_hash,  # type: ignore[attr-defined]
        "client_type": session.client_type,
        "node": node,
        "connected": "1" if session.outbox is not None and node else "0",
        "connected_at": repr(session.connected_at),
        "last_activity": repr(session.last_activity),
        "disconnected_at": "" if session.disconnected_at is None
        else repr(session.disconnected_at),
        "seq": str(session.seq),
        "messages_in": str(session.messages_in),
        "messages_out": str(session.messages_out),
        "channels": orjson.dumps(sorted(session.channels)).decode(),
        "meta": orjson.dumps(meta).decode(),
        "history_size": str(history_len),
        "gap": "{}:{}".format(*session.gap) if getattr(session, "gap", None) else "",
    }


class _RemoteOutbox:
    """Marks a session read from Redis as connected (on another node); never takes frames."""

    def push(self, data: bytes) -> bool:  # pragma: no cover - never in a registry
        return False

    def close_soon(self, code: int, reason: str) -> None:  # pragma: no cover
        return None


REMOTE = _RemoteOutbox()


def session_from_redis(client_id: str, fields: dict[bytes, bytes], history: Iterable[bytes],
                       history_limit: int, *, connected: bool = False) -> Session:
    """Rebuild a :class:`Session` from its hash and history list."""
    f = {k.decode(): v.decode() for k, v in fields.items()}
    session = ClusterSession(client_id, f.get("client_type") or "default", history_limit,
                             orjson.loads(f.get("meta") or "{}"), f.get("token") or "")
    session.connected_at = float(f.get("connected_at") or time.time())
    session.last_activity = float(f.get("last_activity") or session.connected_at)
    disconnected = f.get("disconnected_at") or ""
    session.disconnected_at = float(disconnected) if disconnected else None
    session.seq = int(f.get("seq") or 0)
    session.messages_in = int(f.get("messages_in") or 0)
    session.messages_out = int(f.get("messages_out") or 0)
    session.channels = set(orjson.loads(f.get("channels") or "[]"))
    gap = f.get("gap") or ""
    if gap:
        before, _, after = gap.partition(":")
        session.gap = (int(before), int(after))
    session.history = deque((unpack_entry(raw) for raw in history), maxlen=history_limit)
    if connected:
        session.outbox = REMOTE
    return session


# --- the registry: local and synchronous, writing behind to Redis -----------------------------


class WriteBehind:
    """What this node changed since the last flush. Filled synchronously on the hot path,
    emptied by one task with a pipeline of Lua scripts."""

    __slots__ = ("dirty", "ended", "entries", "full", "overrides", "resync", "waiters",
                 "wake")

    def __init__(self) -> None:
        self.entries: dict[str, list[HistoryEntry]] = {}
        self.dirty: dict[str, Session] = {}
        #: Sessions whose static fields changed (connect, channels…): the full hash is written.
        self.full: set[str] = set()
        self.ended: set[str] = set()
        self.overrides: dict[str, str] = {}
        self.resync: set[str] = set()
        self.waiters: list[asyncio.Future[None]] = []
        self.wake = asyncio.Event()

    def add(self, session: Session, entry: HistoryEntry) -> None:
        client_id = session.client_id
        entries = self.entries.get(client_id)
        if entries is None:
            self.entries[client_id] = [entry]
        else:
            entries.append(entry)
        self.dirty[client_id] = session
        self.wake.set()

    def touch(self, session: Session) -> None:
        self.dirty[session.client_id] = session
        self.full.add(session.client_id)
        self.wake.set()

    def end(self, client_id: str) -> None:
        self.dirty.pop(client_id, None)
        self.entries.pop(client_id, None)
        self.resync.discard(client_id)
        self.full.discard(client_id)
        self.ended.add(client_id)
        self.wake.set()


class ClusterRegistry(SessionRegistry):
    """The local registry of the sessions this node owns, writing changes behind to Redis.

    The caps (history bytes, MAX_SESSIONS, channels per session) are the base class's: an
    evicted session is ended here, hence deleted from Redis too.
    """

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.writer = WriteBehind()

    # lifecycle
    def create(self, client_id: str | None, client_type: str,
               meta: dict[str, Any] | None = None) -> Session:
        session = super().create(client_id, client_type, meta)
        self.writer.resync.add(session.client_id)
        self.writer.touch(session)
        return session

    def attach(self, session: Session, outbox: Any) -> Any:
        previous = super().attach(session, outbox)
        self.writer.touch(session)
        return previous

    def detach(self, session: Session, outbox: Any) -> None:
        if self.sessions.get(session.client_id) is not session:
            return  # handed over to another node (or ended): nothing of ours to record
        super().detach(session, outbox)
        if session.client_id in self.sessions:
            self.writer.touch(session)

    def end(self, client_id: str) -> Session | None:
        session = super().end(client_id)
        if session is not None:
            self.writer.end(client_id)
        return session

    def forget(self, client_id: str) -> Session | None:
        """Drop a session locally only (it moved to another node)."""
        return SessionRegistry.end(self, client_id)

    # adopt (hold a session loaded from Redis: resumed here, or taken from a dead node) is the
    # base class's: it also applies this node's caps.

    # delivery
    def deliver(self, session: Session, encoded: bytes) -> tuple[int, bool]:
        result = super().deliver(session, encoded)
        if session.client_id in self.sessions:
            self.writer.add(session, session.history[-1])
        return result

    def fan_out(self, sessions: Iterable[Session], encoded: bytes) -> tuple[int, int]:
        targets = sessions if isinstance(sessions, list) else list(sessions)
        result = super().fan_out(targets, encoded)
        add = self.writer.add
        for session in targets:
            add(session, session.history[-1])
        return result

    def record_inbound(self, session: Session, data: bytes) -> None:
        super().record_inbound(session, data)
        if session.client_id in self.sessions:
            self.writer.add(session, session.history[-1])

    # channels
    def join(self, session: Session, channel: str) -> bool:
        joined = super().join(session, channel)
        if joined:
            self.writer.touch(session)
        return joined

    def leave(self, session: Session, channel: str) -> bool:
        left = super().leave(session, channel)
        if left:
            self.writer.touch(session)
        return left


# --- the gateway ------------------------------------------------------------------------------


@dataclass(slots=True)
class _Request:
    expected: int
    replies: list[dict[str, Any]]
    done: asyncio.Event


@dataclass
class ClusterGateway(Gateway):
    """The gateway of one node in a cluster: local work through the base class, the rest
    routed to the owning node through the broker."""

    requests: dict[str, _Request] = field(default_factory=dict)
    #: Sessions being loaded here (resume / adoption): requests for them wait.
    claiming: dict[str, asyncio.Future[None]] = field(default_factory=dict)
    #: Sessions being handed to another node: requests for them wait, then are re-routed.
    releasing: dict[str, asyncio.Future[None]] = field(default_factory=dict)
    #: Broadcasts that arrived while a session was being loaded here (applied after).
    parked_broadcasts: dict[str, list[tuple[dict[str, Any], bytes]]] = field(
        default_factory=dict)
    #: Broadcasts sent from this node that the other nodes may not have yet.
    inflight_broadcasts: list[tuple[dict[str, Any], bytes]] = field(default_factory=list)
    background: list[asyncio.Task[Any]] = field(default_factory=list)
    writer_scripts: dict[str, Any] = field(default_factory=dict)
    #: Set when the node starts leaving: API calls answer 503 (retry on another node).
    stopping: bool = False
    boot_marker: bytes | None = None
    refreshed_at: float = 0.0
    healthy_event: asyncio.Event = field(default_factory=asyncio.Event)

    # --- plumbing -----------------------------------------------------------------------------

    @property
    def me(self) -> str:
        return self.broker.node_id

    @property
    def rbroker(self) -> RedisBroker:
        assert isinstance(self.broker, RedisBroker)
        return self.broker

    @property
    def redis(self) -> Redis:
        return self.rbroker.redis

    @property
    def cregistry(self) -> ClusterRegistry:
        assert isinstance(self.registry, ClusterRegistry)
        return self.registry

    @property
    def key_ttl(self) -> int:
        return int(max(self.settings.session_ttl, 1) + NODE_TIMEOUT + HEARTBEAT_INTERVAL)

    def require_healthy(self) -> None:
        if self.stopping:
            raise Unavailable("this node is shutting down; retry (on another node)")
        if not self.broker.healthy:
            raise Unavailable("the cluster broker (Redis) is unreachable; retry shortly",
                              details={"broker": self.broker.describe()})

    @contextlib.asynccontextmanager
    async def guard(self) -> AsyncIterator[None]:
        """Redis unreachable during the block → broker unhealthy, and 503 to the caller."""
        self.require_healthy()
        try:
            yield
        except UNREACHABLE as exc:
            self.rbroker.report_failure(exc)
            raise Unavailable(f"the cluster broker (Redis) is unreachable: {exc}") from None

    def install(self) -> None:
        broker = self.rbroker
        broker.on_start(self._start)
        broker.on_stop(self._stop)
        broker.on_state_change(self._state_changed)
        self.writer_scripts = {
            "write": self.redis.register_script(WRITE_SESSION),
            "progress": self.redis.register_script(WRITE_PROGRESS),
            "delete": self.redis.register_script(DELETE_SESSION),
            "reserve": self.redis.register_script(RESERVE_ID),
            "cas": self.redis.register_script(CAS_OWNER),
        }

    async def _start(self) -> None:
        loop = asyncio.get_running_loop()
        self.background = [loop.create_task(self._flush_forever(), name="cluster-flusher"),
                           loop.create_task(self._heartbeat_forever(), name="cluster-heartbeat")]

    async def _stop(self) -> None:
        # Leaving cleanly: everything we hold is written with no owner (""), so whichever node
        # the clients reach next takes them without the crash gap.
        self.stopping = True
        writer = self.cregistry.writer
        for client_id, session in self.registry.sessions.items():
            writer.overrides[client_id] = ""
            writer.touch(session)
        with contextlib.suppress(Exception):
            if self.broker.healthy:
                async with asyncio.timeout(self.settings.shutdown_timeout or 1.0):
                    await self.flush_now()
                    await self.redis.delete(alive_key(self.me))
                    await self.redis.hdel(NODES_KEY, self.me)
        for task in self.background:
            task.cancel()
        for task in self.background:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    async def _state_changed(self, healthy: bool) -> None:
        writer = self.cregistry.writer
        if healthy:
            lost = True
            with contextlib.suppress(Exception):
                lost = await self._redis_lost_data()
            if lost:
                # Redis lost everything (a restart without persistence, a flush): rewrite in
                # full what this node owns, so nothing it holds is lost.
                log.warning("cluster_store_lost_resyncing", sessions=len(self.registry))
                writer.resync.update(self.registry.sessions)
                for session in self.registry.sessions.values():
                    writer.dirty[session.client_id] = session
            writer.wake.set()
            self.healthy_event.set()
            with contextlib.suppress(Exception):
                await self._heartbeat()
        else:
            self.healthy_event.clear()

    async def _redis_lost_data(self) -> bool:
        """Whether Redis is not the one we wrote to before (its ``sb:boot`` marker, set once
        and never expiring, changed or vanished)."""
        marker = await self.redis.get(BOOT_KEY)
        if marker is None:
            await self.redis.set(BOOT_KEY, secrets.token_hex(8), nx=True)
            marker = await self.redis.get(BOOT_KEY)
        # On this process's first connection there is nothing to compare with: rewrite only
        # what it already holds (sessions opened while Redis was still unreachable).
        if self.boot_marker is None:
            lost = bool(self.registry.sessions)
        else:
            lost = marker != self.boot_marker
        self.boot_marker = marker
        return lost

    # --- write-behind -------------------------------------------------------------------------

    async def flush_now(self) -> None:
        """Return once everything buffered so far is in Redis (raises Unavailable if not)."""
        writer = self.cregistry.writer
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        writer.waiters.append(future)
        writer.wake.set()
        await future

    async def _flush_forever(self) -> None:
        writer = self.cregistry.writer
        while True:
            await writer.wake.wait()
            if not self.broker.healthy:
                waiters, writer.waiters = writer.waiters, []
                for waiter in waiters:
                    if not waiter.done():
                        waiter.set_exception(Unavailable("Redis is unreachable"))
                # Rewrite these sessions in full once Redis is back, instead of keeping their
                # frames twice: bounded memory however long the outage.
                for client_id in writer.entries:
                    session = self.registry.sessions.get(client_id)
                    if session is not None:
                        writer.resync.add(client_id)
                        writer.dirty[client_id] = session
                writer.entries.clear()
                writer.wake.clear()
                await self.healthy_event.wait()
                continue
            writer.wake.clear()
            try:
                await self._flush_once()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if isinstance(exc, UNREACHABLE):
                    self.rbroker.report_failure(exc)
                else:
                    log.exception("cluster_flush_failed")
                    await asyncio.sleep(0.1)
                writer.wake.set()

    async def _flush_once(self) -> None:
        writer = self.cregistry.writer
        entries, writer.entries = writer.entries, {}
        dirty, writer.dirty = writer.dirty, {}
        ended, writer.ended = writer.ended, set()
        overrides, writer.overrides = writer.overrides, {}
        resync, writer.resync = writer.resync, set()
        full, writer.full = writer.full, set()
        waiters, writer.waiters = writer.waiters, []
        if not (dirty or ended):
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(None)
            return
        write = self.writer_scripts["write"]
        progress = self.writer_scripts["progress"]
        delete = self.writer_scripts["delete"]
        limit = str(self.settings.history_limit)
        ttl = str(self.key_ttl)
        pipe = self.redis.pipeline(transaction=False)
        order: list[str | list[str]] = []
        batch: list[str] = []
        batch_args: list[Any] = []
        for client_id in ended:
            await delete(keys=[s_key(client_id), h_key(client_id), IDX_KEY],
                         args=[self.me, client_id], client=pipe)
            order.append("")
        for client_id, session in dirty.items():
            rewrite = client_id in resync
            items = list(session.history) if rewrite else entries.get(client_id, ())
            if not rewrite and client_id not in full and client_id not in overrides:
                batch.append(client_id)
                packed = [pack_entry(e) for e in items]
                batch_args += (client_id, session.seq, session.messages_in,
                               session.messages_out, repr(session.last_activity),
                               len(session.history), len(packed),
                               b"".join(b"%d:%s" % (len(x), x) for x in packed))
                if len(batch) >= PROGRESS_BATCH:
                    await progress(args=[self.me, limit, ttl, *batch_args], client=pipe)
                    order.append(batch)
                    batch, batch_args = [], []
                continue
            node = overrides.get(client_id, self.me)
            fields = session_fields(session, node, len(session.history))
            # The list is trimmed to what the registry holds (its byte cap may keep fewer
            # than HISTORY_LIMIT frames); never to 0 (LTRIM -0 would keep everything).
            kept = str(max(1, len(session.history)))
            args: list[Any] = [self.me, ttl, kept, "1" if rewrite else "0",
                    repr(session.connected_at), client_id, str(len(fields))]
            for name, value in fields.items():
                args.append(name)
                args.append(value)
            args.extend(pack_entry(e) for e in items)
            await write(keys=[s_key(client_id), h_key(client_id), IDX_KEY], args=args,
                        client=pipe)
            order.append(client_id)
        if batch:
            await progress(args=[self.me, limit, ttl, *batch_args], client=pipe)
            order.append(batch)
        try:
            results = await pipe.execute(raise_on_error=False)
        except BaseException as exc:
            # Keep what we could not write: everything is rewritten in full later.
            for client_id, session in dirty.items():
                if self.registry.sessions.get(client_id) is session:
                    writer.dirty[client_id] = session
                    writer.resync.add(client_id)
                    writer.full.add(client_id)
                if client_id in overrides:
                    writer.overrides.setdefault(client_id, overrides[client_id])
            writer.ended |= ended
            error = exc if isinstance(exc, Exception) else Unavailable("cancelled")
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_exception(Unavailable(f"Redis is unreachable: {error}"))
            raise
        flat: list[tuple[str, Any]] = []
        for ids, result in zip(order, results, strict=True):
            if isinstance(result, Exception):
                if isinstance(result, UNREACHABLE):
                    raise result
                log.error("cluster_write_failed", client_id=ids, error=str(result))
            elif isinstance(ids, list):
                flat.extend(zip(ids, result, strict=True))
            elif ids:
                flat.append((ids, result))
        for client_id, result in flat:
            if result == 2:
                if self.registry.sessions.get(client_id) is dirty[client_id]:
                    writer.resync.add(client_id)
                    writer.touch(dirty[client_id])
            elif result == 0 and client_id not in overrides:
                self._lost(client_id)
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    def _lost(self, client_id: str) -> None:
        """Another node owns a session we still hold (we were cut off and it adopted it):
        let go, and make our client reconnect (it resumes wherever it lands)."""
        session = self.cregistry.forget(client_id)
        if session is None:
            return
        log.warning("session_lost_to_other_node", client_id=client_id)
        if session.outbox is not None:
            session.outbox.close_soon(int(CloseCode.GOING_AWAY),
                                      CloseCode.GOING_AWAY.explanation)

    # --- heartbeat ----------------------------------------------------------------------------

    async def _heartbeat_forever(self) -> None:
        while True:
            await asyncio.sleep(HEARTBEAT_INTERVAL)
            if not self.broker.healthy:
                continue
            try:
                await self._heartbeat()
            except UNREACHABLE as exc:
                self.rbroker.report_failure(exc)
            except Exception:
                log.exception("cluster_heartbeat_failed")

    async def _heartbeat(self) -> None:
        stats = self.registry.stats()
        info = {"at": time.time(), "sessions": stats["total_sessions"],
                "connected": stats["connected_clients"],
                **{k: v for k, v in stats.items() if k.startswith("total_")}}
        ttl = self.key_ttl
        pipe = self.redis.pipeline(transaction=False)
        pipe.set(alive_key(self.me), b"1", ex=int(NODE_TIMEOUT))
        pipe.hset(NODES_KEY, self.me, orjson.dumps(info))
        now = time.monotonic()
        if now - self.refreshed_at >= ttl / 3:  # keep the sessions we hold from expiring
            self.refreshed_at = now
            for client_id in self.registry.sessions:
                pipe.expire(s_key(client_id), ttl)
                pipe.expire(h_key(client_id), ttl)
        await pipe.execute()

    # --- requests between nodes ---------------------------------------------------------------

    async def _request(self, topic: str, header: dict[str, Any], body: bytes = b"", *,
                       exclude_self: bool = False, wait: float = REQUEST_TIMEOUT
                       ) -> tuple[int, list[dict[str, Any]]]:
        """Publish and wait for every listener's reply. Returns (listeners, replies)."""
        request_id = secrets.token_hex(8)
        request = _Request(0, [], asyncio.Event())
        self.requests[request_id] = request
        header = {**header, "req": request_id, "from": self.me}
        try:
            async with self.guard():
                listeners = await self.rbroker.publish_count(
                    topic, orjson.dumps(header) + b"\n" + body)
            request.expected = listeners - (1 if exclude_self else 0)
            if request.expected > len(request.replies):
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(wait):
                        await request.done.wait()
            else:
                request.done.set()
            return request.expected, list(request.replies)
        finally:
            self.requests.pop(request_id, None)

    async def _reply(self, header: dict[str, Any], answer: dict[str, Any]) -> None:
        payload = orjson.dumps({"op": "reply", "req": header["req"], **answer})
        try:
            await self.rbroker.publish_count(node_topic(header["from"]), payload)
        except UNREACHABLE:
            log.warning("cluster_reply_lost", op=header.get("op"), to=header.get("from"))

    def _spawn_reply(self, header: dict[str, Any], answer: dict[str, Any]) -> None:
        self.spawn(self._reply(header, answer), name="cluster-reply")

    async def on_broker_message(self, topic: str, payload: bytes) -> None:
        """Every message from another node (called in order by the broker's listener)."""
        raw_header, _, body = payload.partition(b"\n")
        header = orjson.loads(raw_header)
        op = header.get("op")
        if op == "reply":
            request = self.requests.get(header["req"])
            if request is not None:
                request.replies.append(header)
                if len(request.replies) >= request.expected > 0:
                    request.done.set()
            return
        if header.get("from") == self.me and op in ("broadcast", "tool_result"):
            return
        if op == "broadcast":
            self._on_broadcast(header, body)
        elif op == "tool_result":
            self._on_tool_result(header)
        elif op in ("send", "call", "disconnect", "takeover"):
            self.spawn(self._on_session_op(header, body), name=f"cluster-{op}")
        else:
            log.warning("cluster_unknown_op", op=op)

    # --- sessions owned elsewhere -------------------------------------------------------------

    async def _owner(self, client_id: str) -> str | None:
        async with self.guard():
            node = await self.redis.hget(s_key(client_id), "node")
        return None if node is None else _s(node)

    async def _node_alive(self, node: str) -> bool:
        async with self.guard():
            return bool(await self.redis.exists(alive_key(node)))

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
        another one (a resume racing a send that wants to adopt) is under way, or two
        copies of the session would exist here."""
        await self._settle(client_id)
        if client_id in self.claiming or client_id in self.releasing:
            raise Unavailable(f"session {client_id!r} is being moved; retry shortly")
        return self.registry.get(client_id)

    async def _local_or_route(self, client_id: str, header: dict[str, Any], body: bytes,
                              timeout: float = REQUEST_TIMEOUT  # noqa: ASYNC109
                              ) -> Session | dict[str, Any]:
        """The local session, or the owner's reply to ``header`` (raises when none)."""
        for _ in range(MAX_HOPS):
            await self._settle(client_id)
            session = self.registry.get(client_id)
            if session is not None:
                return session
            self.require_healthy()
            owner = await self._owner(client_id)
            if owner is None:
                raise ClientNotFound(
                    f"no session with client_id {client_id!r} (unknown or expired)")
            if owner in (self.me, ""):
                # Released by a node that stopped (""), or ours in Redis but not held here (a
                # previous process with the same NODE_ID died): take it.
                session = await self._adopt(client_id, owner)
                if session is not None:
                    return session
                continue
            listeners, replies = await self._request(
                node_topic(owner), {**header, "client_id": client_id}, body, wait=timeout)
            if listeners == 0:
                if await self._node_alive(owner):
                    raise Unavailable(f"node {owner!r} holding client {client_id!r} is not "
                                      f"reachable right now; retry shortly")
                session = await self._adopt(client_id, owner)
                if session is not None:
                    return session
                continue
            if not replies:
                raise Unavailable(f"node {owner!r} holding client {client_id!r} did not "
                                  f"answer in time")
            reply = replies[0]
            if reply.get("status") == "moved":
                continue
            if "error" in reply:
                err = reply["error"]
                raise SwitchboardError(err.get("message", "remote error"),
                                       code=err.get("code"),
                                       http_status=int(reply.get("http_status", 500)),
                                       details={k: v for k, v in err.items()
                                                if k not in ("code", "message")})
            return reply
        raise Unavailable(f"client {client_id!r} kept moving between nodes; retry")

    async def _load(self, client_id: str, *, connected: bool = False
                    ) -> tuple[dict[bytes, bytes], Session | None]:
        async with self.guard():
            pipe = self.redis.pipeline(transaction=True)
            pipe.hgetall(s_key(client_id))
            pipe.lrange(h_key(client_id), 0, -1)
            fields, history = await pipe.execute()
        if not fields or b"token" not in fields:
            return fields or {}, None
        return fields, session_from_redis(client_id, fields, history,
                                          self.settings.history_limit, connected=connected)

    async def _adopt(self, client_id: str, expected_owner: str) -> Session | None:
        """Take a session whose owner is gone (compare-and-set on ``node``) and hold it here
        offline. Returns None when someone else owns it now (the caller re-routes)."""
        local = await self._settled_local(client_id)
        if local is not None:
            return local  # resumed or adopted here while we asked Redis who owns it
        future = self._begin_claim(client_id)
        try:
            async with self.guard():
                result = await self.writer_scripts["cas"](
                    keys=[s_key(client_id)], args=[expected_owner, self.me])
            if result == -1:
                raise ClientNotFound(
                    f"no session with client_id {client_id!r} (unknown or expired)")
            if result != 1:
                return None
            _, session = await self._load(client_id)
            if session is None:
                raise ClientNotFound(
                    f"no session with client_id {client_id!r} (unknown or expired)")
            if session.disconnected_at is None:
                session.disconnected_at = time.time()
            if expected_owner and isinstance(session, ClusterSession):
                session.mark_crash_gap()  # "" = released cleanly by a node that stopped
            self._hold(session)
            log.info("session_adopted", client_id=client_id, node=self.me,
                     previous_node=expected_owner, crashed=bool(expected_owner))
            return session
        finally:
            self._end_claim(client_id, future)

    def _begin_claim(self, client_id: str) -> asyncio.Future[None]:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.claiming[client_id] = future
        self.parked_broadcasts[client_id] = list(self.inflight_broadcasts)
        return future

    def _end_claim(self, client_id: str, future: asyncio.Future[None]) -> None:
        if self.claiming.get(client_id) is future:
            del self.claiming[client_id]
        parked = self.parked_broadcasts.pop(client_id, [])
        session = self.registry.get(client_id)
        if session is not None:
            for header, body in parked:
                self._apply_parked_broadcast(session, header, body)
        if not future.done():
            future.set_result(None)

    def _hold(self, session: Session) -> None:
        self.cregistry.adopt(session)
        self.cregistry.writer.touch(session)

    # --- operations for other nodes -----------------------------------------------------------

    async def _on_session_op(self, header: dict[str, Any], body: bytes) -> None:
        client_id = header["client_id"]
        op = header["op"]
        await self._settle(client_id)
        session = self.registry.get(client_id)
        if session is None:
            await self._reply(header, {"status": "moved"})
            return
        try:
            if op == "send":
                seq, pushed = self.registry.deliver(session, body)
                answer: dict[str, Any] = {"status": "delivered" if pushed else "queued",
                                          "seq": seq}
            elif op == "call":
                result = await Gateway.call_tool(
                    self, client_id, header["tool_name"], header.get("params") or {},
                    timeout=header.get("timeout"),
                    wait_for_client=bool(header.get("wait_for_client")))
                answer = {"status": "ok", "answer": result}
            elif op == "disconnect":
                code = CloseCode(header.get("code", CloseCode.SESSION_ENDED))
                result = await Gateway.disconnect(
                    self, client_id, code=code, reason=header.get("reason") or code.explanation)
                await self.flush_now()  # gone cluster-wide before the caller hears so
                answer = {"status": "ok", "answer": result}
            else:  # takeover
                answer = await self._release(session, header["from"])
        except SwitchboardError as exc:
            answer = {"error": exc.to_dict(), "http_status": exc.http_status}
        await self._reply(header, answer)

    async def _release(self, session: Session, to_node: str) -> dict[str, Any]:
        """Hand a session to ``to_node``: close our connection, flush, record the new owner."""
        client_id = session.client_id
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.releasing[client_id] = future
        registry = self.cregistry
        try:
            registry.forget(client_id)
            outbox = session.outbox
            if outbox is not None:
                outbox.close_soon(int(CloseCode.REPLACED), CloseCode.REPLACED.explanation)
            registry.writer.overrides[client_id] = to_node
            registry.writer.touch(session)
            try:
                await self.flush_now()
            except Exception:
                registry.writer.overrides.pop(client_id, None)
                registry.adopt(session)  # keep it: the other node could not get it
                raise
            log.info("session_handed_over", client_id=client_id, to=to_node)
            return {"status": "released"}
        finally:
            del self.releasing[client_id]
            future.set_result(None)

    def _on_broadcast(self, header: dict[str, Any], body: bytes) -> None:
        targets = self._targets(header.get("channel"), header.get("client_type"),
                                header.get("exclude"))
        pushed, queued = self.registry.fan_out(targets, body)
        for parked in self.parked_broadcasts.values():
            parked.append((header, body))
        self._spawn_reply(header, {"pushed": pushed, "queued": queued})

    def _apply_parked_broadcast(self, session: Session, header: dict[str, Any],
                                body: bytes) -> None:
        if not self._matches(session, header.get("channel"), header.get("client_type"),
                             header.get("exclude")):
            return
        marker = b'"message_id":"%s"' % header["message_id"].encode()
        if any(marker in data for _, outbound, data, _ in session.history if outbound):
            return  # the previous owner delivered it before handing over
        self.registry.deliver(session, body)

    @staticmethod
    def _matches(session: Session, channel: str | None, client_type: str | None,
                 exclude: str | None) -> bool:
        return ((channel is None or channel in session.channels)
                and (client_type is None or session.client_type == client_type)
                and session.client_id != exclude)

    def _targets(self, channel: str | None, client_type: str | None,
                 exclude: str | None) -> list[Session]:
        targets = self.registry.select(channel=channel, client_type=client_type)
        return [s for s in targets if s.client_id != exclude]

    def _on_tool_result(self, header: dict[str, Any]) -> None:
        pending = self.pending_calls.get(header["call_id"])
        if pending is None or pending.client_id != header["client_id"]:
            return
        session = Session(header["client_id"], "default", 1)
        Gateway.resolve_tool_result(self, session, header["call_id"], header["data"])

    # --- the API, cluster-wide ----------------------------------------------------------------

    async def send_message(self, client_id: str, content: Any, *, message_type: str = "message",
                           data: dict[str, Any] | None = None) -> dict[str, Any]:
        if self.stopping:
            self.require_healthy()
        if self.registry.get(client_id) is not None and client_id not in self.releasing:
            return await super().send_message(client_id, content, message_type=message_type,
                                              data=data)
        payload = dict(data or {})
        if content is not None:
            payload["content"] = content
        frame = protocol.server_frame(message_type, payload)
        encoded = protocol.encode(frame)
        target = await self._local_or_route(client_id, {"op": "send"}, encoded)
        if isinstance(target, Session):
            seq, pushed = self.registry.deliver(target, encoded)
            status = "delivered" if pushed else "queued"
        else:
            seq, status = target["seq"], target["status"]
        return {"status": status, "message_id": frame["message_id"], "seq": seq,
                "client_id": client_id}

    async def broadcast(self, message_type: str, data: dict[str, Any] | None = None, *,
                        channel: str | None = None, client_type: str | None = None,
                        exclude: str | None = None, counted: bool = True) -> dict[str, Any]:
        self.require_healthy()
        extra = {"channel": channel} if channel is not None else None
        frame = protocol.server_frame(message_type, data, extra=extra)
        encoded = protocol.encode(frame)
        header = {"op": "broadcast", "channel": channel, "client_type": client_type,
                  "exclude": exclude, "message_id": frame["message_id"]}
        # Until the other nodes have it, a session that starts moving here (a claim) must get
        # it too: its previous owner may let go before the broadcast reaches it.
        inflight = (header, encoded)
        self.inflight_broadcasts.append(inflight)
        try:
            pushed, queued = self.registry.fan_out(
                self._targets(channel, client_type, exclude), encoded)
            if counted:
                self.registry.counters.total_broadcasts += 1
            for parked in self.parked_broadcasts.values():
                parked.append(inflight)
            others, replies = await self._request(ALL_TOPIC, header, encoded,
                                                  exclude_self=True,
                                                  wait=BROADCAST_REPLY_TIMEOUT)
        finally:
            self.inflight_broadcasts.remove(inflight)
        for reply in replies:
            pushed += int(reply.get("pushed", 0))
            queued += int(reply.get("queued", 0))
        answer: dict[str, Any] = {"recipients": pushed, "queued": queued,
                                  "message_id": frame["message_id"], "nodes": others + 1,
                                  "nodes_answered": len(replies) + 1}
        if len(replies) < others:
            answer["partial"] = True
        log.debug("broadcast", message_id=frame["message_id"], type=message_type,
                  channel=channel, client_type=client_type, recipients=pushed, queued=queued,
                  nodes=others + 1)
        return answer

    async def call_tool(self, client_id: str, tool_name: str, params: dict[str, Any], *,
                        timeout: float | None = None,  # noqa: ASYNC109 - the API field
                        wait_for_client: bool = False) -> dict[str, Any]:
        if self.stopping:
            self.require_healthy()
        if self.registry.get(client_id) is not None and client_id not in self.releasing:
            return await super().call_tool(client_id, tool_name, params, timeout=timeout,
                                           wait_for_client=wait_for_client)
        wait = self.settings.call_tool_timeout if timeout is None else timeout
        header = {"op": "call", "tool_name": tool_name, "params": params, "timeout": wait,
                  "wait_for_client": wait_for_client}
        target = await self._local_or_route(client_id, header, b"", timeout=wait + CALL_MARGIN)
        if isinstance(target, Session):
            return await super().call_tool(client_id, tool_name, params, timeout=timeout,
                                           wait_for_client=wait_for_client)
        return dict(target["answer"])

    def resolve_tool_result(self, session: Session, call_id: str, data: dict[str, Any]) -> bool:
        if call_id in self.pending_calls:
            return super().resolve_tool_result(session, call_id, data)
        # The call may be waiting on the node that owned this session when it was asked
        # (the client resumed here since): relay it, if this session was really asked.
        marker = b'"call_id":"%s"' % call_id.encode()
        asked = any(outbound and b'"tool_call"' in data and marker in data
                    for _, outbound, data, _ in session.history)
        if not asked or not self.broker.healthy:
            return False
        header = {"op": "tool_result", "from": self.me, "client_id": session.client_id,
                  "call_id": call_id, "data": data}
        self.spawn(self.rbroker.publish(ALL_TOPIC, orjson.dumps(header) + b"\n"),
                   name="cluster-tool-result")
        return True

    async def disconnect(self, client_id: str, *, code: CloseCode = CloseCode.SESSION_ENDED,
                         reason: str = "session ended by the server") -> dict[str, Any]:
        if self.stopping:
            self.require_healthy()
        if self.registry.get(client_id) is None or client_id in self.releasing:
            target = await self._local_or_route(
                client_id, {"op": "disconnect", "code": int(code), "reason": reason}, b"")
            if not isinstance(target, Session):
                return dict(target["answer"])
        answer = await super().disconnect(client_id, code=code, reason=reason)
        with contextlib.suppress(Unavailable):  # Redis forgets it when it is back
            await self.flush_now()
        return answer

    async def idempotent(self, key: str | None,
                         operation: Callable[[], Awaitable[dict[str, Any]]],
                         fingerprint: str = "") -> tuple[dict[str, Any], bool]:
        """As on one node, but cluster-wide: a retry that lands on another node (behind a
        load balancer) gets the first answer too. The first request claims the key in Redis
        (SET NX, IDEMPOTENCY_TTL); a retry waits for its answer there."""
        if key is None:
            return await operation(), False
        redis_key = f"{PREFIX}idem:{key}"
        ttl = int(max(1, self.settings.idempotency_ttl))
        deadline = time.monotonic() + IDEMPOTENCY_WAIT
        while True:
            async with self.guard():
                won = await self.redis.set(redis_key, orjson.dumps({"fp": fingerprint}),
                                           nx=True, ex=ttl)
            if won:
                try:
                    extra = (fingerprint,) if fingerprint else ()  # older base: 2 args
                    answer, replayed = await super().idempotent(key, operation, *extra)
                except BaseException:
                    with contextlib.suppress(Exception):
                        await self.redis.delete(redis_key)
                    raise
                with contextlib.suppress(*UNREACHABLE):
                    await self.redis.set(redis_key, orjson.dumps(
                        {"fp": fingerprint, "answer": answer}), ex=ttl)
                return answer, replayed
            async with self.guard():
                raw = await self.redis.get(redis_key)
            if raw is None:
                continue  # the first attempt failed and let go of the key: run it ourselves
            record = orjson.loads(raw)
            if record.get("fp") != fingerprint:
                raise SwitchboardError(
                    "idempotency_key was already used for a different request; use a new key "
                    "for a new request", code="idempotency_key_reused", http_status=422,
                    details={"field": "idempotency_key"})
            if "answer" in record:
                return record["answer"], True
            if time.monotonic() > deadline:
                raise Unavailable("the first request with this idempotency_key is still in "
                                  "progress; retry later")
            await asyncio.sleep(0.02)  # the first request runs on another node

    # --- sessions arriving on this node (WebSocket endpoint hooks) ----------------------------

    async def fetch_session(self, client_id: str, token: str) -> Session | None:
        """Resume here a session held elsewhere (or offline in Redis): check the token, take
        it over from its owner, load state and history. None when unknown or the token is
        wrong (the session is then untouched); raises Unavailable when Redis is unreachable.
        """
        await self._settle(client_id)
        local = self.registry.get(client_id)
        if local is not None:
            return local if local.token_matches(token) else None
        self.require_healthy()
        for _ in range(MAX_HOPS):
            async with self.guard():
                fields = await self.redis.hmget(s_key(client_id), ["token", "node"])
            stored_digest, owner = _s(fields[0]), _s(fields[1])
            if not stored_digest or not hmac.compare_digest(stored_digest.encode(),
                                                            token_digest(token).encode()):
                return None
            local = await self._settled_local(client_id)
            if local is not None:  # a send adopted it here while we read Redis
                return local if local.token_matches(token) else None
            future = self._begin_claim(client_id)
            crashed = owner == self.me  # an earlier process of ours died holding it
            try:
                if owner in (self.me, ""):
                    async with self.guard():
                        result = await self.writer_scripts["cas"](
                            keys=[s_key(client_id)], args=[owner, self.me])
                    if result == -1:
                        return None
                    if result != 1:
                        continue
                else:
                    listeners, replies = await self._request(
                        node_topic(owner), {"op": "takeover", "client_id": client_id})
                    released = bool(replies) and replies[0].get("status") == "released"
                    if not released:
                        if listeners and not replies:
                            raise Unavailable(f"node {owner!r} did not hand over the session")
                        if listeners and "error" in replies[0]:
                            raise Unavailable(replies[0]["error"].get("message", "refused"))
                        if listeners == 0 and await self._node_alive(owner):
                            raise Unavailable(f"node {owner!r} holding the session is not "
                                              f"reachable right now")
                        async with self.guard():
                            result = await self.writer_scripts["cas"](
                                keys=[s_key(client_id)], args=[owner, self.me])
                        if result == -1:
                            return None
                        if result != 1:
                            continue  # someone else took it meanwhile: ask them
                        crashed = True
                fields_all, session = await self._load(client_id)
                if session is None:
                    return None
                if _s(fields_all.get(b"node")) != self.me:
                    continue
                session.token_matches(token)  # checked above; now the session knows it
                if crashed and isinstance(session, ClusterSession):
                    session.mark_crash_gap()
                    log.warning("session_taken_from_dead_node", client_id=client_id,
                                previous_node=owner, gap=session.gap)
                self._hold(session)
                if session.disconnected_at is None:
                    session.disconnected_at = time.time()
                return session
            finally:
                self._end_claim(client_id, future)
        raise Unavailable(f"session {client_id!r} kept moving between nodes; retry")

    async def claim_client_id(self, client_id: str) -> str | None:
        """A fresh connection asks for ``client_id``: reserve it cluster-wide, or None (a new
        id is generated) when a session already has it anywhere."""
        if self.registry.get(client_id) is not None:
            return None
        async with self.guard():
            ok = await self.writer_scripts["reserve"](
                keys=[s_key(client_id), IDX_KEY],
                args=[self.me, self.key_ttl, client_id, repr(time.time())])
        return client_id if ok == 1 else None

    # --- cluster-wide views -------------------------------------------------------------------

    async def find_session(self, client_id: str) -> tuple[Session, str]:
        """A session anywhere in the cluster (a copy read from Redis when remote), and its
        node."""
        session = self.registry.get(client_id)
        if session is not None:
            return session, self.me
        fields, remote = await self._load(client_id)
        if remote is None:
            raise ClientNotFound(f"no session with client_id {client_id!r} (unknown or expired)")
        node = _s(fields.get(b"node"))
        if fields.get(b"connected") == b"1":
            remote.outbox = REMOTE
        return remote, node

    async def all_sessions(self) -> list[tuple[Session, str]]:
        """Every session in the cluster with its node (local ones from memory)."""
        async with self.guard():
            ids = [_s(i) for i in await self.redis.zrange(IDX_KEY, 0, -1)]
            remote_ids = [i for i in ids if i not in self.registry.sessions]
            pipe = self.redis.pipeline(transaction=False)
            for client_id in remote_ids:
                pipe.hgetall(s_key(client_id))
            rows = await pipe.execute() if remote_ids else []
            gone = [cid for cid, row in zip(remote_ids, rows, strict=True) if not row]
            if gone:
                await self.redis.zrem(IDX_KEY, *gone)
        out = [(s, self.me) for s in self.registry.sessions.values()]
        for client_id, row in zip(remote_ids, rows, strict=True):
            if not row or b"token" not in row:
                continue
            session = session_from_redis(client_id, row, (), 1,
                                         connected=row.get(b"connected") == b"1")
            session.meta[HISTORY_SIZE] = int(row.get(b"history_size") or 0)
            out.append((session, _s(row.get(b"node"))))
        return out

    def describe_session(self, session: Session, node: str) -> dict[str, Any]:
        out = session.describe(node)
        if HISTORY_SIZE in session.meta:  # a listing read from Redis (history not loaded)
            out["history_size"] = session.meta[HISTORY_SIZE]
        return out

    async def list_clients(self, *, channel: str | None, client_type: str | None,
                           connected: bool | None) -> list[tuple[Session, str]]:
        return [(s, node) for s, node in await self.all_sessions()
                if (channel is None or channel in s.channels)
                and (client_type is None or s.client_type == client_type)
                and (connected is None or s.connected == connected)]

    async def cluster_channels(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for session, _ in await self.all_sessions():
            for channel in session.channels:
                counts[channel] = counts.get(channel, 0) + 1
        return dict(sorted(counts.items()))

    async def cluster_status(self) -> dict[str, Any]:
        """``GET /status``: this node's view plus cluster-wide counts and nodes."""
        local = self.status()
        sessions = await self.all_sessions()
        async with self.guard():
            raw_nodes = await self.redis.hgetall(NODES_KEY)
        now = time.time()
        nodes = []
        totals: dict[str, int] = {}
        for name, raw in sorted(raw_nodes.items()):
            info = orjson.loads(raw)
            alive = now - float(info.get("at", 0)) <= NODE_TIMEOUT
            if not alive:
                continue
            nodes.append({"node_id": _s(name), "sessions": info.get("sessions", 0),
                          "connected": info.get("connected", 0)})
            for key, value in info.items():
                if key.startswith("total_") and isinstance(value, int):
                    totals[key] = totals.get(key, 0) + value
        connected = sum(1 for s, _ in sessions if s.connected)
        channels: dict[str, int] = {}
        for session, _ in sessions:
            for channel in session.channels:
                channels[channel] = channels.get(channel, 0) + 1
        channels = dict(sorted(channels.items()))
        out = {**local, "local": {k: local[k] for k in (
            "connected_clients", "total_sessions", "offline_sessions", "total_channels")}}
        out.update({
            "connected_clients": connected, "total_clients": connected,
            "active_connections": connected, "total_sessions": len(sessions),
            "offline_sessions": len(sessions) - connected,
            "total_channels": len(channels), "channel_stats": channels,
            "active_channels": list(channels),
            "cluster": {"nodes": nodes, "node_count": len(nodes), "counters": totals},
        })
        return out


def create_cluster_gateway(settings: Settings, broker: RedisBroker,
                           tools: ToolRegistry | None = None) -> ClusterGateway:
    registry = ClusterRegistry.from_settings(settings, SYSTEM_CHANNELS)
    gateway = ClusterGateway(settings=settings, registry=registry, broker=broker,
                             tools=tools or default_tools.copy())
    gateway.install()
    return gateway
