"""The gateway: every operation both apps perform on sessions, written once.

The HTTP API (``api/``), the socket endpoint (``server/ws.py``) and the frame handlers
(``handlers/``) call these methods; none of them knows whether the gateway is one process or
a cluster. Each operation on a session asks the :class:`~server.seams.Directory` where the
session is, then performs the operation here (the session is in this node's
:class:`~server.sessions.SessionRegistry`) or sends it to the node that holds it through
:class:`~server.seams.Peers`, where the very same function performs it. A broadcast is
fanned out here and on every other node. On one node the seams are trivial
(:mod:`server.seams`); app wiring picks them (:func:`server.app.create_gateway`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

import structlog

from server import protocol
from server.channel_rules import ChannelRules
from server.channels import ChannelService
from server.config import Settings
from server.errors import (
    CallTimeout,
    ClientDisconnected,
    ClientNotFound,
    ClientOffline,
    CloseCode,
    PeerUnreachable,
    SessionMoved,
    SwitchboardError,
    ToolError,
    TooManySessions,
    Unavailable,
)
from server.metrics import HOT, TOOL_CALL
from server.seams import Backend, Broadcast, PeerHandler, SessionInfo
from server.sessions import Session, SessionRegistry, generate_client_id, valid_client_id
from server.tools import ToolContext, ToolRegistry, error_result, invoke, redact, shape_result

log = structlog.get_logger("switchboard.gateway")
#: The stdlib logger structlog's events go through (``configure_logging`` sets both to
#: LOG_LEVEL): asking it whether debug is on costs one call on a per-request path, where a
#: filtered structlog event costs three plus its fields.
_stdlib_log = logging.getLogger("switchboard.gateway")

#: Channel that receives a copy of every tool lifecycle frame (for dashboards and observers).
TOOL_ACTIVITY_CHANNEL = "tool_activity"
SYSTEM_CHANNELS = (TOOL_ACTIVITY_CHANNEL,)
#: Channel frames a channel's history does not keep (presence notices, not content).
NOT_KEPT_IN_CHANNEL_HISTORY = frozenset({"join", "leave"})

#: How long a request to the node holding a session may take (send, disconnect, history).
REQUEST_TIMEOUT = 5.0
#: How long a broadcast waits for the other nodes' counts.
BROADCAST_REPLY_TIMEOUT = 2.0
#: How many times an operation follows a session that moves while the request travels.
MAX_HOPS = 4
#: Extra seconds a call_tool sent to another node waits beyond the call's own timeout.
CALL_MARGIN = 2.0

#: An operation on one session, performed by the node that holds it: gets the session, the
#: request's header and body, returns the answer (the same whether the caller is here or not).
SessionOp = Callable[[Session, dict[str, Any], bytes], Awaitable[dict[str, Any]]]


def _payload(content: Any, data: dict[str, Any] | None) -> dict[str, Any]:
    """A ``message`` frame's data: ``data`` with ``content`` in it."""
    payload = dict(data or {})
    if content is not None:
        payload["content"] = content
    return payload


@dataclass(slots=True)
class PendingCall:
    """A server-initiated ``tool_call`` waiting for the client's ``tool_result``."""

    client_id: str
    tool_name: str
    future: asyncio.Future[dict[str, Any]]
    wait_for_client: bool = False


@dataclass(slots=True)
class PendingPermission:
    client_id: str
    future: asyncio.Future[bool]


@dataclass
class Gateway:
    settings: Settings
    registry: SessionRegistry
    backend: Backend
    tools: ToolRegistry
    pending_calls: dict[str, PendingCall] = field(default_factory=dict)
    #: Keyed by (client_id, call_id): client-initiated call_ids are chosen by clients, so one
    #: client reusing another's id must not overwrite (or answer) the other's request.
    pending_permissions: dict[tuple[str, str], PendingPermission] = field(default_factory=dict)
    tasks: set[asyncio.Task[Any]] = field(default_factory=set)
    tool_fallback: Callable[[str, dict[str, Any], ToolContext], Awaitable[Any]] | None = None
    #: With CHAT_WEBHOOK_URL set: answers a chat frame (spawned, so reading goes on).
    chat_backend: Callable[[Any, Any], Coroutine[Any, Any, None]] | None = None
    accepting: bool = True
    started_at: float = field(default_factory=time.time)
    session_ops: dict[str, SessionOp] = field(default_factory=dict)
    #: CHANNEL_RULES, the subscribe/publish webhooks and the events emitter (app wiring
    #: loads them; without, any channel may be subscribed to and nothing is reported).
    rules: ChannelRules | None = None
    hooks: Any = None
    events: Any = None
    channels: ChannelService = field(init=False)

    def __post_init__(self) -> None:
        self.session_ops.update({
            "send": self._send_here,
            "call": self._call_here,
            "disconnect": self._disconnect_here,
            "describe": self._describe_here,
            "history": self._history_here,
        })
        peers = self.backend.peers
        for op in self.session_ops:
            peers.handle(op, self.for_peer(op))
        peers.handle("broadcast", self._broadcast_for_peer)
        peers.handle("tool_result", self._tool_result_for_peer)
        peers.handle("permission", self._permission_for_peer)
        rules = self.rules or ChannelRules(None, system_channels=SYSTEM_CHANNELS,
                                           allow_list=self.settings.channels)
        self.channels = ChannelService(self, rules, self.hooks, self.events)

    @property
    def node_id(self) -> str:
        return self.backend.node_id

    def node_status(self) -> dict[str, Any]:
        """This node's state and counters (the ``get_status`` frame; ``GET /status`` adds the
        cluster's). No secrets."""
        stats = self.registry.stats()
        return {
            "status": "running" if self.accepting else "shutting_down",
            **stats,
            "max_connections": self.settings.max_connections,
            "pending_tool_calls": len(self.pending_calls),
            "node_id": self.node_id,
            "broker": self.backend.describe(),
        }

    async def status(self) -> dict[str, Any]:
        """``GET /status``: state and counters of the whole gateway (every node)."""
        return await self.backend.directory.status(self.node_status())

    # --- frames to one session held here ------------------------------------------------------

    def emit(self, session: Session, frame_type: str, data: dict[str, Any] | None = None, *,
             reply_to: str | None = None, extra: dict[str, Any] | None = None) -> int:
        """Deliver a server frame to a session (kept in history); returns its seq."""
        frame = protocol.server_frame(frame_type, data, reply_to=reply_to, extra=extra)
        seq, _ = self.registry.deliver(session, protocol.encode(frame))
        return seq

    def emit_ephemeral(self, session: Session, frame_type: str,
                       data: dict[str, Any] | None = None, *, reply_to: str | None = None) -> None:
        """A frame not kept in history (no seq): pong, heartbeat_response."""
        frame = protocol.server_frame(frame_type, data, reply_to=reply_to)
        self.registry.deliver_ephemeral(session, protocol.encode(frame))

    # --- where a session is -------------------------------------------------------------------

    async def at_session(self, client_id: str, op: str, header: dict[str, Any],
                          body: bytes = b"", *,
                          timeout: float = REQUEST_TIMEOUT  # noqa: ASYNC109 - a bound
                          ) -> dict[str, Any]:
        """Perform ``op`` on ``client_id``'s session: here when this node holds it, else on
        the node that does (following it if it moves meanwhile)."""
        directory = self.backend.directory
        session = directory.here(client_id)
        if session is not None:
            return await self.session_ops[op](session, header, body)
        for _ in range(MAX_HOPS):
            where = await directory.locate(client_id)
            if where.session is not None:
                return await self.session_ops[op](where.session, header, body)
            try:
                return await self.backend.peers.request(
                    where.node, op, {**header, "client_id": client_id}, body, timeout=timeout)
            except SessionMoved:
                continue
            except PeerUnreachable:
                await directory.take_over(client_id, where.node)
        raise Unavailable(f"client {client_id!r} kept moving between nodes; retry")

    def for_peer(self, op: str) -> PeerHandler:
        """The handler another node's :meth:`at_session` reaches: the same operation."""
        perform = self.session_ops[op]

        async def handler(header: dict[str, Any], body: bytes) -> dict[str, Any]:
            session = await self.backend.directory.held(header["client_id"])
            if session is None:
                raise SessionMoved(f"session {header['client_id']!r} is not held here")
            return await perform(session, header, body)

        return handler

    async def require(self, client_id: str) -> None:
        """Raise ClientNotFound (404) unless a session has this id somewhere."""
        await self.backend.directory.locate(client_id)

    async def resume(self, client_id: str, token: str | None, user_id: str | None = None
                     ) -> Session | None:
        """A reconnecting client's session, now held here (see ``Directory.resume``). Resumed
        on the strength of a verified JWT (``token`` None: the session must be ``user_id``'s),
        it gets a fresh session token."""
        session = await self.backend.directory.resume(client_id, token, user_id)
        if session is not None and token is None:
            self.registry.renew_token(session)
        return session

    async def open_session(self, client_id: str | None, client_type: str,
                           meta: dict[str, Any] | None = None, user_id: str | None = None
                           ) -> Session:
        """A new session here, with the requested id when it is valid and free everywhere
        (else a generated one). A user's session counts against MAX_SESSIONS_PER_USER (over
        every node): at the cap the user's session offline longest is ended to make room;
        when they are all connected, ``TooManySessions``."""
        if client_id is not None and not valid_client_id(client_id):
            client_id = None
        # Every new session's id is claimed in the directory first, a generated one too: the
        # client learns its id from the greeting, sent after this, so by the time it (or a
        # backend it told) names the session, any node can find it.
        client_id = await self._claim(client_id, user_id)
        session = self.registry.create(client_id, client_type, meta, user_id)
        self.channels.started(session)
        return session

    async def _claim(self, client_id: str | None, user_id: str | None) -> str:
        """``client_id`` if free everywhere, else a generated id, claimed (for ``user_id``,
        within MAX_SESSIONS_PER_USER)."""
        directory = self.backend.directory
        limit = self.settings.max_sessions_per_user
        for _ in range(MAX_HOPS):
            try:
                while True:
                    wanted = client_id or generate_client_id()
                    try:
                        claimed = await directory.claim_id(wanted, user_id, limit)
                    except Unavailable:
                        if client_id is not None or user_id is not None:
                            raise  # uniqueness or the user's cap cannot be checked: retry
                        # A generated id is unique without asking (128 random bits): the
                        # claim only makes it findable at once elsewhere. Without the
                        # directory the session still opens; its node writes it later.
                        return wanted
                    if claimed is not None:
                        return claimed
                    client_id = None  # taken: a generated one then
            except TooManySessions:
                if user_id is None or not await self._end_oldest_offline(user_id):
                    HOT.limit_hit("sessions_per_user")
                    raise
        raise Unavailable(f"user {user_id!r} keeps opening sessions; retry")

    async def _end_oldest_offline(self, user_id: str) -> bool:
        """Make room for a user's new session: end its session offline longest. False when
        every session of the user is connected."""
        offline = await self.backend.directory.sessions(user_id=user_id, connected=False)
        if not offline:
            return False
        oldest = min(offline, key=lambda info: (info.session.disconnected_at or 0.0,
                                                info.session.client_id))
        HOT.limit_hit("sessions_per_user")
        log.info("session_evicted_for_user", client_id=oldest.session.client_id,
                 user_id=user_id, max_sessions_per_user=self.settings.max_sessions_per_user)
        with contextlib.suppress(ClientNotFound):
            await self.disconnect(oldest.session.client_id, end_reason="evicted")
        return True

    # --- HTTP API operations ------------------------------------------------------------------

    async def deliver(self, client_id: str, frame_type: str, data: dict[str, Any] | None = None,
                      *, reply_to: str | None = None) -> dict[str, Any]:
        """Deliver one server frame to a client wherever its session is, or queue it in history
        when it is offline: ``{status: delivered|queued, message_id, seq, client_id}``."""
        frame = protocol.server_frame(frame_type, data, reply_to=reply_to)
        encoded = protocol.encode(frame)
        session = self.backend.directory.here(client_id)
        if session is not None:  # the common case, without awaiting
            reply = self._send_now(session, encoded)
        else:
            reply = await self.at_session(client_id, "send", {}, encoded)
        if _stdlib_log.isEnabledFor(logging.DEBUG):  # off by default: no event built
            log.debug("message_sent", client_id=client_id, message_id=frame["message_id"],
                      type=frame_type, seq=reply["seq"], status=reply["status"])
        return {"status": reply["status"], "message_id": frame["message_id"],
                "seq": reply["seq"], "client_id": client_id}

    async def send_message(self, client_id: str, content: Any, *, message_type: str = "message",
                           data: dict[str, Any] | None = None) -> dict[str, Any]:
        """``POST /send_message``: deliver to one client, or queue it when it is offline."""
        return await self.deliver(client_id, message_type, _payload(content, data))

    async def send_to_user(self, user_id: str, content: Any, *, message_type: str = "message",
                           data: dict[str, Any] | None = None) -> dict[str, Any]:
        """``POST /send_message`` with ``user_id``: the same frame (one message_id) delivered
        or queued to every session of the user, wherever each is held. Raises ClientNotFound
        (``user_not_found``) when the user has no session."""
        frame = protocol.server_frame(message_type, _payload(content, data))
        encoded = protocol.encode(frame)
        ids = await self.backend.directory.user_clients(user_id)
        replies = await asyncio.gather(*(self.at_session(client_id, "send", {}, encoded)
                                         for client_id in ids), return_exceptions=True)
        sessions: list[dict[str, Any]] = []
        for client_id, reply in zip(ids, replies, strict=True):
            if isinstance(reply, ClientNotFound):
                continue  # it ended since the user's sessions were read
            if isinstance(reply, SwitchboardError):
                sessions.append({"client_id": client_id, "status": "failed",
                                 "error": reply.to_dict()})
            elif isinstance(reply, BaseException):
                raise reply
            else:
                sessions.append({"client_id": client_id, **reply})
        if not sessions:
            raise ClientNotFound(f"user {user_id!r} has no session (unknown, or every session "
                                 f"expired)", code="user_not_found")
        counts = {status: sum(1 for s in sessions if s["status"] == status)
                  for status in ("delivered", "queued", "failed")}
        log.debug("message_sent_to_user", user_id=user_id, message_id=frame["message_id"],
                  type=message_type, **counts)
        return {"user_id": user_id, "message_id": frame["message_id"], "sessions": sessions,
                **counts}

    async def user(self, user_id: str) -> dict[str, Any]:
        """``GET /users/{id}``: the user's sessions on every node, connected or kept, oldest
        first. Raises ClientNotFound (``user_not_found``) when it has none."""
        found = await self.backend.directory.sessions(user_id=user_id)
        if not found:
            raise ClientNotFound(f"user {user_id!r} has no session (unknown, or every session "
                                 f"expired)", code="user_not_found")
        found.sort(key=lambda info: (info.session.connected_at, info.session.client_id))
        return {"user_id": user_id, "sessions": [info.describe() for info in found],
                "total": len(found), "connected": sum(1 for info in found if info.connected)}

    async def _send_here(self, session: Session, header: dict[str, Any], body: bytes
                         ) -> dict[str, Any]:
        return self._send_now(session, body)

    def _send_now(self, session: Session, encoded: bytes) -> dict[str, Any]:
        seq, pushed = self.registry.deliver(session, encoded)
        if not pushed:
            HOT.frames_out_queued += 1
        return {"status": "delivered" if pushed else "queued", "seq": seq}

    async def broadcast(self, message_type: str, data: dict[str, Any] | None = None, *,
                        channel: str | None = None, client_type: str | None = None,
                        exclude: str | None = None, counted: bool = True,
                        sender: dict[str, Any] | None = None) -> dict[str, Any]:
        """Serialise once, then fan out to every matching session on every node (live ones get
        it now, offline ones keep it for resume). Returns counts and the frame's message_id;
        ``partial: true`` when a node did not answer in time. ``counted=False``: not in
        ``total_broadcasts`` (the gateway's own notices). ``sender``: a client publication's
        ``from``. A channel frame is kept in the channel's history first, when its rule
        keeps any (join/leave notices are not)."""
        extra: dict[str, Any] | None = {"channel": channel} if channel is not None else None
        if sender is not None:
            extra = {**(extra or {}), "from": sender}
        frame = protocol.server_frame(message_type, data, extra=extra)
        sent = Broadcast(frame["message_id"], protocol.encode(frame), channel, client_type,
                         exclude)
        if not self.backend.healthy:  # it could reach this node's clients only: refuse
            raise Unavailable("the cluster cannot be reached right now; retry shortly",
                              details={"broker": self.backend.describe()})
        if channel is not None and message_type not in NOT_KEPT_IN_CHANNEL_HISTORY:
            kept = self.channels.history_kept(channel)
            if kept:
                await self.backend.directory.record_channel_frame(channel, sent.body, kept)
        with self.backend.directory.delivering(sent):
            # Fanned out here before anything awaits: a session that starts to be held here
            # meanwhile gets it from delivering() instead, never twice.
            pushed, queued = self._fan_out_here(sent)
            others = await self.backend.peers.publish_all("broadcast", sent.header(), sent.body)
            replies = await others.replies(BROADCAST_REPLY_TIMEOUT)
        if counted:  # tool_activity notices are not the operator's broadcasts
            self.registry.counters.total_broadcasts += 1
        for reply in replies:
            pushed += int(reply.get("pushed", 0))
            queued += int(reply.get("queued", 0))
        answer: dict[str, Any] = {"recipients": pushed, "queued": queued,
                                  "message_id": frame["message_id"], "nodes": others.nodes + 1,
                                  "nodes_answered": len(replies) + 1}
        if len(replies) < others.nodes:
            answer["partial"] = True
        log.debug("broadcast", message_id=frame["message_id"], type=message_type,
                  channel=channel, client_type=client_type, recipients=pushed, queued=queued,
                  nodes=others.nodes + 1)
        return answer

    def _fan_out_here(self, sent: Broadcast) -> tuple[int, int]:
        targets = self.registry.select(channel=sent.channel, client_type=sent.client_type)
        if sent.exclude is not None:
            targets = (s for s in targets if s.client_id != sent.exclude)
        pushed, queued = self.registry.fan_out(targets, sent.body, sent.message_id)
        HOT.frames_out_queued += queued
        return pushed, queued

    def _broadcast_for_peer(self, header: dict[str, Any], body: bytes) -> dict[str, Any]:
        sent = Broadcast.from_wire(header, body)
        with self.backend.directory.delivering(sent):
            pushed, queued = self._fan_out_here(sent)
        return {"pushed": pushed, "queued": queued}

    async def call_tool(self, client_id: str, tool_name: str, params: dict[str, Any], *,
                        timeout: float | None = None,  # noqa: ASYNC109 - the API field
                        wait_for_client: bool = False) -> dict[str, Any]:
        """Ask a client to run a tool and wait for its ``tool_result`` (on the node holding
        the session, which gets the client's answer; the answer comes back here).

        Raises ClientNotFound (404), ClientOffline (409, unless ``wait_for_client``),
        ClientDisconnected (502, the client left mid-call) or CallTimeout (504).
        """
        wait = self.settings.call_tool_timeout if timeout is None else timeout
        header = {"tool_name": tool_name, "params": params, "timeout": wait,
                  "wait_for_client": wait_for_client}
        return await self.at_session(client_id, "call", header, timeout=wait + CALL_MARGIN)

    async def _call_here(self, session: Session, header: dict[str, Any], body: bytes
                         ) -> dict[str, Any]:
        client_id = session.client_id
        tool_name: str = header["tool_name"]
        wait_for_client = bool(header.get("wait_for_client"))
        if not session.connected and not wait_for_client:
            raise ClientOffline(
                f"client {client_id!r} is offline; pass wait_for_client=true to wait for it "
                f"to resume")
        timeout = float(header["timeout"])
        params = header.get("params") or {}
        call_id = secrets.token_urlsafe(18)
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self.pending_calls[call_id] = PendingCall(client_id, tool_name, future, wait_for_client)
        started = time.perf_counter()
        base = {"call_id": call_id, "tool_name": tool_name, "parameters": redact(params),
                "start_time": protocol.now_iso(), "client_id": client_id, "origin": "api"}
        observed = self._observe("mcp_tool_execution_start", {**base, "status": "executing"})
        answer: dict[str, Any] | None = None
        failure = "the call was cancelled"
        try:
            self.emit(session, "tool_call", {"call_id": call_id, "tool_name": tool_name,
                                             "params": params})
            try:
                async with asyncio.timeout(timeout):
                    answer = await future
            except TimeoutError:
                raise CallTimeout(
                    f"client {client_id!r} did not answer tool_call {call_id} within "
                    f"{timeout:g}s", details={"call_id": call_id}) from None
        except SwitchboardError as exc:
            failure = exc.message
            raise
        finally:
            self.pending_calls.pop(call_id, None)
            success = answer is not None and bool(answer["success"])
            if answer is None:
                result = error_result(failure)
            elif success:
                result = shape_result(answer.get("result"))
            else:
                result = error_result(str(answer.get("error") or "the client reported a "
                                                                  "failure"), answer)
            self._observe("mcp_tool_execution_complete", {
                **base, "end_time": protocol.now_iso(),
                "duration_ms": round((time.perf_counter() - started) * 1000, 3),
                "success": success, "result": result,
                "status": "completed" if success else "failed"}, after=observed)
        assert answer is not None
        log.info("tool_call_answered", client_id=client_id, call_id=call_id, tool=tool_name,
                 success=answer["success"], ms=round((time.perf_counter() - started) * 1000, 2))
        return answer

    async def resolve_tool_result(self, session: Session, call_id: str, data: dict[str, Any]
                                  ) -> bool:
        """A client's ``tool_result``. Only the client the call was addressed to can answer.
        The call may be waiting on another node (the one that held the session when it was
        asked; the client resumed here since): then that node gets the answer."""
        if self._resolve_here(session.client_id, call_id, data):
            return True
        return await self._relay(session, "tool_result", "tool_call", call_id, {"data": data})

    async def _relay(self, session: Session, op: str, asked_by: str, call_id: str,
                     answer: dict[str, Any]) -> bool:
        """A client's answer to a request this node is not waiting for: when the session was
        asked (a ``asked_by`` frame with this call_id is in its history), the node that asked
        may be another one; whether some node took the answer."""
        marker = b'"call_id":"%s"' % call_id.encode()
        kind = b'"type":"%s"' % asked_by.encode()
        if not any(outbound and kind in frame and marker in frame
                   for _, outbound, frame, _ in session.history):
            return False
        others = await self.backend.peers.publish_all(
            op, {"client_id": session.client_id, "call_id": call_id, **answer})
        replies = await others.replies(BROADCAST_REPLY_TIMEOUT,
                                       until=lambda reply: bool(reply.get("resolved")))
        return any(reply.get("resolved") for reply in replies)

    def _resolve_here(self, client_id: str, call_id: str, data: dict[str, Any]) -> bool:
        pending = self.pending_calls.get(call_id)
        if pending is None or pending.client_id != client_id or pending.future.done():
            return False
        has_error = data.get("error") is not None
        success = bool(data.get("success", not has_error))
        answer: dict[str, Any] = {"call_id": call_id, "tool_name": pending.tool_name,
                                  "client_id": client_id, "success": success}
        if has_error:
            answer["error"] = data["error"]
        answer["result"] = data.get("result")
        pending.future.set_result(answer)
        return True

    def _tool_result_for_peer(self, header: dict[str, Any], body: bytes) -> dict[str, Any]:
        return {"resolved": self._resolve_here(header["client_id"], header["call_id"],
                                               header["data"])}

    async def disconnect(self, client_id: str, *, code: CloseCode = CloseCode.SESSION_ENDED,
                         reason: str | None = None, end_reason: str = "deleted"
                         ) -> dict[str, Any]:
        """End a session wherever it is: close its socket (``code``, 4001 by default) and
        forget its history. Returns once it is gone on every node. ``end_reason``: what
        the ``session_ended`` event says."""
        return await self.at_session(client_id, "disconnect", {
            "code": int(code), "reason": reason or code.explanation, "end_reason": end_reason})

    async def _disconnect_here(self, session: Session, header: dict[str, Any], body: bytes
                               ) -> dict[str, Any]:
        client_id = session.client_id
        was_connected = session.connected
        if session.outbox is not None:
            code = CloseCode(header.get("code", CloseCode.SESSION_ENDED))
            session.outbox.close_soon(int(code), header.get("reason") or code.explanation)
        self.registry.end(client_id, header.get("end_reason") or "deleted")
        self.client_gone(session, ended=True)
        with contextlib.suppress(Unavailable):  # the cluster forgets it when it is back
            await self.backend.directory.ended(client_id)
        log.info("session_ended", client_id=client_id, was_connected=was_connected)
        return {"client_id": client_id, "disconnected": was_connected, "ended": True}

    async def describe(self, client_id: str) -> dict[str, Any]:
        """``GET /clients/{id}``: one session's public view (from the node holding it)."""
        return await self.at_session(client_id, "describe", {})

    async def _describe_here(self, session: Session, header: dict[str, Any], body: bytes
                             ) -> dict[str, Any]:
        return SessionInfo.of(session, self.node_id).describe()

    async def history(self, client_id: str, *, limit: int, after_seq: int | None = None,
                      before_seq: int | None = None) -> dict[str, Any]:
        """``GET /clients/{id}/messages``: a page of the session's history (see
        :meth:`Session.page`), read on the node holding it."""
        return await self.at_session(client_id, "history", {
            "limit": limit, "after_seq": after_seq, "before_seq": before_seq})

    async def _history_here(self, session: Session, header: dict[str, Any], body: bytes
                            ) -> dict[str, Any]:
        return session.page(limit=header["limit"], after_seq=header.get("after_seq"),
                            before_seq=header.get("before_seq"))

    async def list_clients(self, *, limit: int, offset: int, channel: str | None = None,
                           client_type: str | None = None, connected: bool | None = None,
                           user_id: str | None = None) -> dict[str, Any]:
        """``GET /clients``: sessions on every node, oldest connection first, one page."""
        found = await self.backend.directory.sessions(
            channel=channel, client_type=client_type, connected=connected, user_id=user_id)
        found.sort(key=lambda info: (info.session.connected_at, info.session.client_id))
        return {"clients": [info.describe() for info in found[offset:offset + limit]],
                "total": len(found), "limit": limit, "offset": offset}

    async def channel_counts(self) -> dict[str, int]:
        """Subscribers per channel over every node."""
        return await self.backend.directory.channel_counts()

    def fail_pending_calls(self, error: SwitchboardError) -> None:
        """Answer every call_tool still waiting with ``error`` (shutdown: none of them can be
        answered by this process any more, not even after a resume)."""
        for pending in self.pending_calls.values():
            if not pending.future.done():
                pending.future.set_exception(error)

    def client_gone(self, session: Session, *, ended: bool = False) -> None:
        """The session's socket closed (or the session ended): fail calls that cannot be
        answered any more, at once."""
        for call_id, pending in list(self.pending_calls.items()):
            if pending.client_id != session.client_id or pending.future.done():
                continue
            if pending.wait_for_client and not ended:
                continue
            pending.future.set_exception(ClientDisconnected(
                f"client {session.client_id!r} disconnected before answering tool_call "
                f"{call_id}", details={"call_id": call_id}))
        if ended:
            for pending_perm in self.pending_permissions.values():
                if pending_perm.client_id == session.client_id and not pending_perm.future.done():
                    pending_perm.future.set_result(False)

    # --- tools run by the gateway (client-initiated tool_call) --------------------------------

    async def run_tool(self, session: Session, tool_name: str, params: dict[str, Any], *,
                       call_id: str | None, reply_to: str | None) -> dict[str, Any]:
        """Run a server-side tool with the seed-001 lifecycle and answer with tool_response.

        Every call that starts ends with ``mcp_tool_execution_complete`` and ``tool_response``
        whatever the tool does: raises, returns what JSON cannot carry (a failed call saying
        why), runs longer than CALL_TOOL_TIMEOUT, or is cancelled by a shutdown."""
        call_id = call_id or secrets.token_urlsafe(12)
        tool = self.tools.get(tool_name)
        if tool is None and self.tool_fallback is None:
            response = {"call_id": call_id, "tool_name": tool_name, "success": False,
                        "error": f"unknown tool {tool_name!r}", "result": None,
                        "available_tools": self.tools.names()}
            self.emit(session, "tool_response", response, reply_to=reply_to)
            TOOL_CALL["client"]["unknown_tool"].inc()
            return response

        risk = tool.risk_level if tool is not None else "medium"
        base = {"call_id": call_id, "tool_name": tool_name, "parameters": redact(params),
                "risk_level": risk, "start_time": protocol.now_iso(),
                "client_id": session.client_id}
        started = time.perf_counter()
        await self._lifecycle(session, "mcp_tool_execution_start",
                              {**base, "status": "executing"}, reply_to)
        ctx = ToolContext(self, session, call_id)
        raw: Any = None
        outcome = "failure"
        try:
            if risk == "high":
                await self._lifecycle(session, "mcp_tool_waiting_permission",
                                      {**base, "status": "waiting_permission"}, reply_to)
                granted = await self.request_permission(session, call_id)
                if granted is not True:
                    reason = ("permission denied" if granted is False else
                              f"no permission_response within "
                              f"{self.settings.permission_timeout:g}s")
                    raise ToolError(reason, code="permission_denied")
            async with asyncio.timeout(self.settings.call_tool_timeout):
                if tool is not None:
                    raw = await invoke(tool, params, ctx)
                else:
                    assert self.tool_fallback is not None
                    raw = await self.tool_fallback(tool_name, params, ctx)
            self._check_result(raw)
            result = shape_result(raw)
        except SwitchboardError as exc:
            result = error_result(exc.message)
            outcome = "permission_denied" if exc.code == "permission_denied" else "failure"
            raw = None
        except TimeoutError:
            result = error_result(f"the tool did not finish within "
                                  f"{self.settings.call_tool_timeout:g}s (CALL_TOOL_TIMEOUT)")
        except asyncio.CancelledError:
            # Shutdown: the client still learns how its call ended (on resume, from history).
            # Shielded: delivered here it completes without awaiting; sent to the node the
            # session moved to, it is not cut short by a second cancel.
            await asyncio.shield(self._tool_done(
                session, base, reply_to, started,
                error_result("the server stopped before the tool finished"), None, "failure"))
            raise
        except Exception as exc:  # a tool's own failure is a failed call, not a crash
            log.exception("tool_failed", client_id=session.client_id, tool=tool_name,
                          call_id=call_id)
            result = error_result(f"{type(exc).__name__}: {exc}")
            raw = None
        return await self._tool_done(session, base, reply_to, started, result, raw, outcome)

    def _check_result(self, raw: Any) -> None:
        """Refuse (as a failed call) a result the frames could not carry: not JSON (a set,
        an integer beyond 64 bits…) or nested deeper than MAX_JSON_DEPTH."""
        max_depth = self.settings.max_json_depth
        try:
            deep = protocol.too_deep(raw, max_depth)
        except TypeError as exc:  # orjson.JSONEncodeError is a TypeError
            raise ToolError(f"the tool's result cannot be sent as JSON: {exc}",
                            code="invalid_result") from None
        if deep:
            HOT.limit_hit("json_depth")
            raise ToolError(protocol.json_too_deep_message("the tool's result", max_depth),
                            code="invalid_result")

    async def _tool_done(self, session: Session, base: dict[str, Any], reply_to: str | None,
                         started: float, result: dict[str, Any], raw: Any,
                         outcome: str) -> dict[str, Any]:
        """The end of a tool call: ``mcp_tool_execution_complete`` then ``tool_response``."""
        success = bool(result["success"])
        TOOL_CALL["client"]["success" if success else outcome].inc()
        duration_ms = round((time.perf_counter() - started) * 1000, 3)
        await self._lifecycle(session, "mcp_tool_execution_complete", {
            **base, "end_time": protocol.now_iso(), "duration_ms": duration_ms,
            "success": success, "result": result,
            "status": "completed" if success else "failed"}, reply_to)
        call_id, tool_name = base["call_id"], base["tool_name"]
        response = {"call_id": call_id, "tool_name": tool_name, "success": success,
                    "result": raw if success else None}
        if not success:
            response["error"] = result["content"]
        await self._to_session(session, protocol.encode(protocol.server_frame(
            "tool_response", response, reply_to=reply_to)))
        log.info("tool_executed", client_id=session.client_id, tool=tool_name,
                 call_id=call_id, success=success, ms=duration_ms)
        return response

    def _observe(self, frame_type: str, data: dict[str, Any], *,
                 after: asyncio.Task[Any] | None = None) -> asyncio.Task[Any]:
        """Tell ``tool_activity`` subscribers about a ``POST /call_tool`` (on every node: a
        channel broadcast), off the call's path; ``after`` keeps start before complete."""

        async def publish() -> None:
            if after is not None:
                with contextlib.suppress(Exception):
                    await asyncio.shield(after)
            with contextlib.suppress(SwitchboardError):  # observers are best effort
                await self.broadcast(frame_type, data, channel=TOOL_ACTIVITY_CHANNEL,
                                     counted=False)

        return self.spawn(publish(), name=f"observe-{frame_type}")

    async def _lifecycle(self, session: Session, frame_type: str, data: dict[str, Any],
                         reply_to: str | None) -> None:
        frame = protocol.server_frame(frame_type, data, reply_to=reply_to)
        encoded = protocol.encode(frame)
        await self._to_session(session, encoded)
        observers = [s for s in self.registry.select(channel=TOOL_ACTIVITY_CHANNEL)
                     if s is not session]
        if observers:
            self.registry.fan_out(observers, encoded, frame["message_id"])

    async def _to_session(self, session: Session, encoded: bytes) -> None:
        """A frame for a session this node was serving a moment ago (a tool run awaited
        meanwhile): delivered here, without awaiting, while this node still holds it (so it
        follows what was sent before, in order), else wherever the session went. Dropped, and
        logged, when the session ended or cannot be reached."""
        if self.registry.holds(session):
            self.registry.deliver(session, encoded)
            return
        try:
            await self.at_session(session.client_id, "send", {}, encoded)
        except SwitchboardError as exc:
            log.info("frame_undelivered", client_id=session.client_id, code=exc.code,
                     error=exc.message)

    async def request_permission(self, session: Session, call_id: str) -> bool | None:
        """Wait for the client's permission_response; None when it timed out. The wait
        survives a reconnect: a resumed client sees the request replayed and may still answer.
        """
        key = (session.client_id, call_id)
        if key in self.pending_permissions:
            raise ToolError(f"call_id {call_id!r} is already waiting for permission",
                            code="duplicate_call_id")
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self.pending_permissions[key] = PendingPermission(session.client_id, future)
        try:
            async with asyncio.timeout(self.settings.permission_timeout):
                return await future
        except TimeoutError:
            return None
        finally:
            self.pending_permissions.pop(key, None)

    async def resolve_permission(self, session: Session, call_id: str, granted: bool) -> bool:
        """A client's ``permission_response``. The request may be waiting on the node that
        held the session when the tool was called (the client resumed here since): then that
        node gets the answer."""
        if self._permit_here(session.client_id, call_id, granted):
            return True
        return await self._relay(session, "permission", "mcp_tool_waiting_permission", call_id,
                                 {"granted": granted})

    def _permit_here(self, client_id: str, call_id: str, granted: bool) -> bool:
        pending = self.pending_permissions.get((client_id, call_id))
        if pending is None or pending.future.done():
            return False
        pending.future.set_result(granted)
        return True

    def _permission_for_peer(self, header: dict[str, Any], body: bytes) -> dict[str, Any]:
        return {"resolved": self._permit_here(header["client_id"], header["call_id"],
                                              bool(header["granted"]))}

    # --- idempotency and housekeeping -----------------------------------------------------

    async def idempotent(self, key: str | None,
                         operation: Callable[[], Awaitable[dict[str, Any]]],
                         fingerprint: str = "") -> tuple[dict[str, Any], bool]:
        """Run ``operation`` once per key within IDEMPOTENCY_TTL, on every node: a retry (even
        one racing the first, even on another node) gets the first answer. Returns
        ``(answer, replayed)``; see ``Idempotency.once``."""
        if key is None:
            return await operation(), False
        return await self.backend.idempotency.once(key, fingerprint, operation)

    def sweep(self) -> list[str]:
        """Periodic housekeeping: expire sessions past SESSION_TTL, forget old idempotency
        keys. Returns the expired client ids."""
        self.backend.idempotency.sweep()
        expired = self.registry.expire()
        # Sessions ended to make room at MAX_SESSIONS fail like expired ones.
        evicted, self.registry.evicted = self.registry.evicted, []
        for client_id in (*expired, *evicted):
            for pending in self.pending_calls.values():
                if pending.client_id == client_id and not pending.future.done():
                    pending.future.set_exception(ClientNotFound(
                        f"session {client_id!r} expired before answering"))
        if expired:
            log.info("sessions_expired", count=len(expired))
        if evicted:
            log.warning("sessions_evicted", count=len(evicted),
                        max_sessions=self.registry.max_sessions)
        return expired

    # --- background work ----------------------------------------------------------------------

    def spawn(self, coro: Coroutine[Any, Any, Any], *, name: str | None = None
              ) -> asyncio.Task[Any]:
        """Run work that must not block a connection's reader (tool runs, webhooks); it is
        tracked and cancelled at shutdown."""
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self.tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self.tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("background_task_failed", task=task.get_name(),
                      exc_info=task.exception())

    async def cancel_tasks(self) -> None:
        for task in list(self.tasks):
            task.cancel()
        for task in list(self.tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
