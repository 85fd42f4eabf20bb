"""Errors and close codes: one root exception, each error knowing its wire code.

This module imports nothing from aiohttp so the protocol layer and its tests stay I/O free.

* ``SwitchboardError`` is the root. Every subclass carries ``code`` (the string put in an
  ``error`` frame or an HTTP error body) and ``http_status`` (what the HTTP API answers).
* ``CloseCode`` lists every WebSocket close code the gateway sends after the upgrade, with
  what it means and whether a client should reconnect (and resume) or not.
"""

from __future__ import annotations

from enum import IntEnum
from typing import Any


class SwitchboardError(Exception):
    """Root of every error the gateway reports to a client or an HTTP caller."""

    code: str = "internal_error"
    http_status: int = 500
    #: Fields of the error's body that an ``error`` frame also carries at its top level (for
    #: seed clients that read them there); the body stays whole in ``data``.
    top_level: tuple[str, ...] = ()

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        http_status: int | None = None,
        details: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        if http_status is not None:
            self.http_status = http_status
        self.details = details or {}

    def to_dict(self) -> dict[str, Any]:
        """The ``{"code", "message", ...details}`` body used on both ports."""
        body: dict[str, Any] = {"code": self.code, "message": self.message}
        body.update(self.details)
        return body


class ConfigError(SwitchboardError):
    """A setting is invalid; the message names the environment variable."""

    code = "config_error"


class ProtocolError(SwitchboardError):
    """A client frame is malformed (bad JSON, not an object, a field of the wrong type)."""

    code = "invalid_frame"
    http_status = 400


class ValidationError(SwitchboardError):
    """A field has the wrong type or value; the message names the field."""

    code = "validation_error"
    http_status = 422


class InvalidChannel(ValidationError):
    """A subscribe to a channel outside the ``CHANNELS`` allow-list."""

    code = "invalid_channel"
    #: Seed 003's clients read ``message`` and ``available_channels`` at the top level.
    top_level = ("message", "available_channels")


class UnknownTypeError(ProtocolError):
    code = "unknown_type"


class NotFoundError(SwitchboardError):
    code = "not_found"
    http_status = 404


class ClientNotFound(NotFoundError):
    code = "client_not_found"


class ClientOffline(SwitchboardError):
    """The session is kept for resume, but nobody is connected to answer right now."""

    code = "client_offline"
    http_status = 409


class ClientDisconnected(SwitchboardError):
    """The client went away while the gateway waited for its answer."""

    code = "client_disconnected"
    http_status = 502


class CallTimeout(SwitchboardError):
    code = "timeout"
    http_status = 504


class Unavailable(SwitchboardError):
    """Not now: the cluster store is unreachable, the node is stopping, a session is moving.
    Retry shortly (on any node)."""

    code = "unavailable"
    http_status = 503


class AuthError(SwitchboardError):
    code = "unauthorized"
    http_status = 401


class ForbiddenError(SwitchboardError):
    code = "forbidden"
    http_status = 403


class TooManySessions(SwitchboardError):
    """A new session for a user who already holds MAX_SESSIONS_PER_USER sessions, all of them
    connected (an offline one would have been ended to make room): the connection is closed
    with 4012."""

    code = "too_many_sessions"
    http_status = 429

    def __init__(self, user_id: str, limit: int) -> None:
        super().__init__(f"user {user_id!r} already holds {limit} sessions, all connected "
                         f"(MAX_SESSIONS_PER_USER); close one first",
                         details={"user_id": user_id, "max_sessions_per_user": limit})


class ForbiddenChannel(ForbiddenError):
    """A channel action the rules refuse (``error`` frame, or 403 on the API): the frame or
    request changed nothing."""

    code = "forbidden_channel"

    def __init__(self, channel: str, reason: str, *, code: str | None = None) -> None:
        super().__init__(f"{channel}: {reason}", code=code,
                         details={"channel": channel, "reason": reason})


class PeerUnreachable(Unavailable):
    """No node took a request addressed to ``node`` (nobody listens on its channel)."""

    def __init__(self, node: str) -> None:
        super().__init__(f"node {node!r} is not reachable right now; retry shortly",
                         details={"node": node})
        self.node = node


class SessionMoved(Unavailable):
    """The node asked to act on a session no longer holds it: ask the directory again.
    Never reaches a client: the gateway re-routes (and answers 503 after too many moves)."""

    code = "session_moved"


class StartupError(SwitchboardError):
    """The process cannot start as installed (one line on stderr, exit status 2)."""

    code = "startup_error"


class ToolError(SwitchboardError):
    """A server-side tool could not run (unknown tool, bad params, the tool raised)."""

    code = "tool_error"
    http_status = 422


class UpstreamError(SwitchboardError):
    """A backend webhook was slow, down or answered garbage."""

    code = "upstream_error"
    http_status = 502


class CloseCode(IntEnum):
    """WebSocket close codes sent after the upgrade.

    ``reconnect`` says what a well-behaved client does next: reconnect (with backoff) and resume
    with ``client_id``, ``session_token`` and ``last_seq``, or stop and tell its user.
    """

    NORMAL = 1000
    """The client closed, or the server ended the connection normally. Do not reconnect."""
    GOING_AWAY = 1001
    """The server is shutting down or restarting. Reconnect and resume. With
    ``BROKER_URL=redis://`` the session outlives the process and nothing is lost; with the
    default ``memory://`` it ends with the process, so the resume is refused (4003) and the
    client starts a new session."""
    PROTOCOL_ERROR = 1002
    """The client broke RFC 6455 (an unmasked frame, a close code not allowed on the wire, bad
    framing). Do not reconnect: fix the client."""
    INVALID_DATA = 1007
    """A text frame was not valid UTF-8 (RFC 6455 section 8.1). Do not reconnect: fix the
    client."""
    MESSAGE_TOO_BIG = 1009
    """A frame exceeded MAX_MESSAGE_SIZE (or its decompressed size did). The frame was dropped;
    reconnect and resume, and send smaller frames."""
    INTERNAL_ERROR = 1011
    """An unexpected server failure. Reconnect with backoff and resume."""
    REPLACED = 4000
    """Another connection resumed this session (a second tab, a reconnect). Do not reconnect:
    the newer connection owns the session."""
    SESSION_ENDED = 4001
    """An operator ended the session (``DELETE /clients/{id}``). Do not reconnect."""
    INVALID_SESSION = 4003
    """The ``session_token`` did not match or the session expired. Do not resume; connect
    afresh without ``session_token`` (a new session)."""
    SLOW_CONSUMER = 4008
    """The client did not read fast enough and its send queue overflowed. Reconnect and resume:
    every missed frame is replayed from history."""
    RATE_LIMITED = 4009
    """The client kept sending faster than its frame rate limit. Reconnect after a backoff."""
    TOKEN_EXPIRED = 4010
    """The client's authentication token expired. Reconnect with a fresh token and resume."""
    IDLE_TIMEOUT = 4011
    """Nothing was received for WS_TIMEOUT seconds. Reconnect and resume when needed."""
    TOO_MANY_SESSIONS = 4012
    """The user already holds MAX_SESSIONS_PER_USER sessions, all connected (an offline one
    is ended to make room first). Do not reconnect: close another tab or device first."""

    @property
    def reconnect(self) -> bool:
        """Whether a client should reconnect (and resume) after this close code."""
        return self not in _NO_RECONNECT

    @property
    def explanation(self) -> str:
        """A short human-readable reason, sent as the close frame's message."""
        return _EXPLANATIONS[self]


_NO_RECONNECT = frozenset({CloseCode.NORMAL, CloseCode.PROTOCOL_ERROR, CloseCode.INVALID_DATA,
                           CloseCode.REPLACED, CloseCode.SESSION_ENDED,
                           CloseCode.INVALID_SESSION, CloseCode.TOO_MANY_SESSIONS})

_EXPLANATIONS: dict[CloseCode, str] = {
    CloseCode.NORMAL: "normal closure",
    CloseCode.GOING_AWAY: "server shutting down; reconnect and resume",
    CloseCode.PROTOCOL_ERROR: "WebSocket protocol error",
    CloseCode.INVALID_DATA: "text frame is not valid UTF-8",
    CloseCode.MESSAGE_TOO_BIG: "frame larger than MAX_MESSAGE_SIZE",
    CloseCode.INTERNAL_ERROR: "internal server error; reconnect with backoff",
    CloseCode.REPLACED: "session resumed by another connection",
    CloseCode.SESSION_ENDED: "session ended by the server",
    CloseCode.INVALID_SESSION: "invalid or expired session token; start a new session",
    CloseCode.SLOW_CONSUMER: "send queue overflow; reconnect and resume",
    CloseCode.RATE_LIMITED: "frame rate limit exceeded",
    CloseCode.TOKEN_EXPIRED: "authentication token expired",
    CloseCode.IDLE_TIMEOUT: "idle timeout",
    CloseCode.TOO_MANY_SESSIONS: "too many sessions for this user (MAX_SESSIONS_PER_USER)",
}
