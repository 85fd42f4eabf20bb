"""``/metrics`` counts what happens, ``/health`` is public liveness, ``/ready`` readiness.

Metrics live in one process-wide registry, so every test compares two scrapes (deltas).
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from server.errors import CloseCode
from tests.conftest import LiveGateway, MakeGateway, wait_for

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


async def scrape(live: LiveGateway) -> Samples:
    async with live.http.get(f"{live.api_url}/metrics", headers=live.auth()) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        text = await resp.text()
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def value(samples: Samples, name: str, labels: Mapping[str, str] | None = None) -> float:
    return samples.get((name, frozenset((labels or {}).items())), 0.0)


class Delta:
    """``delta(name, **labels)``: how much a series grew between two scrapes."""

    def __init__(self, before: Samples, after: Samples) -> None:
        self.before = before
        self.after = after

    def __call__(self, name: str, **labels: str) -> float:
        return value(self.after, name, labels) - value(self.before, name, labels)


async def until_gone(live: LiveGateway) -> None:
    await wait_for(lambda: not live.connections, what="every connection to close")


async def test_connect_send_disconnect(live_gateway: LiveGateway) -> None:
    live = live_gateway
    before = await scrape(live)
    client = await live.connect(client_id="m1")
    await client.send("ping")
    await client.recv_type("pong")
    status, _ = await live.api("POST", "/send_message", {"client_id": "m1", "content": "hi"})
    assert status == 200
    assert (await client.recv_type("message"))["data"]["content"] == "hi"
    during = await scrape(live)
    assert value(during, "switchboard_connections") == 1
    assert value(during, "switchboard_sessions") == 1
    await client.close()
    await until_gone(live)
    delta = Delta(before, await scrape(live))

    assert delta("switchboard_connects_total", resumed="false") == 1
    assert delta("switchboard_disconnects_total", code="1000") == 1
    assert delta("switchboard_frames_in_total", type="ping") == 1
    assert delta("switchboard_frames_out_total", kind="sent") >= 2  # pong and the message
    assert delta("switchboard_api_requests_total", method="POST", route="/send_message",
                 status="200") == 1
    assert delta("switchboard_api_request_seconds_count", route="/send_message") == 1
    # A histogram, cumulative: the request is in the +Inf bucket and every one above its own.
    assert delta("switchboard_api_request_seconds_bucket", route="/send_message",
                 le="+Inf") == 1
    assert delta("switchboard_api_request_seconds_bucket", route="/send_message",
                 le="30.0") == 1
    assert delta("switchboard_api_request_seconds_sum", route="/send_message") > 0


async def test_bad_frames_are_counted_without_new_labels(live_gateway: LiveGateway) -> None:
    live = live_gateway
    client = await live.connect()
    before = await scrape(live)
    await client.send_raw("not json")
    await client.recv_type("error")
    await client.send("no_such_type_xyz")
    await client.recv_type("error")
    await client.ws.send_bytes(b"\x00\x01")
    await client.recv_type("error")
    delta = Delta(before, await scrape(live))
    assert delta("switchboard_frames_in_total", type="invalid") == 1
    assert delta("switchboard_frames_in_total", type="unknown") == 1
    assert delta("switchboard_frames_in_total", type="binary") == 1
    after = await scrape(live)
    assert ("switchboard_frames_in_total",
            frozenset({("type", "no_such_type_xyz")})) not in after


async def test_resumes_by_outcome(make_gateway: MakeGateway) -> None:
    live = await make_gateway(session_ttl=60.0)
    client = await live.connect(client_id="r1")
    token = client.session_token
    await client.close()
    await until_gone(live)
    status, _ = await live.api("POST", "/send_message", {"client_id": "r1", "content": "later"})
    assert status == 202
    before = await scrape(live)
    resumed = await live.connect(client_id="r1", session_token=token, last_seq=0)
    assert resumed.hello["data"]["resumed"] is True
    assert (await resumed.recv_type("message"))["data"]["content"] == "later"
    refused = await live.connect(client_id="r1", session_token="wrong", expect_hello=False)
    assert await refused.recv_close() == CloseCode.INVALID_SESSION
    delta = Delta(before, await scrape(live))
    assert delta("switchboard_resumes_total", outcome="recovered") == 1
    assert delta("switchboard_resumes_total", outcome="refused") == 1
    assert delta("switchboard_connects_total", resumed="true") == 1
    assert delta("switchboard_frames_out_total", kind="replayed") == 1
    assert delta("switchboard_frames_out_total", kind="queued") == 0  # counted before
    assert delta("switchboard_connects_total", resumed="false") == 0  # the refusal is none


async def test_tool_calls_by_origin_and_outcome(live_gateway: LiveGateway) -> None:
    live = live_gateway
    client = await live.connect(client_id="t1")
    before = await scrape(live)

    async def answer() -> None:
        call = await client.recv_type("tool_call")
        await client.send("tool_result", {"call_id": call["data"]["call_id"], "result": 42})

    answering = asyncio.ensure_future(answer())
    status, body = await live.api("POST", "/call_tool", {"client_id": "t1", "tool_name": "x"})
    await answering
    assert status == 200 and body["result"] == 42
    status, _ = await live.api("POST", "/call_tool", {"client_id": "t1", "tool_name": "x",
                                                      "timeout": 0.05})
    assert status == 504
    status, _ = await live.api("POST", "/call_tool", {"client_id": "nobody", "tool_name": "x"})
    assert status == 404
    await client.send("tool_call", {"tool_name": "echo", "params": {"text": "hi"}})
    assert (await client.recv_type("tool_response"))["data"]["success"] is True
    await client.send("tool_call", {"tool_name": "no_such_tool"})
    assert (await client.recv_type("tool_response"))["data"]["success"] is False
    delta = Delta(before, await scrape(live))
    assert delta("switchboard_tool_calls_total", origin="api", outcome="success") == 1
    assert delta("switchboard_tool_calls_total", origin="api", outcome="timeout") == 1
    assert delta("switchboard_tool_calls_total", origin="api", outcome="not_found") == 1
    assert delta("switchboard_tool_calls_total", origin="client", outcome="success") == 1
    assert delta("switchboard_tool_calls_total", origin="client", outcome="unknown_tool") == 1


async def test_slow_client_and_queue_gauges(make_gateway: MakeGateway) -> None:
    big = 32 * 1024
    live = await make_gateway(send_queue_frames=8, send_queue_bytes=4 * big + 4096,
                              max_message_size=big)
    slow = await live.connect(client_id="slow")
    conn = next(c for c in live.connections if c.session.client_id == "slow")
    before = await scrape(live)
    payload = "x" * big
    sent = 0
    saw_queue = False
    while conn.close_code is None:
        sent += 1
        assert sent < 2000, "the slow client never overflowed"
        status, _ = await live.api("POST", "/broadcast", {"message_type": "tick",
                                                          "data": {"p": payload}})
        assert status == 200
        if conn.queued_frames and not saw_queue:
            gauges = await scrape(live)
            saw_queue = value(gauges, "switchboard_send_queue_frames") >= 1
            assert value(gauges, "switchboard_send_queue_bytes") >= big
            assert value(gauges, "switchboard_send_queue_max_frames") >= 1
    assert saw_queue
    assert await slow.recv_close(timeout=10) == CloseCode.SLOW_CONSUMER
    await until_gone(live)
    delta = Delta(before, await scrape(live))
    assert delta("switchboard_slow_clients_total") == 1
    assert delta("switchboard_disconnects_total", code="4008") == 1
    status, body = await live.api("GET", "/status")
    assert body["total_slow_disconnects"] == 1


async def test_refused_handshakes_are_counted(make_gateway: MakeGateway) -> None:
    live = await make_gateway(allowed_origins=("http://good.example",))
    before = await scrape(live)
    with pytest.raises(aiohttp.WSServerHandshakeError):
        await live.http.ws_connect(live.ws_server.make_url("/ws"),
                                   headers={"Origin": "http://evil.example"})
    async with live.http.get(live.ws_server.make_url("/ws")) as resp:
        assert resp.status == 426
    delta = Delta(before, await scrape(live))
    assert delta("switchboard_handshakes_refused_total", reason="origin") == 1
    assert delta("switchboard_handshakes_refused_total", reason="not_websocket") == 1


async def test_health_is_public_and_ready_follows_accepting(live_gateway: LiveGateway) -> None:
    live = live_gateway
    for path in ("/health", "/healthz"):
        status, body = await live.api("GET", path, auth=False)
        assert (status, body) == (200, {"status": "ok"})
    status, body = await live.api("GET", "/ready")
    assert status == 200 and body["status"] == "ready" and body["accepting"] is True
    live.api_node.gateway.accepting = False
    status, body = await live.api("GET", "/ready")
    assert status == 503 and body["status"] == "unavailable" and body["accepting"] is False
    live.api_node.gateway.accepting = True
    status, _ = await live.api("GET", "/metrics", auth=False)
    assert status == 401
    samples = await scrape(live)
    assert value(samples, "switchboard_broker_up") == 1


PROCESS_SERIES = ("process_resident_memory_bytes", "process_virtual_memory_bytes",
                  "process_cpu_seconds_total", "process_open_fds", "process_max_fds",
                  "process_start_time_seconds", "python_gc_objects_collected_total",
                  "python_gc_collections_total", "python_info")


async def test_process_and_gc_series_are_exported_once_with_two_gateways_in_a_process(
        make_gateway: MakeGateway) -> None:
    first, second = await make_gateway(), await make_gateway()
    for live in (first, second):
        async with live.http.get(f"{live.api_url}/metrics", headers=live.auth()) as resp:
            text = await resp.text()
        samples = await scrape(live)
        names = {name for name, _ in samples}
        for series in PROCESS_SERIES:
            assert series in names, f"{series} missing from /metrics"
        assert value(samples, "process_resident_memory_bytes") > 1_000_000
        assert value(samples, "process_open_fds") > 0
        assert value(samples, "python_gc_collections_total", {"generation": "0"}) >= 0
        for family in ("process_resident_memory_bytes", "python_gc_objects_collected_total"):
            assert text.count(f"# TYPE {family} ") == 1, family
