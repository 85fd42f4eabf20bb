"""WebSocket handshake security: origins, client authentication (token, JWT), connection caps,
and JWT expiry on a live socket (issue 5). Refusals before the upgrade are HTTP statuses."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp
import jwt
import pytest

from server.config import Settings
from server.errors import CloseCode, ConfigError
from server.keys import SECURITY
from tests.conftest import LiveGateway, MakeGateway, WSClient, wait_for

APP = "https://app.example.com"
SECRET = "jwt-test-secret-" + "0123456789abcdef" * 4


async def _refused(live: LiveGateway, *, headers: dict[str, str] | None = None,
                   path: str = "/", **query: Any) -> tuple[int, dict[str, Any]]:
    """Try to connect; return the HTTP status and JSON error of the refused handshake."""
    params = {k: str(v) for k, v in query.items()}
    async with live.http.get(live.ws_server.make_url(path), params=params, headers={
            "Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Version": "13",
            "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==", **(headers or {})}) as resp:
        assert resp.status != 101, "the handshake was accepted"
        return resp.status, await resp.json()


# --- origins ----------------------------------------------------------------------------------

LOOK_ALIKES = [
    "https://app.example.com.evil.com",
    "https://evil.com",
    "http://app.example.com",
    "https://app.example.com/",
    "https://app.example.com:443",
    "https://app.example.com:8443",
    "https://APP.example.com",
    "https://app.example.co",
    "https://sub.app.example.com",
    "https://app.example.com@evil.com",
    "null",
    "",
    "https://app.example.com, https://evil.com",
]


@pytest.mark.parametrize("origin", LOOK_ALIKES)
async def test_origins_not_exactly_listed_are_403(make_gateway: MakeGateway,
                                                  origin: str) -> None:
    live = await make_gateway(allowed_origins=(APP,))
    status, body = await _refused(live, headers={"Origin": origin})
    assert status == 403, body
    assert body["error"]["code"] == "origin_not_allowed"
    assert not live.connections


async def test_missing_origin_is_403_when_a_list_is_set(make_gateway: MakeGateway) -> None:
    live = await make_gateway(allowed_origins=(APP,))
    status, body = await _refused(live)
    assert status == 403, body


@pytest.mark.parametrize("path", ["/", "/ws", "/ws/chat", "/ws/mcplog"])
async def test_listed_origin_connects_on_every_path(make_gateway: MakeGateway,
                                                    path: str) -> None:
    live = await make_gateway(allowed_origins=(APP, "http://localhost:3000"))
    client = await live.connect(path, headers={"Origin": APP})
    assert client.hello["type"] == "connection_established"
    client = await live.connect(path, headers={"Origin": "http://localhost:3000"})
    assert client.hello["type"] == "connection_established"


async def test_without_a_list_any_origin_connects(make_gateway: MakeGateway) -> None:
    live = await make_gateway()
    for origin in ("https://anything.example", "null"):
        client = await live.connect(headers={"Origin": origin})
        assert client.client_id


# --- WS_AUTH=token ----------------------------------------------------------------------------


async def test_static_token_required(make_gateway: MakeGateway) -> None:
    live = await make_gateway(ws_auth="token", ws_auth_token="letmein-0123456789")
    status, body = await _refused(live)
    assert status == 401 and body["error"]["code"] == "unauthorized", body
    for wrong in ("letmein", "letmein-0123456789x", "LETMEIN-0123456789"):
        status, body = await _refused(live, token=wrong)
        assert status == 401, body
        status, body = await _refused(live, headers={"Authorization": f"Bearer {wrong}"})
        assert status == 401, body
    assert not live.connections


async def test_static_token_accepted_in_query_or_header(make_gateway: MakeGateway) -> None:
    live = await make_gateway(ws_auth="token", ws_auth_token="letmein-0123456789")
    client = await live.connect(token="letmein-0123456789", client_id="alice")
    assert client.client_id == "alice"
    client = await live.connect(headers={"Authorization": "Bearer letmein-0123456789"})
    assert client.client_id


# --- WS_AUTH=jwt ------------------------------------------------------------------------------


def make_jwt(sub: Any = "alice", *, exp_in: float | None = 3600, secret: str = SECRET,
             algorithm: str = "HS256", **claims: Any) -> str:
    payload: dict[str, Any] = {"sub": sub, **claims}
    if exp_in is not None:
        payload["exp"] = int(time.time() + exp_in)
    return jwt.encode(payload, secret, algorithm=algorithm)


async def jwt_gateway(make_gateway: MakeGateway) -> LiveGateway:
    return await make_gateway(ws_auth="jwt", ws_jwt_secret=SECRET)


async def test_jwt_sub_is_the_user_of_the_session(make_gateway: MakeGateway) -> None:
    """The token's sub is the session's user (connection_established says so, the API
    lists it); the client_id is the one asked for, or a generated one."""
    live = await jwt_gateway(make_gateway)
    client = await live.connect(token=make_jwt("alice"), client_id="tab-1")
    assert client.client_id == "tab-1" and client.hello["data"]["user_id"] == "alice"
    bearer = await live.connect(headers={"Authorization": f"Bearer {make_jwt('bob')}"})
    assert bearer.hello["data"]["user_id"] == "bob" and bearer.client_id != "bob"
    info = await live.client_info("tab-1")
    assert info["user_id"] == "alice" and info["connected"], info
    status, body = await _refused(live, token=make_jwt("alice"), user_id="mallory")
    assert status == 403 and "user_id" in body["error"]["message"], body


async def test_a_jwt_must_be_for_the_session_id_in_the_agent_backend_path(
        make_gateway: MakeGateway) -> None:
    """Seed 001's path names the session; with WS_AUTH=jwt the token's sub must be it (no
    takeover of someone else's id)."""
    live = await jwt_gateway(make_gateway)
    status, body = await _refused(live, path="/agent_backend/ws/bob", token=make_jwt("alice"))
    assert status == 403, body
    assert "session_id" in body["error"]["message"]
    assert await live.session_count() == 0
    client = await live.connect("/agent_backend/ws/alice", token=make_jwt("alice"))
    assert client.client_id == "alice"


@pytest.mark.parametrize(("token", "code"), [
    (None, "unauthorized"),
    ("not-a-jwt", "unauthorized"),
    (make_jwt(secret="another-secret-" + "0123456789abcdef" * 4), "unauthorized"),
    (make_jwt(exp_in=-5), "token_expired"),
    (make_jwt(exp_in=None), "unauthorized"),
    (make_jwt(sub=None), "unauthorized"),
    (make_jwt(sub="../../etc"), "unauthorized"),
    (make_jwt(sub="x" * 200), "unauthorized"),
    (make_jwt(algorithm="HS512"), "unauthorized"),
    (jwt.encode({"sub": "alice", "exp": int(time.time()) + 3600}, None, algorithm="none"),
     "unauthorized"),
])
async def test_bad_jwts_are_401_before_the_upgrade(make_gateway: MakeGateway,
                                                   token: str | None, code: str) -> None:
    live = await jwt_gateway(make_gateway)
    query = {"token": token} if token is not None else {}
    status, body = await _refused(live, **query)
    assert status == 401, body
    assert body["error"]["code"] == code
    assert not live.connections
    assert await live.session_count() == 0


async def test_tampered_jwt_is_401(make_gateway: MakeGateway) -> None:
    live = await jwt_gateway(make_gateway)
    header, _payload, signature = make_jwt("alice").split(".")
    forged = jwt.encode({"sub": "admin", "exp": int(time.time()) + 3600}, "guess" * 8)
    forged_payload = forged.split(".")[1]
    status, _ = await _refused(live, token=f"{header}.{forged_payload}.{signature}")
    assert status == 401


async def test_a_live_socket_is_closed_with_4010_when_its_jwt_expires(
        make_gateway: MakeGateway) -> None:
    live = await jwt_gateway(make_gateway)
    client = await live.connect(token=make_jwt("alice", exp_in=1.5))
    steady = await live.connect(token=make_jwt("bob", exp_in=3600))
    code = await client.recv_close(timeout=10)
    assert code == CloseCode.TOKEN_EXPIRED == 4010
    assert CloseCode.TOKEN_EXPIRED.reconnect
    # The session survives for resume with a fresh token; other sockets are untouched.
    await steady.send("ping", message_id="p1")
    assert (await steady.recv_type("pong"))["reply_to"] == "p1"
    resumed = await live.connect(token=make_jwt("alice"), client_id=client.client_id,
                                 session_token=client.session_token, last_seq=0)
    assert resumed.hello["data"]["resumed"] is True


async def test_the_expiry_timer_is_cancelled_when_the_socket_closes(
        make_gateway: MakeGateway) -> None:
    live = await jwt_gateway(make_gateway)
    client = await live.connect(token=make_jwt("alice"))
    (conn,) = live.connections
    assert conn.expiry is not None and not conn.expiry.cancelled()
    assert conn.expiry.when() > 0
    await client.close()
    await wait_for(lambda: not live.connections, what="connection cleanup")
    assert conn.expiry.cancelled()


async def test_unauthenticated_sockets_have_no_expiry_timer(make_gateway: MakeGateway
                                                            ) -> None:
    live = await make_gateway()
    await live.connect()
    (conn,) = live.connections
    assert conn.expiry is None


async def test_a_jwt_client_cannot_resume_another_users_session(
        make_gateway: MakeGateway) -> None:
    """Mallory holds a valid JWT of her own and somehow alice's session_token: the session is
    alice's user's, so the resume is refused (4003) and alice's session is untouched. Without
    the token, asking for alice's client_id gives mallory a session of her own."""
    live = await jwt_gateway(make_gateway)
    alice = await live.connect(token=make_jwt("alice"), client_id="alice-tab")
    await alice.close()
    await wait_for(lambda: not live.connections, what="alice gone")
    mallory = await live.connect(token=make_jwt("mallory"), client_id="alice-tab",
                                 session_token=alice.session_token, expect_hello=False)
    error = await mallory.recv()
    assert error["type"] == "error" and error["data"]["code"] == "invalid_session", error
    assert await mallory.recv_close() == CloseCode.INVALID_SESSION == 4003
    assert (await live.client_info("alice-tab"))["connected"] is False  # untouched
    other = await live.connect(token=make_jwt("mallory"), client_id="alice-tab")
    assert other.client_id != "alice-tab" and other.hello["data"]["resumed"] is False
    assert other.hello["data"]["user_id"] == "mallory"
    assert (await live.client_info("alice-tab"))["connected"] is False


async def test_a_jwt_resumes_its_own_session_without_session_token(
        make_gateway: MakeGateway) -> None:
    """The JWT proves the user, so reconnecting with a fresh JWT and the session's client_id
    (no session_token) gets the same session back, with what was queued meanwhile replayed
    after last_seq, and a fresh session_token (the old one no longer resumes it). Without a
    client_id it is a new session of the same user."""
    live = await jwt_gateway(make_gateway)
    alice = await live.connect(token=make_jwt("alice"), client_id="laptop")
    await alice.close()
    await wait_for(lambda: not live.connections, what="alice gone")
    status, body = await live.api("POST", "/send_message",
                                  {"client_id": "laptop", "content": "while away"})
    assert status == 202, body
    again = await live.connect(token=make_jwt("alice"), client_id="laptop", last_seq=0)
    assert again.client_id == "laptop"
    assert again.hello["data"]["resumed"] is True
    assert again.hello["data"]["session_token"] != alice.session_token
    frame = await again.recv()
    assert frame["data"]["content"] == "while away" and frame["seq"] == 1, frame
    await again.close()
    stale = await live.connect(token=make_jwt("alice"), client_id="laptop",
                               session_token=alice.session_token, expect_hello=False)
    assert await stale.recv_close() == CloseCode.INVALID_SESSION
    fresh = await live.connect(token=make_jwt("alice"), client_id="laptop",
                               session_token=again.session_token)
    assert fresh.hello["data"]["resumed"] is True
    second = await live.connect(token=make_jwt("alice"))
    assert second.hello["data"]["resumed"] is False and second.client_id != "laptop"
    assert second.hello["data"]["user_id"] == "alice"


def test_a_short_jwt_secret_refuses_to_start() -> None:
    with pytest.raises(ConfigError, match="WS_JWT_SECRET"):
        Settings.from_env({"WS_AUTH": "jwt", "WS_JWT_SECRET": "short"})
    Settings.from_env({"WS_AUTH": "jwt", "WS_JWT_SECRET": "k" * 32})


# --- connection caps --------------------------------------------------------------------------


async def test_per_ip_cap_is_429_before_the_upgrade(make_gateway: MakeGateway) -> None:
    live = await make_gateway(max_connections_per_ip=2)
    first = await live.connect()
    await live.connect()
    status, body = await _refused(live)
    assert status == 429, body
    assert body["error"]["code"] == "too_many_connections"
    assert len(live.connections) == 2
    await first.close()
    await wait_for(lambda: len(live.connections) == 1, what="slot released")
    again = await live.connect()
    assert again.client_id


async def test_refused_handshakes_do_not_leak_per_ip_slots(make_gateway: MakeGateway) -> None:
    live = await make_gateway(max_connections_per_ip=1)
    for _ in range(3):
        status, _ = await _refused(live, last_seq="not-a-number")
        assert status == 400
    # A refused resume (4003 after the upgrade) releases its slot too.
    ws = await live.http.ws_connect(live.ws_server.make_url("/"), params={
        "client_id": "ghost", "session_token": "nope"})
    await ws.receive(timeout=5)
    await ws.receive(timeout=5)
    await ws.close()
    await wait_for(lambda: not live.ws_app[SECURITY].per_ip, what="per-IP slots released")
    client = await live.connect()
    assert client.client_id


async def test_max_connections_is_503_before_the_upgrade(make_gateway: MakeGateway) -> None:
    live = await make_gateway(max_connections=2)
    await live.connect()
    await live.connect()
    status, body = await _refused(live)
    assert status == 503, body
    assert body["error"]["code"] == "too_many_connections"
    assert len(live.connections) == 2


# --- behind a reverse proxy -------------------------------------------------------------------


async def test_x_forwarded_for_is_ignored_without_trusted_proxies(make_gateway: MakeGateway
                                                                  ) -> None:
    """A client cannot dodge the per-IP cap by claiming another address."""
    live = await make_gateway(max_connections_per_ip=1)
    await live.connect(headers={"X-Forwarded-For": "1.1.1.1"})
    status, _ = await _refused(live, headers={"X-Forwarded-For": "2.2.2.2"})
    assert status == 429


async def test_per_ip_cap_counts_forwarded_clients_behind_a_trusted_proxy(
        make_gateway: MakeGateway) -> None:
    live = await make_gateway(max_connections_per_ip=1, trusted_proxies=("127.0.0.0/8",))
    await live.connect(headers={"X-Forwarded-For": "1.1.1.1"})
    await live.connect(headers={"X-Forwarded-For": "2.2.2.2"})
    status, _ = await _refused(live, headers={"X-Forwarded-For": "1.1.1.1"})
    assert status == 429
    # Hops left of the one our proxy appended are the client's own claims: not believed.
    status, _ = await _refused(live, headers={"X-Forwarded-For": "9.9.9.9, 1.1.1.1"})
    assert status == 429
    assert live.ws_app[SECURITY].per_ip == {"1.1.1.1": 1, "2.2.2.2": 1}


@pytest.mark.parametrize(("forwarded", "expected"), [
    ([], "127.0.0.1"),
    (["203.0.113.7"], "203.0.113.7"),
    (["6.6.6.6, 203.0.113.7"], "203.0.113.7"),
    (["6.6.6.6", "203.0.113.7, 10.0.0.2"], "203.0.113.7"),
    (["203.0.113.7, 10.0.0.2, 127.0.0.1"], "203.0.113.7"),
    (["garbage"], "127.0.0.1"),
    (["2001:db8::1"], "2001:db8::1"),
])
def test_client_ip_walks_x_forwarded_for_right_to_left(forwarded: list[str],
                                                       expected: str) -> None:
    from unittest import mock

    from aiohttp.test_utils import make_mocked_request
    from multidict import CIMultiDict

    from server.security import Security

    transport = mock.Mock()
    transport.get_extra_info.side_effect = lambda name, default=None: {
        "peername": ("127.0.0.1", 40000)}.get(name, default)
    headers = CIMultiDict([("X-Forwarded-For", value) for value in forwarded])
    request = make_mocked_request("GET", "/", headers=headers, transport=transport)
    assert request.remote == "127.0.0.1"
    security = Security(Settings(trusted_proxies=("127.0.0.1", "10.0.0.0/8")))
    assert security.client_ip(request) == expected
    assert Security(Settings()).client_ip(request) == "127.0.0.1"


def test_trusted_proxies_are_validated() -> None:
    with pytest.raises(ConfigError, match="TRUSTED_PROXIES"):
        Settings.from_env({"TRUSTED_PROXIES": "10.0.0.0/8, not-an-ip"})
    settings = Settings.from_env({"TRUSTED_PROXIES": "10.0.0.0/8, ::1"})
    assert settings.trusted_proxies == ("10.0.0.0/8", "::1")


async def test_a_burst_of_simultaneous_upgrades_cannot_overshoot_max_connections(
        make_gateway: MakeGateway) -> None:
    live = await make_gateway(max_connections=3)

    async def attempt() -> int:
        try:
            ws = await live.http.ws_connect(live.ws_server.make_url("/"))
        except aiohttp.WSServerHandshakeError as exc:
            return exc.status
        live.clients.append(WSClient(ws, {}))
        return 101

    statuses = await asyncio.gather(*(attempt() for _ in range(12)))
    assert sorted(statuses) == [101] * 3 + [503] * 9, statuses
    await wait_for(lambda: len(live.connections) == 3, what="three sockets attached")
    assert live.ws_app[SECURITY].admitted == 3
    for client in live.clients:
        await client.close()
    await wait_for(lambda: live.ws_app[SECURITY].admitted == 0, what="slots released")
