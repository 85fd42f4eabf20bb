"""Property-based tests (hypothesis): arbitrary bytes and JSON never crash the server, always
get the documented error, and never leave a session half-built (issue 5).

* :func:`server.protocol.decode_client_frame` is pure: arbitrary input raises nothing but a
  ``SwitchboardError`` subclass (no event loop involved).
* Over a live gateway, each arbitrary frame is followed by a sentinel ``ping``: everything the
  server sends before the sentinel's ``pong`` must be a well-formed frame, never an
  ``internal_error``, malformed input must have drawn an ``error`` frame, and the sentinel's
  answer proves the connection stayed open.
* Arbitrary bodies to the write endpoints get a documented status (never 500) with a JSON
  error body, and the session registry is unchanged.
* A live gateway *process* gets the same, plus raw frame headers (any opcode, reserved bits,
  mask bit), invalid UTF-8 and deep nesting, on both ports (issue 11).

The live tests drive one event loop of their own (hypothesis runs examples synchronously), with
both apps started once per test as production runs them.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import uuid
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TypeVar

import aiohttp
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from handlers import build_router
from server.errors import SwitchboardError
from server.protocol import decode_client_frame
from tests.conftest import LiveGateway, start_gateway, stop_gateway
from tests.processes import Node
from tests.security.rawws import Closed, RawWebSocket, encode_frame

T = TypeVar("T")

PROPERTY_SETTINGS = settings(max_examples=75, deadline=None,
                             suppress_health_check=[HealthCheck.too_slow])

json_scalars = (st.none() | st.booleans() | st.integers() |
                st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=40))
json_values = st.recursive(
    json_scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(
        st.text(max_size=12), children, max_size=4),
    max_leaves=16)

KNOWN_TYPES = build_router().types()
FIELD_NAMES = ["content", "role", "stream", "conversation_id", "channel", "tool_name",
               "params", "call_id", "granted", "result", "error", "message", "success",
               "client_id", "message_type", "data", "timeout", "wait_for_client",
               "idempotency_key", "client_type", "path", "text"]

field_dicts = st.dictionaries(st.sampled_from(FIELD_NAMES) | st.text(max_size=8),
                              json_values, max_size=5)
frame_types = st.sampled_from(KNOWN_TYPES) | st.text(max_size=70) | json_values
envelopes = st.fixed_dictionaries(
    {"type": frame_types},
    optional={"data": field_dicts | json_values, "message_id": json_values | st.text(
        min_size=1, max_size=130), "timestamp": json_values, "seq": json_values,
        "reply_to": json_values})
legacy = st.fixed_dictionaries({"action": frame_types}, optional={
    "channel": json_values, "content": json_values})
flat = st.builds(lambda t, extra: {"type": t, **extra}, frame_types, field_dicts)
frames = envelopes | legacy | flat | json_values


def _wire(value: Any) -> str:
    """JSON text of a hypothesis value (stdlib json: big ints and lone surrogates too)."""
    return json.dumps(value)


# --- pure decoding ----------------------------------------------------------------------------


@PROPERTY_SETTINGS
@given(st.binary(max_size=300) | st.text(max_size=300))
def test_decoding_arbitrary_input_raises_only_switchboard_errors(payload: bytes | str
                                                                ) -> None:
    try:
        frame = decode_client_frame(payload)
    except SwitchboardError as exc:
        assert exc.code and isinstance(exc.message, str)
        assert 400 <= exc.http_status < 500
    else:
        assert isinstance(frame.type, str) and isinstance(frame.data, dict)


@PROPERTY_SETTINGS
@given(frames)
def test_decoding_arbitrary_json_raises_only_switchboard_errors(value: Any) -> None:
    for payload in (_wire(value), _wire(value).encode()):
        try:
            frame = decode_client_frame(payload)
        except SwitchboardError as exc:
            assert exc.code in ("invalid_json", "invalid_frame", "missing_type",
                                "invalid_field"), exc.code
            assert 400 <= exc.http_status < 500
        else:
            assert isinstance(value, dict)
            assert isinstance(frame.type, str) and 0 < len(frame.type) <= 64
            assert isinstance(frame.data, dict)
            assert isinstance(frame.message_id, str) and frame.message_id


# --- a live gateway on a loop of our own ------------------------------------------------------


class LoopRunner:
    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()

    def run(self, coro: Awaitable[T], timeout: float = 20.0) -> T:
        async def bounded() -> T:
            async with asyncio.timeout(timeout):
                return await coro
        return self.loop.run_until_complete(bounded())

    def close(self) -> None:
        self.loop.run_until_complete(self.loop.shutdown_asyncgens())
        self.loop.close()


@pytest.fixture
def live_loop() -> Iterator[tuple[LoopRunner, LiveGateway]]:
    runner = LoopRunner()
    live = runner.run(start_gateway(ws_rate_limit=0, max_message_size=64 * 1024,
                                    permission_timeout=1, call_tool_timeout=1))
    try:
        yield runner, live
    finally:
        runner.run(stop_gateway(live))
        runner.close()


def _valid_server_frame(frame: Any) -> None:
    assert isinstance(frame, dict), frame
    assert isinstance(frame.get("type"), str) and frame["type"], frame
    assert isinstance(frame.get("data"), dict), frame
    assert isinstance(frame.get("timestamp"), str), frame
    if frame["type"] == "error":
        assert isinstance(frame["data"].get("code"), str), frame
        assert isinstance(frame["data"].get("message"), str), frame
        assert frame["data"]["code"] != "internal_error", frame


def _is_malformed(value: Any) -> bool:
    """Frames the decoder must refuse with an error frame before any handler runs."""
    if not isinstance(value, dict):
        return True
    frame_type = value.get("type", value.get("action"))
    if not isinstance(frame_type, str) or frame_type not in KNOWN_TYPES:
        return True
    return "data" in value and value["data"] is not None and not isinstance(value["data"],
                                                                            dict)


def test_arbitrary_frames_never_break_a_live_connection(
        live_loop: tuple[LoopRunner, LiveGateway]) -> None:
    runner, live = live_loop
    client = runner.run(live.connect(client_id="fuzz"))
    observer = runner.run(live.connect(client_id="observer"))

    async def exchange(text: str) -> list[dict[str, Any]]:
        sentinel = f"sentinel-{uuid.uuid4().hex}"
        await client.send_raw(text)
        await client.send("ping", message_id=sentinel)
        seen: list[dict[str, Any]] = []
        while True:
            msg = await client.ws.receive()
            assert msg.type is aiohttp.WSMsgType.TEXT, (text, msg)
            frame = orjson.loads(msg.data)
            _valid_server_frame(frame)
            if frame["type"] == "pong" and frame.get("reply_to") == sentinel:
                return seen
            seen.append(frame)

    @PROPERTY_SETTINGS
    @given(frames)
    def check(value: Any) -> None:
        text = _wire(value)
        seen = runner.run(exchange(text))
        if _is_malformed(value):
            assert any(f["type"] == "error" for f in seen), (text, seen)
        assert not client.ws.closed
        assert len(live.connections) == 2

    check()
    # Every frame the observer (subscribed to nothing) got is well-formed too, and the
    # registry holds exactly the two sessions.
    runner.run(observer.send("ping", message_id="last"))
    assert runner.run(observer.recv_type("pong"))["reply_to"] == "last"
    assert sorted(s.client_id for s in live.gateway.registry.sessions.values()) == [
        "fuzz", "observer"]


@pytest.mark.parametrize("text", ["", " ", "\x00", "{", '{"type":', "[]", "null", "1e999",
                                  '{"type": "ping", "message_id": ' + "9" * 40 + "}",
                                  '{"type": "\\ud800"}', '"' + "\\u0000" * 10 + '"'])
def test_known_nasty_frames(live_loop: tuple[LoopRunner, LiveGateway], text: str) -> None:
    runner, live = live_loop
    client = runner.run(live.connect())

    async def exchange() -> dict[str, Any]:
        await client.send_raw(text)
        return await client.recv_type("error")

    error = runner.run(exchange())
    assert error["data"]["code"] in ("invalid_json", "invalid_frame", "missing_type",
                                     "invalid_field"), error
    runner.run(client.send("ping", message_id="alive"))
    assert runner.run(client.recv_type("pong"))["reply_to"] == "alive"


def test_binary_frames_get_an_error_and_the_socket_stays_open(
        live_loop: tuple[LoopRunner, LiveGateway]) -> None:
    runner, live = live_loop
    client = runner.run(live.connect())

    @PROPERTY_SETTINGS
    @given(st.binary(max_size=200))
    def check(payload: bytes) -> None:
        async def exchange() -> dict[str, Any]:
            await client.ws.send_bytes(payload)
            return await client.recv_type("error")

        assert runner.run(exchange())["data"]["code"] == "binary_not_supported"

    check()
    assert not client.ws.closed


# --- HTTP bodies ------------------------------------------------------------------------------

DOCUMENTED = {200, 202, 400, 404, 409, 413, 415, 422, 504}
WRITE_PATHS = ["/send_message", "/broadcast", "/call_tool"]

PATH_FIELDS = {
    "/send_message": ["client_id", "content", "message_type", "data", "idempotency_key"],
    "/broadcast": ["message_type", "data", "channel", "client_type", "idempotency_key"],
    "/call_tool": ["client_id", "tool_name", "params", "timeout", "wait_for_client"],
}


def body_values(path: str) -> st.SearchStrategy[Any]:
    """Objects with the endpoint's own field names (any values), other objects, any JSON."""
    own = st.fixed_dictionaries({}, optional={name: json_values | st.text(max_size=8)
                                              for name in PATH_FIELDS[path]})
    return own | field_dicts | json_values


def _api_checker(runner: LoopRunner, live: LiveGateway
                 ) -> Callable[[str, bytes], tuple[int, Any]]:
    def call(path: str, body: bytes) -> tuple[int, Any]:
        return runner.run(live.api("POST", path, data=body,
                                   headers={"Content-Type": "application/json"}))
    return call


def _assert_documented(status: int, body: Any, sent: bytes) -> None:
    assert status in DOCUMENTED, (status, body, sent)
    if status >= 400:
        assert isinstance(body, dict) and isinstance(body["error"]["code"], str), body
        assert isinstance(body["error"]["message"], str), body


@pytest.mark.parametrize("path", WRITE_PATHS)
def test_arbitrary_json_bodies_get_documented_answers(
        live_loop: tuple[LoopRunner, LiveGateway], path: str) -> None:
    runner, live = live_loop
    call = _api_checker(runner, live)
    before = len(live.gateway.registry)

    @PROPERTY_SETTINGS
    @given(body_values(path))
    def check(value: Any) -> None:
        sent = _wire(value).encode()
        status, body = call(path, sent)
        _assert_documented(status, body, sent)
        if not isinstance(value, dict):
            assert status == 400, (status, body)
        assert len(live.gateway.registry) == before
        assert not live.gateway.pending_calls

    check()


@pytest.mark.parametrize("path", WRITE_PATHS)
def test_arbitrary_bytes_bodies_get_documented_answers(
        live_loop: tuple[LoopRunner, LiveGateway], path: str) -> None:
    runner, live = live_loop
    call = _api_checker(runner, live)

    @PROPERTY_SETTINGS
    @given(st.binary(max_size=300))
    def check(sent: bytes) -> None:
        status, body = call(path, sent)
        _assert_documented(status, body, sent)
        assert len(live.gateway.registry) == 0

    check()


def test_bodies_for_a_live_client_never_half_build_a_session(
        live_loop: tuple[LoopRunner, LiveGateway]) -> None:
    """Arbitrary bodies naming a real client: whatever the answer, the registry keeps exactly
    the sessions it had, and the client's socket stays open."""
    runner, live = live_loop
    client = runner.run(live.connect(client_id="target"))
    call = _api_checker(runner, live)

    @PROPERTY_SETTINGS
    @given(st.sampled_from(WRITE_PATHS), field_dicts)
    def check(path: str, fields: dict[str, Any]) -> None:
        body = {**fields, "client_id": "target"}
        if path == "/call_tool":
            body["timeout"] = 0.2  # nobody answers: a quick, documented 504
        sent = _wire(body).encode()
        status, answer = call(path, sent)
        _assert_documented(status, answer, sent)
        assert sorted(live.gateway.registry.sessions) == ["target"]
        assert not live.gateway.pending_calls
        assert not client.ws.closed

    check()


# --- a live gateway process, attacked on both ports (issue 11) --------------------------------
#
# The same strategies, plus raw frame-level garbage and deep nesting, thrown at a real
# ``run_websocket_server.py`` process (the ``edge`` fixture) through raw sockets and plain
# HTTP: nothing gets a 5xx or an ``internal_error``, every close code is a documented one, the
# log holds no traceback (checked by the fixture), and a connection is served afterwards.

#: Close codes the gateway may answer garbage with (RFC 6455 ones and its own).
GARBAGE_CLOSE_CODES = {1000, 1002, 1007, 1009}
#: Each example costs a few milliseconds against a process: more of them.
PROCESS_SETTINGS = settings(max_examples=200, deadline=None,
                            suppress_health_check=[HealthCheck.too_slow])

deep_texts = st.integers(min_value=1, max_value=1100).map(
    lambda depth: '{"type":"chat_message","data":{"content":"x","d":' + "[" * depth
    + "]" * depth + "}}")
text_payloads = (frames.map(_wire) | deep_texts | st.text(max_size=200)).map(str.encode) | \
    st.binary(max_size=200)
raw_frames = st.builds(
    lambda first, mask, payload: (first, mask, payload),
    st.integers(min_value=0, max_value=255), st.booleans(), st.binary(max_size=140))


def _served(node: Node) -> None:
    """A fresh connection still gets its pong."""
    client = RawWebSocket(node.ws_port)
    client.recv()  # greeting
    client.send_text('{"type":"ping","message_id":"sentinel"}')
    assert orjson.loads(client.recv().payload)["reply_to"] == "sentinel"
    client.close()


def _frames_until_sentinel(client: RawWebSocket, sentinel: str) -> int | None:
    """Frames up to the sentinel's pong, each well-formed; the close code if it closed."""
    while True:
        try:
            frame = client.recv()
        except Closed:
            return 1006
        if frame.opcode == 0x8:
            return frame.close_code
        if frame.opcode != 0x1:  # a pong answering a ping it sent
            continue
        decoded = orjson.loads(frame.payload)
        _valid_server_frame(decoded)
        if decoded.get("reply_to") == sentinel:
            return None


def test_a_live_process_survives_arbitrary_frames(edge: Node) -> None:
    state = {"client": RawWebSocket(edge.ws_port)}
    state["client"].recv()

    @PROCESS_SETTINGS
    @given(text_payloads, st.booleans())
    def check(payload: bytes, binary: bool) -> None:
        client = state["client"]
        client.send(0x2 if binary else 0x1, payload)
        sentinel = f"s-{uuid.uuid4().hex}"
        client.send_text('{"type":"ping","message_id":"' + sentinel + '"}')
        code = _frames_until_sentinel(client, sentinel)
        if code is not None:  # only for frames RFC 6455 says to fail on
            assert code in GARBAGE_CLOSE_CODES, (payload, code)
            client.close()
            state["client"] = RawWebSocket(edge.ws_port)
            state["client"].recv()

    check()
    state["client"].close()
    _served(edge)


def test_a_live_process_survives_arbitrary_frame_headers(edge: Node) -> None:
    @PROCESS_SETTINGS
    @given(raw_frames)
    def check(raw: tuple[int, bool, bytes]) -> None:
        first, mask, payload = raw
        client = RawWebSocket(edge.ws_port)
        client.recv()
        client.sock.sendall(bytes([first]) + encode_frame(0, payload, mask=mask)[1:])
        client.send_text('{"type":"ping","message_id":"after"}')
        code = _frames_until_sentinel(client, "after")
        assert code is None or code in GARBAGE_CLOSE_CODES, (raw, code)
        client.close()

    check()
    _served(edge)


API_PATHS = ["/send_message", "/broadcast", "/call_tool", "/observer_ticket",
             "/stream/fuzz-target"]


def test_a_live_process_survives_arbitrary_api_bodies(edge: Node) -> None:
    target = RawWebSocket(edge.ws_port, "/?client_id=fuzz-target")
    target.recv()

    @PROCESS_SETTINGS
    @given(st.sampled_from(API_PATHS), body_values("/send_message") | body_values(
        "/call_tool") | deep_texts | st.binary(max_size=200),
           st.sampled_from(["application/json", "text/plain", "application/x-ndjson"]))
    def check(path: str, body: Any, content_type: str) -> None:
        if isinstance(body, str):
            sent = body.encode()
        elif isinstance(body, bytes):
            sent = body
        else:
            if isinstance(body, dict) and path in ("/send_message", "/call_tool"):
                body = {**body, "client_id": "fuzz-target", "timeout": 0.1}
            sent = _wire(body).encode()
        connection = http.client.HTTPConnection("127.0.0.1", edge.api_port, timeout=10)
        try:
            connection.request("POST", path, body=sent, headers={"Content-Type": content_type})
            response = connection.getresponse()
            answer = response.read()
        finally:
            connection.close()
        # A tool call to the connected target that never answers is a 504 "timeout", the
        # documented answer; any other 5xx is the gateway failing.
        timed_out = (path == "/call_tool" and response.status == 504
                     and b'"code":"timeout"' in answer)
        assert response.status < 500 or timed_out, (path, sent[:200], response.status,
                                                     answer[:300])

    check()
    target.close()
    _served(edge)
