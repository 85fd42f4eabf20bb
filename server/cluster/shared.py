"""Broadcast frames stored once: their bodies in Redis by message id, and the bodies this
node's histories hold.

A broadcast to N sessions is one body (``sb:m:{message_id}``, the frame as encoded, without a
``seq``) and, in each recipient's history list ``sb:h:{id}``, a reference of ~34 bytes
(``2 <message_id>``: the same string for every recipient, so Redis formats nothing per
recipient), where a unicast frame is kept inline. The seq of a bare reference is one less
than the seq of the server frame after it: the last reference a script call appends to a
history carries its seq (``3 <seq> <message_id>``), as does every inline server entry, and a
trim only ever drops the oldest entries, so every bare reference has such an anchor after it
(:func:`history_seqs`). The registry does the same in memory: every recipient's history
entry holds the one bytes object.

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

#: The first byte of a reference in a history list: bare (``2 <message_id>``) or with its seq
#: (``3 <seq> <message_id>``); inline entries start with "0 " / "1 " (:func:`pack_entry`).
REF, ANCHORED_REF = ord("2"), ord("3")


def is_ref(raw: bytes) -> bool:
    return raw[0] in (REF, ANCHORED_REF)


def pack_ref(pos: int, message_id: str) -> bytes:
    """A reference that carries its seq (what a rewritten history holds)."""
    return b"3 %d %s" % (pos, message_id.encode())


def unpack_ref(raw: bytes) -> tuple[int | None, str]:
    """``(seq, message_id)`` of a reference; ``seq`` is None for a bare one."""
    if raw[0] == ANCHORED_REF:
        _, pos, message_id = raw.split(b" ", 2)
        return int(pos), message_id.decode()
    return None, raw[2:].decode()


def history_seqs(history: list[bytes]) -> list[int | None]:
    """The seq of each reference in a history list (None for inline entries, and for a bare
    reference with no server frame after it, which a well-formed list never has): walking
    back from the newest, a bare reference is one before the next server frame."""
    seqs: list[int | None] = [None] * len(history)
    after: int | None = None  # the seq of the next server frame
    for i in range(len(history) - 1, -1, -1):
        raw = history[i]
        kind = raw[0]
        if kind == REF:
            after = seqs[i] = None if after is None else after - 1
        elif kind == ANCHORED_REF:
            after = seqs[i] = unpack_ref(raw)[0]
        elif raw.startswith(b"1 "):  # an inline server frame: "1 <seq> ..."
            after = int(raw.split(b" ", 2)[1])
    return seqs


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
