"""Broadcast frames stored once: their bodies in Redis by message id, and the bodies this
node's histories hold.

A broadcast to N sessions is one body (``sb:m:{message_id}``, the frame as encoded, without a
``seq``) and, in each recipient's history list ``sb:h:{id}``, a reference of ~40 bytes
(``2 <seq> <message_id>``), where a unicast frame is kept inline. The registry does the same
in memory: every recipient's history entry holds the one bytes object.

Lifetime of a body: written (``SET … EX key_ttl``) with the references, by every node whose
sessions got the broadcast, and kept alive for as long as any history that holds it lives:
:class:`SharedBodies` knows the bodies this node's histories hold (CPython's reference count
tells when no history holds one any more) and :class:`~server.cluster.membership.Membership`
refreshes their expiry with the sessions' own keys. So a body outlives every reference in a
history that a node holds, expires at most ``key_ttl`` after the last such history let go of
it, and a session loaded from Redis (a move, a take-over after a crash) finds its bodies:
the loading node fetches what it does not hold, refreshes it, and holds it from then on. A
reference whose body is gone anyway (Redis evicted it under ``maxmemory``) ends the loaded
history there: the entries from it back are dropped, so the history stays contiguous and a
resume from before it says ``recovered: false``.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator

from server.sessions import HistoryEntry

#: The first bytes of a reference in a history list (inline entries start with "0 " / "1 ").
REF = b"2 "


def m_key(message_id: str) -> str:
    return f"sb:m:{message_id}"


def pack_ref(pos: int, message_id: str) -> bytes:
    return b"2 %d %s" % (pos, message_id.encode())


def unpack_ref(raw: bytes) -> tuple[int, str]:
    _, pos, message_id = raw.split(b" ", 2)
    return int(pos), message_id.decode()


def pack_body(body: bytes, at: float) -> bytes:
    """The value of ``sb:m:{id}``: the time it was kept (ms) and the body."""
    return b"%d %s" % (int(at * 1000), body)


def unpack_body(raw: bytes) -> tuple[bytes, float]:
    at, body = raw.split(b" ", 1)
    return body, int(at) / 1000


class SharedBodies:
    """The broadcast bodies this node's histories may hold, by message id and by object.

    Registering costs a dict write per broadcast (never per recipient). :meth:`live` drops
    the bodies no history holds any more (by CPython's reference count: see there).
    """

    def __init__(self) -> None:
        #: One body object per message id: what a loaded history shares with local ones.
        self.by_id: dict[str, bytes] = {}
        #: Every registered object (a second one for an id is possible: a session loaded
        #: here just before this node fanned out the same broadcast), by ``id()``.
        self.objects: dict[int, tuple[str, bytes]] = {}

    def __len__(self) -> int:
        return len(self.objects)

    def register(self, message_id: str, body: bytes) -> bytes:
        """Note that histories here hold ``body``; returns the object to share for that id."""
        self.objects[id(body)] = (message_id, body)
        return self.by_id.setdefault(message_id, body)

    def get(self, message_id: str) -> bytes | None:
        return self.by_id.get(message_id)

    def message_id(self, data: bytes) -> str | None:
        """The message id of ``data`` when it is a registered shared body (by identity)."""
        known = self.objects.get(id(data))
        return known[0] if known is not None and known[1] is data else None

    def live(self) -> list[str]:
        """The message ids whose bodies some history here still holds; forgets the others."""
        alive: set[str] = set()
        for key, (message_id, body) in list(self.objects.items()):
            # Held by nothing but this object: its tuple in ``objects``, maybe ``by_id``, the
            # loop variable and getrefcount's argument.
            here = 4 if self.by_id.get(message_id) is body else 3
            if sys.getrefcount(body) <= here:
                del self.objects[key]
                if self.by_id.get(message_id) is body:
                    del self.by_id[message_id]
            else:
                alive.add(message_id)
        for message_id, body in self.objects.values():
            self.by_id.setdefault(message_id, body)  # another object for an id that lost its own
        return sorted(alive)

    def referenced(self, entries: Iterable[HistoryEntry]) -> Iterator[tuple[str, bytes, float]]:
        """``(message_id, body, at)`` for each distinct shared body among ``entries``."""
        seen: set[int] = set()
        for _, outbound, data, at in entries:
            if outbound and id(data) not in seen:
                message_id = self.message_id(data)
                if message_id is not None:
                    seen.add(id(data))
                    yield message_id, data, at
