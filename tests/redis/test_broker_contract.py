"""One contract, both brokers: what a gateway does must not depend on BROKER_URL.

The same test bodies run against ``memory://`` and a real redis-server (started by
``tests/conftest_redis.py``, never mocked): send (live and queued), broadcast to all / a channel
/ a client type, call_tool round trip, resume with replay, history paging.
"""

from __future__ import annotations

import asyncio

import pytest

from tests.conftest import LiveGateway, MakeGateway, wait_for

pytestmark = pytest.mark.redis


@pytest.fixture(params=["memory", "redis"])
def broker_url(request: pytest.FixtureRequest) -> str:
    if request.param == "memory":
        return "memory://"
    return str(request.getfixturevalue("redis_url"))


@pytest.fixture
async def gw(make_gateway: MakeGateway, broker_url: str) -> LiveGateway:
    live = await make_gateway(broker_url=broker_url, node_id="contract")
    assert live.gateway.backend.healthy
    return live


async def test_send_live_then_queued_then_resumed(gw: LiveGateway) -> None:
    client = await gw.connect(client_id="alice", client_type="web")
    status, body = await gw.api("POST", "/send_message",
                                {"client_id": "alice", "content": "one"})
    assert status == 200 and body["status"] == "delivered", body
    frame = await client.recv_type("message")
    assert frame["data"]["content"] == "one" and frame["seq"] == body["seq"]
    last_seq = frame["seq"]
    await client.close()
    await wait_for(lambda: not gw.gateway.registry.get("alice").connected, what="detach")

    queued = []
    for i in range(3):
        status, body = await gw.api("POST", "/send_message",
                                    {"client_id": "alice", "content": f"q{i}"})
        assert status == 202 and body["status"] == "queued", body
        queued.append(body["seq"])
    assert queued == [last_seq + 1, last_seq + 2, last_seq + 3]

    again = await gw.connect(client_id="alice", session_token=client.session_token,
                             last_seq=last_seq)
    assert again.hello["data"]["resumed"] is True
    assert again.hello["data"]["recovered"] is True
    got = [await again.recv_type("message") for _ in range(3)]
    assert [f["data"]["content"] for f in got] == ["q0", "q1", "q2"]
    assert [f["seq"] for f in got] == queued


async def test_wrong_token_is_refused(gw: LiveGateway) -> None:
    client = await gw.connect(client_id="bob")
    await client.close()
    intruder = await gw.connect(client_id="bob", session_token="not-the-token",
                                expect_hello=False)
    assert await intruder.recv_close() == 4003
    status, body = await gw.api("GET", "/clients/bob")
    assert status == 200 and body["client_id"] == "bob"


async def test_unknown_client_is_404(gw: LiveGateway) -> None:
    status, body = await gw.api("POST", "/send_message", {"client_id": "nobody", "content": 1})
    assert status == 404, body
    status, _ = await gw.api("POST", "/call_tool", {"client_id": "nobody", "tool_name": "x"})
    assert status == 404
    status, _ = await gw.api("DELETE", "/clients/nobody")
    assert status == 404


async def test_broadcast_all_channel_and_client_type(gw: LiveGateway) -> None:
    web = await gw.connect(client_id="w1", client_type="web")
    bot = await gw.connect(client_id="b1", client_type="bot")
    await web.send("subscribe", {"channel": "news"})
    await web.recv_type("subscribed")

    status, body = await gw.api("POST", "/broadcast", {"message_type": "hello", "data": {}})
    assert status == 200 and body["recipients"] == 2, body
    for client in (web, bot):
        assert (await client.recv_type("hello"))["message_id"] == body["message_id"]

    status, body = await gw.api("POST", "/broadcast",
                                {"message_type": "headline", "data": {"n": 1},
                                 "channel": "news"})
    assert body["recipients"] == 1, body
    frame = await web.recv_type("headline")
    assert frame["channel"] == "news" and frame["data"] == {"n": 1}

    status, body = await gw.api("POST", "/broadcast",
                                {"message_type": "beep", "client_type": "bot"})
    assert body["recipients"] == 1, body
    await bot.recv_type("beep")

    status, body = await gw.api("GET", "/channels")
    assert status == 200
    assert {"channel": "news", "subscribers": 1} in body["channels"]


async def test_call_tool_round_trip(gw: LiveGateway) -> None:
    client = await gw.connect(client_id="tooly")

    async def answer() -> None:
        call = await client.recv_type("tool_call")
        await client.send("tool_result", {"call_id": call["data"]["call_id"],
                                          "result": {"sum": sum(call["data"]["params"]["xs"])}})

    task = asyncio.create_task(answer())
    status, body = await gw.api("POST", "/call_tool",
                                {"client_id": "tooly", "tool_name": "add",
                                 "params": {"xs": [1, 2, 3]}, "timeout": 5})
    await task
    assert status == 200, body
    assert body["success"] is True and body["result"] == {"sum": 6}


async def test_history_paging(gw: LiveGateway) -> None:
    client = await gw.connect(client_id="pager")
    seqs = []
    for i in range(6):
        _, body = await gw.api("POST", "/send_message", {"client_id": "pager", "content": i})
        seqs.append(body["seq"])
    for _ in range(6):
        await client.recv_type("message")
    status, page = await gw.api("GET", f"/clients/pager/messages?after_seq={seqs[1]}&limit=2")
    assert status == 200, page
    assert [m["seq"] for m in page["messages"]] == seqs[2:4]
    assert page["has_more"] is True and page["last_seq"] == seqs[-1]
    status, page = await gw.api("GET", f"/clients/pager/messages?before_seq={seqs[-1]}&limit=2")
    assert [m["seq"] for m in page["messages"]] == seqs[3:5]


async def test_listing_shows_node(gw: LiveGateway) -> None:
    await gw.connect(client_id="listed", client_type="web")
    status, body = await gw.api("GET", "/clients")
    assert status == 200 and body["total"] == 1, body
    assert body["clients"][0]["client_id"] == "listed"
    assert body["clients"][0]["node"] == "contract"
    assert body["clients"][0]["connected"] is True
    status, body = await gw.api("GET", "/status")
    assert body["connected_clients"] == 1 and body["node_id"] == "contract"
    status, body = await gw.api("GET", "/ready")
    assert status == 200, body
