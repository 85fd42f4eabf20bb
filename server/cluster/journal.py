"""The write-behind journal: what the registry changes, written to Redis behind its back.

:class:`RedisJournal` is the registry's :class:`~server.sessions.Journal`. The registry calls
it synchronously on the hot path, and all it does there is note what changed: a few dict
operations per unicast frame, and per broadcast one record (the recipients, their seqs as
the registry's fan-out loop noted them, the body), no step per recipient. One task flushes
the notes with a pipeline of Lua scripts, one Redis round trip after the change when idle,
batching more under load, in the order they were noted:

* ``write_progress``: the counters and new inline history entries of up to 256 sessions in one
  call (each session's new frames in one argument);
* ``append_refs``: the broadcasts noted one after another, each body written once
  (``sb:m:{message_id}``) and a reference appended to each recipient's history, one RPUSH per
  session for all its references in the call (:mod:`server.cluster.shared`); consecutive
  broadcasts to the same recipients (a burst to everyone or to one channel) are sent as a
  run (their ids once, the seqs of the last one only), whose references the script builds
  once and pushes to every session of the run;
* ``write_session``: a session's whole hash (connect, channels, a move), last, and its whole
  history too when it must be rewritten; ``delete_session``: forget one, first.

Every write checks that this node still owns the session; when another node does (it took the
session over while this one was cut off), the journal tells its owner
(:attr:`RedisJournal.on_lost`). A session's counters in its hash are written with its unicast
frames and full writes; those of sessions that only got broadcasts are brought up to date
before every listing (:meth:`RedisJournal.flush` with ``counters``).

While Redis is unreachable the notes are dropped (memory stays bounded however long the
outage): the sessions concerned are rewritten in full once it is back, and every session this
node holds when Redis lost its data (a restart without persistence: the ``sb:boot`` marker
changed), with the broadcast bodies their histories reference, so nothing a node holds is
lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from array import array
from collections.abc import Callable
from typing import Any

import structlog

from server.cluster.shared import SharedBodies, pack_body
from server.cluster.store import (
    IDX_KEY,
    UNREACHABLE,
    RedisStore,
    h_key,
    m_key,
    pack_entry,
    s_key,
    session_fields,
)
from server.errors import Unavailable
from server.sessions import HistoryEntry, Session, SessionRegistry

log = structlog.get_logger("switchboard.cluster.journal")

#: Sessions written by one progress script call (bounds how long Redis is busy with it).
PROGRESS_BATCH = 256
#: Recipients of one ``append_refs`` call (a broadcast to more sessions held by one node is
#: split), and references when its broadcasts do not all go to the same sessions: Redis works
#: mostly per session in a call (an HGET, an RPUSH: ~5 µs), little per reference (~0.5 µs).
#: Bounds how long Redis is busy with one script.
REFS_PER_CALL = 32_768
#: References of one call when its broadcasts go to the same sessions (a burst of broadcasts
#: to everyone, or to one channel): batched so the per-session work is paid once for them.
REPEAT_REFS_PER_CALL = 8 * REFS_PER_CALL
#: append_refs reads the seqs as little-endian 64-bit integers.
BIG_ENDIAN = sys.byteorder == "big"

#: Inline entries noted for sessions (client id -> the session and its new entries), in the
#: order noted since the last broadcast.
Segment = dict[str, tuple[Session, list[HistoryEntry]]]


class FanOut:
    """One broadcast as noted: its recipients held here, each one's seq for it, the body."""

    __slots__ = ("at", "body", "message_id", "seqs", "sessions")

    def __init__(self, sessions: list[Session], seqs: list[int], body: bytes,
                 message_id: str, at: float) -> None:
        self.sessions = sessions
        self.seqs = seqs
        self.body = body
        self.message_id = message_id
        self.at = at


class RedisJournal:
    """Notes filled synchronously by the registry, emptied by one flushing task."""

    def __init__(self, store: RedisStore, registry: SessionRegistry, *, history_limit: int
                 ) -> None:
        self.store = store
        self.registry = registry
        self.history_limit = history_limit
        #: Inline entries noted since the last broadcast.
        self.entries: Segment = {}
        #: What was noted before, in order: segments of inline entries and broadcasts.
        self.noted: list[Segment | FanOut] = []
        #: Sessions whose own fields changed (connect, channels…): the full hash is written.
        self.dirty: dict[str, Session] = {}
        self.ended_ids: set[str] = set()
        #: Sessions to write with another owner than this node (a hand-over; "" = released).
        self.owners: dict[str, str] = {}
        #: Sessions to rewrite in full, history included.
        self.resync: set[str] = set()
        #: The seq each session's counters were last written with (see :meth:`flush`).
        self.counted: dict[str, int] = {}
        self.counters_wanted = False
        #: The broadcast bodies the histories here hold.
        self.shared = SharedBodies()
        #: The recipients of the last broadcast written and their ids as append_refs reads
        #: them (see :meth:`_ids_of`); forgotten when a session ends.
        self.joined: tuple[list[Session], str] | None = None
        self.waiters: list[asyncio.Future[None]] = []
        self.wake = asyncio.Event()
        self.healthy = asyncio.Event()
        #: Called with a client id when another node owns a session this node still holds.
        self.on_lost: Callable[[str], None] = lambda client_id: None
        self._task: asyncio.Task[None] | None = None
        store.on_state_change(self._state_changed)

    # --- the registry's Journal -----------------------------------------------------------

    def created(self, session: Session) -> None:
        self.resync.add(session.client_id)
        self.changed(session)

    def changed(self, session: Session) -> None:
        self.dirty[session.client_id] = session
        self.wake.set()

    def appended(self, session: Session, entry: HistoryEntry) -> None:
        pending = self.entries.get(session.client_id)
        if pending is None:
            self.entries[session.client_id] = (session, [entry])
        else:
            pending[1].append(entry)
        self.wake.set()

    def fanned_out(self, sessions: list[Session], seqs: list[int], body: bytes,
                   message_id: str | None, at: float) -> None:
        if not sessions:
            return
        if message_id is None:  # no id to keep the body under: inline, session by session
            for session in sessions:
                self.appended(session, session.history[-1])
            return
        if not self.store.healthy:  # written in full once Redis is back (bounded memory)
            for session in sessions:
                self.resync.add(session.client_id)
                self.dirty[session.client_id] = session
            self.wake.set()
            return
        self.shared.register(message_id, body)
        if self.entries:
            self.noted.append(self.entries)
            self.entries = {}
        self.noted.append(FanOut(sessions, seqs, body, message_id, at))
        self.wake.set()

    def ended(self, client_id: str) -> None:
        self.joined = None  # holds sessions: an ended one must not outlive its end here
        self.dirty.pop(client_id, None)
        self.entries.pop(client_id, None)
        self.resync.discard(client_id)
        self.counted.pop(client_id, None)
        self.ended_ids.add(client_id)
        self.wake.set()

    # --- ownership changes ------------------------------------------------------------------

    def hand_over(self, session: Session, node: str) -> None:
        """Write ``session`` with ``node`` as its owner ("": released) on the next flush."""
        self.owners[session.client_id] = node
        self.changed(session)

    def keep(self, client_id: str) -> None:
        """Undo :meth:`hand_over` (the other node could not take the session)."""
        self.owners.pop(client_id, None)

    async def flush(self, *, counters: bool = False) -> None:
        """Return once everything noted so far is in Redis (raises Unavailable if not);
        ``counters``: and the counters of every session held here (listings read them)."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.waiters.append(future)
        self.counters_wanted |= counters
        self.wake.set()
        await future

    # --- the flushing task ------------------------------------------------------------------

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._flush_forever(),
                                                            name="cluster-flusher")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task

    async def _state_changed(self, healthy: bool) -> None:
        if not healthy:
            self.healthy.clear()
            return
        lost = True
        with contextlib.suppress(Exception):
            lost = await self.store.dataset_lost()
        if lost and self.registry.sessions:
            # Redis lost everything (a restart without persistence, a flush): rewrite in full
            # what this node holds, so nothing it holds is lost.
            log.warning("cluster_store_lost_resyncing", sessions=len(self.registry))
            self.resync.update(self.registry.sessions)
            self.dirty.update(self.registry.sessions)
        self.wake.set()
        self.healthy.set()

    def _fail_waiters(self) -> None:
        waiters, self.waiters = self.waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_exception(Unavailable("Redis is unreachable"))

    def _drop_notes(self) -> None:
        """Redis is unreachable: forget the notes, and rewrite their sessions in full once it
        is back instead of keeping their frames twice (bounded memory however long it lasts).
        """
        sessions = self.registry.sessions
        for noted in (*self.noted, self.entries):
            ids = ([s.client_id for s in noted.sessions] if isinstance(noted, FanOut)
                   else list(noted))
            for client_id in ids:
                session = sessions.get(client_id)
                if session is not None:
                    self.resync.add(client_id)
                    self.dirty[client_id] = session
        self.noted, self.entries = [], {}

    async def _flush_forever(self) -> None:
        while True:
            await self.wake.wait()
            if not self.store.healthy:
                self._fail_waiters()
                self._drop_notes()
                self.wake.clear()
                await self.healthy.wait()
                continue
            self.wake.clear()
            try:
                await self._flush_once()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if isinstance(exc, UNREACHABLE):
                    self.store.report_failure(exc)
                else:
                    log.exception("cluster_flush_failed")
                    await asyncio.sleep(0.1)
                self.wake.set()

    async def _flush_once(self) -> None:
        noted, self.noted = self.noted, []
        if self.entries:
            noted.append(self.entries)
            self.entries = {}
        dirty, self.dirty = self.dirty, {}
        ended, self.ended_ids = self.ended_ids, set()
        owners, self.owners = self.owners, {}
        resync, self.resync = self.resync, set()
        counters, self.counters_wanted = self.counters_wanted, False
        waiters, self.waiters = self.waiters, []
        if counters:  # a listing is coming: sessions that got only broadcasts since
            held = self.registry.sessions
            counted = self.counted
            stale: Segment = {cid: (s, []) for cid, s in held.items()
                              if counted.get(cid) != s.seq and cid not in dirty}
            if stale:
                noted.append(stale)
            for client_id in counted.keys() - held.keys():  # moved to another node
                del counted[client_id]
        if noted or dirty or ended:
            try:
                await self._write(noted, dirty, ended, owners, resync)
            except BaseException as exc:
                # Keep what could not be written: it is rewritten in full later.
                sessions = self.registry.sessions
                for item in noted:
                    pairs = (zip([s.client_id for s in item.sessions], item.sessions,
                                 strict=True) if isinstance(item, FanOut)
                             else ((cid, s) for cid, (s, _) in item.items()))
                    for client_id, session in pairs:
                        if sessions.get(client_id) is session:
                            self.dirty[client_id] = session
                            self.resync.add(client_id)
                for client_id, session in dirty.items():
                    if sessions.get(client_id) is session:
                        self.dirty[client_id] = session
                        self.resync.add(client_id)
                    if client_id in owners:
                        self.owners.setdefault(client_id, owners[client_id])
                self.ended_ids |= ended
                self.counters_wanted |= counters
                for waiter in waiters:
                    if not waiter.done():
                        waiter.set_exception(Unavailable(f"Redis is unreachable: {exc}"))
                raise
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    async def _write(self, noted: list[Segment | FanOut], dirty: dict[str, Session],
                     ended: set[str], owners: dict[str, str], resync: set[str]) -> None:
        """One pipeline: deletes, then what was noted in order (inline entries and counters,
        broadcast references), then full writes (hash, and history when rewritten), which
        come last so a hand-over records the new owner after this node's last frames."""
        store = self.store
        me = store.me
        scripts = store.scripts
        limit = str(self.history_limit)
        keep_max = str(self.history_limit + max(1, self.history_limit // 8))
        ttl = str(store.key_ttl)
        counted = self.counted
        pipe = store.redis.pipeline(transaction=False)
        #: What each command's reply is about: "" (nothing to read), a list of client ids
        #: (one code each), "refs" (the exceptions only) or a client id (one code).
        order: list[str | list[str]] = []
        for client_id in ended:
            await scripts["delete_session"](keys=[s_key(client_id), h_key(client_id), IDX_KEY],
                                            args=[me, client_id], client=pipe)
            order.append("")
        refs: list[Any] = []
        refs_count = 0
        audience: list[Session] | None = None  # the recipients of the last broadcast sent
        #: The seqs of the last broadcast in ``refs``, packed when its run of broadcasts to
        #: the same recipients ends (append_refs reads only the last seq of each session).
        run_seqs: list[int] = []

        def end_run() -> None:
            if refs:
                packed = array("q", run_seqs)
                if BIG_ENDIAN:
                    packed.byteswap()
                refs[-1] = packed.tobytes()

        async def send_refs() -> None:
            nonlocal refs, refs_count, audience
            if refs:
                end_run()
                await scripts["append_refs"](args=[me, limit, keep_max, ttl, *refs], client=pipe)
                order.append("refs")
                refs, refs_count, audience = [], 0, None

        for item in noted:
            if isinstance(item, FanOut):
                body = pack_body(item.body, item.at)
                sessions, seqs = item.sessions, item.seqs
                whole = len(sessions) <= REFS_PER_CALL  # the common case: no copies
                for start in range(0, len(sessions), REFS_PER_CALL):
                    part = sessions if whole else sessions[start:start + REFS_PER_CALL]
                    same = part == audience  # compared by identity first, in C
                    if refs_count + len(part) > (REPEAT_REFS_PER_CALL if same
                                                 else REFS_PER_CALL):
                        await send_refs()
                        same = False
                    if not same:
                        end_run()
                    # The same recipients as the broadcast before (a comparison by identity,
                    # in C): the script reuses their list and the run's references instead
                    # of splitting the ids again, and reads this broadcast's seqs instead.
                    ids = "" if same else self._ids_of(part)
                    run_seqs = seqs if whole else seqs[start:start + REFS_PER_CALL]
                    refs += (item.message_id, body, ids, b"")
                    refs_count += len(part)
                    audience = part
                continue
            await send_refs()  # entries after these broadcasts come after them
            batch: list[str] = []
            batch_args: list[Any] = []
            for client_id, (session, items) in item.items():
                if client_id in resync:
                    continue  # rewritten in full below
                batch.append(client_id)
                counted[client_id] = session.seq
                packed = [pack_entry(e) for e in items]
                batch_args += (client_id, session.seq, session.messages_in,
                               session.messages_out, repr(session.last_activity),
                               len(session.history), len(packed),
                               b"".join(b"%d:%s" % (len(x), x) for x in packed))
                if len(batch) >= PROGRESS_BATCH:
                    await scripts["write_progress"](args=[me, limit, ttl, *batch_args],
                                                    client=pipe)
                    order.append(batch)
                    batch, batch_args = [], []
            if batch:
                await scripts["write_progress"](args=[me, limit, ttl, *batch_args], client=pipe)
                order.append(batch)
        await send_refs()
        # The bodies the rewritten histories reference, each once (however many share it).
        rewritten = [s for cid, s in dirty.items() if cid in resync]
        bodies = {mid: (body, at) for s in rewritten
                  for mid, body, at in self.shared.referenced(s.history)}
        for message_id, (body, at) in bodies.items():
            pipe.set(m_key(message_id), pack_body(body, at), ex=store.key_ttl)
            order.append("")
        for client_id, session in dirty.items():
            await self._write_full(pipe, session, owners.get(client_id, me),
                                   client_id in resync)
            order.append(client_id)
            counted[client_id] = session.seq
        results = await pipe.execute(raise_on_error=False)
        flat: list[tuple[str, Any]] = []
        for ids, result in zip(order, results, strict=True):
            if isinstance(result, Exception):
                if isinstance(result, UNREACHABLE):
                    raise result
                log.error("cluster_write_failed", client_id=ids, error=str(result))
            elif ids == "refs":
                flat.extend(zip(result[::2], result[1::2], strict=True))
            elif isinstance(ids, list):
                flat.extend(zip(ids, result, strict=True))
            elif ids:
                flat.append((ids, result))
        sessions = self.registry.sessions
        for client_id, result in flat:
            if isinstance(client_id, bytes):
                client_id = client_id.decode()
            if result == 2:
                session = sessions.get(client_id)
                if session is not None and client_id not in resync:
                    self.resync.add(client_id)
                    self.changed(session)
            elif result == 0 and client_id not in owners:
                self.on_lost(client_id)

    def _ids_of(self, sessions: list[Session]) -> str:
        """The client ids of ``sessions`` as append_refs reads them. A run of broadcasts to
        everyone or to one channel goes to the same sessions flush after flush: the string
        is kept and reused while the list is equal (compared by identity, in C), because
        building it reads every session again, a cache miss each (~2-3 % of the node's CPU
        per broadcast to 20,000 sessions)."""
        joined = self.joined
        if joined is not None and joined[0] == sessions:
            return joined[1]
        ids = " ".join([s.client_id for s in sessions])
        self.joined = (sessions, ids)
        return ids

    async def _write_full(self, pipe: Any, session: Session, owner: str, rewrite: bool
                          ) -> None:
        """A session's hash (``owner`` as its node) and, when ``rewrite``, its whole history
        (the broadcast bodies it references are written by the caller)."""
        store = self.store
        ttl = str(store.key_ttl)
        entries: list[bytes] = []
        if rewrite:
            shared = self.shared
            entries = [pack_entry(e, shared.message_id(e[2]) if e[1] else None)
                       for e in session.history]
        fields = session_fields(session, owner, len(session.history))
        # The list is trimmed to what the registry holds (its byte cap may keep fewer than
        # HISTORY_LIMIT frames); never to 0 (LTRIM -0 would keep everything).
        kept = str(max(1, len(session.history)))
        args: list[Any] = [store.me, ttl, kept, "1" if rewrite else "0",
                           repr(session.connected_at), session.client_id, str(len(fields))]
        for name, value in fields.items():
            args.append(name)
            args.append(value)
        args.extend(entries)
        await store.scripts["write_session"](
            keys=[s_key(session.client_id), h_key(session.client_id), IDX_KEY], args=args,
            client=pipe)
