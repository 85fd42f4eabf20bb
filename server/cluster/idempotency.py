"""Idempotency keys cluster-wide: a retry that lands on another node (behind a load
balancer) gets the first answer too.

The first request claims the key in Redis (``SET NX`` on ``sb:idem:{key}``, for
``IDEMPOTENCY_TTL``) and stores its answer there; a retry anywhere waits for that answer.
Requests racing on one node share one :class:`~server.idempotency.LocalIdempotency` entry.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from typing import Any

import orjson

from server.cluster.store import UNREACHABLE, RedisStore, idem_key
from server.errors import Unavailable
from server.idempotency import LocalIdempotency, key_reused

#: How long a retry waits for the first request (same key, running on another node).
IDEMPOTENCY_WAIT = 30.0
#: How often a retry looks for the first request's answer.
POLL_INTERVAL = 0.02


class RedisIdempotency:
    def __init__(self, store: RedisStore, ttl: float) -> None:
        self.store = store
        self.ttl_ms = max(1, int(ttl * 1000))
        self.local = LocalIdempotency(ttl)

    def sweep(self) -> None:
        self.local.sweep()

    async def once(self, key: str, fingerprint: str,
                   operation: Callable[[], Awaitable[dict[str, Any]]]
                   ) -> tuple[dict[str, Any], bool]:
        redis, guard = self.store.redis, self.store.guard
        name = idem_key(key)
        deadline = time.monotonic() + IDEMPOTENCY_WAIT
        while True:
            async with guard():
                won = await redis.set(name, orjson.dumps({"fp": fingerprint}), nx=True,
                                      px=self.ttl_ms)
            if won:
                try:
                    answer, replayed = await self.local.once(key, fingerprint, operation)
                except BaseException:
                    with contextlib.suppress(Exception):
                        await redis.delete(name)
                    raise
                with contextlib.suppress(*UNREACHABLE):
                    await redis.set(name, orjson.dumps({"fp": fingerprint, "answer": answer}),
                                    px=self.ttl_ms)
                return answer, replayed
            async with guard():
                raw = await redis.get(name)
            if raw is None:
                continue  # the first attempt failed and let go of the key: run it ourselves
            record = orjson.loads(raw)
            if record.get("fp") != fingerprint:
                raise key_reused()
            if "answer" in record:
                return record["answer"], True
            if time.monotonic() > deadline:
                raise Unavailable("the first request with this idempotency_key is still in "
                                  "progress; retry later")
            await asyncio.sleep(POLL_INTERVAL)  # the first request runs on another node
