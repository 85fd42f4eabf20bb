"""Lifecycle events for ``EVENTS_WEBHOOK_URL``: batched, signed, retried, off the delivery path.

Code that sees something happen calls :meth:`EventEmitter.emit_event` (``app[EVENTS]``), which
only appends the encoded event to a bounded in-memory queue and returns: it never waits for
the network, so no delivery, subscribe or connect is slowed by the backend. A background task
(the WebSocket app's ``cleanup_ctx``) posts the queue in batches.

Events (``type`` and the fields each carries besides ``id`` and ``timestamp``):

====================  ============================================================
``session_started``   ``client_id``, ``user_id``, ``client_type``
``session_ended``     ``client_id``, ``user_id``, ``reason``
``channel_occupied``  ``channel`` (its first subscriber arrived)
``channel_vacated``   ``channel`` (its last subscriber left)
``member_added``      ``channel``, ``client_id``, ``user_id``
``member_removed``    ``channel``, ``client_id``, ``user_id``
====================  ============================================================

Who emits them (server/channels.py, server/gateway.py): the node that holds the session, once
over the cluster. A session starts when it is opened (not on resume); it ends when it expires
(``reason`` ``expired``), is evicted (``evicted``: MAX_SESSIONS or MAX_SESSIONS_PER_USER), is
ended by the API (``deleted``), is taken over through seed 001's path (``replaced``), its
socket drops with SESSION_TTL=0 (``disconnected``) or a memory:// gateway stops
(``shutdown``); its ``member_removed`` events come first. A socket drop is no end and no
leave. A channel is occupied by its first member anywhere and vacated by its last.

One POST carries up to ``EVENTS_BATCH_SIZE`` events; the first event of a batch waits at most
``EVENTS_BATCH_WAIT`` seconds for others. The body::

    {"batch_id": "9f2c…", "sent_at": "2026-01-01T00:00:00.000Z",
     "events": [{"type": "member_added", "id": "evt_…", "timestamp": "…",
                 "channel": "room:1", "client_id": "c1", "user_id": "alice"}, …]}

with ``X-Switchboard-Request-Id: <batch_id>``, ``X-Switchboard-Attempt: <n>`` and, with
``WEBHOOK_SECRET``, the same ``X-Switchboard-Timestamp`` / ``X-Switchboard-Signature`` as every
webhook (re-signed on each attempt). Delivery is at least once and in order: a batch is retried
(with the same ``batch_id`` and event ``id``s, so a backend can drop duplicates) after a
timeout (``WEBHOOK_TIMEOUT``), a connection error, 408, 429 or 5xx, with exponential backoff
(0.5 s doubling up to 30 s, jittered) for up to :data:`MAX_ATTEMPTS` attempts; later batches
wait meanwhile. Any other status (a 4xx, a redirect) drops the batch: retrying cannot help.

Nothing grows without bound: past ``EVENTS_QUEUE_SIZE`` queued events, new events are dropped.
At shutdown the queue is posted for up to ``min(SHUTDOWN_TIMEOUT, 5 s)``; what is left is
logged (``events_undelivered``, count) and dropped. Every outcome is counted in
``switchboard_events_total{outcome}`` (delivered, dropped_queue_full, dropped_rejected,
dropped_retries, dropped_shutdown) and every POST in ``switchboard_events_posts_total{result}``
(ok, failed, retried).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import secrets
import time
from collections import deque
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import aiohttp
import structlog

from server.logging_setup import url_for_logs
from server.metrics import EVENT_OUTCOME, EVENT_POST
from server.protocol import encode, now_iso
from server.webhooks import _describe, backend_session, request_headers

if TYPE_CHECKING:
    from aiohttp import web

    from server.config import Settings

log = structlog.get_logger("switchboard.events")

EVENT_TYPES = frozenset({"session_started", "session_ended", "channel_occupied",
                         "channel_vacated", "member_added", "member_removed"})
_RESERVED = frozenset({"type", "id", "timestamp"})
MAX_ATTEMPTS = 8
RETRY_BASE = 0.5
RETRY_CAP = 30.0
#: At most this many seconds (and at most SHUTDOWN_TIMEOUT) are spent posting at shutdown.
DRAIN_MAX = 5.0


class EventEmitter:
    """The queue and poster of lifecycle events. Without EVENTS_WEBHOOK_URL every
    :meth:`emit_event` is a no-op returning False, so callers never check."""

    def __init__(self, settings: Settings, *, max_attempts: int = MAX_ATTEMPTS,
                 retry_base: float = RETRY_BASE, retry_cap: float = RETRY_CAP) -> None:
        self.settings = settings
        self.url = settings.events_webhook_url
        self.max_queue = settings.events_queue_size
        self.batch_size = settings.events_batch_size
        self.batch_wait = settings.events_batch_wait
        self.max_attempts = max_attempts
        self.retry_base = retry_base
        self.retry_cap = retry_cap
        self.queue: deque[bytes] = deque()
        self.http: aiohttp.ClientSession | None = None
        self._task: asyncio.Task[None] | None = None
        self._sending: list[bytes] = []
        self._wakeup = asyncio.Event()
        self._full = asyncio.Event()
        self._closing = False
        self._drop_logged_at = 0.0

    @property
    def enabled(self) -> bool:
        return bool(self.url)

    @property
    def pending(self) -> int:
        """Events queued or in the batch being posted."""
        return len(self.queue) + len(self._sending)

    def emit_event(self, kind: str, **fields: Any) -> bool:
        """Queue one event of type ``kind`` (see the module doc for each type's fields).
        Returns at once: True if queued, False if events are off or it was dropped (queue full,
        shutting down; counted and logged). Raises ValueError for an unknown type or a
        reserved field name and TypeError for a field orjson cannot encode: caller bugs."""
        if not self.url:
            return False
        if kind not in EVENT_TYPES:
            raise ValueError(f"unknown event type {kind!r} (expected one of "
                             f"{', '.join(sorted(EVENT_TYPES))})")
        clash = _RESERVED.intersection(fields)
        if clash:
            raise ValueError(f"event field {sorted(clash)[0]!r} is reserved")
        if self._closing:
            self._drop("dropped_shutdown", 1)
            return False
        if len(self.queue) >= self.max_queue:
            self._drop("dropped_queue_full", 1)
            return False
        event = {"type": kind, "id": "evt_" + secrets.token_hex(10), "timestamp": now_iso()}
        event.update(fields)
        self.queue.append(encode(event))  # exactly sized: the queue keeps them (protocol.encode)
        if len(self.queue) >= self.batch_size:
            self._full.set()
        self._wakeup.set()
        return True

    # --- lifecycle -------------------------------------------------------------------------------

    async def lifespan(self, app: web.Application) -> AsyncIterator[None]:
        """``cleanup_ctx``: start the poster; at shutdown drain (bounded) and close."""
        if not self.url:
            yield
            return
        self.start(backend_session(self.settings, limit=4))
        log.info("events_webhook_enabled", url=url_for_logs(self.url), batch_size=self.batch_size,
                 batch_wait=self.batch_wait, queue_size=self.max_queue)
        try:
            yield
        finally:
            await self.close(min(self.settings.shutdown_timeout, DRAIN_MAX))

    def start(self, http: aiohttp.ClientSession) -> None:
        self.http = http
        self._task = asyncio.get_running_loop().create_task(self._run(), name="events-webhook")

    async def close(self, timeout: float) -> int:  # noqa: ASYNC109 - a drain budget
        """Take no more events, post the queue for up to ``timeout`` seconds, then stop.
        Returns how many events were left undelivered (logged and counted as dropped)."""
        self._closing = True
        self._full.set()
        self._wakeup.set()
        task, self._task = self._task, None
        if task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(task), timeout)
            except TimeoutError:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        left = self.pending
        if left:
            EVENT_OUTCOME["dropped_shutdown"].inc(left)
            log.warning("events_undelivered", count=left, url=url_for_logs(self.url),
                        reason="shutdown before the events webhook took them")
        self.queue.clear()
        self._sending = []
        if self.http is not None:
            await self.http.close()
            self.http = None
        return left

    # --- the poster ------------------------------------------------------------------------------

    async def _run(self) -> None:
        while True:
            if not self.queue:
                if self._closing:
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            if len(self.queue) < self.batch_size and not self._closing and self.batch_wait > 0:
                self._full.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._full.wait(), self.batch_wait)
            count = min(self.batch_size, len(self.queue))
            self._sending = [self.queue.popleft() for _ in range(count)]
            try:
                await self._deliver(self._sending)
            except Exception:  # the poster must never die: the queue would fill for good
                log.exception("events_poster_failed", events=len(self._sending))
                EVENT_OUTCOME["dropped_rejected"].inc(len(self._sending))
            self._sending = []

    async def _deliver(self, batch: list[bytes]) -> None:
        batch_id = secrets.token_hex(8)
        payload = b"".join((b'{"batch_id":"', batch_id.encode(), b'","sent_at":"',
                            now_iso().encode(), b'","events":[', b",".join(batch), b"]}"))
        detail = ""
        for attempt in range(1, self.max_attempts + 1):
            if attempt > 1:
                EVENT_POST["retried"].inc()
            outcome, detail = await self._post(payload, batch_id, attempt)
            if outcome == "ok":
                EVENT_POST["ok"].inc()
                EVENT_OUTCOME["delivered"].inc(len(batch))
                return
            EVENT_POST["failed"].inc()
            if outcome == "reject":
                self._drop("dropped_rejected", len(batch), detail)
                return
            if attempt < self.max_attempts:
                delay = min(self.retry_cap, self.retry_base * 2 ** (attempt - 1))
                delay *= random.uniform(0.8, 1.2)  # jitter: retries of many nodes spread out
                log.warning("events_post_failed", batch_id=batch_id, attempt=attempt,
                            error=detail, events=len(batch), retry_in=round(delay, 2))
                await asyncio.sleep(delay)
        self._drop("dropped_retries", len(batch), detail)

    async def _post(self, payload: bytes, batch_id: str, attempt: int) -> tuple[str, str]:
        """One attempt: ("ok" | "retry" | "reject", what went wrong)."""
        assert self.http is not None
        headers = request_headers(self.settings, payload, batch_id, accept="application/json")
        headers["X-Switchboard-Attempt"] = str(attempt)
        try:
            async with asyncio.timeout(self.settings.webhook_timeout):
                async with self.http.post(self.url, data=payload, headers=headers,
                                          allow_redirects=False) as resp:
                    status = resp.status
        except TimeoutError:
            return "retry", f"no answer within {self.settings.webhook_timeout:g}s"
        except (aiohttp.ClientError, OSError) as exc:
            return "retry", f"unreachable: {_describe(exc)}"
        if 200 <= status < 300:
            return "ok", ""
        if status in (408, 429) or status >= 500:
            return "retry", f"HTTP {status}"
        return "reject", f"HTTP {status}"

    def _drop(self, outcome: str, count: int, detail: str = "") -> None:
        EVENT_OUTCOME[outcome].inc(count)
        now = time.monotonic()
        if outcome != "dropped_queue_full" or now - self._drop_logged_at >= 1.0:
            # A full queue can drop thousands a second: one line a second says it.
            self._drop_logged_at = now
            log.warning("events_dropped", reason=outcome, events=count, error=detail or None,
                        queued=len(self.queue))
