"""Redis trouble is visible, never silent, and the cluster recovers by itself.

The redis-server process is killed (SIGKILL, like a crash) and started again on the same port
with persistence off, so it comes back empty: the nodes must say so (``/ready`` 503, API calls
that need Redis 503), keep local delivery going, reconnect with backoff, and rewrite what they
hold so that cross-node delivery and resume work again with nothing lost.
"""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from server.config import Settings
from server.errors import ConfigError
from tests.conftest import LiveGateway, MakeGateway, eventually, wait_for
from tests.conftest_redis import RedisServer
from tests.redis.test_cluster import wait_redis

pytestmark = pytest.mark.redis


async def test_redis_restart_mid_stream(make_gateway: MakeGateway,
                                        own_redis_server: RedisServer) -> None:
    url = own_redis_server.url
    a = await make_gateway(broker_url=url, node_id="a")
    b = await make_gateway(broker_url=url, node_id="b")
    on_a = await a.connect(client_id="on-a")
    on_b = await b.connect(client_id="on-b")
    await wait_redis(a, "on-b", node="b")
    status, body = await a.api("POST", "/send_message", {"client_id": "on-b", "content": "pre"})
    assert status == 200, body
    assert (await on_b.recv_type("message"))["data"]["content"] == "pre"
    # a broadcast: in Redis, its body once and a reference in each history (lost with Redis)
    status, body = await a.api("POST", "/broadcast", {"message_type": "before"})
    assert status == 200 and body["recipients"] == 2, body
    before = await on_a.recv_type("before")

    own_redis_server.stop()
    await wait_for(lambda: not a.gateway.backend.healthy and not b.gateway.backend.healthy,
                   timeout=10, what="both nodes see Redis down")
    for live in (a, b):
        status, body = await live.api("GET", "/ready")
        assert status == 503 and body["broker"]["healthy"] is False, body
    # local delivery goes on
    status, body = await a.api("POST", "/send_message",
                               {"client_id": "on-a", "content": "during"})
    assert status == 200 and body["status"] == "delivered", body
    during = await on_a.recv_type("message")
    assert during["data"]["content"] == "during"
    # what needs Redis says so
    status, body = await a.api("POST", "/send_message", {"client_id": "on-b", "content": "x"})
    assert status == 503 and body["error"]["code"] == "unavailable", body
    status, body = await a.api("POST", "/broadcast", {"message_type": "x"})
    assert status == 503, body
    status, body = await a.api("GET", "/clients")
    assert status == 503, body

    own_redis_server.start()  # same port, empty (no persistence)
    await wait_for(lambda: a.gateway.backend.healthy and b.gateway.backend.healthy,
                   timeout=15, what="both nodes reconnected")
    for live in (a, b):
        status, body = await live.api("GET", "/ready")
        assert status == 200, body

    # cross-node delivery resumes once the owners have rewritten their sessions
    status, body = await eventually(
        lambda: a.api("POST", "/send_message", {"client_id": "on-b", "content": "post"}),
        lambda r: r[0] == 200, what="cross-node send after the restart")
    assert body["status"] == "delivered"
    assert (await on_b.recv_type("message"))["data"]["content"] == "post"
    status, body = await a.api("POST", "/broadcast", {"message_type": "again"})
    assert status == 200 and body["recipients"] == 2, body
    redis = a.gateway.backend.store.redis  # type: ignore[attr-defined]
    await eventually(lambda: redis.exists(f"sb:m:{before['message_id']}"), lambda n: n == 1,
                     what="the body of the broadcast rewritten with the histories")

    # nothing was lost: on-a moves to b and its history includes the broadcast from before
    # the restart (a rewrote its body with the history) and the frame sent during the outage
    # (a held it and rewrote it into the new Redis)
    last_seq = during["seq"]
    await on_a.recv_type("again")
    await on_a.close()
    await wait_redis(b, "on-a", node="a", connected="0")
    moved = await b.connect(client_id="on-a", session_token=on_a.session_token, last_seq=0)
    data = moved.hello["data"]
    assert data["resumed"] is True and data["recovered"] is True and data["replayed"] == 3
    replayed = [await moved.recv() for _ in range(3)]
    assert [(f["seq"], f["type"]) for f in replayed] == [
        (before["seq"], "before"), (last_seq, "message"), (last_seq + 1, "again")]
    assert replayed[0] == before and replayed[1]["data"]["content"] == "during"

def test_workers_refused_with_memory_broker() -> None:
    with pytest.raises(ConfigError) as info:
        Settings(workers=2, broker_url="memory://").check()
    assert "WORKERS" in info.value.message and "redis://" in info.value.message
    Settings(workers=2, broker_url="redis://127.0.0.1:6379/0").check()


async def test_ready_reports_broker(make_gateway: MakeGateway, redis_url: str) -> None:
    live: LiveGateway = await make_gateway(broker_url=redis_url, node_id="solo")
    status, body = await live.api("GET", "/ready")
    assert status == 200 and body["broker"]["backend"] == "redis", body
    assert body["broker"]["healthy"] is True and body["broker"]["node_id"] == "solo"


async def test_starts_while_redis_is_down_and_connects_when_it_comes(
        make_gateway: MakeGateway, tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from server.cluster import bus
    from tests.conftest_redis import find_redis_server, free_port

    monkeypatch.setattr(bus, "START_WAIT", 0.2)  # do not hold start-up for long
    server = RedisServer(find_redis_server(), str(tmp_path), free_port())
    live = await make_gateway(broker_url=server.url, node_id="early")
    try:
        status, body = await live.api("GET", "/ready")
        assert status == 503 and body["broker"]["healthy"] is False, body
        assert "error" in body["broker"]
        # local work goes on: a new session with a generated id needs no Redis (a requested
        # id does, to be unique cluster-wide: that one is refused with 1011, retry later)
        client = await live.connect()
        refused = await live.connect(client_id="wanted", expect_hello=False)
        frame = orjson.loads((await refused.ws.receive(timeout=5)).data)
        assert frame["data"]["close_code"] == 1011, frame
        status, body = await live.api("POST", "/broadcast", {"message_type": "x"})
        assert status == 503, body
        server.start()
        await wait_for(lambda: live.gateway.backend.healthy, timeout=15,
                       what="the node connected by itself")
        status, body = await eventually(lambda: live.api("POST", "/broadcast",
                                                         {"message_type": "hi"}),
                                        lambda r: r[0] == 200, what="broadcast")
        assert body["recipients"] == 1, body
        await client.recv_type("hi")
        await wait_redis(live, client.client_id, node="early", connected="1")
    finally:
        server.stop()
