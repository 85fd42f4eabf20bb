"""The seams the gateway runs on, and their one-node implementations.

:class:`~server.gateway.Gateway` is written once against these small interfaces; app wiring
(:func:`server.app.create_gateway`) is the only place that picks an implementation:

* :class:`Directory` — where sessions are: the one this node holds, or the node that holds it;
  claiming an id, resuming a session (taking it over from the node that holds it), listings,
  channel counts and status across every node.
* :class:`Peers` — the other nodes: a request to one node and its reply, a message to all of
  them and their replies, and the handlers this node runs for theirs. The gateway registers
  one handler per operation (``send``, ``call``, ``broadcast``…), and the same function
  serves a local caller and a remote one.
* :class:`~server.sessions.Journal` — the sink the (synchronous) registry writes every change
  to; one node has none.
* :class:`Idempotency` — one answer per idempotency key, on every node that may get a retry.
* :class:`Backend` — the bundle of the above for one node, with its lifecycle and health.

On one node (``BROKER_URL=memory://``) every implementation here is trivial: the directory is
the registry, there are no peers, nothing is journaled. The Redis implementations live in
:mod:`server.cluster` and are imported only when ``BROKER_URL`` is ``redis://``.
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Awaitable, Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

from server.channel_history import ChannelRings
from server.errors import ClientNotFound, PeerUnreachable, TooManySessions
from server.idempotency import LocalIdempotency
from server.sessions import Session, SessionRegistry

#: A handler for an operation another node asks this one to perform: gets the request's
#: header (a JSON object) and body (bytes), returns the reply (a JSON object). It runs in the
#: order messages arrive up to its first ``await``; raising a ``SwitchboardError`` sends that
#: error back to the caller, where it is raised again.
PeerHandler = Callable[[dict[str, Any], bytes], "dict[str, Any] | Awaitable[dict[str, Any]]"]


def may_resume(owner: str | None, user_id: str | None, has_token: bool) -> bool:
    """Whether a connection of ``user_id`` may resume a session of ``owner``: with a
    session_token, unless it says it is another user; without one (a verified JWT), only
    its own user's session."""
    if has_token:
        return user_id is None or user_id == owner
    return user_id is not None and user_id == owner


def default_node_id() -> str:
    """``hostname-pid``: unique per process on a machine (``NODE_ID`` overrides it)."""
    return f"{socket.gethostname()}-{os.getpid()}"


class Where(NamedTuple):
    """The answer of :meth:`Directory.locate`: the session when this node holds it, else the
    node that does."""

    session: Session | None
    node: str


@dataclass(slots=True, eq=False)
class Broadcast:
    """One broadcast frame and who it is for: serialised once, fanned out by every node to the
    sessions it holds. Compared and hashed by identity (one object per broadcast sent or
    received)."""

    message_id: str
    body: bytes
    channel: str | None = None
    client_type: str | None = None
    exclude: str | None = None

    def matches(self, session: Session) -> bool:
        return ((self.channel is None or self.channel in session.channels)
                and (self.client_type is None or session.client_type == self.client_type)
                and session.client_id != self.exclude)

    def header(self) -> dict[str, Any]:
        return {"message_id": self.message_id, "channel": self.channel,
                "client_type": self.client_type, "exclude": self.exclude}

    @classmethod
    def from_wire(cls, header: dict[str, Any], body: bytes) -> Broadcast:
        return cls(header["message_id"], body, header.get("channel"),
                   header.get("client_type"), header.get("exclude"))


class MemberChange(NamedTuple):
    """A session joining (``joined``) or leaving a channel, as the channel service records it
    (``Directory.record_membership``)."""

    joined: bool
    channel: str
    client_id: str
    user_id: str | None


class Member(NamedTuple):
    """A session in a channel's presence."""

    client_id: str
    user_id: str | None
    connected: bool


@dataclass(slots=True)
class Presence:
    """A channel's members: ``members`` (at most the limit asked, sorted by client_id),
    ``total`` (all of them), and ``stale``: members whose session is gone without leaving
    (its node died), for the caller to record as leaves."""

    members: list[Member]
    total: int
    stale: list[MemberChange]


@dataclass(slots=True)
class SessionInfo:
    """A session as listings show it, wherever it is held: the session (this node's own, or a
    copy read from the cluster's store, without history), its node, whether a socket is
    attached (on that node) and how many history entries it keeps."""

    session: Session
    node: str
    connected: bool
    history_size: int

    @classmethod
    def of(cls, session: Session, node: str) -> SessionInfo:
        return cls(session, node, session.connected, len(session.history))

    def describe(self) -> dict[str, Any]:
        out = self.session.describe(self.node)
        out["connected"] = self.connected
        out["history_size"] = self.history_size
        return out


class Directory(Protocol):
    """Where sessions are. Every method may raise ``Unavailable`` (503) when the answer needs
    the cluster and it cannot be reached right now."""

    def here(self, client_id: str) -> Session | None:
        """The session when this node holds it and nothing about it is in progress (it is not
        moving, this node is not leaving): the answer of :meth:`locate` without awaiting, for
        the common case. None means: ask :meth:`locate`."""

    async def locate(self, client_id: str) -> Where:
        """Who holds ``client_id``: ``Where(session, here)`` when this node does (taking it over
        first when its node released it or died), else ``Where(None, node)``. Raises
        ``ClientNotFound`` when no session has that id anywhere."""

    async def held(self, client_id: str) -> Session | None:
        """The session if this node holds it, once no move of it is in progress (what a node
        asked to act on a session checks; None: the caller must locate it again)."""

    async def take_over(self, client_id: str, node: str) -> None:
        """``node`` holds ``client_id`` but took no request for it: when that node is gone,
        hold the session here; raises ``Unavailable`` while it may still be alive."""

    async def claim_id(self, client_id: str, user_id: str | None = None,
                       per_user: int = 0) -> str | None:
        """Reserve ``client_id`` for a new session on this node; None when a session anywhere
        has it (the caller then lets the registry generate one). With ``user_id`` the
        session also counts as one of that user's, atomically: raises ``TooManySessions``
        (nothing reserved) when the user already holds ``per_user`` sessions anywhere."""

    async def resume(self, client_id: str, token: str | None,
                     user_id: str | None = None) -> Session | None:
        """The session to resume here, held by this node from now on (taken over from the node
        that held it, which closes its connection with 4000). ``token`` is the client's
        ``session_token``; None means the caller proved the user otherwise (a verified JWT
        whose ``sub`` is ``user_id``): then the session must be that user's. With a token, a
        ``user_id`` given must be the session's too. None when unknown, expired, the token
        is wrong or the session is another user's: then nothing changed."""

    async def user_clients(self, user_id: str) -> list[str]:
        """The client ids of ``user_id``'s sessions on every node (cheap: no listing)."""

    async def ended(self, client_id: str) -> None:
        """Return once the end of ``client_id`` (already recorded) is visible on every node."""

    def delivering(self, broadcast: Broadcast) -> AbstractContextManager[None]:
        """While the block runs, a session that starts to be held here (a resume, a take-over)
        gets ``broadcast`` too, unless it already has it: its previous node may let go of it
        before the broadcast reaches that node."""

    async def sessions(self, *, channel: str | None = None, client_type: str | None = None,
                       connected: bool | None = None, user_id: str | None = None
                       ) -> list[SessionInfo]:
        """Every session on every node matching all the given filters."""

    async def channel_counts(self) -> dict[str, int]:
        """Subscribers per channel, over every node, sorted by channel name."""

    async def record_membership(self, changes: list[MemberChange]) -> list[tuple[bool, bool]]:
        """Record joins and leaves in order, in the membership every node shares; for each,
        ``(changed, edge)``: whether it changed anything (a join of a member, or a leave of
        a non-member, changes nothing: whoever records a change first fires its events, so
        each fires once over the cluster), and whether it was the channel's first join or
        last leave (occupied / vacated)."""

    async def presence(self, channel: str, limit: int) -> Presence:
        """The channel's members on every node (see :class:`Presence`)."""

    async def stale_members(self, budget: int) -> list[MemberChange]:
        """Leaves to record for members whose session is gone without leaving (its node
        died), looking at about ``budget`` members (a periodic sweep)."""

    async def record_channel_frame(self, channel: str, frame: bytes, keep: int) -> None:
        """Keep ``frame`` (encoded, without seq) in the channel's history, which holds at
        most ``keep`` frames (and CHANNEL_HISTORY_BYTES bytes)."""

    async def channel_frames(self, channel: str, limit: int) -> list[bytes]:
        """The channel's newest ``limit`` kept frames, oldest first."""

    async def status(self, here: dict[str, Any]) -> dict[str, Any]:
        """``GET /status``: this node's ``here`` (its own counters) with the cluster's."""


class Gathering(Protocol):
    """A message sent to every other node, whose replies are arriving."""

    nodes: int
    """How many other nodes received it."""

    async def replies(self, timeout: float,  # noqa: ASYNC109 - a bound, not a cancel scope
                      until: Callable[[dict[str, Any]], bool] | None = None
                      ) -> list[dict[str, Any]]:
        """The replies received within ``timeout`` seconds (all of them, or fewer when a node
        is slow); returns early at the first reply for which ``until`` is true."""


class Peers(Protocol):
    """The other nodes of the cluster."""

    def handle(self, op: str, handler: PeerHandler) -> None:
        """Run ``handler`` for every ``op`` another node sends here."""

    async def request(self, node: str, op: str, header: dict[str, Any], body: bytes = b"", *,
                      timeout: float) -> dict[str, Any]:  # noqa: ASYNC109
        """Ask ``node`` to perform ``op``; its reply. Raises ``PeerUnreachable`` when nobody
        listens as ``node``, ``Unavailable`` when it did not answer within ``timeout``, and
        the error the node's handler raised (a ``SwitchboardError``)."""

    async def publish_all(self, op: str, header: dict[str, Any], body: bytes = b""
                          ) -> Gathering:
        """Send ``op`` to every other node; returns once it is sent (raises ``Unavailable``
        when it cannot be), with their replies to come."""


class Idempotency(Protocol):
    """One answer per idempotency key, for ``IDEMPOTENCY_TTL`` seconds."""

    async def once(self, key: str, fingerprint: str,
                   operation: Callable[[], Awaitable[dict[str, Any]]]
                   ) -> tuple[dict[str, Any], bool]:
        """Run ``operation`` once per key; a retry (even a racing one) gets the first answer:
        ``(answer, replayed)``. Failures are not kept. The same key with another
        ``fingerprint`` raises 422 ``idempotency_key_reused``."""

    def sweep(self) -> None:
        """Forget expired keys (periodic housekeeping)."""


class Backend(Protocol):
    """What one node needs to act as part of a gateway: the seams and their lifecycle."""

    node_id: str
    directory: Directory
    peers: Peers
    idempotency: Idempotency

    @property
    def healthy(self) -> bool:
        """False while the cluster cannot be reached (``GET /ready`` then answers 503)."""

    async def start(self) -> None:
        """Join: begin taking other nodes' requests (after the gateway registered its
        handlers)."""

    async def stop(self) -> None:
        """Leave: stop taking requests and hand over what this node holds."""

    def describe(self) -> dict[str, Any]:
        """For ``/status`` and ``/ready`` (never a secret)."""


# --- one node ----------------------------------------------------------------------------------


class LocalDirectory:
    """One node: every session is in this process's registry."""

    def __init__(self, registry: SessionRegistry, node_id: str,
                 rings: ChannelRings | None = None) -> None:
        self.registry = registry
        self.node_id = node_id
        #: Each channel's members (client_id -> user_id), as recorded by the channel service.
        self.members: dict[str, dict[str, str | None]] = {}
        self.rings = rings or ChannelRings(max_bytes=256 * 1024, max_channels=1000, ttl=3600)

    def here(self, client_id: str) -> Session | None:
        return self.registry.get(client_id)

    async def locate(self, client_id: str) -> Where:
        session = self.registry.get(client_id)
        if session is None:
            raise ClientNotFound(f"no session with client_id {client_id!r} (unknown or expired)")
        return Where(session, self.node_id)

    async def held(self, client_id: str) -> Session | None:
        return self.registry.get(client_id)

    async def take_over(self, client_id: str, node: str) -> None:  # pragma: no cover
        raise ClientNotFound(f"no session with client_id {client_id!r} (unknown or expired)")

    async def claim_id(self, client_id: str, user_id: str | None = None,
                       per_user: int = 0) -> str | None:
        if user_id is not None and len(self.registry.users.get(user_id, ())) >= per_user:
            raise TooManySessions(user_id, per_user)
        return client_id  # the registry generates another id when this one is taken

    async def resume(self, client_id: str, token: str | None,
                     user_id: str | None = None) -> Session | None:
        session = self.registry.get(client_id)
        if session is None or not may_resume(session.user_id, user_id, token is not None):
            return None
        if token is not None and not session.token_matches(token):
            return None
        return session

    async def user_clients(self, user_id: str) -> list[str]:
        return list(self.registry.users.get(user_id, ()))

    async def ended(self, client_id: str) -> None:
        return None

    def delivering(self, broadcast: Broadcast) -> AbstractContextManager[None]:
        return _NOTHING_TO_DO

    async def sessions(self, *, channel: str | None = None, client_type: str | None = None,
                       connected: bool | None = None, user_id: str | None = None
                       ) -> list[SessionInfo]:
        return [SessionInfo.of(s, self.node_id) for s in self.registry.select(
            channel=channel, client_type=client_type, connected=connected, user_id=user_id)]

    async def channel_counts(self) -> dict[str, int]:
        return self.registry.channel_stats()

    async def record_membership(self, changes: list[MemberChange]) -> list[tuple[bool, bool]]:
        out = []
        for joined, channel, client_id, user_id in changes:
            members = self.members.setdefault(channel, {})
            if joined:
                changed = client_id not in members
                members[client_id] = user_id
                out.append((changed, changed and len(members) == 1))
            else:
                changed = members.pop(client_id, False) is not False
                if not members:
                    del self.members[channel]
                out.append((changed, changed and not members))
        return out

    async def presence(self, channel: str, limit: int) -> Presence:
        members = self.members.get(channel, {})
        shown = sorted(members)[:limit]
        sessions = self.registry.sessions
        return Presence([Member(cid, members[cid], cid in sessions and sessions[cid].connected)
                         for cid in shown], len(members), [])

    async def stale_members(self, budget: int) -> list[MemberChange]:
        return []  # one node: every end is seen

    async def record_channel_frame(self, channel: str, frame: bytes, keep: int) -> None:
        self.rings.record(channel, frame, keep)

    async def channel_frames(self, channel: str, limit: int) -> list[bytes]:
        return self.rings.recent(channel, limit)

    async def status(self, here: dict[str, Any]) -> dict[str, Any]:
        return here


class _NoReplies:
    nodes = 0

    async def replies(self, timeout: float,  # noqa: ASYNC109
                      until: Callable[[dict[str, Any]], bool] | None = None
                      ) -> list[dict[str, Any]]:
        return []


_NO_REPLIES = _NoReplies()
_NOTHING_TO_DO: AbstractContextManager[None] = contextlib.nullcontext()


class LocalPeers:
    """One node: there is nobody to ask."""

    def handle(self, op: str, handler: PeerHandler) -> None:
        return None

    async def request(self, node: str, op: str, header: dict[str, Any], body: bytes = b"", *,
                      timeout: float) -> dict[str, Any]:  # noqa: ASYNC109
        raise PeerUnreachable(node)

    async def publish_all(self, op: str, header: dict[str, Any], body: bytes = b""
                          ) -> Gathering:
        return _NO_REPLIES


class LocalBackend:
    """``BROKER_URL=memory://``: one process is the whole gateway."""

    def __init__(self, registry: SessionRegistry, *, node_id: str, idempotency_ttl: float,
                 rings: ChannelRings | None = None) -> None:
        self.node_id = node_id or default_node_id()
        self.directory = LocalDirectory(registry, self.node_id, rings)
        self.peers = LocalPeers()
        self.idempotency = LocalIdempotency(idempotency_ttl)

    @property
    def healthy(self) -> bool:
        return True

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None

    def describe(self) -> dict[str, Any]:
        return {"backend": "memory", "node_id": self.node_id, "healthy": True}
