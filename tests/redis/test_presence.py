"""Presence in a cluster, where only Redis can say: a member whose session vanished without
leaving (its node died before the session was written, or it expired there) is found stale
by whichever node reads the channel first, and its leave is announced once, however many
nodes find it at the same moment."""

from __future__ import annotations

import asyncio
import json

import pytest

from server.seams import MemberChange
from tests.conftest import MakeGateway
from tests.handlers.test_channels import nothing_before, subscribe

pytestmark = pytest.mark.redis

RULES = json.dumps({"room:*": {"subscribe": "any", "presence": True, "join_leave": True}})


async def test_a_vanished_member_leaves_once(make_gateway: MakeGateway, redis_url: str
                                             ) -> None:
    a = await make_gateway(broker_url=redis_url, node_id="a", channel_rules=RULES)
    b = await make_gateway(broker_url=redis_url, node_id="b", channel_rules=RULES)
    watcher = await a.connect(user_id="w")
    await subscribe(watcher, "room:g")
    await a.gateway.channels.flush()  # the watcher's join is recorded
    # What a node that died leaves behind: a member whose session is nowhere.
    recorded = await b.gateway.backend.directory.record_membership(
        [MemberChange(True, "room:g", "ghost", "g")])
    assert recorded == [(True, False)]
    answers = await asyncio.gather(*(live.api("GET", "/channels/room:g/presence")
                                     for live in (a, b, a, b)))
    for status, body in answers:
        assert status == 200 and body["count"] == 1, body
        assert [s["client_id"] for s in body["sessions"]] == [watcher.client_id]
    leave = await watcher.recv_type("leave")
    assert leave["data"] == {"channel": "room:g", "client_id": "ghost", "user_id": "g"}
    for live in (a, b):  # both have announced whatever they recorded
        await live.gateway.channels.flush()
    await nothing_before(a, watcher, "one leave only")
