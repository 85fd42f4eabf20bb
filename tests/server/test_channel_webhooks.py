"""SUBSCRIBE_WEBHOOK_URL and PUBLISH_WEBHOOK_URL against a real local backend, through the
gateway's own wiring (rules and webhook client from the app): allow, deny with a reason,
rewrite, and every failure turned into a refusal with a clear reason."""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from server.auth import Identity
from server.channel_rules import FORBIDDEN, Allow, AskWebhook, ChannelRule, ChannelRules, Deny
from server.channel_webhooks import ChannelWebhooks
from server.config import Settings
from server.keys import CHANNEL_RULES, CHANNEL_WEBHOOKS
from server.metrics import REGISTRY
from tests.backends import Backend, closed_port_url, reply_json, signature_ok
from tests.conftest import LiveGateway, MakeGateway

SECRET = "w" * 40
ALICE = Identity(subject="alice", user_id="alice", authenticated=True, verified=True,
                 roles=frozenset({"member"}))
RULES = json.dumps({
    "support:*": {"subscribe": "webhook", "publish": "webhook", "presence": True},
    "room:*": {"subscribe": "any", "publish": "any"},
    "news": {"subscribe": "any"},
})


async def gateway(make_gateway: MakeGateway, backend: Backend, **settings: Any
                  ) -> tuple[LiveGateway, ChannelRules, ChannelWebhooks]:
    values: dict[str, Any] = {"channel_rules": RULES, "subscribe_webhook_url": backend.url,
                              "publish_webhook_url": backend.url, "webhook_secret": SECRET}
    values.update(settings)
    live = await make_gateway(**values)
    node = live.ws_node  # each node's two apps share one set
    assert node.api_server.app[CHANNEL_RULES] is node.ws_server.app[CHANNEL_RULES]
    return live, node.ws_server.app[CHANNEL_RULES], node.ws_server.app[CHANNEL_WEBHOOKS]


async def ask(rules: ChannelRules, hooks: ChannelWebhooks, action: Any, channel: str,
              data: dict[str, Any] | None = None) -> Allow | Deny:
    decision = rules.decide(action, channel, ALICE)
    return await hooks.resolve(action, decision, ALICE, client_id="c-1", channel=channel,
                               data=data, client_type="browser")


def answers(action: str, result: str) -> float:
    return REGISTRY.get_sample_value("switchboard_channel_webhook_total",
                                     {"action": action, "outcome": result}) or 0


async def test_subscribe_webhook_allows_with_a_signed_request(make_gateway: MakeGateway,
                                                              backend: Backend) -> None:
    backend.handler = reply_json({"allow": True})
    _, rules, hooks = await gateway(make_gateway, backend)
    before = answers("subscribe", "allow")
    verdict = await ask(rules, hooks, "subscribe", "support:42")
    assert isinstance(verdict, Allow) and verdict.rule is not None
    assert verdict.rule.pattern == "support:*"
    assert backend.requests == [{"action": "subscribe", "channel": "support:42",
                                 "client_id": "c-1", "user_id": "alice",
                                 "client_type": "browser", "authenticated": True,
                                 "roles": ["member"]}]
    assert signature_ok(SECRET, backend.headers[0], backend.bodies[0])
    assert backend.headers[0]["X-Switchboard-Client-Id"] == "c-1"
    assert answers("subscribe", "allow") == before + 1


async def test_subscribe_webhook_denies_with_its_reason(make_gateway: MakeGateway,
                                                        backend: Backend) -> None:
    backend.handler = reply_json({"allow": False, "reason": "not on the support rota"})
    _, rules, hooks = await gateway(make_gateway, backend)
    assert await ask(rules, hooks, "subscribe", "support:1") == Deny(
        FORBIDDEN, "not on the support rota")
    backend.handler = reply_json({"allow": False})
    assert await ask(rules, hooks, "presence", "support:1") == Deny(
        FORBIDDEN, "refused by the subscribe webhook")
    assert backend.requests[-1]["action"] == "presence"


async def test_rules_that_decide_alone_never_call_the_webhook(make_gateway: MakeGateway,
                                                              backend: Backend) -> None:
    backend.handler = reply_json({"allow": False})
    _, rules, hooks = await gateway(make_gateway, backend)
    assert isinstance(await ask(rules, hooks, "subscribe", "room:1"), Allow)
    assert isinstance(await ask(rules, hooks, "subscribe", "elsewhere"), Deny)
    assert isinstance(await ask(rules, hooks, "publish", "news"), Deny)  # publish: none
    assert backend.requests == []


async def test_publish_webhook_reviews_and_may_rewrite(make_gateway: MakeGateway,
                                                       backend: Backend) -> None:
    async def review(request: web.Request) -> web.Response:
        body = await request.json()
        if body["data"].get("text") == "spam":
            return web.json_response({"allow": False, "reason": "looks like spam"})
        return web.json_response({"allow": True, "data": {"text": body["data"]["text"].upper(),
                                                          "checked": True}})

    backend.handler = review
    _, rules, hooks = await gateway(make_gateway, backend)
    # publish: any on room:* — the publish webhook still has its say
    verdict = await ask(rules, hooks, "publish", "room:1", {"text": "hello"})
    assert verdict == Allow(rules.rule_for("room:1"), {"text": "HELLO", "checked": True})
    assert backend.requests[0]["data"] == {"text": "hello"}
    assert backend.requests[0]["action"] == "publish"
    assert await ask(rules, hooks, "publish", "support:1", {"text": "spam"}) == Deny(
        FORBIDDEN, "looks like spam")


async def test_publish_without_the_webhook_passes_the_rules_answer_through(
        make_gateway: MakeGateway, backend: Backend) -> None:
    rules_json = json.dumps({"room:*": {"subscribe": "any", "publish": "any"}})
    _, rules, hooks = await gateway(make_gateway, backend, channel_rules=rules_json,
                                    publish_webhook_url="")
    assert await ask(rules, hooks, "publish", "room:1", {"x": 1}) == Allow(
        rules.rule_for("room:1"))
    assert backend.requests == []


async def test_every_backend_failure_is_a_refusal_with_a_clear_reason(
        make_gateway: MakeGateway, backend: Backend) -> None:
    async def hang(request: web.Request) -> web.Response:
        await backend.release.wait()
        return web.json_response({"allow": True})

    _, rules, hooks = await gateway(make_gateway, backend, channel_webhook_timeout=0.2)
    failed = answers("subscribe", "failed")
    cases = [
        (hang, "the subscribe webhook did not answer in time"),
        (reply_json({"allow": True}, status=500), "the subscribe webhook failed"),
        (reply_json({"allowed": "yes"}), "the subscribe webhook failed"),
        (reply_json(["allow"]), "the subscribe webhook failed"),
    ]
    for handler, reason in cases:
        backend.handler = handler
        assert await ask(rules, hooks, "subscribe", "support:1") == Deny(FORBIDDEN, reason)
    backend.handler = reply_json({"allow": True, "data": "not an object"})
    assert await ask(rules, hooks, "publish", "room:1", {"x": 1}) == Deny(
        FORBIDDEN, "the publish webhook failed")
    assert answers("subscribe", "failed") == failed + len(cases)


async def test_an_unreachable_webhook_refuses(make_gateway: MakeGateway, backend: Backend
                                              ) -> None:
    _, rules, hooks = await gateway(make_gateway, backend, subscribe_webhook_url=closed_port_url())
    assert await ask(rules, hooks, "subscribe", "support:1") == Deny(
        FORBIDDEN, "the subscribe webhook is unavailable")


async def test_a_webhook_decision_without_its_url_refuses() -> None:
    """Start-up validation prevents it; if it ever happens, the channel stays closed."""
    hooks = ChannelWebhooks(Settings())
    ask_it = AskWebhook(ChannelRule("support:*", "webhook"), "subscribe")
    verdict = await hooks.resolve("subscribe", ask_it, ALICE, client_id="c",
                                  channel="support:1")
    assert verdict == Deny(FORBIDDEN, "the subscribe webhook is not configured")
