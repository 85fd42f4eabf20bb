"""The I/O-free frame protocol: decoding, validation, encoding. Plain functions, no event loop."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import orjson
import pytest

from server import protocol
from server.errors import ProtocolError, SwitchboardError, ValidationError
from server.protocol import Field, decode_client_frame, validate_fields


def test_envelope_is_decoded() -> None:
    frame = decode_client_frame(b'{"type": "chat_message", "data": {"content": "hi"}, '
                                b'"message_id": "m1", "timestamp": "2026-01-01T00:00:00.000Z"}')
    assert frame.type == "chat_message"
    assert frame.data == {"content": "hi"}
    assert frame.message_id == "m1"
    assert frame.timestamp == "2026-01-01T00:00:00.000Z"


def test_server_assigns_a_message_id_when_the_client_sent_none() -> None:
    first = decode_client_frame('{"type": "ping"}')
    second = decode_client_frame('{"type": "ping"}')
    assert first.message_id and second.message_id
    assert first.message_id != second.message_id
    # 32 hex digits: this process's random prefix, then a counter.
    for message_id in (first.message_id, second.message_id, protocol.new_message_id()):
        assert len(message_id) == 32 and int(message_id, 16) >= 0
    assert first.message_id[:12] == second.message_id[:12]
    assert first.data == {}


def test_integer_message_id_is_accepted_as_a_string() -> None:
    assert decode_client_frame('{"type": "ping", "message_id": 7}').message_id == "7"


def test_null_data_means_empty_object() -> None:
    assert decode_client_frame('{"type": "ping", "data": null}').data == {}


def test_flat_frame_fields_become_data() -> None:
    frame = decode_client_frame('{"type": "text_message", "content": "hi", "message_id": "x"}')
    assert frame.type == "text_message"
    assert frame.data == {"content": "hi"}
    assert frame.message_id == "x"


def test_legacy_action_spelling() -> None:
    frame = decode_client_frame('{"action": "subscribe", "channel": "alerts"}')
    assert frame.type == "subscribe"
    assert frame.data == {"channel": "alerts"}


BAD_FRAMES: list[tuple[str, type[SwitchboardError], str, str | None, str | None]] = [
    # payload, exception, code, field named, reply_to
    ("not json", ProtocolError, "invalid_json", None, None),
    ("", ProtocolError, "invalid_json", None, None),
    ("[1, 2]", ProtocolError, "invalid_frame", None, None),
    ("42", ProtocolError, "invalid_frame", None, None),
    ('"ping"', ProtocolError, "invalid_frame", None, None),
    ("null", ProtocolError, "invalid_frame", None, None),
    ('{"data": {}}', ProtocolError, "missing_type", None, None),
    ('{"data": {}, "message_id": "m"}', ProtocolError, "missing_type", None, "m"),
    ('{"type": 5, "message_id": "m"}', ValidationError, "invalid_field", "type", "m"),
    ('{"type": ""}', ValidationError, "invalid_field", "type", None),
    ('{"type": "' + "x" * 65 + '"}', ValidationError, "invalid_field", "type", None),
    ('{"type": "ping", "data": [], "message_id": "m"}', ValidationError, "invalid_field",
     "data", "m"),
    ('{"type": "ping", "data": "x"}', ValidationError, "invalid_field", "data", None),
    ('{"type": "ping", "message_id": {}}', ValidationError, "invalid_field", "message_id",
     None),
    ('{"type": "ping", "message_id": ""}', ValidationError, "invalid_field", "message_id",
     None),
    ('{"type": "ping", "message_id": true}', ValidationError, "invalid_field", "message_id",
     None),
]


@pytest.mark.parametrize(("payload", "exc_type", "code", "field_name", "reply_to"), BAD_FRAMES)
def test_bad_frames_raise_the_documented_error(
        payload: str, exc_type: type[SwitchboardError], code: str, field_name: str | None,
        reply_to: str | None) -> None:
    with pytest.raises(exc_type) as info:
        decode_client_frame(payload)
    err = info.value
    assert err.code == code
    assert err.details.get("field") == field_name
    assert err.details.get("reply_to") == reply_to
    assert err.message  # a human-readable reason
    body = err.to_dict()
    assert body["code"] == code and body["message"] == err.message


SPEC = {
    "content": Field("string", required=True, max_length=5),
    "count": Field("integer"),
    "ratio": Field("number"),
    "flag": Field("boolean"),
    "items": Field("array"),
    "obj": Field("object"),
}


@pytest.mark.parametrize(("data", "field_name"), [
    ({}, "data.content"),
    ({"content": ""}, "data.content"),
    ({"content": 3}, "data.content"),
    ({"content": "toolong"}, "data.content"),
    ({"content": "ok", "count": "1"}, "data.count"),
    ({"content": "ok", "count": True}, "data.count"),
    ({"content": "ok", "count": 1.5}, "data.count"),
    ({"content": "ok", "ratio": "1"}, "data.ratio"),
    ({"content": "ok", "flag": 1}, "data.flag"),
    ({"content": "ok", "items": {}}, "data.items"),
    ({"content": "ok", "obj": []}, "data.obj"),
])
def test_validate_fields_names_the_wrong_field(data: dict[str, Any], field_name: str) -> None:
    with pytest.raises(ValidationError) as info:
        validate_fields(data, SPEC)
    assert info.value.code == "invalid_field"
    assert info.value.details == {"field": field_name}
    assert field_name in info.value.message


def test_validate_fields_accepts_good_data_and_unknown_keys() -> None:
    validate_fields({"content": "ok", "count": 2, "ratio": 0.5, "flag": False, "items": [],
                     "obj": {}, "extra": object()}, SPEC)
    validate_fields({"content": "ok", "count": None}, SPEC)  # optional null = absent


def test_validate_fields_prefix_for_http_bodies() -> None:
    with pytest.raises(ValidationError) as info:
        validate_fields({}, {"client_id": Field("string", required=True)}, prefix="")
    assert info.value.details == {"field": "client_id"}


def test_server_frame_envelope() -> None:
    frame = protocol.server_frame("pong", {"a": 1}, reply_to="m1")
    assert frame["type"] == "pong"
    assert frame["data"] == {"a": 1}
    assert frame["reply_to"] == "m1"
    assert len(frame["message_id"]) == 32
    stamp = frame["timestamp"]
    assert stamp.endswith("Z")
    assert datetime.fromisoformat(stamp.replace("Z", "+00:00")).utcoffset() is not None
    assert "seq" not in frame  # only frames kept in history get one
    assert "reply_to" not in protocol.server_frame("message")
    assert protocol.server_frame("message")["data"] == {}


def test_error_frame_carries_code_message_and_details() -> None:
    frame = protocol.error_frame("unknown_type", "nope", reply_to="m", supported_types=["a"])
    assert frame["type"] == "error"
    assert frame["data"] == {"code": "unknown_type", "message": "nope", "supported_types": ["a"]}
    assert frame["reply_to"] == "m"


def test_with_seq_stamps_without_reserialising() -> None:
    encoded = protocol.encode(protocol.server_frame("message", {"content": "é"}))
    stamped = protocol.with_seq(encoded, 17)
    decoded = orjson.loads(stamped)
    assert decoded["seq"] == 17
    assert {k: v for k, v in decoded.items() if k != "seq"} == orjson.loads(encoded)
    assert protocol.decode(stamped) == decoded
    assert orjson.loads(protocol.with_seq(b"{}", 3)) == {"seq": 3}


def test_encode_is_utf8_json() -> None:
    encoded = protocol.encode({"type": "x", "data": {"s": "é"}})
    assert encoded == '{"type":"x","data":{"s":"é"}}'.encode()


# --- the flat profile (seed 004) ----------------------------------------------------------------


@pytest.mark.parametrize(("raw", "flat"), [
    ({"type": "text_message", "content": "hi"}, True),
    ({"type": "heartbeat", "timestamp": 1234567890.123}, True),  # seed 004's numeric time
    ({"type": "get_status", "timestamp": 1234567890}, True),
    ({"type": "ping"}, False),  # data is optional in the envelope
    ({"type": "ping", "timestamp": "2026-01-01T00:00:00.000Z", "message_id": "m"}, False),
    ({"type": "chat_message", "data": {"content": "hi"}}, False),
    ({"type": "text_message", "data": None, "content": "hi"}, False),
    ({"action": "subscribe", "channel": "alerts"}, False),  # seed 003 reads the envelope
])
def test_is_flat_form(raw: dict[str, Any], flat: bool) -> None:
    assert protocol.is_flat_form(raw) is flat


def test_to_flat_adds_data_fields_and_the_recipient_without_touching_the_envelope() -> None:
    frame = protocol.server_frame("message", {"content": "hi", "type": "inner", "seq": -1,
                                              "timestamp": 0, "channel": "x", "n": [1]},
                                  reply_to="r1", extra={"channel": "news"})
    encoded = protocol.with_seq(protocol.encode(frame), 7)
    flat = orjson.loads(protocol.to_flat(encoded, "alice"))
    assert flat["data"] == frame["data"]  # the envelope stays whole
    assert (flat["type"], flat["seq"], flat["reply_to"], flat["channel"]) == (
        "message", 7, "r1", "news")
    assert flat["timestamp"] == frame["timestamp"] and flat["message_id"] == frame["message_id"]
    assert flat["content"] == "hi" and flat["n"] == [1]
    assert flat["client_id"] == "alice"


def test_to_flat_uses_the_seeds_names_and_keeps_the_recipient_first() -> None:
    frame = protocol.server_frame("processing", {"status": "processing", "client_id": "bob"})
    flat = orjson.loads(protocol.to_flat(protocol.encode(frame), "alice"))
    assert flat["type"] == "processing_start"
    assert flat["client_id"] == "alice" and flat["data"]["client_id"] == "bob"
    other = protocol.server_frame("chat_response", {"content": "x"})
    assert orjson.loads(protocol.to_flat(protocol.encode(other), "a"))["type"] == "chat_response"


# --- limits (issue 11) -------------------------------------------------------------------------

def _nested(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


def test_depth_limit_is_exact_and_below_what_the_encoder_writes_back() -> None:
    assert protocol.ENCODER_DEPTH >= 2 * protocol.MAX_JSON_DEPTH
    for depth in (1, 2, 63, 64, 65, 254, 1000):
        raw = _nested(depth)
        value = orjson.loads(raw)
        assert protocol.too_deep(value, 64, raw) is (depth > 64), depth
        assert protocol.too_deep(value, 64) is (depth > 64), depth  # without the raw text
    # Brackets inside strings only cost the slow path; they are not nesting.
    text = b'["' + b"[" * 500 + b'"]'
    assert protocol.too_deep(orjson.loads(text), 64, text) is False


def test_decoding_refuses_frames_nested_too_deep() -> None:
    ok = b'{"type":"ping","data":{"x":' + _nested(62) + b"}}"  # 64 levels in all
    assert protocol.decode_client_frame(ok).type == "ping"
    deep = b'{"type":"ping","data":{"x":' + _nested(63) + b"}}"
    with pytest.raises(ProtocolError) as refused:
        protocol.decode_client_frame(deep)
    assert refused.value.code == "json_too_deep"
    assert protocol.decode_client_frame(deep, max_depth=65).type == "ping"


@pytest.mark.parametrize(("code", "valid"), [
    (1000, True), (1003, True), (1004, False), (1005, False), (1006, False), (1007, True),
    (1014, True), (1015, False), (1016, False), (2999, False), (3000, True), (4999, True),
    (5000, False), (0, False), (999, False)])
def test_close_codes_allowed_on_the_wire(code: int, valid: bool) -> None:
    assert protocol.valid_close_code(code) is valid


@pytest.mark.parametrize("size", [10, 1_000, 10_000])
def test_an_encoded_frame_holds_no_more_memory_than_its_length(size: int) -> None:
    """History keeps encoded frames and caps them by ``len()`` (HISTORY_BYTES): each must
    hold about that much memory, not the encoder's whole output buffer (orjson's result
    keeps 4 KiB for a 130-byte frame, 130 KiB for 10 KB)."""
    import gc
    import tracemalloc

    frames = [protocol.server_frame("message", {"content": "x" * size, "n": i})
              for i in range(200)]
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        kept = [protocol.encode(frame) for frame in frames]
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert kept[0] == orjson.dumps(frames[0])
    length = sum(len(encoded) for encoded in kept)
    assert held < length + 200 * 64 + 4096, (held, length)
