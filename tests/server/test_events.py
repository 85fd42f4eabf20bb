"""Lifecycle events (EVENTS_WEBHOOK_URL) against a real local webhook server: batching,
signatures, retries after a 500, drops when the queue is full (with the metric), and what
shutdown does with what is still queued."""

from __future__ import annotations

from typing import Any

import pytest
from aiohttp import web

from server.config import Settings
from server.events import EventEmitter
from server.keys import EVENTS
from server.metrics import REGISTRY
from server.webhooks import backend_session
from tests.backends import Backend, reply_json, signature_ok
from tests.conftest import MakeGateway, wait_for

SECRET = "e" * 40


def outcome(name: str) -> float:
    return REGISTRY.get_sample_value("switchboard_events_total", {"outcome": name}) or 0


def posts(result: str) -> float:
    return REGISTRY.get_sample_value("switchboard_events_posts_total", {"result": result}) or 0


def emitter(backend: Backend, **settings: Any) -> EventEmitter:
    values: dict[str, Any] = {"events_webhook_url": backend.url, "events_batch_wait": 0.05,
                              "webhook_secret": SECRET}
    retry = {k: settings.pop(k) for k in ("max_attempts", "retry_base") if k in settings}
    values.update(settings)
    return EventEmitter(Settings(**values), **retry)


async def started(events: EventEmitter) -> EventEmitter:
    events.start(backend_session(events.settings, limit=4))
    return events


def member(i: int) -> dict[str, Any]:
    return {"channel": "room:1", "client_id": f"c{i}", "user_id": f"u{i}"}


def delivered_events(backend: Backend) -> list[dict[str, Any]]:
    return [event for body in backend.requests for event in body["events"]]


async def test_events_are_batched_signed_and_documented_shape(backend: Backend) -> None:
    backend.handler = reply_json({"ok": True})
    events = await started(emitter(backend, events_batch_size=3, events_batch_wait=5.0))
    for i in range(7):
        assert events.emit_event("member_added", **member(i))
    # two full batches go at once; the seventh event waits for more (up to 5 s), so only
    # closing (which drains) sends it now
    await backend.wait_requests(2)
    assert [len(body["events"]) for body in backend.requests] == [3, 3]
    assert await events.close(5.0) == 0
    assert [len(body["events"]) for body in backend.requests] == [3, 3, 1]
    got = delivered_events(backend)
    assert [e["client_id"] for e in got] == [f"c{i}" for i in range(7)]  # in order
    first = got[0]
    assert first["type"] == "member_added"
    assert first["id"].startswith("evt_") and len({e["id"] for e in got}) == 7
    assert first["timestamp"].endswith("Z")
    assert (first["channel"], first["user_id"]) == ("room:1", "u0")
    for body, raw, headers in zip(backend.requests, backend.bodies, backend.headers,
                                  strict=True):
        assert signature_ok(SECRET, headers, raw)
        assert headers["X-Switchboard-Request-Id"] == body["batch_id"]
        assert headers["X-Switchboard-Attempt"] == "1"
        assert headers["Content-Type"] == "application/json"
        assert body["sent_at"].endswith("Z")


async def test_the_first_event_waits_at_most_the_batch_wait(backend: Backend) -> None:
    backend.handler = reply_json({})
    events = await started(emitter(backend, events_batch_size=100, events_batch_wait=0.05))
    events.emit_event("channel_occupied", channel="room:1")
    events.emit_event("session_started", client_id="c1", user_id=None, client_type="web")
    await backend.wait_requests(1)
    assert [e["type"] for e in backend.requests[0]["events"]] == ["channel_occupied",
                                                                 "session_started"]
    await events.close(1.0)


async def test_a_500_is_retried_with_the_same_batch(backend: Backend) -> None:
    answers = iter([500, 503, 200])

    async def flaky(request: web.Request) -> web.Response:
        return web.json_response({}, status=next(answers))

    backend.handler = flaky
    failed, retried, ok = posts("failed"), posts("retried"), posts("ok")
    delivered = outcome("delivered")
    events = await started(emitter(backend, retry_base=0.05))
    events.emit_event("session_ended", client_id="c1", user_id="alice", reason="expired")
    await backend.wait_requests(3)
    await wait_for(lambda: outcome("delivered") == delivered + 1, what="delivery counted")
    assert backend.bodies[0] == backend.bodies[1] == backend.bodies[2]  # same batch, same ids
    assert [h["X-Switchboard-Attempt"] for h in backend.headers] == ["1", "2", "3"]
    assert all(signature_ok(SECRET, h, b) for h, b in zip(backend.headers, backend.bodies,
                                                          strict=True))
    assert (posts("failed"), posts("retried"), posts("ok")) == (failed + 2, retried + 2, ok + 1)
    await events.close(1.0)


async def test_a_4xx_drops_the_batch_without_retrying(backend: Backend) -> None:
    backend.handler = reply_json({"error": "no"}, status=400)
    rejected = outcome("dropped_rejected")
    events = await started(emitter(backend))
    events.emit_event("member_removed", **member(1))
    events.emit_event("member_removed", **member(2))
    await wait_for(lambda: outcome("dropped_rejected") == rejected + 2, what="drop counted")
    assert len(backend.requests) == 1
    await events.close(1.0)


async def test_retries_are_bounded(backend: Backend) -> None:
    backend.handler = reply_json({}, status=500)
    exhausted = outcome("dropped_retries")
    events = await started(emitter(backend, max_attempts=3, retry_base=0.01))
    events.emit_event("channel_vacated", channel="room:1")
    await wait_for(lambda: outcome("dropped_retries") == exhausted + 1, what="give up")
    assert len(backend.requests) == 3
    await events.close(1.0)


async def test_a_full_queue_drops_new_events_and_counts_them(backend: Backend) -> None:
    backend.handler = reply_json({})
    dropped = outcome("dropped_queue_full")
    events = emitter(backend, events_queue_size=5, events_batch_size=100)
    # not started yet: nothing drains the queue
    results = [events.emit_event("member_added", **member(i)) for i in range(20)]
    assert results == [True] * 5 + [False] * 15
    assert outcome("dropped_queue_full") == dropped + 15
    assert events.pending == 5
    await started(events)
    assert await events.close(5.0) == 0
    assert [e["client_id"] for e in delivered_events(backend)] == [f"c{i}" for i in range(5)]


async def test_shutdown_reports_what_the_backend_never_took(backend: Backend) -> None:
    async def hang(request: web.Request) -> web.Response:
        await backend.release.wait()
        return web.json_response({})

    backend.handler = hang
    lost = outcome("dropped_shutdown")
    events = await started(emitter(backend, events_batch_size=2))
    for i in range(5):
        events.emit_event("member_added", **member(i))
    await backend.wait_requests(1)  # the first batch is stuck in the backend
    assert await events.close(0.2) == 5
    assert outcome("dropped_shutdown") == lost + 5
    assert not events.emit_event("member_added", **member(9))  # closed: dropped, counted
    assert outcome("dropped_shutdown") == lost + 6


async def test_bad_calls_are_caller_bugs_and_no_url_means_no_events(backend: Backend) -> None:
    events = emitter(backend)
    with pytest.raises(ValueError, match="unknown event type 'member_joined'"):
        events.emit_event("member_joined", channel="x")
    with pytest.raises(ValueError, match="reserved"):
        events.emit_event("member_added", id="mine")
    with pytest.raises(TypeError):
        events.emit_event("member_added", channel=object())
    off = EventEmitter(Settings())
    assert not off.enabled and off.emit_event("member_added", **member(1)) is False


async def test_the_gateway_runs_the_emitter_and_drains_it_on_shutdown(
        make_gateway: MakeGateway, backend: Backend) -> None:
    backend.handler = reply_json({})
    live = await make_gateway(events_webhook_url=backend.url, events_batch_wait=30.0,
                              webhook_secret=SECRET)
    node = live.ws_node
    events = node.ws_server.app[EVENTS]
    assert node.api_server.app[EVENTS] is events  # routes emit through the same queue
    assert events.emit_event("session_started", client_id="c1", user_id="alice",
                             client_type="browser")
    # The batch would wait 30 s for more events; shutdown posts it at once.
    await node.ws_server.close()
    assert [e["type"] for e in delivered_events(backend)] == ["session_started"]
    assert signature_ok(SECRET, backend.headers[0], backend.bodies[0])


@pytest.mark.one_node("with redis:// the sessions outlive the node that stops: they end later")
async def test_a_memory_gateway_stopping_reports_its_sessions_ending(
        make_gateway: MakeGateway, backend: Backend) -> None:
    """memory://: the sessions die with the process, and the backend hears so (once): their
    members leave, the channel is vacated, each session ends with reason shutdown."""
    backend.handler = reply_json({})
    live = await make_gateway(events_webhook_url=backend.url, events_batch_wait=30.0)
    client = await live.connect(user_id="alice")
    await client.send("subscribe", {"channel": "room"})
    await client.recv_type("subscribed")
    await live.ws_node.ws_server.close()
    seen = [(e["type"], e.get("reason")) for e in delivered_events(backend)]
    assert seen == [("session_started", None), ("member_added", None),
                    ("channel_occupied", None), ("member_removed", None),
                    ("channel_vacated", None), ("session_ended", "shutdown")], seen
