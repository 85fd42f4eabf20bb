"""The wire protocol, without I/O: frame decoding, validation and encoding.

Every frame is one JSON object in a text frame::

    {"type": "chat_message", "data": {...}, "message_id": "…", "timestamp": "…Z"}

Server frames kept in a session's history also carry ``seq`` (per session, +1 each) and frames
answering a client frame carry ``reply_to``. This module imports no aiohttp and never awaits, so
it is tested without an event loop and is the one place that knows the envelope's shape.

Client frames are accepted in three spellings, normalised by :func:`decode_client_frame`:

* the envelope above;
* seed 004's flat form, ``{"type": "text_message", "content": "hi"}`` (fields beside ``type``
  become ``data`` when there is no ``data``);
* seed 003's legacy form, ``{"action": "subscribe", "channel": "alerts"}``.
"""

from __future__ import annotations

import itertools
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from server.errors import ProtocolError, ValidationError

#: Keys of the envelope itself; anything else at the top level of a flat frame is data.
ENVELOPE_KEYS = frozenset({"type", "action", "data", "message_id", "timestamp", "client_id",
                           "seq", "reply_to"})
MAX_TYPE_LENGTH = 64
MAX_MESSAGE_ID_LENGTH = 128
#: Default of ``MAX_JSON_DEPTH``: the deepest nesting accepted from outside.
MAX_JSON_DEPTH = 64


def _encoder_depth() -> int:
    """The deepest nesting orjson encodes (it decodes 1,024 levels but encodes only ~254):
    found once, by trying, so a change of orjson cannot make the depth check lie."""
    lo, hi = 1, 4096  # encodes lo levels; fails at hi
    while hi - lo > 1:
        mid = (lo + hi) // 2
        value: Any = []
        for _ in range(mid - 1):
            value = [value]
        try:
            orjson.dumps(value)
        except orjson.JSONEncodeError:
            hi = mid
        else:
            lo = mid
    return lo


#: Nesting levels orjson can encode. Everything accepted is at most MAX_JSON_DEPTH deep, so
#: the few levels the gateway wraps around a client's value (envelope, API answers) always
#: encode again.
ENCODER_DEPTH = _encoder_depth()


def too_deep(value: Any, max_depth: int, raw: bytes | None = None) -> bool:
    """Whether ``value`` nests more than ``max_depth`` arrays/objects (the outermost counts
    as 1). ``raw``, the JSON text ``value`` was decoded from, makes the common case free: a
    text with at most ``max_depth`` opening brackets cannot nest deeper (two byte counts in C).
    Otherwise ``value`` is wrapped in ``ENCODER_DEPTH - max_depth`` lists and encoded: orjson
    refuses exactly when ``value`` is deeper than ``max_depth`` (C speed, no Python walk)."""
    if raw is not None and (len(raw) <= 2 * max_depth
                            or raw.count(b"[") + raw.count(b"{") <= max_depth):
        return False
    wrapped = value
    for _ in range(ENCODER_DEPTH - max_depth):
        wrapped = [wrapped]
    try:
        orjson.dumps(wrapped)
    except orjson.JSONEncodeError as exc:
        if "ecursion" in str(exc):
            return True
        raise
    return False


def valid_close_code(code: int) -> bool:
    """Whether a peer may send ``code`` in a close frame (RFC 6455 section 7.4 and the IANA
    registry): 1000-1003, 1007-1014, 3000-4999. 1004 is reserved; 1005, 1006 and 1015 only
    ever describe a closure locally; the rest of 1000-2999 is reserved for the protocol."""
    return 1000 <= code <= 1003 or 1007 <= code <= 1014 or 3000 <= code <= 4999


#: [second, its formatted date and time, millisecond, the full string for it]
_time_cache: list[Any] = [-1, "", -1, ""]


def now_iso() -> str:
    """The current time as ISO-8601 UTC with milliseconds, e.g. ``2026-01-01T00:00:00.000Z``.

    Every frame carries one: the date part is formatted once per second and the whole string
    once per millisecond (a busy gateway stamps many frames in the same millisecond).
    """
    millis = int(time.time() * 1000)
    cache = _time_cache
    if cache[2] == millis:
        return cache[3]  # type: ignore[no-any-return]
    second = millis // 1000
    if cache[0] != second:
        cache[0] = second
        cache[1] = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
    cache[2] = millis
    cache[3] = stamp = f"{cache[1]}.{millis % 1000:03d}Z"
    return stamp


#: A random per-process prefix and a counter: unique ids without a system call per frame
#: (uuid4 reads os.urandom each time). Message ids identify, they do not authorise: secrets
#: (session tokens, call ids) come from ``secrets``.
#: ``new_message_id() -> str``: a process-unique id, 12 random hex digits then a counter in hex
#: (32 characters). It runs once or twice per frame, so it is made of C callables only — the
#: next item of a ``map`` of the template's ``%`` over a counter — and costs no Python frame.
new_message_id: Callable[[], str] = map((uuid.uuid4().hex[:12] + "%020x").__mod__,
                                        itertools.count(1)).__next__


@dataclass(slots=True)
class ClientFrame:
    """A decoded, normalised client frame. ``message_id`` is always set (server-assigned when
    the client sent none)."""

    type: str
    data: dict[str, Any]
    message_id: str
    timestamp: Any = None
    raw: dict[str, Any] = field(default_factory=dict)


_ABSENT: Any = object()


def _reply(message_id: str | None) -> dict[str, str]:
    return {} if message_id is None else {"reply_to": message_id}


def decode_client_frame(payload: str | bytes, max_depth: int = MAX_JSON_DEPTH) -> ClientFrame:
    """Parse one client text frame.

    Raises :class:`ProtocolError` with code ``invalid_json`` (not JSON), ``json_too_deep``
    (nested deeper than ``max_depth``), ``invalid_frame`` (not an object), ``missing_type``
    (no usable ``type``/``action``), or :class:`ValidationError` (``invalid_field``) when an
    envelope field has the wrong type. The error's ``details`` carry ``reply_to`` when the
    frame had a usable ``message_id``.
    """
    try:
        obj = orjson.loads(payload)
    except orjson.JSONDecodeError as exc:
        raise ProtocolError(f"frame is not valid JSON: {exc.msg}", code="invalid_json") from None
    if len(payload) > 2 * max_depth and too_deep(
            obj, max_depth, payload if type(payload) is bytes else payload.encode()):
        raise ProtocolError(json_too_deep_message("frame", max_depth), code="json_too_deep")
    if type(obj) is not dict:
        raise ProtocolError(
            f"frame must be a JSON object, got {_json_kind(obj)}", code="invalid_frame"
        )
    # Written for speed (this runs for every client frame): dict.get bound once, exact type
    # checks (JSON gives exact types), no comprehension on the common path.
    get = obj.get
    message_id = get("message_id")
    if message_id is not None:
        if type(message_id) is int:
            message_id = str(message_id)
        if type(message_id) is not str or not 0 < len(message_id) <= MAX_MESSAGE_ID_LENGTH:
            raise ValidationError(
                f"message_id must be a string of 1-{MAX_MESSAGE_ID_LENGTH} characters",
                code="invalid_field", details={"field": "message_id"},
            )

    frame_type = get("type")
    if frame_type is None:
        frame_type = get("action")
        if frame_type is None:
            raise ProtocolError("frame has no 'type'", code="missing_type",
                                details=_reply(message_id))
    if type(frame_type) is not str or not 0 < len(frame_type) <= MAX_TYPE_LENGTH:
        raise ValidationError(
            f"'type' must be a non-empty string of at most {MAX_TYPE_LENGTH} characters",
            code="invalid_field", details={"field": "type", **_reply(message_id)},
        )

    data = get("data", _ABSENT)
    if data is _ABSENT:
        # Seed 003's flat form: the payload fields sit beside the envelope.
        data = {} if obj.keys() <= ENVELOPE_KEYS else {
            k: v for k, v in obj.items() if k not in ENVELOPE_KEYS}
    elif data is None:
        data = {}
    elif type(data) is not dict:
        raise ValidationError(
            f"'data' must be an object, got {_json_kind(data)}",
            code="invalid_field", details={"field": "data", **_reply(message_id)},
        )

    return ClientFrame(frame_type, data, message_id or new_message_id(), get("timestamp"), obj)


# --- field validation -------------------------------------------------------------------------

_KIND_TYPES: dict[str, tuple[type, ...]] = {
    "string": (str,),
    "object": (dict,),
    "array": (list,),
    "boolean": (bool,),
    "integer": (int,),
    "number": (int, float),
    "any": (object,),
}


@dataclass(frozen=True, slots=True)
class Field:
    """One field of a frame's ``data``: its JSON kind, whether it is required, and limits."""

    kind: str = "any"
    required: bool = False
    max_length: int | None = None
    nullable: bool = False


def validate_fields(data: Mapping[str, Any], spec: Mapping[str, Field], *,
                    prefix: str = "data.") -> None:
    """Check ``data`` against ``spec``; unknown keys are allowed (forward compatibility).

    Raises :class:`ValidationError` (code ``invalid_field``) naming the first wrong field
    (as ``{prefix}{name}``).
    """
    for name, rule in spec.items():
        label = f"{prefix}{name}"
        if name not in data or (data[name] is None and not rule.required):
            if rule.required:
                raise ValidationError(f"{label} is required", code="invalid_field",
                                      details={"field": label})
            continue
        value = data[name]
        if value is None and rule.nullable:
            continue
        kinds = _KIND_TYPES[rule.kind]
        bad_bool = isinstance(value, bool) and rule.kind in ("integer", "number")
        if not isinstance(value, kinds) or bad_bool:
            raise ValidationError(
                f"{label} must be {_article(rule.kind)}, got {_json_kind(value)}",
                code="invalid_field", details={"field": label},
            )
        if rule.max_length is not None and isinstance(value, str | list):
            if len(value) > rule.max_length:
                raise ValidationError(
                    f"{label} is longer than {rule.max_length}",
                    code="invalid_field", details={"field": label},
                )
        if rule.kind == "string" and rule.required and value == "":
            raise ValidationError(f"{label} must not be empty", code="invalid_field",
                                  details={"field": label})


def json_too_deep_message(what: str, max_depth: int) -> str:
    return (f"{what} nests JSON deeper than {max_depth} levels (MAX_JSON_DEPTH); flatten it")


def _article(kind: str) -> str:
    return f"an {kind}" if kind[0] in "aeiou" else f"a {kind}"


def _json_kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


# --- server frames ----------------------------------------------------------------------------


def server_frame(
    frame_type: str,
    data: Mapping[str, Any] | None = None,
    *,
    reply_to: str | None = None,
    message_id: str | None = None,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Build a server frame (without ``seq``: the session adds it when it keeps the frame)."""
    frame: dict[str, Any] = {
        "type": frame_type,
        # Every caller encodes the frame at once, so a dict is used as is (no copy per frame).
        "data": {} if data is None else data if type(data) is dict else dict(data),
        "message_id": message_id or new_message_id(),
        "timestamp": now_iso(),
    }
    if reply_to is not None:
        frame["reply_to"] = reply_to
    if extra:
        frame.update(extra)
    return frame


def error_frame(code: str, message: str, *, reply_to: str | None = None,
                **details: Any) -> dict[str, Any]:
    return server_frame("error", {"code": code, "message": message, **details},
                        reply_to=reply_to)


def encode(frame: Mapping[str, Any]) -> bytes:
    """Serialise a frame once; the bytes are what goes on the wire (UTF-8 JSON), and what
    history keeps.

    Copied into an exactly sized bytes object (``b"%b"``, ~0.1 µs): the object orjson returns
    keeps orjson's whole output buffer — 4 KiB for a 130-byte frame, 8 KiB for 1 KB, 130 KiB
    for 10 KB (``tracemalloc``) — and frames are kept: in every session's history (whose
    HISTORY_BYTES cap counts ``len()``), in channel history, for resume. Uncopied, every kept
    unicast cost a fresh 4 KiB page (a page fault per ``POST /send_message``,
    docs/BENCHMARKS.md "Issue 17") and history held 10–30× what it counted."""
    return b"%b" % (_dumps(frame),)


_dumps = orjson.dumps


def with_seq(encoded: bytes, seq: int) -> bytes:
    """Prefix ``"seq": n`` to an encoded frame without re-serialising it.

    A broadcast is serialised once and each recipient session stamps its own ``seq`` here.
    """
    return b'{"seq":%d,%s' % (seq, encoded[1:]) if len(encoded) > 2 else b'{"seq":%d}' % seq


def decode(encoded: bytes | str) -> dict[str, Any]:
    """Decode a frame the server encoded (history replay, the history API)."""
    return orjson.loads(encoded)


# --- RFC 6455 framing of server frames -------------------------------------------------------

#: Headers of text frames shorter than this are kept once computed (at most this many small
#: entries); longer frames have theirs built each time (negligible next to their payload).
CACHED_HEADER_LENGTHS = 4096


def text_frame_header(length: int) -> bytes:
    """The RFC 6455 (section 5.2) header of a server's text frame carrying ``length`` bytes:
    FIN set, opcode 1, no RSV bits (no compression), unmasked (a server never masks), then the
    7-bit, 16-bit or 64-bit payload length."""
    if length < 126:
        return bytes((0x81, length))
    if length < 65536:
        return b"\x81\x7e" + length.to_bytes(2, "big")
    return b"\x81\x7f" + length.to_bytes(8, "big")


class _TextFrameHeaders(dict[int, bytes]):
    """``TEXT_FRAME_HEADERS[n]``: :func:`text_frame_header` of ``n``, kept for lengths below
    :data:`CACHED_HEADER_LENGTHS`."""

    def __missing__(self, length: int) -> bytes:
        header = text_frame_header(length)
        if length < CACHED_HEADER_LENGTHS:
            self[length] = header
        return header


#: The header of a text frame by payload length: one dict lookup per frame sent, where
#: building it costs a call, a branch and a ``to_bytes`` (the wire path,
#: ``server.ws.Connection.push``).
TEXT_FRAME_HEADERS = _TextFrameHeaders()


# --- the flat profile (seed 004) -------------------------------------------------------------

#: Seed 004's own names for frames the gateway calls otherwise.
FLAT_NAMES = {"processing": "processing_start"}


def is_flat_form(raw: Mapping[str, Any]) -> bool:
    """Whether a decoded client frame is written in seed 004's flat form: a ``type`` with no
    ``data``, and either payload fields beside it or seed 004's numeric ``timestamp``.

    ``{"type": "ping"}`` alone is not flat (``data`` is optional in the envelope), nor is
    seed 003's ``{"action": …}`` (its clients read the envelope).
    """
    if "type" not in raw or "data" in raw:
        return False
    stamp = raw.get("timestamp")
    if type(stamp) in (int, float):
        return True
    return not raw.keys() <= ENVELOPE_KEYS


def to_flat(encoded: bytes, client_id: str | None) -> bytes:
    """Re-encode a server frame for a flat-profile connection (seed 004's clients).

    The envelope is kept whole; the recipient's ``client_id`` (when known) and every ``data``
    field are added at the top level unless a key of that name is already there (the envelope's own
    keys — ``type``, ``seq``, ``timestamp``, ``reply_to``, ``channel`` … — are never
    overwritten), and the frame takes seed 004's name where it differs (``processing`` →
    ``processing_start``). History keeps the canonical frame; only the bytes sent change.
    """
    frame = orjson.loads(encoded)
    if type(frame) is not dict:
        return encoded
    if client_id is not None:
        frame.setdefault("client_id", client_id)
    data = frame.get("data")
    if type(data) is dict:
        for key, value in data.items():
            if key not in frame:
                frame[key] = value
    renamed = FLAT_NAMES.get(frame.get("type", ""))
    if renamed is not None:
        frame["type"] = renamed
    return orjson.dumps(frame)
