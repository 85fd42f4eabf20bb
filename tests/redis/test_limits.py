"""The caps hold on the cluster topology too (issue 11): two nodes over a real redis-server,
the client on the node the API is not called on.

* HISTORY_BYTES: Redis keeps exactly what the owner's registry keeps, and a session moving to
  the other node arrives trimmed the same way.
* MAX_SESSIONS: an evicted session is gone cluster-wide: its resume on the other node gets
  4003 and the API answers 404.
* MAX_CHANNELS_PER_CLIENT: the count travels with the session.
* JSON depth and observer tickets: a ticket one node issued opens the other (they share
  API_TOKEN); a deep body is refused on any node.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.conftest import LiveGateway, MakeGateway
from tests.redis.test_cluster import close_code, wait_redis

pytestmark = pytest.mark.redis

HISTORY_BYTES = 64 * 1024
LIMITS: dict[str, Any] = {"history_bytes": HISTORY_BYTES, "max_sessions": 6,
                          "max_connections": 4, "max_channels_per_client": 3,
                          "send_queue_bytes": 32 * 1024, "max_message_size": 16 * 1024}


@pytest.fixture
async def pair(make_gateway: MakeGateway, redis_url: str) -> tuple[LiveGateway, LiveGateway]:
    a = await make_gateway(broker_url=redis_url, node_id="a", **LIMITS)
    b = await make_gateway(broker_url=redis_url, node_id="b", **LIMITS)
    return a, b


async def redis_history(live: LiveGateway, client_id: str) -> int:
    return int(await live.gateway.backend.store.redis.llen(f"sb:h:{client_id}"))  # type: ignore


async def test_history_bytes_hold_in_redis_and_after_a_move(
        pair: tuple[LiveGateway, LiveGateway]) -> None:
    a, b = pair
    client = await b.connect(client_id="chatty")
    for n in range(20):
        await client.send("chat_message", {"content": "x" * 8000}, message_id=f"c{n}")
        await client.recv_type("chat_response")
    session = b.gateway.registry.get("chatty")
    assert session is not None
    assert session.history_bytes <= HISTORY_BYTES < 20 * 16000
    await b.gateway.backend.journal.flush()  # type: ignore[attr-defined]
    assert await redis_history(a, "chatty") == len(session.history)
    # The API of the other node sees the same trimmed history.
    status, page = await a.api("GET", "/clients/chatty/messages?limit=1000")
    assert status == 200 and page["count"] == len(session.history), page
    await client.close()
    await wait_redis(a, "chatty", node="b", connected="0")
    again = await a.connect(client_id="chatty", session_token=client.session_token,
                            last_seq=page["last_seq"])
    assert again.hello["data"]["recovered"] is True
    moved = a.gateway.registry.get("chatty")
    assert moved is not None and moved.history_bytes <= HISTORY_BYTES
    assert len(moved.history) == len(session.history)


async def test_an_evicted_session_is_gone_cluster_wide(
        pair: tuple[LiveGateway, LiveGateway]) -> None:
    a, b = pair
    tokens = {}
    for n in range(8):  # MAX_SESSIONS=6 on node b: the two offline longest go
        client = await b.connect(client_id=f"s{n}")
        tokens[client.client_id] = client.session_token
        await client.close()
        await wait_redis(a, f"s{n}", node="b", connected="0")
    await b.gateway.backend.journal.flush()  # type: ignore[attr-defined]
    assert sorted(b.gateway.registry.sessions) == [f"s{n}" for n in range(2, 8)]
    status, _ = await a.api("GET", "/clients/s0")
    assert status == 404
    refused = await a.connect(client_id="s0", session_token=tokens["s0"], expect_hello=False)
    assert await close_code(refused) == 4003
    kept = await a.connect(client_id="s7", session_token=tokens["s7"])
    assert kept.hello["data"]["resumed"] is True


async def test_the_channel_cap_travels_with_the_session(
        pair: tuple[LiveGateway, LiveGateway]) -> None:
    a, b = pair
    client = await b.connect(client_id="joiner")
    for n in range(4):
        await client.send("subscribe", {"channel": f"ch{n}"})
        reply = await client.recv()
        assert reply["type"] == ("subscribed" if n < 3 else "error"), reply
    assert reply["data"]["code"] == "too_many_channels"
    await client.close()
    await wait_redis(a, "joiner", node="b", connected="0")
    again = await a.connect(client_id="joiner", session_token=client.session_token)
    await again.send("subscribe", {"channel": "ch9"})
    assert (await again.recv_type("error"))["data"]["code"] == "too_many_channels"


async def test_tickets_and_depth_checks_work_on_either_node(
        pair: tuple[LiveGateway, LiveGateway]) -> None:
    a, b = pair
    status, ticket = await a.api("POST", "/observer_ticket")
    assert status == 200, ticket
    observer = await b.connect(observer_ticket=ticket["ticket"])
    await observer.send("subscribe", {"channel": "tool_activity"})
    assert (await observer.recv())["type"] == "subscribed"
    deep: Any = []
    for _ in range(100):
        deep = [deep]
    status, body = await a.api("POST", "/send_message", {"client_id": observer.client_id,
                                                         "content": "c", "data": {"v": deep}})
    assert status == 422 and body["error"]["code"] == "json_too_deep", body
