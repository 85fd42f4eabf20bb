"""Broadcast frames are stored once in Redis (issue 18): the body under its message id, a
small reference in each recipient's history, written with a bounded number of commands; and
everything a client sees (live frames, resume, the history API) stays byte for byte what it
was, on any node.

Two nodes on a real redis-server; clients on node b, the API called on node a.
"""

from __future__ import annotations

import gc
from typing import Any

import aiohttp
import orjson
import pytest

from tests.conftest import RECV_TIMEOUT, LiveGateway, MakeGateway
from tests.redis.test_cluster import wait_redis

pytestmark = pytest.mark.redis


@pytest.fixture
async def pair(make_gateway: MakeGateway, redis_url: str) -> tuple[LiveGateway, LiveGateway]:
    a = await make_gateway(broker_url=redis_url, node_id="a")
    b = await make_gateway(broker_url=redis_url, node_id="b")
    return a, b


def redis_of(live: LiveGateway) -> Any:
    return live.gateway.backend.store.redis  # type: ignore[attr-defined]


async def flushed(live: LiveGateway) -> None:
    await live.gateway.backend.journal.flush()  # type: ignore[attr-defined]


async def raw_frames(ws: aiohttp.ClientWebSocketResponse, count: int) -> list[bytes]:
    """The next ``count`` text frames exactly as the server sent them."""
    out = []
    for _ in range(count):
        msg = await ws.receive(timeout=RECV_TIMEOUT)
        assert msg.type is aiohttp.WSMsgType.TEXT, msg
        out.append(msg.data.encode())
    return out


async def broadcast(a: LiveGateway, kind: str, **data: Any) -> dict[str, Any]:
    status, body = await a.api("POST", "/broadcast", {"message_type": kind, "data": data})
    assert status == 200, body
    return body


async def test_a_broadcast_is_one_body_and_a_small_reference_per_recipient(
        pair: tuple[LiveGateway, LiveGateway]) -> None:
    a, b = pair
    live = await b.connect(client_id="live")
    kept = [f"kept{n}" for n in range(300)]
    for client_id in kept:
        await b.gateway.open_session(client_id, "default")
    await flushed(b)
    redis = redis_of(b)
    before = await redis.info("commandstats")
    answer = await broadcast(a, "news", text="x" * 1000)
    assert answer["recipients"] + answer["queued"] == 301, answer
    [frame] = await raw_frames(live.ws, 1)
    await flushed(b)
    after = await redis.info("commandstats")

    def calls(name: str) -> int:
        return int(after.get(name, {}).get("calls", 0)) - int(before.get(name, {}).get("calls", 0))

    # 301 recipients: one script call (references appended inside it), not one per recipient
    assert calls("cmdstat_evalsha") <= 2 and calls("cmdstat_rpush") == 301
    decoded = orjson.loads(frame)
    message_id = decoded["message_id"]
    stored = await redis.get(f"sb:m:{message_id}")
    _, body = stored.split(b" ", 1)
    assert frame == b'{"seq":%d,%s' % (decoded["seq"], body[1:])  # the body, once
    for client_id in ("live", *kept):
        ref = await redis.lindex(f"sb:h:{client_id}", -1)
        assert ref == b"3 1 " + message_id.encode() and len(ref) < 64
    assert 0 < await redis.ttl(f"sb:m:{message_id}") <= b.gateway.backend.store.key_ttl


async def test_a_moved_session_replays_and_pages_its_history_byte_for_byte(
        pair: tuple[LiveGateway, LiveGateway]) -> None:
    a, b = pair
    client = await b.connect(client_id="mover")
    await wait_redis(a, "mover", node="b", connected="1")
    await broadcast(a, "one", n=1)
    status, _ = await a.api("POST", "/send_message", {"client_id": "mover", "content": "u"})
    assert status == 200
    await broadcast(a, "two", n=2)
    await client.send("chat_message", {"content": "hello"})
    live = await raw_frames(client.ws, 3)
    while len(live) < 5:  # processing and chat_response, interleaved with nothing else
        live += await raw_frames(client.ws, 1)
    await broadcast(a, "three", n=3)
    live += await raw_frames(client.ws, 1)
    status, before = await a.api("GET", "/clients/mover/messages?limit=100")  # b answers
    assert status == 200 and before["last_seq"] == 6, before
    await client.close()
    await wait_redis(a, "mover", node="b", connected="0")

    moved = await a.connect(client_id="mover", session_token=client.session_token, last_seq=0)
    assert moved.hello["data"]["recovered"] is True and moved.hello["data"]["replayed"] == 6
    assert await raw_frames(moved.ws, 6) == live  # byte for byte what was sent live
    status, after = await a.api("GET", "/clients/mover/messages?limit=100")  # a answers now
    assert status == 200 and after == before
    # a fetched the bodies it did not hold, and holds (and refreshes) them from now on
    shared = a.gateway.backend.journal.shared  # type: ignore[attr-defined]
    for frame in (orjson.loads(f) for f in live):
        if frame["type"] in ("one", "two", "three"):
            assert shared.get(frame["message_id"]) is not None
    # b no longer keeps track of the session's counters (a listing asks every node to write
    # theirs: b's bookkeeping must not grow with the sessions that left it)
    status, _ = await a.api("GET", "/clients?limit=10")
    assert status == 200
    assert "mover" not in b.gateway.backend.journal.counted  # type: ignore[attr-defined]


async def test_broadcasts_written_in_one_script_call_replay_with_their_seqs_elsewhere(
        pair: tuple[LiveGateway, LiveGateway]) -> None:
    """Bare references (no seq) between an inline frame and the anchored last one: a node
    that loads the list gives every frame its own seq, byte for byte."""
    from server import protocol

    a, b = pair
    client = await b.connect(client_id="burst")
    await wait_redis(a, "burst", node="b", connected="1")
    status, _ = await a.api("POST", "/send_message", {"client_id": "burst", "content": "u"})
    assert status == 200
    live = await raw_frames(client.ws, 1)
    session = b.gateway.registry.get("burst")
    for n in range(5):  # in one tick: one flush, one append_refs call
        frame = protocol.server_frame("burst", {"n": n})
        b.gateway.registry.fan_out([session], protocol.encode(frame), frame["message_id"])
    live += await raw_frames(client.ws, 5)
    await flushed(b)
    stored = await redis_of(b).lrange("sb:h:burst", 0, -1)
    assert [raw[:2] for raw in stored] == [b"1 ", b"2 ", b"2 ", b"2 ", b"2 ", b"3 "], stored
    await client.close()
    await wait_redis(a, "burst", node="b", connected="0")

    moved = await a.connect(client_id="burst", session_token=client.session_token, last_seq=0)
    assert moved.hello["data"]["recovered"] is True and moved.hello["data"]["replayed"] == 6
    assert await raw_frames(moved.ws, 6) == live
    again = await b.connect(client_id="burst", session_token=moved.session_token, last_seq=3)
    assert [orjson.loads(f)["seq"] for f in await raw_frames(again.ws, 3)] == [4, 5, 6]


async def test_a_missing_body_ends_the_loaded_history_and_resume_says_so(
        pair: tuple[LiveGateway, LiveGateway]) -> None:
    a, b = pair
    client = await b.connect(client_id="holey")
    await wait_redis(a, "holey", node="b", connected="1")
    first = await broadcast(a, "first")
    status, _ = await a.api("POST", "/send_message", {"client_id": "holey", "content": "u"})
    assert status == 200
    await broadcast(a, "second")
    await raw_frames(client.ws, 3)
    await client.close()
    await wait_redis(a, "holey", node="b", connected="0")
    await redis_of(a).delete(f"sb:m:{first['message_id']}")  # as maxmemory eviction would

    moved = await a.connect(client_id="holey", session_token=client.session_token, last_seq=0)
    data = moved.hello["data"]
    assert data["recovered"] is False and data["replayed"] == 2, data
    assert [(await moved.recv())["seq"] for _ in range(2)] == [2, 3]
    # from after the hole, nothing is missing
    again = await b.connect(client_id="holey", session_token=client.session_token, last_seq=1)
    assert again.hello["data"]["recovered"] is True


async def test_listings_count_broadcasts_written_as_references(
        pair: tuple[LiveGateway, LiveGateway]) -> None:
    a, b = pair
    await b.connect(client_id="quiet")
    await wait_redis(a, "quiet", node="b", connected="1")
    for n in range(3):
        await broadcast(a, "tick", n=n)
    status, body = await a.api("GET", "/clients?limit=10")
    assert status == 200, body
    [info] = [c for c in body["clients"] if c["client_id"] == "quiet"]
    assert (info["last_seq"], info["history_size"], info["message_count"]) == (3, 3, 3), info


async def test_a_body_lives_while_a_history_holds_it_and_expires_after(
        pair: tuple[LiveGateway, LiveGateway]) -> None:
    a, b = pair
    await b.gateway.open_session("holder", "default")
    await flushed(b)
    message_id = (await broadcast(a, "kept"))["message_id"]
    await flushed(b)
    redis, key = redis_of(b), f"sb:m:{message_id}"
    membership = b.gateway.backend.membership  # type: ignore[attr-defined]
    ttl = b.gateway.backend.store.key_ttl  # type: ignore[attr-defined]

    await redis.expire(key, 3)
    membership.refreshed_at = 0.0  # the next beat refreshes what this node holds
    await membership.beat()
    assert await redis.ttl(key) > 3  # refreshed: the session's history holds it

    status, _ = await a.api("DELETE", "/clients/holder")
    assert status == 200
    gc.collect()
    await redis.expire(key, 3)
    membership.refreshed_at = 0.0
    await membership.beat()
    assert 0 < await redis.ttl(key) <= 3 < ttl  # no history holds it: left to expire
    assert b.gateway.backend.journal.shared.get(message_id) is None  # type: ignore[attr-defined]


def test_bare_references_take_their_seq_from_the_next_server_frame() -> None:
    from server.cluster.shared import history_seqs

    trimmed_head = [b"2 m1", b"2 m2", b"3 7 m3", b"0 7 1 {}", b"2 m4", b"1 9 1 {}", b"2 m5"]
    assert history_seqs(trimmed_head) == [5, 6, 7, None, 8, None, None]


async def test_broadcasts_to_overlapping_audiences_in_one_call_keep_each_history_exact(
        pair: tuple[LiveGateway, LiveGateway], monkeypatch: pytest.MonkeyPatch) -> None:
    """append_refs builds one reference table per run of broadcasts to the same recipients
    and pushes it for every session of the run: a session in several runs of one call, one
    in a single run (whose anchored reference is put into the shared table while it is
    pushed), and a run split over two calls each get exactly their own references, in
    order, the last of each call anchored with that session's seq; the other node replays
    them byte for byte."""
    from server import protocol
    from server.cluster import journal as journal_module
    from server.cluster.shared import history_seqs

    a, b = pair
    clients = {cid: await b.connect(client_id=cid) for cid in ("x", "y")}
    for cid in clients:
        await wait_redis(a, cid, node="b", connected="1")
    registry = b.gateway.registry
    x, y = registry.get("x"), registry.get("y")
    registry.deliver(x, protocol.encode(protocol.server_frame("first", {})))  # x's seqs: +1
    await flushed(b)
    # At most 4 references per call: b0, b1 in one call; b2 (to both), b3 and b4 (to y
    # alone: a second run) in the next.
    monkeypatch.setattr(journal_module, "REPEAT_REFS_PER_CALL", 4)
    plan = [[x, y], [x, y], [x, y], [y], [y]]
    m = []
    for n, targets in enumerate(plan):  # in one tick: noted together, written by one flush
        frame = protocol.server_frame("burst", {"n": n})
        registry.fan_out(targets, protocol.encode(frame), frame["message_id"])
        m.append(frame["message_id"].encode())
    live = {"x": await raw_frames(clients["x"].ws, 4), "y": await raw_frames(clients["y"].ws, 5)}
    # x: "first" and b0-b2
    await flushed(b)
    redis = redis_of(b)
    stored_x = await redis.lrange("sb:h:x", 0, -1)
    assert stored_x[0].startswith(b"1 1 ") and stored_x[1:] == [
        b"2 " + m[0], b"3 3 " + m[1], b"3 4 " + m[2]], stored_x
    stored_y = await redis.lrange("sb:h:y", 0, -1)
    assert stored_y == [b"2 " + m[0], b"3 2 " + m[1], b"2 " + m[2], b"2 " + m[3],
                        b"3 5 " + m[4]], stored_y
    assert history_seqs(stored_x) == [None, 2, 3, 4]
    assert history_seqs(stored_y) == [1, 2, 3, 4, 5]
    for cid, client in clients.items():
        await client.close()
        await wait_redis(a, cid, node="b", connected="0")
        moved = await a.connect(client_id=cid, session_token=client.session_token, last_seq=0)
        assert moved.hello["data"]["recovered"] is True
        assert await raw_frames(moved.ws, len(live[cid])) == live[cid]


async def test_a_history_full_of_references_is_trimmed_to_history_limit(
        make_gateway: MakeGateway, redis_url: str) -> None:
    """References are one list element each: trimming by count keeps HISTORY_LIMIT of them
    (plus at most 1/8 between trims), and the other node loads exactly the owner's history."""
    from server import protocol

    a = await make_gateway(broker_url=redis_url, node_id="a", history_limit=16)
    b = await make_gateway(broker_url=redis_url, node_id="b", history_limit=16)
    client = await b.connect(client_id="full")
    await wait_redis(a, "full", node="b", connected="1")
    session = b.gateway.registry.get("full")
    for burst in range(5):
        for n in range(9):  # bursts of 9 to the one session: one call each
            frame = protocol.server_frame("tick", {"n": burst * 9 + n})
            b.gateway.registry.fan_out([session], protocol.encode(frame), frame["message_id"])
        await flushed(b)
        assert min(16, 9 * (burst + 1)) <= await redis_of(b).llen("sb:h:full") <= 16 + 2
    await raw_frames(client.ws, 45)
    kept = [orjson.loads(data)["message_id"] for _, _, data, _ in session.history]
    await client.close()
    await wait_redis(a, "full", node="b", connected="0")
    moved = await a.connect(client_id="full", session_token=client.session_token, last_seq=29)
    assert moved.hello["data"]["recovered"] is True
    replayed = [orjson.loads(f) for f in await raw_frames(moved.ws, 16)]
    assert [f["seq"] for f in replayed] == list(range(30, 46))
    assert [f["message_id"] for f in replayed] == kept


async def test_broadcasts_flushed_one_by_one_reference_exactly_their_own_recipients(
        pair: tuple[LiveGateway, LiveGateway]) -> None:
    """The journal reuses the recipients' ids from one flush to the next while the audience
    is the same sessions: an audience of the same size in another order, or a smaller one,
    gets its own ids, and each history holds exactly its own references."""
    from server import protocol

    a, b = pair
    clients = {cid: await b.connect(client_id=cid) for cid in ("x", "y", "z")}
    for cid in clients:
        await wait_redis(a, cid, node="b", connected="1")
    registry = b.gateway.registry
    x, y, z = (registry.get(cid) for cid in ("x", "y", "z"))
    plan = [[x, y], [x, y], [y, z], [z, y], [x], [x, y, z]]
    m = []
    for n, targets in enumerate(plan):
        frame = protocol.server_frame("one", {"n": n})
        registry.fan_out(targets, protocol.encode(frame), frame["message_id"])
        m.append(frame["message_id"].encode())
        await flushed(b)  # one write per broadcast
    expected = {"x": [0, 1, 4, 5], "y": [0, 1, 2, 3, 5], "z": [2, 3, 5]}
    redis = redis_of(b)
    for cid, indexes in expected.items():
        stored = await redis.lrange(f"sb:h:{cid}", 0, -1)
        assert [ref.rsplit(b" ", 1)[1] for ref in stored] == [m[i] for i in indexes], cid
        assert stored == [b"3 %d %s" % (seq, m[i]) for seq, i in enumerate(indexes, 1)], cid
