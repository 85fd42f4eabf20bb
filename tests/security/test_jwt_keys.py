"""RS256/ES256 client JWTs on a live gateway: a JWKS served by a real local HTTP server (key
rotation, unknown kids from an attacker, an endpoint that fails), a PEM public key, audience
and issuer checks and algorithm confusion, each refused with 401 before the upgrade."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from server.auth import JwksKeys, KeySetUnavailable, TokenRejected
from server.keys import SECURITY
from server.metrics import REGISTRY
from tests.conftest import LiveGateway, MakeGateway, wait_for
from tests.handlers.test_channels import subscribe
from tests.jwt_tools import HS_SECRET, ec_key, forge_hs256, jwk, public_pem, rsa_key, token
from tests.security.test_ws_handshake import _refused


@dataclass
class Jwks:
    """A JWKS endpoint: serves ``keys`` (or ``status``), counts ``hits``."""

    server: TestServer | None = None
    keys: list[dict[str, Any]] = field(default_factory=list)
    status: int = 200
    hits: int = 0
    #: When set, requests hang until it is set (a JWKS that does not answer).
    gate: asyncio.Event | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        return str(self.server.make_url("/.well-known/jwks.json"))

    async def serve(self, request: web.Request) -> web.Response:
        self.hits += 1
        if self.gate is not None:
            await self.gate.wait()
        if self.status != 200:
            return web.json_response({"error": "down"}, status=self.status)
        return web.json_response({"keys": self.keys})


@pytest.fixture
async def jwks() -> AsyncIterator[Jwks]:
    endpoint = Jwks(keys=[jwk(rsa_key(), "k1")])
    app = web.Application()
    app.router.add_get("/.well-known/jwks.json", endpoint.serve)
    endpoint.server = TestServer(app, host="127.0.0.1")
    await endpoint.server.start_server()
    yield endpoint
    if endpoint.gate is not None:
        endpoint.gate.set()
    await endpoint.server.close()


async def jwks_gateway(make_gateway: MakeGateway, jwks: Jwks, **settings: Any) -> LiveGateway:
    return await make_gateway(ws_auth="jwt", ws_jwks_url=jwks.url, **settings)


def fetches(result: str) -> float:
    return REGISTRY.get_sample_value("switchboard_jwks_fetches_total", {"result": result}) or 0


async def test_rs256_and_es256_tokens_verified_with_keys_from_the_jwks(
        make_gateway: MakeGateway, jwks: Jwks) -> None:
    jwks.keys.append(jwk(ec_key(), "e1"))
    live = await jwks_gateway(make_gateway, jwks)
    client = await live.connect(token=token(rsa_key(), "RS256", kid="k1", sub="alice"))
    assert client.hello["data"]["user_id"] == "alice"
    other = await live.connect(
        headers={"Authorization": f"Bearer {token(ec_key(), 'ES256', kid='e1', sub='bob')}"})
    assert other.hello["data"]["user_id"] == "bob"
    assert jwks.hits == 1  # fetched once, then served from the cache


async def test_a_rotated_key_is_fetched_once(make_gateway: MakeGateway, jwks: Jwks) -> None:
    live = await jwks_gateway(make_gateway, jwks)
    await live.connect(token=token(rsa_key(), "RS256", kid="k1"))
    assert jwks.hits == 1
    # The identity provider rotates: k2 appears, tokens signed with it start arriving.
    jwks.keys.append(jwk(rsa_key("b"), "k2"))
    for sub in ("bob", "carol", "dave"):
        client = await live.connect(token=token(rsa_key("b"), "RS256", kid="k2", sub=sub))
        assert client.hello["data"]["user_id"] == sub
    assert jwks.hits == 2
    # k1 still works, from the cache
    await live.connect(token=token(rsa_key(), "RS256", kid="k1", sub="erin"))
    assert jwks.hits == 2


async def test_random_kids_from_an_attacker_cost_one_fetch(make_gateway: MakeGateway,
                                                           jwks: Jwks) -> None:
    live = await jwks_gateway(make_gateway, jwks)
    await live.connect(token=token(rsa_key(), "RS256", kid="k1"))
    before = jwks.hits
    attacker = rsa_key("attacker")

    async def attempt() -> tuple[int, dict[str, Any]]:
        return await _refused(live, token=token(attacker, "RS256", kid=uuid.uuid4().hex))

    # 100 handshakes with random kids, 20 at a time.
    results = []
    for _ in range(5):
        results += await asyncio.gather(*(attempt() for _ in range(20)))
    for status, body in results:
        assert status == 401, body
        assert "unknown key id" in body["error"]["message"]
    assert jwks.hits - before == 1, jwks.hits  # one refresh, then the cooldown
    assert len(live.connections) == 1  # only the legitimate one
    # a legitimate token still gets in
    assert (await live.connect(token=token(rsa_key(), "RS256", kid="k1"))).client_id


@pytest.mark.filterwarnings("ignore::jwt.warnings.InsecureKeyLengthWarning")  # the weak key
async def test_tokens_without_kid_and_keys_of_another_algorithm_are_refused(
        make_gateway: MakeGateway, jwks: Jwks) -> None:
    jwks.keys.append(jwk(ec_key(), "e1"))
    jwks.keys.append(jwk(rsa_key("small", 1024), "weak"))
    live = await jwks_gateway(make_gateway, jwks)
    cases = [
        (token(rsa_key(), "RS256"), "no kid header"),
        # an RS256 token naming the EC key's kid: the key decides the algorithm
        (token(rsa_key(), "RS256", kid="e1"), "key 'e1' is for ES256, the token says RS256"),
        # the JWKS lists a 1024-bit RSA key: too short to trust
        (token(rsa_key("small", 1024), "RS256", kid="weak"), "2048"),
        # HS256 "signed" with a public key everyone can read
        (forge_hs256({"sub": "admin", "exp": 2**31}, public_pem(rsa_key()).encode()),
         "algorithm 'HS256' is not accepted (accepted: ES256, RS256)"),
    ]
    for presented, why in cases:
        status, body = await _refused(live, token=presented)
        assert status == 401, body
        assert why in body["error"]["message"], body


async def test_an_unreachable_jwks_is_503_and_not_hammered(make_gateway: MakeGateway,
                                                           jwks: Jwks) -> None:
    jwks.status = 500
    failed = fetches("failed")
    live = await jwks_gateway(make_gateway, jwks)
    for _ in range(10):
        status, body = await _refused(live, token=token(rsa_key(), "RS256", kid="k1"))
        assert status == 503, body
        assert body["error"]["code"] == "auth_unavailable"
    assert jwks.hits == 1  # then backing off for the cooldown
    assert fetches("failed") == failed + 1


async def test_wrong_audience_or_issuer_is_401_before_the_upgrade(make_gateway: MakeGateway,
                                                                  jwks: Jwks) -> None:
    live = await jwks_gateway(make_gateway, jwks, ws_jwt_audience=("chat-app",),
                              ws_jwt_issuer=("https://idp.test/",))
    signed = rsa_key()
    good = {"aud": "chat-app", "iss": "https://idp.test/"}
    assert (await live.connect(token=token(signed, "RS256", kid="k1", **good))).client_id
    for claims, why in (({**good, "aud": "other-app"}, "Audience doesn't match"),
                        ({**good, "iss": "https://evil.test/"}, "Invalid issuer"),
                        ({"iss": "https://idp.test/"}, '"aud"')):
        status, body = await _refused(live, token=token(signed, "RS256", kid="k1", **claims))
        assert status == 401, body
        assert why in body["error"]["message"], body
    assert len(live.connections) == 1


async def test_es256_with_a_pem_public_key(make_gateway: MakeGateway) -> None:
    live = await make_gateway(ws_auth="jwt", ws_jwt_public_key=public_pem(ec_key()))
    client = await live.connect(token=token(ec_key(), "ES256", sub="alice"))
    assert client.hello["data"]["user_id"] == "alice"
    for presented in (token(ec_key("other"), "ES256"),  # another key
                      token(rsa_key(), "RS256"),  # another algorithm
                      forge_hs256({"sub": "x", "exp": 2**31}, public_pem(ec_key()).encode())):
        status, body = await _refused(live, token=presented)
        assert status == 401, body


# --- the key cache itself --------------------------------------------------------------------

async def test_an_expired_key_set_is_kept_while_the_endpoint_fails(jwks: Jwks) -> None:
    keys = JwksKeys(jwks.url, cache_ttl=300)
    assert (await keys.key("k1")).key_id == "k1"
    jwks.status = 500
    keys._expires_at = 0.0  # the cache lifetime is over: the next use refetches
    assert (await keys.key("k1")).key_id == "k1"  # the refetch failed: the old keys serve
    assert jwks.hits == 2
    assert (await keys.key("k1")).key_id == "k1"
    assert jwks.hits == 2  # backing off: no new attempt before the cooldown
    with pytest.raises(TokenRejected):
        await keys.key("k-unknown")
    assert jwks.hits == 2


async def test_concurrent_first_uses_share_one_fetch(jwks: Jwks) -> None:
    keys = JwksKeys(jwks.url, cache_ttl=300)
    found = await asyncio.gather(*(keys.key("k1") for _ in range(20)))
    assert {k.key_id for k in found} == {"k1"}
    assert jwks.hits == 1


async def test_no_key_set_at_all_is_unavailable(jwks: Jwks) -> None:
    jwks.keys = []  # a JWKS with no keys is a failed fetch
    keys = JwksKeys(jwks.url, cache_ttl=300)
    with pytest.raises(KeySetUnavailable):
        await keys.key("k1")


async def test_a_hanging_jwks_never_blocks_the_event_loop(make_gateway: MakeGateway,
                                                          jwks: Jwks) -> None:
    """PyJWKClient fetches with blocking urllib: the fetch runs in a thread, so while it hangs
    other handshakes (here HS256 ones) and frames are served; the waiting handshake gets 503
    when the fetch times out."""
    jwks.gate = asyncio.Event()
    live = await jwks_gateway(make_gateway, jwks, ws_jwt_secret=HS_SECRET)
    keys = live.ws_app[SECURITY].jwt.jwks  # type: ignore[union-attr]
    keys.timeout = keys.client.timeout = 2.0  # instead of JWKS_TIMEOUT
    waiting = asyncio.ensure_future(_refused(live, token=token(rsa_key(), "RS256", kid="k1")))
    await wait_for(lambda: jwks.hits == 1, what="the JWKS fetch to start")
    other = await live.connect(token=token(HS_SECRET, "HS256", sub="bob"))
    await other.send("ping", message_id="p")
    assert (await other.recv_type("pong"))["reply_to"] == "p"
    assert not waiting.done()
    status, body = await waiting
    assert status == 503 and body["error"]["code"] == "auth_unavailable", body
    jwks.gate.set()


async def test_rs256_users_hold_several_sessions_and_their_claims_open_channels(
        make_gateway: MakeGateway, jwks: Jwks) -> None:
    """Two tabs of alice with RS256 tokens from the JWKS: two sessions of one user, both
    reached by a send to the user; the token's channels claim opens team:red, not team:blue."""
    live = await jwks_gateway(make_gateway, jwks, channel_rules=json.dumps(
        {"team:*": {"subscribe": "claim"}}))
    presented = token(rsa_key(), "RS256", kid="k1", sub="alice", channels=["team:red"])
    tabs = [await live.connect(token=presented),
            await live.connect(token=presented, node=live.api_node)]
    for tab in tabs:
        assert tab.hello["data"]["user_id"] == "alice"
        assert (await subscribe(tab, "team:red"))["type"] == "subscribed"
        refused = await subscribe(tab, "team:blue")
        assert refused["data"]["code"] == "forbidden_channel", refused
    status, body = await live.api("POST", "/send_message", {"user_id": "alice",
                                                            "content": "both"})
    assert status == 200 and body["delivered"] == 2, body
    for tab in tabs:
        assert (await tab.recv_type("message"))["message_id"] == body["message_id"]
