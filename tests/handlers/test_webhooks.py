"""CHAT_WEBHOOK_URL and TOOL_WEBHOOK_URL against a real local HTTP backend started by the test:
JSON, NDJSON and SSE replies, and every failure (slow, down, non-2xx, garbage)."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import time
from collections.abc import Callable
from typing import Any

import pytest
from aiohttp import web

from server import webhooks
from server.webhooks import sign
from tests.backends import Backend, BackendHandler, closed_port_url, reply_json
from tests.conftest import LiveGateway, MakeGateway, WSClient, wait_for


def reply_stream(content_type: str, *chunks: bytes) -> BackendHandler:
    """A streaming backend: writes each chunk as it comes, then ends the body."""
    async def handler(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        resp.content_type = content_type
        await resp.prepare(request)
        for chunk in chunks:
            await resp.write(chunk)
        await resp.write_eof()
        return resp
    return handler


class LogRecorder:
    """Stands in for the module's structlog logger; keeps (level, event, fields)."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str, dict[str, Any]]] = []

    def __getattr__(self, level: str) -> Callable[..., None]:
        def record(event: str, **fields: Any) -> None:
            self.events.append((level, event, fields))
        return record

    def find(self, event: str) -> dict[str, Any]:
        for _, name, fields in self.events:
            if name == event:
                return fields
        raise AssertionError(f"no {event!r} log line in {self.events!r}")


@pytest.fixture
def logs(monkeypatch: pytest.MonkeyPatch) -> LogRecorder:
    recorder = LogRecorder()
    monkeypatch.setattr(webhooks, "log", recorder)
    return recorder


async def chat(client: WSClient, content: str, message_id: str, **data: Any) -> None:
    await client.send("chat_message", {"content": content, **data}, message_id=message_id)
    processing = await client.recv()
    assert processing["type"] == "processing"
    assert processing["reply_to"] == message_id


async def assert_unharmed(client: WSClient, live: LiveGateway) -> None:
    """The session still works: it answers frames and the API reaches it."""
    await client.send("ping", message_id="alive")
    assert (await client.recv())["type"] == "pong"
    status, _ = await live.api("POST", "/send_message", {"client_id": client.client_id,
                                                         "content": "still here"})
    assert status == 200
    assert (await client.recv())["data"] == {"content": "still here"}


# --- chat: the three answer shapes ------------------------------------------------------------


async def test_chat_json_reply_becomes_chat_response(make_gateway: MakeGateway,
                                                     backend: Backend, logs: LogRecorder) -> None:
    backend.handler = reply_json({"content": "Hi there", "model": "gpt-test"})
    live = await make_gateway(chat_webhook_url=backend.url)
    client = await live.connect(client_id="alice")
    await chat(client, "Hello", "m1", conversation_id="conv-1", stream=False)
    answer = await client.recv()
    assert answer["type"] == "chat_response"
    assert answer["reply_to"] == "m1"
    assert answer["data"]["content"] == "Hi there"
    assert answer["data"]["status"] == "completed"
    assert answer["data"]["model"] == "gpt-test"
    assert answer["data"]["conversation_id"] == "conv-1"
    sent = backend.requests[0]
    assert sent["client_id"] == "alice"
    assert sent["message_id"] == "m1"
    assert sent["content"] == "Hello"
    assert sent["role"] == "user"
    assert sent["conversation_id"] == "conv-1"
    assert sent["data"] == {"content": "Hello", "conversation_id": "conv-1", "stream": False}
    assert "history" not in sent
    assert backend.headers[0]["X-Switchboard-Client-Id"] == "alice"
    assert "Authorization" not in backend.headers[0]
    assert logs.find("chat_backend_answered")["client_id"] == "alice"


async def test_webhook_requests_are_signed_when_a_secret_is_set(make_gateway: MakeGateway,
                                                                backend: Backend) -> None:
    secret = "s" * 40
    raw_bodies: list[bytes] = []

    async def handler(request: web.Request) -> web.StreamResponse:
        raw_bodies.append(await request.read())
        return web.json_response({"content": "ok"})

    backend.handler = handler
    live = await make_gateway(chat_webhook_url=backend.url, webhook_secret=secret)
    client = await live.connect(client_id="alice")
    await chat(client, "Hello", "m1")
    assert (await client.recv())["type"] == "chat_response"
    headers = backend.headers[0]
    timestamp = headers["X-Switchboard-Timestamp"]
    assert abs(int(timestamp) - time.time()) < 60
    # what a backend does: recompute over the raw body, compare in constant time
    expected = "sha256=" + hmac.new(secret.encode(), timestamp.encode() + b"." + raw_bodies[0],
                                    hashlib.sha256).hexdigest()
    assert hmac.compare_digest(headers["X-Switchboard-Signature"], expected)
    assert sign(secret, timestamp, raw_bodies[0]) == expected
    assert sign("t" * 40, timestamp, raw_bodies[0]) != expected  # another secret: no match


async def test_webhook_requests_are_unsigned_without_a_secret(make_gateway: MakeGateway,
                                                              backend: Backend) -> None:
    backend.handler = reply_json({"content": "ok"})
    live = await make_gateway(chat_webhook_url=backend.url)
    client = await live.connect()
    await chat(client, "Hello", "m1")
    assert (await client.recv())["type"] == "chat_response"
    assert "X-Switchboard-Signature" not in backend.headers[0]


async def test_chat_history_carries_earlier_turns_of_the_conversation(
        make_gateway: MakeGateway, backend: Backend) -> None:
    answers = iter(["first answer", "second answer", "other answer"])

    async def handler(request: web.Request) -> web.StreamResponse:
        return web.json_response({"content": next(answers)})

    backend.handler = handler
    live = await make_gateway(chat_webhook_url=backend.url)
    client = await live.connect()
    await chat(client, "one", "m1", conversation_id="c")
    await client.recv_type("chat_response")
    await chat(client, "two", "m2", conversation_id="c")
    await client.recv_type("chat_response")
    await chat(client, "elsewhere", "m3", conversation_id="d")
    await client.recv_type("chat_response")
    assert "history" not in backend.requests[0]
    assert backend.requests[1]["history"] == [{"role": "user", "content": "one"},
                                              {"role": "assistant", "content": "first answer"}]
    assert "history" not in backend.requests[2]  # another conversation


async def test_chat_ndjson_stream_is_relayed_live(make_gateway: MakeGateway,
                                                  backend: Backend) -> None:
    first_chunk_seen = asyncio.Event()

    async def handler(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        resp.content_type = "application/x-ndjson"
        await resp.prepare(request)
        await resp.write(b'{"content": "Hel"}\n')
        # The rest only comes once the client has the first chunk: proves live relay.
        await first_chunk_seen.wait()
        await resp.write(b'\n{"delta": "lo"}\n{"model": "m-stream"}\n{"content": " world"}\n')
        await resp.write_eof()
        return resp

    backend.handler = handler
    live = await make_gateway(chat_webhook_url=backend.url)
    client = await live.connect()
    await chat(client, "Hello", "m1")
    start = await client.recv()
    assert start["type"] == "stream_start"
    assert start["reply_to"] == "m1"
    stream_id = start["data"]["stream_id"]
    chunk = await client.recv()
    assert chunk["type"] == "stream_chunk"
    assert chunk["data"] == {"stream_id": stream_id, "content": "Hel", "index": 0}
    first_chunk_seen.set()
    rest = [await client.recv() for _ in range(3)]
    assert [f["type"] for f in rest] == ["stream_chunk", "stream_chunk", "stream_end"]
    assert [f["data"].get("content") for f in rest[:2]] == ["lo", " world"]
    assert [f["data"]["index"] for f in rest[:2]] == [1, 2]
    end = rest[2]["data"]
    assert end["full_content"] == "Hello world"
    assert end["stream_id"] == stream_id
    assert end["chunks"] == 3
    assert end["model"] == "m-stream"
    assert end["status"] == "completed"
    assert all(f["reply_to"] == "m1" for f in rest)
    # A streamed answer counts as the assistant's turn in the next request's history.
    backend.handler = reply_json({"content": "ok"})
    await chat(client, "again", "m2")
    await client.recv_type("chat_response")
    assert backend.requests[1]["history"][-1] == {"role": "assistant",
                                                  "content": "Hello world"}


async def test_chat_sse_stream_is_relayed(make_gateway: MakeGateway, backend: Backend) -> None:
    backend.handler = reply_stream(
        "text/event-stream",
        b": keep-alive comment\n\n",
        b'data: {"content": "Hel"}\n\n',
        b'event: message\ndata: {"delta": "lo"}\n\n',
        b'data: {"choices": [{"delta": {"content": "!"}}], "model": "sse-model"}\n\n',
        b"data: [DONE]\n\n",
        b'data: {"content": "after done is ignored"}\n\n')
    live = await make_gateway(chat_webhook_url=backend.url)
    client = await live.connect()
    await chat(client, "Hello", "m1")
    frames = []
    while not frames or frames[-1]["type"] != "stream_end":
        frames.append(await client.recv())
    assert [f["type"] for f in frames] == ["stream_start", "stream_chunk", "stream_chunk",
                                           "stream_chunk", "stream_end"]
    assert [f["data"]["content"] for f in frames[1:4]] == ["Hel", "lo", "!"]
    assert frames[-1]["data"]["full_content"] == "Hello!"
    assert frames[-1]["data"]["model"] == "sse-model"


async def test_chat_backend_accepting_for_later_relays_nothing(
        make_gateway: MakeGateway, backend: Backend) -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        return web.Response(status=202)

    backend.handler = handler
    live = await make_gateway(chat_webhook_url=backend.url)
    client = await live.connect()
    await chat(client, "Hello", "m1")
    await wait_for(lambda: not live.holder.tasks, what="the chat task to finish")
    await client.send("ping")
    assert (await client.recv())["type"] == "pong"


# --- chat: failures ---------------------------------------------------------------------------


async def chat_error(live: LiveGateway, client: WSClient) -> dict[str, Any]:
    await chat(client, "Hello", "m1")
    frame = await client.recv()
    assert frame["type"] == "error", frame
    assert frame["reply_to"] == "m1"
    return frame["data"]


async def test_slow_backend_times_out(make_gateway: MakeGateway, backend: Backend,
                                      logs: LogRecorder) -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        await backend.release.wait()
        return web.json_response({"content": "too late"})

    backend.handler = handler
    live = await make_gateway(chat_webhook_url=backend.url, webhook_timeout=0.2)
    client = await live.connect(client_id="bob")
    error = await chat_error(live, client)
    assert error["code"] == "backend_timeout"
    assert "0.2s" in error["message"]
    failed = logs.find("chat_backend_failed")
    assert failed["code"] == "backend_timeout"
    assert failed["client_id"] == "bob"
    assert failed["message_id"] == "m1"
    await assert_unharmed(client, live)


async def test_backend_silent_mid_stream_times_out_with_partial_content(
        make_gateway: MakeGateway, backend: Backend) -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        resp.content_type = "application/x-ndjson"
        await resp.prepare(request)
        await resp.write(b'{"content": "partial"}\n')
        await backend.release.wait()
        return resp

    backend.handler = handler
    live = await make_gateway(chat_webhook_url=backend.url, webhook_timeout=0.2)
    client = await live.connect()
    await chat(client, "Hello", "m1")
    start = await client.recv()
    assert start["type"] == "stream_start"
    assert (await client.recv())["data"]["content"] == "partial"
    error = await client.recv()
    assert error["type"] == "error"
    assert error["data"]["code"] == "backend_timeout"
    assert error["data"]["stream_id"] == start["data"]["stream_id"]
    assert error["data"]["partial_content"] == "partial"
    await assert_unharmed(client, live)


async def test_backend_down_is_unavailable(make_gateway: MakeGateway,
                                           logs: LogRecorder) -> None:
    live = await make_gateway(chat_webhook_url=closed_port_url())
    client = await live.connect()
    error = await chat_error(live, client)
    assert error["code"] == "backend_unavailable"
    assert logs.find("chat_backend_failed")["code"] == "backend_unavailable"
    await assert_unharmed(client, live)


async def test_backend_500_is_a_backend_error(make_gateway: MakeGateway, backend: Backend,
                                              logs: LogRecorder) -> None:
    backend.handler = reply_json({"detail": "internal secret stack"}, status=500)
    live = await make_gateway(chat_webhook_url=backend.url)
    client = await live.connect()
    error = await chat_error(live, client)
    assert error["code"] == "backend_error"
    assert error["status"] == 500
    assert "500" in error["message"]
    assert "secret" not in error["message"]
    assert logs.find("chat_backend_failed")["code"] == "backend_error"
    await assert_unharmed(client, live)


@pytest.mark.parametrize(("body", "content_type"), [
    (b"<html>oops</html>", "text/html"),
    (b'{"content": ', "application/json"),
    (b'["not", "an", "object"]', "application/json"),
    (b'{"answer": "no content field"}', "application/json"),
    (b'{"content": 42}', "application/json"),
])
async def test_garbage_answers_are_invalid_responses(make_gateway: MakeGateway,
                                                     backend: Backend, body: bytes,
                                                     content_type: str) -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        return web.Response(body=body, content_type=content_type)

    backend.handler = handler
    live = await make_gateway(chat_webhook_url=backend.url)
    client = await live.connect()
    error = await chat_error(live, client)
    assert error["code"] == "backend_invalid_response"
    await assert_unharmed(client, live)


async def test_garbage_mid_stream_ends_the_stream_with_an_error(
        make_gateway: MakeGateway, backend: Backend) -> None:
    backend.handler = reply_stream(
        "application/x-ndjson",
        b'{"content": "ok so far"}\nthis is not json\n{"content": "never"}\n')
    live = await make_gateway(chat_webhook_url=backend.url)
    client = await live.connect()
    await chat(client, "Hello", "m1")
    assert (await client.recv())["type"] == "stream_start"
    assert (await client.recv())["data"]["content"] == "ok so far"
    error = await client.recv()
    assert error["type"] == "error"
    assert error["data"]["code"] == "backend_invalid_response"
    assert "line 2" in error["data"]["message"]
    assert error["data"]["partial_content"] == "ok so far"
    await assert_unharmed(client, live)


async def test_error_event_mid_stream_is_a_backend_error(make_gateway: MakeGateway,
                                                          backend: Backend) -> None:
    backend.handler = reply_stream(
        "text/event-stream", b'data: {"error": {"message": "model overloaded"}}\n\n')
    live = await make_gateway(chat_webhook_url=backend.url)
    client = await live.connect()
    await chat(client, "Hello", "m1")
    await client.recv_type("stream_start")
    error = await client.recv()
    assert error["data"]["code"] == "backend_error"
    assert "model overloaded" in error["data"]["message"]


async def test_echo_stays_the_default(live_gateway: LiveGateway) -> None:
    assert live_gateway.holder.chat_backend is None
    assert live_gateway.holder.tool_fallback is None
    client = await live_gateway.connect()
    await chat(client, "Hello", "m1")
    assert (await client.recv())["data"]["content"] == "Echo: Hello"


# --- tools ------------------------------------------------------------------------------------


async def tool_run(client: WSClient, tool_name: str, params: dict[str, Any],
                   call_id: str = "c1") -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """(lifecycle frames, tool_response data) of one tool_call."""
    await client.send("tool_call", {"tool_name": tool_name, "params": params,
                                    "call_id": call_id})
    frames = []
    while True:
        frame = await client.recv()
        if frame["type"] == "tool_response":
            return frames, frame["data"]
        frames.append(frame)


async def test_unknown_tools_go_to_the_tool_backend(make_gateway: MakeGateway,
                                                    backend: Backend,
                                                    logs: LogRecorder) -> None:
    backend.handler = reply_json({"result": {"rows": 3}})
    live = await make_gateway(tool_webhook_url=backend.url)
    client = await live.connect(client_id="carol")
    params = {"query": "select 1", "password": "hunter2"}
    frames, response = await tool_run(client, "db::query", params)
    assert backend.requests == [{"tool_name": "db::query", "params": params,
                                 "call_id": "c1", "client_id": "carol"}]
    assert [f["type"] for f in frames] == ["mcp_tool_execution_start",
                                           "mcp_tool_execution_complete"]
    assert frames[0]["data"]["parameters"]["password"] == "***"
    complete = frames[1]["data"]
    assert complete["status"] == "completed"
    assert complete["result"] == {"type": "structured", "content": {"rows": 3},
                                  "raw_data": {"rows": 3}, "success": True}
    assert response == {"call_id": "c1", "tool_name": "db::query", "success": True,
                        "result": {"rows": 3}}
    assert logs.find("tool_backend_answered")["tool"] == "db::query"


async def test_local_tools_stay_local(make_gateway: MakeGateway, backend: Backend) -> None:
    backend.handler = reply_json({"result": "from backend"})
    live = await make_gateway(tool_webhook_url=backend.url)
    client = await live.connect()
    _, response = await tool_run(client, "echo", {"text": "local"})
    assert response["result"] == "local"
    assert backend.requests == []


async def test_tool_backend_text_and_mcp_results(make_gateway: MakeGateway,
                                                 backend: Backend) -> None:
    replies = iter([
        {"result": "plain text"},
        {"content": [{"type": "text", "text": "from MCP"}], "isError": False},
        {"content": [{"type": "text", "text": "MCP failure"}], "isError": True},
    ])

    async def handler(request: web.Request) -> web.StreamResponse:
        return web.json_response(next(replies))

    backend.handler = handler
    live = await make_gateway(tool_webhook_url=backend.url)
    client = await live.connect()
    frames, response = await tool_run(client, "remote", {}, "t1")
    assert frames[-1]["data"]["result"]["type"] == "text"
    assert frames[-1]["data"]["result"]["content"] == "plain text"
    assert response["result"] == "plain text"
    frames, response = await tool_run(client, "remote", {}, "t2")
    assert frames[-1]["data"]["result"]["type"] == "text"
    assert frames[-1]["data"]["result"]["content"] == "from MCP"
    assert response["success"] is True
    frames, response = await tool_run(client, "remote", {}, "t3")
    assert frames[-1]["data"]["status"] == "failed"
    assert frames[-1]["data"]["result"]["type"] == "error"
    assert frames[-1]["data"]["result"]["content"] == "MCP failure"
    assert response["success"] is False


async def test_tool_backend_error_answer_fails_the_call(make_gateway: MakeGateway,
                                                        backend: Backend) -> None:
    backend.handler = reply_json({"error": "table not found"})
    live = await make_gateway(tool_webhook_url=backend.url)
    client = await live.connect()
    frames, response = await tool_run(client, "db::query", {})
    complete = frames[-1]["data"]
    assert complete["status"] == "failed"
    assert complete["result"]["type"] == "error"
    assert "table not found" in complete["result"]["content"]
    assert response["success"] is False
    assert "table not found" in response["error"]


async def test_tool_backend_failures_fail_the_call_with_a_clear_reason(
        make_gateway: MakeGateway, backend: Backend, logs: LogRecorder) -> None:
    async def slow(request: web.Request) -> web.StreamResponse:
        await backend.release.wait()
        return web.json_response({"result": "late"})

    live = await make_gateway(tool_webhook_url=backend.url, webhook_timeout=0.2)
    client = await live.connect()
    cases: list[tuple[BackendHandler, str]] = [
        (slow, "backend_timeout"),
        (reply_json({"oops": True}, status=503), "backend_error"),
        (reply_json({"neither": "result nor error"}), "backend_invalid_response"),
    ]
    for number, (handler, code) in enumerate(cases):
        backend.handler = handler
        frames, response = await tool_run(client, "remote", {}, f"f{number}")
        complete = frames[-1]["data"]
        assert complete["status"] == "failed", code
        assert complete["result"]["content"].startswith(f"{code}: "), complete
        assert response["error"].startswith(f"{code}: ")
        assert logs.events[-1][1] == "tool_backend_failed"
        assert logs.events[-1][2]["code"] == code
    await assert_unharmed(client, live)


async def test_tool_backend_down(make_gateway: MakeGateway) -> None:
    live = await make_gateway(tool_webhook_url=closed_port_url())
    client = await live.connect()
    frames, response = await tool_run(client, "remote", {})
    assert frames[-1]["data"]["status"] == "failed"
    assert response["error"].startswith("backend_unavailable: ")


async def test_chat_and_tools_share_one_backend_session(make_gateway: MakeGateway,
                                                        backend: Backend) -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        body = backend.requests[-1]
        if "tool_name" in body:
            return web.json_response({"result": "tool ok"})
        return web.json_response({"content": "chat ok"})

    backend.handler = handler
    live = await make_gateway(chat_webhook_url=backend.url, tool_webhook_url=backend.url)
    client = await live.connect()
    await chat(client, "hi", "m1")
    assert (await client.recv())["data"]["content"] == "chat ok"
    _, response = await tool_run(client, "remote", {})
    assert response["result"] == "tool ok"
    assert [sorted(r) for r in backend.requests] == [
        ["client_id", "content", "data", "message_id", "role"],
        ["call_id", "client_id", "params", "tool_name"]]


async def test_openai_shaped_json_reply_and_ndjson_done_marker(make_gateway: MakeGateway,
                                                               backend: Backend) -> None:
    backend.handler = reply_json({"model": "gpt-4o",
                                  "choices": [{"message": {"role": "assistant",
                                                           "content": "from choices"}}]})
    live = await make_gateway(chat_webhook_url=backend.url)
    client = await live.connect()
    await chat(client, "Hello", "m1")
    answer = (await client.recv())["data"]
    assert answer["content"] == "from choices"
    assert answer["model"] == "gpt-4o"

    backend.handler = reply_stream(
        "application/x-ndjson", b'{"content": "a"}\n{"done": true}\n{"content": "ignored"}\n')
    await chat(client, "Hello", "m2")
    frames = [await client.recv() for _ in range(3)]
    assert [f["type"] for f in frames] == ["stream_start", "stream_chunk", "stream_end"]
    assert frames[-1]["data"]["full_content"] == "a"


async def test_backend_redirects_are_not_followed(make_gateway: MakeGateway,
                                                  backend: Backend) -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        raise web.HTTPFound("http://169.254.169.254/latest/meta-data")

    backend.handler = handler
    live = await make_gateway(chat_webhook_url=backend.url)
    client = await live.connect()
    error = await chat_error(live, client)
    assert error["code"] == "backend_error"
    assert error["status"] == 302
    assert len(backend.requests) == 1
