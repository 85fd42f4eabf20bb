"""Real processes over a real redis-server: two ``run_websocket_server.py`` nodes, and one
server started with ``WORKERS=2`` (two processes sharing both ports with SO_REUSEPORT).

Each process is configured through the environment only, exactly as an operator would.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import aiohttp
import orjson
import pytest

from tests.conftest import WSClient
from tests.conftest_redis import RedisServer
from tests.processes import ROOT, START_TIMEOUT, Node, connect, get, post, ready, spawn, until
from tests.redis.test_cluster import close_code

pytestmark = pytest.mark.redis


async def test_two_node_processes(tmp_path: Path, redis_url: str, nodes: list[Node],
                                  http: aiohttp.ClientSession) -> None:
    p1 = spawn(tmp_path, "p1", BROKER_URL=redis_url, NODE_ID="p1")
    p2 = spawn(tmp_path, "p2", BROKER_URL=redis_url, NODE_ID="p2")
    nodes += [p1, p2]
    await ready(http, p1)
    await ready(http, p2)

    alice = await connect(http, p1, client_id="alice", client_type="web")
    bob = await connect(http, p2, client_id="bob", client_type="bot")
    await until(lambda: get(http, f"{p2.api}/clients/alice"),
                lambda r: r[0] == 200 and r[1]["node"] == "p1", p2, "alice visible on p2")

    # cross-node send
    status, body = await post(http, f"{p2.api}/send_message",
                              {"client_id": "alice", "content": "hello from p2"})
    assert status == 200 and body["status"] == "delivered", body
    assert (await alice.recv_type("message"))["data"]["content"] == "hello from p2"

    # cross-node call_tool: the answer comes back to p2, which holds the HTTP request
    async def answer() -> None:
        call = await alice.recv_type("tool_call")
        await alice.send("tool_result", {"call_id": call["data"]["call_id"], "result": "pong"})

    task = asyncio.create_task(answer())
    status, body = await post(http, f"{p2.api}/call_tool",
                              {"client_id": "alice", "tool_name": "ping", "timeout": 5})
    await task
    assert status == 200 and body["result"] == "pong" and body["success"] is True, body

    # broadcast counted across nodes
    status, body = await post(http, f"{p1.api}/broadcast", {"message_type": "news"})
    assert status == 200 and body["recipients"] == 2 and body["nodes"] == 2, body
    await alice.recv_type("news")
    await bob.recv_type("news")

    # the whole cluster in listings, with nodes
    status, body = await get(http, f"{p1.api}/clients")
    assert {c["client_id"]: c["node"] for c in body["clients"]} == {"alice": "p1", "bob": "p2"}

    # alice drops from p1, messages queue meanwhile, she resumes on p2 with nothing lost
    last_seq = alice.frames[-1]["seq"]
    await alice.close()
    await until(lambda: get(http, f"{p2.api}/clients/alice"),
                lambda r: r[1].get("connected") is False, p2, "alice offline")
    queued = []
    for i in range(3):
        status, body = await post(http, f"{p2.api}/send_message",
                                  {"client_id": "alice", "content": f"q{i}"})
        assert status == 202 and body["status"] == "queued", body
        queued.append(body["seq"])
    again = await connect(http, p2, client_id="alice", session_token=alice.session_token,
                          last_seq=last_seq)
    assert again.hello["data"]["recovered"] is True and again.hello["data"]["replayed"] == 3
    got = [await again.recv_type("message") for _ in range(3)]
    assert [f["seq"] for f in got] == queued
    assert [f["data"]["content"] for f in got] == ["q0", "q1", "q2"]

    # DELETE through the node that does not hold her
    status, body = await post(http, f"{p1.api}/clients/alice", {}, method="DELETE")
    assert status == 200 and body["ended"] is True, body
    assert await close_code(again) == 4001
    status, _ = await get(http, f"{p1.api}/clients/alice")
    assert status == 404

    # p2 stops (SIGTERM): bob is told 1001, resumes on p1, nothing lost and no seq gap
    bob_seq = bob.frames[-1]["seq"]
    assert p2.stop() == 0, p2.output()
    assert await close_code(bob) == 1001
    # ... as its start-up and shutdown lines promised (with memory:// they say the opposite)
    assert p2.output().count("sessions live in Redis: clients resume on any node") == 2
    status, body = await post(http, f"{p1.api}/send_message",
                              {"client_id": "bob", "content": "while away"})
    assert status == 202 and body["seq"] == bob_seq + 1, body
    bob2 = await connect(http, p1, client_id="bob", session_token=bob.session_token,
                         last_seq=bob_seq)
    assert bob2.hello["data"]["recovered"] is True and bob2.hello["data"]["replayed"] == 1
    assert (await bob2.recv_type("message"))["data"]["content"] == "while away"
    await bob2.close()
    assert p1.stop() == 0, p1.output()


async def test_workers_share_ports(tmp_path: Path, redis_url: str, nodes: list[Node],
                                   http: aiohttp.ClientSession) -> None:
    server = spawn(tmp_path, "workers", BROKER_URL=redis_url, WORKERS="2", NODE_ID="wk")
    nodes.append(server)
    await until(lambda: get(http, f"{server.api}/status"),
                lambda r: r[0] == 200 and r[1]["cluster"]["node_count"] == 2, server,
                "two workers in the cluster")
    clients = [await connect(http, server, client_id=f"c{i}") for i in range(8)]
    # every API call lands on some worker; each reaches its client wherever it is
    for client in clients:
        status, body = await post(http, f"{server.api}/send_message",
                                  {"client_id": client.client_id, "content": client.client_id})
        assert status == 200 and body["status"] == "delivered", body
        assert (await client.recv_type("message"))["data"]["content"] == client.client_id
    status, body = await post(http, f"{server.api}/broadcast", {"message_type": "all"})
    assert status == 200 and body["recipients"] == 8 and body["nodes"] == 2, body
    for client in clients:
        await client.recv_type("all")
    status, body = await get(http, f"{server.api}/clients")
    assert {c["node"] for c in body["clients"]} <= {"wk-w0", "wk-w1"} and body["total"] == 8
    for client in clients:
        await client.close()
    assert server.stop() == 0, server.output()


def test_workers_with_memory_broker_refused(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, str(ROOT / "run_websocket_server.py")],
                          env={**os.environ, "WORKERS": "2", "BROKER_URL": "memory://",
                               "WS_HOST": "127.0.0.1"},
                          cwd=tmp_path, capture_output=True, timeout=START_TIMEOUT)
    assert proc.returncode == 2
    assert b"WORKERS" in proc.stderr and b"redis://" in proc.stderr


async def test_node_killed_sessions_resume_elsewhere_or_expire(
        tmp_path: Path, redis_url: str, nodes: list[Node],
        http: aiohttp.ClientSession) -> None:
    p1 = spawn(tmp_path, "p1", BROKER_URL=redis_url, NODE_ID="k1", SESSION_TTL="2")
    p2 = spawn(tmp_path, "p2", BROKER_URL=redis_url, NODE_ID="k2", SESSION_TTL="2")
    nodes += [p1, p2]
    await ready(http, p1)
    await ready(http, p2)
    keeper = await connect(http, p1, client_id="keeper")
    left = await connect(http, p1, client_id="left")
    await left.send("subscribe", {"channel": "room:k"})
    await left.recv_type("subscribed")
    await until(lambda: get(http, f"{p2.api}/channels/room:k/presence"),
                lambda r: r[0] == 200 and r[1]["count"] == 1, p2, "left in room:k")
    for i in range(3):
        status, body = await post(http, f"{p2.api}/send_message",
                                  {"client_id": "keeper", "content": f"m{i}"})
        assert status == 200, body
    await until(lambda: get(http, f"{p2.api}/clients/keeper/messages"),
                lambda r: r[0] == 200 and len(r[1]["messages"]) == 3, p2,
                "p1 flushed the history")

    p1.proc.kill()  # SIGKILL: no goodbye, its sockets just drop
    p1.proc.wait()

    # resuming on p2 is refused with 1011 (retry) while p1 may still be alive, then works
    async def try_resume() -> WSClient | None:
        ws = await http.ws_connect(p2.ws, params={"client_id": "keeper", "last_seq": "0",
                                                  "session_token": keeper.session_token})
        msg = await ws.receive(timeout=5)
        frame = orjson.loads(msg.data) if msg.type is aiohttp.WSMsgType.TEXT else {}
        if frame.get("type") == "connection_established":
            return WSClient(ws, frame)
        if frame:  # refused for now: "reconnect with backoff" (1011), never "invalid" (4003)
            assert frame["data"]["close_code"] == 1011, frame
        await ws.close()
        return None

    again = await until(try_resume, lambda r: r is not None, p2, "resume on p2")
    # everything p1 wrote is replayed, but p1 may have numbered frames it never wrote, so the
    # resume says recovered: false, and new frames continue at the next seq epoch (2**20)
    assert again.hello["data"]["recovered"] is False and again.hello["data"]["replayed"] == 3
    got = [await again.recv_type("message") for _ in range(3)]
    assert [f["data"]["content"] for f in got] == ["m0", "m1", "m2"]
    status, body = await post(http, f"{p2.api}/send_message",
                              {"client_id": "keeper", "content": "after"})
    assert status == 200 and body["seq"] == 2**20, body
    assert (await again.recv_type("message"))["seq"] == 2**20

    # the session nobody resumed is reclaimed after its TTL (plus the node timeout)
    await until(lambda: get(http, f"{p2.api}/clients/left"), lambda r: r[0] == 404, p2,
                "the dead node's other session to expire")
    status, body = await get(http, f"{p2.api}/clients")
    assert [c["client_id"] for c in body["clients"]] == ["keeper"], body
    # it never left room:k (its node died): the next presence read finds it gone and records
    # the leave, once
    status, body = await get(http, f"{p2.api}/channels/room:k/presence")
    assert status == 200 and body["sessions"] == [] and body["count"] == 0, body
    status, body = await get(http, f"{p2.api}/channels")
    assert body["channels"] == [], body
    assert p2.stop() == 0, p2.output()


async def test_redis_restart_under_two_node_processes(
        tmp_path: Path, own_redis_server: RedisServer, nodes: list[Node],
        http: aiohttp.ClientSession) -> None:
    url = own_redis_server.url
    p1 = spawn(tmp_path, "p1", BROKER_URL=url, NODE_ID="r1")
    p2 = spawn(tmp_path, "p2", BROKER_URL=url, NODE_ID="r2")
    nodes += [p1, p2]
    await ready(http, p1)
    await ready(http, p2)
    carol = await connect(http, p1, client_id="carol")
    await until(lambda: get(http, f"{p2.api}/clients/carol"), lambda r: r[0] == 200, p2,
                "carol visible on p2")

    own_redis_server.stop()
    for node in (p1, p2):
        await until(lambda n=node: get(http, f"{n.api}/ready"), lambda r: r[0] == 503, node,
                    "/ready 503 while Redis is down")
    status, body = await post(http, f"{p2.api}/send_message",
                              {"client_id": "carol", "content": "x"})
    assert status == 503, body
    status, body = await post(http, f"{p1.api}/send_message",
                              {"client_id": "carol", "content": "local"})
    assert status == 200 and body["status"] == "delivered", body
    assert (await carol.recv_type("message"))["data"]["content"] == "local"

    own_redis_server.start()
    for node in (p1, p2):
        await ready(http, node)
    status, body = await until(
        lambda: post(http, f"{p2.api}/send_message", {"client_id": "carol", "content": "back"}),
        lambda r: r[0] == 200, p2, "cross-node delivery after the restart")
    assert body["status"] == "delivered", body
    assert (await carol.recv_type("message"))["data"]["content"] == "back"
    await carol.close()
    assert p1.stop() == 0, p1.output()
    assert p2.stop() == 0, p2.output()
