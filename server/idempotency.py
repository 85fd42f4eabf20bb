"""Idempotency keys on one node: a retried POST gets the first request's answer.

``POST /send_message`` and ``POST /broadcast`` take an ``idempotency_key`` (or an
``Idempotency-Key`` header); the key is kept ``IDEMPOTENCY_TTL`` seconds. In a cluster,
:mod:`server.cluster.idempotency` makes the key cluster-wide and uses this for the requests
racing on one node.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from server.errors import SwitchboardError


def key_reused() -> SwitchboardError:
    """The error for a key sent again with another request (422, naming the field)."""
    return SwitchboardError(
        "idempotency_key was already used for a different request; use a new key for a new "
        "request", code="idempotency_key_reused", http_status=422,
        details={"field": "idempotency_key"})


@dataclass(slots=True)
class _Entry:
    expires: float
    future: asyncio.Future[Any]
    fingerprint: str = ""


class LocalIdempotency:
    """Keys of this process: a retry, even one racing the first request, awaits its answer."""

    def __init__(self, ttl: float) -> None:
        self.ttl = ttl
        self.entries: dict[str, _Entry] = {}

    def __len__(self) -> int:
        return len(self.entries)

    async def once(self, key: str, fingerprint: str,
                   operation: Callable[[], Awaitable[dict[str, Any]]]
                   ) -> tuple[dict[str, Any], bool]:
        """``fingerprint`` identifies the request: the same key with another request is
        refused (422 ``idempotency_key_reused``) rather than answered with the first request's
        result, which would tell the caller a message it never sent was delivered."""
        now = time.monotonic()
        entry = self.entries.get(key)
        if entry is not None and entry.expires > now:
            if entry.fingerprint != fingerprint:
                raise key_reused()
            return await asyncio.shield(entry.future), True
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.entries[key] = _Entry(now + self.ttl, future, fingerprint)
        try:
            answer = await operation()
        except BaseException as exc:
            self.entries.pop(key, None)
            future.set_exception(exc)
            future.exception()  # mark retrieved: a racing retry re-raises it itself
            raise
        future.set_result(answer)
        return answer, False

    def sweep(self) -> None:
        now = time.monotonic()
        for key in [k for k, e in self.entries.items() if e.expires <= now]:
            del self.entries[key]
