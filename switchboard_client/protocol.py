"""Wire-level vocabulary shared by the client, the CLI and the test fake.

Frames are JSON objects ``{"type", "data", "message_id", "timestamp"}``; server frames kept in
the session history also carry an integer ``seq`` and answers carry ``reply_to``. Close codes
are split into "reconnect" and "do not reconnect" by :func:`close_action`.
"""

from __future__ import annotations

import enum
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson


class CloseCode(enum.IntEnum):
    """WebSocket close codes used by the Switchboard gateway."""

    NORMAL = 1000
    GOING_AWAY = 1001
    PROTOCOL_ERROR = 1002
    UNSUPPORTED_DATA = 1003
    ABNORMAL = 1006
    INVALID_DATA = 1007
    POLICY_VIOLATION = 1008
    MESSAGE_TOO_BIG = 1009
    INTERNAL_ERROR = 1011
    REPLACED = 4000
    SESSION_ENDED = 4001
    INVALID_SESSION = 4003
    SLOW_CONSUMER = 4008
    RATE_LIMITED = 4009
    TOKEN_EXPIRED = 4010
    IDLE_TIMEOUT = 4011
    TOO_MANY_SESSIONS = 4012


CLOSE_DESCRIPTIONS: dict[int, str] = {
    1000: "normal closure",
    1001: "server going away",
    1002: "protocol error",
    1003: "unsupported data",
    1006: "connection lost",
    1007: "invalid frame data",
    1008: "policy violation",
    1009: "frame too big",
    1011: "internal server error",
    4000: "replaced by a newer connection of the same session",
    4001: "session ended by the API",
    4003: "invalid session token",
    4008: "slow consumer (send queue overflow)",
    4009: "rate limited",
    4010: "auth token expired",
    4011: "idle timeout",
    4012: "too many sessions for this user",
}


def describe_close(code: int | None) -> str:
    """Return ``"<code> <meaning>"`` for a close code, e.g. ``"4008 slow consumer (...)"``."""
    if code is None:
        return "connection lost"
    text = CLOSE_DESCRIPTIONS.get(code)
    return f"{code} {text}" if text else str(code)


class CloseAction(enum.Enum):
    """What the client does after the socket closed with a given code."""

    RESUME = "resume"  #: reconnect with backoff and resume (session_token + last_seq)
    BACKOFF = "backoff"  #: reconnect and resume, but wait at least the rate-limit delay
    NEW_TOKEN = "new_token"  #: reconnect and resume with a fresh auth token
    FRESH_SESSION = "fresh_session"  #: forget client_id/session_token, reconnect as new
    STOP = "stop"  #: do not reconnect


_STOP_CODES = frozenset({1000, 1002, 1003, 1007, 1008, 4000, 4001, 4012})


def close_action(code: int | None) -> CloseAction:
    """Map a close code to the reconnect policy of the wire contract.

    1000 normal, 4000 replaced, 4001 session ended and 4012 too many sessions for the user
    stop the client, as do protocol/policy violations (1002, 1003, 1007, 1008) which a retry
    would only repeat. 4003 means the session
    token is not valid: start a fresh session. 4009 waits at least the rate-limit delay. 4010
    needs a new auth token. Everything else (1001, 1006 lost connection, 1009, 1011, 4008,
    4011, unknown codes) reconnects and resumes.
    """
    if code in _STOP_CODES:
        return CloseAction.STOP
    if code == CloseCode.INVALID_SESSION:
        return CloseAction.FRESH_SESSION
    if code == CloseCode.RATE_LIMITED:
        return CloseAction.BACKOFF
    if code == CloseCode.TOKEN_EXPIRED:
        return CloseAction.NEW_TOKEN
    return CloseAction.RESUME


#: For each client frame type, the reply types that complete a :meth:`request`. Interim
#: frames (``processing``, ``stream_chunk``, ...) that carry the same ``reply_to`` are delivered
#: to handlers but do not complete the request. An ``error`` reply always completes it.
DEFAULT_REPLY_TYPES: dict[str, frozenset[str]] = {
    "chat_message": frozenset({"chat_response", "stream_end"}),
    "text_message": frozenset({"chat_response", "stream_end"}),
    "tool_call": frozenset({"tool_response"}),
    "ping": frozenset({"pong", "heartbeat_response"}),
    "heartbeat": frozenset({"pong", "heartbeat_response"}),
    "subscribe": frozenset({"subscribed"}),
    "unsubscribe": frozenset({"unsubscribed"}),
    "get_status": frozenset({"status_response"}),
    "publish": frozenset({"published"}),
    "presence": frozenset({"presence"}),
    "channel_history": frozenset({"channel_history"}),
}


class Lifecycle:
    """Names of client-side lifecycle events, registered with ``client.on(...)`` like frame types.

    They are never delivered to ``on("*")`` (which only sees server frames). Each handler gets a
    ``dict`` payload:

    - ``CONNECTED``: ``client_id``, ``resumed``, ``recovered``, ``last_seq``, ``url`` and
      ``reconnect`` (``True`` after a reconnect).
    - ``DISCONNECTED``: ``code``, ``reason``, ``description``, ``will_reconnect``.
    - ``RECONNECTING``: ``attempt`` (1-based), ``delay`` (seconds before the attempt),
      ``error`` (why the previous attempt failed, or ``None``).
    - ``RECOVERY_FAILED``: ``reason`` (``history_gap``: the server's history no longer reaches
      back to ``last_seq``; ``session_lost``: the session expired or was reset), ``last_seq``,
      ``client_id``. Frames were lost: reload state from the source of truth.
    - ``SESSION_RESET``: ``code``, ``old_client_id`` (the server rejected the session token,
      close 4003; the client starts a fresh session at once, asking again for the client_id it
      was created with, if any).
    - ``CLOSED``: ``code``, ``reason``, ``description`` (final: no more reconnects).
    """

    CONNECTED = "client.connected"
    DISCONNECTED = "client.disconnected"
    RECONNECTING = "client.reconnecting"
    RECOVERY_FAILED = "client.recovery_failed"
    SESSION_RESET = "client.session_reset"
    CLOSED = "client.closed"

    ALL = frozenset({CONNECTED, DISCONNECTED, RECONNECTING, RECOVERY_FAILED, SESSION_RESET, CLOSED})


def new_message_id() -> str:
    """Return a fresh random message id (32 hex characters)."""
    return uuid.uuid4().hex


def now_iso() -> str:
    """Return the current UTC time as ISO-8601 with milliseconds and a ``Z`` suffix."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def make_frame(
    type: str, data: Mapping[str, Any] | None = None, *, message_id: str | None = None
) -> dict[str, Any]:
    """Build a client frame envelope (``type``, ``data``, ``message_id``, ``timestamp``)."""
    return {
        "type": type,
        "data": dict(data or {}),
        "message_id": message_id or new_message_id(),
        "timestamp": now_iso(),
    }


def dumps(obj: Any) -> str:
    """Serialise to compact JSON text (orjson; non-string dict keys are stringified)."""
    return orjson.dumps(obj, option=orjson.OPT_NON_STR_KEYS).decode()


@dataclass(frozen=True, slots=True)
class Frame:
    """One server frame, as handed to handlers and returned by ``request``.

    ``data`` is always a dict (``{}`` when the frame had none or a non-object). ``seq`` is set
    on frames kept in the session history; ``reply_to`` on answers to a client frame. ``raw``
    is the decoded JSON object; ``frame["key"]`` and ``frame.get("key")`` read it directly.
    """

    type: str
    data: dict[str, Any]
    message_id: str | None = None
    timestamp: str | None = None
    seq: int | None = None
    reply_to: str | None = None
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_raw(cls, raw: Mapping[str, Any]) -> Frame:
        """Build a Frame from a decoded JSON object; tolerant of missing or odd fields."""
        data = raw.get("data")
        seq = raw.get("seq")
        return cls(
            type=str(raw.get("type") or raw.get("action") or ""),
            data=data if isinstance(data, dict) else {},
            message_id=_str_or_none(raw.get("message_id")),
            timestamp=_str_or_none(raw.get("timestamp")),
            seq=seq if isinstance(seq, int) and not isinstance(seq, bool) else None,
            reply_to=_str_or_none(raw.get("reply_to")),
            raw=raw,
        )

    def __getitem__(self, key: str) -> Any:
        return self.raw[key]

    def get(self, key: str, default: Any = None) -> Any:
        """Return ``raw[key]`` or ``default``."""
        return self.raw.get(key, default)

    def to_dict(self) -> dict[str, Any]:
        """Return the frame as a plain dict (the raw object when there is one)."""
        if self.raw:
            return dict(self.raw)
        out: dict[str, Any] = {"type": self.type, "data": self.data}
        for key in ("message_id", "timestamp", "seq", "reply_to"):
            value = getattr(self, key)
            if value is not None:
                out[key] = value
        return out


def _str_or_none(value: Any) -> str | None:
    return value if isinstance(value, str) else None
