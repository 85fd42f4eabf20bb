"""The cluster's shared state in Redis: the connection and its health, the key schema, the
Lua scripts (``lua/*.lua``, package data), and sessions to and from their Redis form.

Keys (all start with ``sb:``; a single Redis primary, not Redis Cluster: the scripts derive
keys from ids):

``sb:s:{id}``      hash: SHA-256 of the session token (never the token), client_type,
                   ``user_id`` (``""``: anonymous), ``node``
                   (the owner; ``""`` once released by a node that stopped), connected,
                   times, channels, ``seq``, counters, ``history_size``, ``gap``. The
                   counters lag behind broadcasts (written with unicasts, connects, moves
                   and before every listing); the history list is the truth for ``seq``.
``sb:h:{id}``      list: the last HISTORY_LIMIT history entries, oldest first: inline entries
                   (:func:`pack_entry`: ``0``/``1 <pos> <ms> <frame>``, a server frame
                   without its seq) and broadcast references (``2 <message id>``, or
                   ``3 <seq> <message id>`` for the last one a script call appends:
                   :mod:`server.cluster.shared`), up to HISTORY_LIMIT + 1/8 of them before
                   a trim; lives ``key_ttl`` after the owner last refreshed it
``sb:m:{mid}``     string: one broadcast frame, ``<ms> <frame>``, shared by the histories that
                   reference it (:mod:`server.cluster.shared`: its lifetime)
``sb:idx``         sorted set of session ids (listings), scored by connection time
``sb:u:{user}``    set: the client ids of a user's sessions (expires with the last of them)
``sb:p:{channel}`` hash: the channel's members, client_id -> user_id (presence)
``sb:pch``         set: the channels that have members (for the stale-member sweep)
``sb:ch:{channel}`` list: the channel's recent frames (its ``history`` rule), with
                   ``sb:chb:{channel}`` their bytes; ``sb:chidx`` the channels that have one
``sb:alive:{n}``   expires NODE_TIMEOUT after node ``n``'s last heartbeat
``sb:idem:{key}``  an idempotency key and, once known, its answer
``sb:boot``        set once per dataset: if it changes, Redis lost our data

The keys of one session (``sb:s:``, ``sb:h:``) always go together, and every script writes
the keys of the sessions it is given and the bodies they reference, never another session's:
sessions could be spread over several primaries by a hash of the client id, a script call
per primary, each holding the bodies its sessions reference (docs/CAPACITY.md). New keys for
sessions should follow that rule.

Redis trouble is visible, never silent: :attr:`RedisStore.healthy` is False from the moment
a command finds Redis unreachable (or the pub/sub subscription breaks) until the peer bus
has subscribed again; callbacks registered with :meth:`RedisStore.on_state_change` run on
each flip (the journal re-syncs then).
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from importlib import resources
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import orjson
import structlog
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.commands.core import AsyncScript
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from server.cluster.shared import (
    SharedBodies,
    history_seqs,
    is_ref,
    pack_ref,
    unpack_body,
    unpack_ref,
)
from server.errors import Unavailable
from server.sessions import HistoryEntry, Session, token_digest

log = structlog.get_logger("switchboard.cluster")

PREFIX = "sb:"
IDX_KEY = f"{PREFIX}idx"
BOOT_KEY = f"{PREFIX}boot"
ALL_TOPIC = f"{PREFIX}all"
#: Seconds a command may take on an established connection / to connect.
SOCKET_TIMEOUT = 5.0
CONNECT_TIMEOUT = 1.0
#: Errors meaning "Redis is unreachable right now" (as opposed to a bad command).
UNREACHABLE = (RedisConnectionError, RedisTimeoutError, ConnectionError, OSError,
               TimeoutError)
SCRIPTS = ("write_session", "write_progress", "append_refs", "delete_session", "reserve_id",
           "cas_owner", "reserve_user_id", "presence", "channel_history")


def s_key(client_id: str) -> str:
    return f"{PREFIX}s:{client_id}"


def h_key(client_id: str) -> str:
    return f"{PREFIX}h:{client_id}"


def u_key(user_id: str) -> str:
    return f"{PREFIX}u:{user_id}"


def alive_key(node: str) -> str:
    return f"{PREFIX}alive:{node}"


def m_key(message_id: str) -> str:
    """A broadcast body shared by the histories that reference it (:mod:`.shared`)."""
    return f"{PREFIX}m:{message_id}"


def idem_key(key: str) -> str:
    return f"{PREFIX}idem:{key}"


def node_topic(node: str) -> str:
    """The pub/sub channel of requests to ``node`` (and replies to its own requests)."""
    return f"{PREFIX}node:{node}"


def text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode()
    return "" if value is None else str(value)


def redact_url(url: str) -> str:
    """The URL without its password (for logs and ``/status``)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    user = f"{parts.username}:***@" if parts.username else ":***@"
    return urlunsplit((parts.scheme, user + host, parts.path, parts.query, parts.fragment))


StateCallback = Callable[[bool], Awaitable[None]]


class RedisStore:
    """This node's Redis: one command client (redis-py's asyncio pool, retrying briefly with
    ``Retry(ExponentialBackoff)``), its health, and the scripts."""

    def __init__(self, url: str, node_id: str, *, key_ttl: int) -> None:
        self.url = url
        self.me = node_id
        #: Seconds a session's keys live after the owner last refreshed them.
        self.key_ttl = key_ttl
        self.redis: Redis = Redis.from_url(
            url,
            retry=Retry(ExponentialBackoff(cap=0.5, base=0.02), retries=2),
            retry_on_error=[RedisConnectionError, RedisTimeoutError],
            socket_timeout=SOCKET_TIMEOUT,
            socket_connect_timeout=CONNECT_TIMEOUT,
            health_check_interval=10,
        )
        self.scripts: dict[str, AsyncScript] = {
            name: self.redis.register_script(
                resources.files(__package__).joinpath("lua", f"{name}.lua").read_text())
            for name in SCRIPTS}
        self._healthy = False
        #: Set when this node starts leaving: what needs the cluster answers 503.
        self.closing = False
        self.last_error = ""
        #: Set by :meth:`report_failure`: the peer bus re-subscribes (which proves Redis is back).
        self.kick = asyncio.Event()
        self._callbacks: list[StateCallback] = []
        self._boot_marker: bytes | None = None

    # --- health -------------------------------------------------------------------------------

    @property
    def healthy(self) -> bool:
        return self._healthy

    def on_state_change(self, callback: StateCallback) -> None:
        """``await callback(healthy)`` each time health flips (after the flip is logged)."""
        self._callbacks.append(callback)

    def set_healthy(self, healthy: bool) -> None:
        if healthy == self._healthy:
            return
        self._healthy = healthy
        if healthy:
            self.last_error = ""
            log.info("broker_connected", node_id=self.me, url=redact_url(self.url))
        else:
            log.warning("broker_unreachable", node_id=self.me, url=redact_url(self.url),
                        error=self.last_error)
        for callback in self._callbacks:
            asyncio.get_running_loop().create_task(self._run_callback(callback, healthy))

    async def _run_callback(self, callback: StateCallback, healthy: bool) -> None:
        try:
            await callback(healthy)
        except Exception:
            log.exception("broker_state_callback_failed", healthy=healthy)

    def report_failure(self, exc: BaseException) -> None:
        """A command found Redis unreachable: mark unhealthy and make the bus re-subscribe
        (which marks healthy again once it has)."""
        self.last_error = f"{type(exc).__name__}: {exc}"
        self.set_healthy(False)
        self.kick.set()

    def require_healthy(self) -> None:
        if self.closing:
            raise Unavailable("this node is shutting down; retry (on another node)")
        if not self._healthy:
            raise Unavailable("the cluster broker (Redis) is unreachable; retry shortly",
                              details={"broker": self.describe()})

    @contextlib.asynccontextmanager
    async def guard(self) -> AsyncIterator[None]:
        """Redis unreachable during the block: unhealthy, and 503 to the caller."""
        self.require_healthy()
        try:
            yield
        except UNREACHABLE as exc:
            self.report_failure(exc)
            raise Unavailable(f"the cluster broker (Redis) is unreachable: {exc}") from None

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {"backend": urlsplit(self.url).scheme or "redis",
                               "node_id": self.me, "healthy": self._healthy,
                               "url": redact_url(self.url)}
        if not self._healthy and self.last_error:
            out["error"] = self.last_error
        return out

    async def close(self) -> None:
        await self.redis.aclose()
        self._healthy = False

    async def dataset_lost(self) -> bool:
        """Whether Redis is not the one this process wrote to before: its ``sb:boot`` marker,
        set once and never expiring, changed or vanished (a restart without persistence, a
        flush). True on this process's first connection too: nothing it holds yet (sessions
        opened while Redis was unreachable) can be in Redis."""
        marker = await self.redis.get(BOOT_KEY)
        if marker is None:
            await self.redis.set(BOOT_KEY, secrets.token_hex(8), nx=True)
            marker = await self.redis.get(BOOT_KEY)
        lost = marker != self._boot_marker
        self._boot_marker = marker
        return lost

    # --- sessions -----------------------------------------------------------------------------

    async def owner(self, client_id: str) -> str | None:
        """The node that owns ``client_id`` (``""``: released), None when there is no session."""
        async with self.guard():
            node = await self.redis.hget(s_key(client_id), "node")
        return None if node is None else text(node)

    async def cas_owner(self, client_id: str, expected: str) -> int | str:
        """Take ownership from ``expected`` atomically: 1 (taken), -1 (no such session) or the
        node that owns it now."""
        async with self.guard():
            result = await self.scripts["cas_owner"](keys=[s_key(client_id)],
                                                     args=[expected, self.me])
        return text(result) if isinstance(result, bytes) else int(result)

    async def load(self, client_id: str, history_limit: int, shared: SharedBodies
                   ) -> tuple[dict[bytes, bytes], Session | None]:
        """A session's hash and, when it is a real session (not a bare reservation), the
        session rebuilt from it with its history: broadcast references resolved to the bodies
        this node holds (``shared``) or fetches (and then holds, their expiry refreshed)."""
        async with self.guard():
            pipe = self.redis.pipeline(transaction=True)
            pipe.hgetall(s_key(client_id))
            pipe.lrange(h_key(client_id), -history_limit, -1)
            fields, history = await pipe.execute()
            if not fields or b"token" not in fields:
                return fields or {}, None
            wanted = sorted({unpack_ref(raw)[1] for raw in history if is_ref(raw)}
                            - shared.by_id.keys())
            fetched: dict[str, tuple[bytes, float]] = {}
            if wanted:
                pipe = self.redis.pipeline(transaction=False)
                pipe.mget([m_key(mid) for mid in wanted])
                for mid in wanted:
                    pipe.expire(m_key(mid), self.key_ttl)
                values = (await pipe.execute())[0]
                fetched = {mid: unpack_body(raw) for mid, raw in zip(wanted, values, strict=True)
                           if raw is not None}
        entries = resolve_history(history, shared, fetched)
        return fields, session_from_redis(client_id, fields, entries, history_limit)


# --- sessions in Redis ---------------------------------------------------------------------


def pack_entry(entry: HistoryEntry, message_id: str | None = None) -> bytes:
    """An entry as kept in ``sb:h:{id}``: inline, or a reference to the broadcast body
    ``message_id`` (which must be written too)."""
    pos, outbound, data, at = entry
    if message_id is not None:
        return pack_ref(pos, message_id)
    return b"%d %d %d " % (1 if outbound else 0, pos, int(at * 1000)) + data


def unpack_entry(raw: bytes) -> HistoryEntry:
    outbound, pos, at, data = raw.split(b" ", 3)
    return (int(pos), outbound == b"1", data, int(at) / 1000)


def resolve_history(history: list[bytes], shared: SharedBodies,
                    fetched: dict[str, tuple[bytes, float]]) -> list[HistoryEntry]:
    """Entries from a history list, references resolved to the bodies this node holds or
    just ``fetched`` (registered in ``shared`` so every history here shares one object). A
    reference whose body is gone ends the history there: only what follows it is kept."""
    entries: list[HistoryEntry] = []
    seqs = history_seqs(history)
    for raw, pos in zip(history, seqs, strict=True):
        if not is_ref(raw):
            entries.append(unpack_entry(raw))
            continue
        message_id = unpack_ref(raw)[1]
        body = shared.get(message_id)
        if pos is None:  # no server frame after it to say its seq (never written so)
            entries.clear()
            continue
        if body is not None:
            at = entries[-1][3] if entries else time.time()
        elif message_id in fetched:
            body, at = fetched.pop(message_id)
            body = shared.register(message_id, body)
        else:
            entries.clear()  # a hole: keep history contiguous (resumes from before: partial)
            continue
        entries.append((pos, True, body, at))
    return entries


def session_fields(session: Session, node: str, history_len: int) -> dict[str, str]:
    """The hash ``sb:s:{id}`` for a session (no history)."""
    return {
        "token": token_digest(session.token) if session.token else session.token_hash,
        "client_type": session.client_type,
        "user_id": session.user_id or "",
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
        "meta": orjson.dumps(session.meta).decode(),
        "history_size": str(history_len),
        "gap": "{}:{}".format(*session.gap) if session.gap else "",
    }


def session_from_redis(client_id: str, fields: dict[bytes, bytes],
                       history: Iterable[HistoryEntry], history_limit: int) -> Session:
    """Rebuild a :class:`Session` from its hash and history entries. Its token is unknown
    (Redis keeps only the digest) until the client presents it. The hash's counters may lag
    behind broadcasts written as references: the newest server frame in history says the
    seq, and every server frame counted in ``messages_out``."""
    f = {k.decode(): v.decode() for k, v in fields.items()}
    session = Session(client_id, f.get("client_type") or "default", history_limit,
                      orjson.loads(f.get("meta") or "{}"), f.get("user_id") or None)
    session.token = ""
    session.token_hash = f.get("token") or ""
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
    session.history = deque(history, maxlen=history_limit)
    newest = next((pos for pos, outbound, _, _ in reversed(session.history) if outbound), 0)
    if newest > session.seq:
        session.messages_out += newest - session.seq
        session.seq = newest
    return session
