"""The write-behind journal: what the registry changes, written to Redis behind its back.

:class:`RedisJournal` is the registry's :class:`~server.sessions.Journal`. The registry calls
it synchronously on the hot path, and all it does there is note what changed (a few dict
operations); one task flushes the notes with a pipeline of Lua scripts, one Redis round trip
after the change when idle, batching more under load: ``write_progress`` carries the
counters and new history entries of up to 256 sessions in one call (each session's new
frames in one argument), ``write_session`` rewrites a session's whole hash (connect,
channels, a move) and ``delete_session`` forgets one. Every write checks that this node still
owns the session; when another node does (it took the session over while this one was cut
off), the journal tells its owner (:attr:`RedisJournal.on_lost`).

While Redis is unreachable the notes are dropped (memory stays bounded however long the
outage): the sessions concerned are rewritten in full once it is back, and every session this
node holds when Redis lost its data (a restart without persistence: the ``sb:boot`` marker
changed), so nothing a node holds is lost.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

import structlog

from server.cluster.store import (
    IDX_KEY,
    UNREACHABLE,
    RedisStore,
    h_key,
    pack_entry,
    s_key,
    session_fields,
)
from server.errors import Unavailable
from server.sessions import HistoryEntry, Session, SessionRegistry

log = structlog.get_logger("switchboard.cluster.journal")

#: Sessions written by one progress script call (bounds how long Redis is busy with it).
PROGRESS_BATCH = 256


class RedisJournal:
    """Notes filled synchronously by the registry, emptied by one flushing task."""

    def __init__(self, store: RedisStore, registry: SessionRegistry, *, history_limit: int
                 ) -> None:
        self.store = store
        self.registry = registry
        self.history_limit = history_limit
        self.entries: dict[str, list[HistoryEntry]] = {}
        self.dirty: dict[str, Session] = {}
        #: Sessions whose own fields changed (connect, channels…): the full hash is written.
        self.full: set[str] = set()
        self.ended_ids: set[str] = set()
        #: Sessions to write with another owner than this node (a hand-over; "" = released).
        self.owners: dict[str, str] = {}
        #: Sessions to rewrite in full, history included.
        self.resync: set[str] = set()
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
        self.full.add(session.client_id)
        self.wake.set()

    def appended(self, session: Session, entry: HistoryEntry) -> None:
        client_id = session.client_id
        entries = self.entries.get(client_id)
        if entries is None:
            self.entries[client_id] = [entry]
        else:
            entries.append(entry)
        self.dirty[client_id] = session
        self.wake.set()

    def fanned_out(self, sessions: list[Session]) -> None:
        append = self.appended
        for session in sessions:
            append(session, session.history[-1])

    def ended(self, client_id: str) -> None:
        self.dirty.pop(client_id, None)
        self.entries.pop(client_id, None)
        self.resync.discard(client_id)
        self.full.discard(client_id)
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

    async def flush(self) -> None:
        """Return once everything noted so far is in Redis (raises Unavailable if not)."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.waiters.append(future)
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

    async def _flush_forever(self) -> None:
        while True:
            await self.wake.wait()
            if not self.store.healthy:
                self._fail_waiters()
                # Rewrite these sessions in full once Redis is back, instead of keeping their
                # frames twice: bounded memory however long the outage.
                for client_id in self.entries:
                    session = self.registry.sessions.get(client_id)
                    if session is not None:
                        self.resync.add(client_id)
                        self.dirty[client_id] = session
                self.entries.clear()
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
        entries, self.entries = self.entries, {}
        dirty, self.dirty = self.dirty, {}
        ended, self.ended_ids = self.ended_ids, set()
        owners, self.owners = self.owners, {}
        resync, self.resync = self.resync, set()
        full, self.full = self.full, set()
        waiters, self.waiters = self.waiters, []
        if dirty or ended:
            try:
                await self._write(entries, dirty, ended, owners, resync, full)
            except BaseException as exc:
                # Keep what could not be written: it is rewritten in full later.
                for client_id, session in dirty.items():
                    if self.registry.sessions.get(client_id) is session:
                        self.dirty[client_id] = session
                        self.resync.add(client_id)
                        self.full.add(client_id)
                    if client_id in owners:
                        self.owners.setdefault(client_id, owners[client_id])
                self.ended_ids |= ended
                for waiter in waiters:
                    if not waiter.done():
                        waiter.set_exception(Unavailable(f"Redis is unreachable: {exc}"))
                raise
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    async def _write(self, entries: dict[str, list[HistoryEntry]], dirty: dict[str, Session],
                     ended: set[str], owners: dict[str, str], resync: set[str],
                     full: set[str]) -> None:
        store = self.store
        me = store.me
        write = store.scripts["write_session"]
        progress = store.scripts["write_progress"]
        delete = store.scripts["delete_session"]
        limit = str(self.history_limit)
        ttl = str(store.key_ttl)
        pipe = store.redis.pipeline(transaction=False)
        order: list[str | list[str]] = []
        batch: list[str] = []
        batch_args: list[Any] = []
        for client_id in ended:
            await delete(keys=[s_key(client_id), h_key(client_id), IDX_KEY],
                         args=[me, client_id], client=pipe)
            order.append("")
        for client_id, session in dirty.items():
            rewrite = client_id in resync
            items = list(session.history) if rewrite else entries.get(client_id, ())
            if not rewrite and client_id not in full and client_id not in owners:
                batch.append(client_id)
                packed = [pack_entry(e) for e in items]
                batch_args += (client_id, session.seq, session.messages_in,
                               session.messages_out, repr(session.last_activity),
                               len(session.history), len(packed),
                               b"".join(b"%d:%s" % (len(x), x) for x in packed))
                if len(batch) >= PROGRESS_BATCH:
                    await progress(args=[me, limit, ttl, *batch_args], client=pipe)
                    order.append(batch)
                    batch, batch_args = [], []
                continue
            fields = session_fields(session, owners.get(client_id, me), len(session.history))
            # The list is trimmed to what the registry holds (its byte cap may keep fewer than
            # HISTORY_LIMIT frames); never to 0 (LTRIM -0 would keep everything).
            kept = str(max(1, len(session.history)))
            args: list[Any] = [me, ttl, kept, "1" if rewrite else "0",
                               repr(session.connected_at), client_id, str(len(fields))]
            for name, value in fields.items():
                args.append(name)
                args.append(value)
            args.extend(pack_entry(e) for e in items)
            await write(keys=[s_key(client_id), h_key(client_id), IDX_KEY], args=args,
                        client=pipe)
            order.append(client_id)
        if batch:
            await progress(args=[me, limit, ttl, *batch_args], client=pipe)
            order.append(batch)
        results = await pipe.execute(raise_on_error=False)
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
                    self.resync.add(client_id)
                    self.changed(dirty[client_id])
            elif result == 0 and client_id not in owners:
                self.on_lost(client_id)
