"""HTTP API security: credentials, body limits, content types, rate limit, CORS (issue 5)."""

from __future__ import annotations

import secrets

import pytest

from server.config import Settings
from server.errors import ConfigError
from tests.conftest import API_TOKEN, LiveGateway, MakeGateway

PROTECTED = [("GET", "/status"), ("GET", "/clients"), ("GET", "/channels"),
             ("GET", "/handlers"), ("GET", "/metrics"), ("DELETE", "/clients/x"),
             ("POST", "/send_message"), ("POST", "/broadcast"), ("POST", "/call_tool")]


@pytest.mark.parametrize(("method", "path"), PROTECTED)
async def test_no_credentials_is_401_with_www_authenticate(make_gateway: MakeGateway,
                                                           method: str, path: str) -> None:
    live = await make_gateway()
    async with live.http.request(method, f"{live.api_url}{path}", json={}) as resp:
        assert resp.status == 401
        assert resp.headers["WWW-Authenticate"].startswith("Bearer")
        body = await resp.json()
    assert body["error"]["code"] == "unauthorized"


@pytest.mark.parametrize("headers", [
    {"Authorization": "Bearer wrong-token"},
    {"X-API-Key": "wrong-token"},
    {"Authorization": f"Bearer {API_TOKEN}x"},
    {"X-API-Key": API_TOKEN[:-1]},
    {"Authorization": "Bearer tëst-tøken"},
])
async def test_wrong_credentials_are_403(make_gateway: MakeGateway,
                                         headers: dict[str, str]) -> None:
    live = await make_gateway()
    status, body = await live.api("GET", "/status", headers=headers, auth=False)
    assert status == 403, body
    assert body["error"]["code"] == "forbidden"


async def test_a_non_bearer_scheme_counts_as_missing(make_gateway: MakeGateway) -> None:
    live = await make_gateway()
    status, body = await live.api("GET", "/status", auth=False,
                                  headers={"Authorization": f"Basic {API_TOKEN}"})
    assert status == 401, body


@pytest.mark.parametrize("headers", [
    {"Authorization": f"Bearer {API_TOKEN}"},
    {"Authorization": f"bearer {API_TOKEN}"},
    {"X-API-Key": API_TOKEN},
])
async def test_bearer_and_x_api_key_are_both_accepted(make_gateway: MakeGateway,
                                                      headers: dict[str, str]) -> None:
    live = await make_gateway()
    status, body = await live.api("GET", "/status", headers=headers, auth=False)
    assert status == 200, body
    assert body["status"] == "running"


@pytest.mark.parametrize("path", ["/health", "/healthz", "/docs", "/openapi.json"])
async def test_health_and_docs_are_public(make_gateway: MakeGateway, path: str) -> None:
    live = await make_gateway()
    status, body = await live.api("GET", path, auth=False)
    assert status != 401 and status != 403, (status, body)
    if path.startswith("/health"):
        assert status == 200


@pytest.mark.parametrize(("token", "authorization", "status"), [
    ("tok-1", "Bearer tok-1", None),          # the common form: one whole-header compare
    ("tok-1", "bearer   tok-1  ", None),      # any other spelling: parsed, as ever
    ("tok-1", "Bearer tok-1x", 403),
    ("tok-1", "Bearer tok-", 403),
    (" tok-1 ", "Bearer  tok-1 ", 403),       # a token with spaces never matches a Bearer
])
def test_the_whole_header_shortcut_accepts_exactly_what_parsing_accepts(
        token: str, authorization: str, status: int | None) -> None:
    from aiohttp.test_utils import make_mocked_request

    from server.security import Security

    security = Security(Settings(ws_host="127.0.0.1", api_host="127.0.0.1", api_token=token))
    request = make_mocked_request("GET", "/status", headers={"Authorization": authorization})
    refusal = security.check_api_token(request)
    assert (refusal.status if refusal is not None else None) == status


async def test_api_token_is_compared_in_constant_time() -> None:
    import inspect

    from server import security
    source = inspect.getsource(security.constant_time_equals)
    assert "hmac.compare_digest" in source
    assert security.constant_time_equals("abc", "abc")
    assert not security.constant_time_equals("abd", "abc")
    assert not security.constant_time_equals("ab", "abc")
    assert not security.constant_time_equals("\udcff", "abc")


# --- bodies -----------------------------------------------------------------------------------


async def test_body_over_api_max_body_is_413(make_gateway: MakeGateway) -> None:
    live = await make_gateway(api_max_body=2048)
    big = {"client_id": "a", "content": "x" * 4096}
    status, body = await live.api("POST", "/send_message", big)
    assert status == 413, body
    assert body["error"]["code"] == "payload_too_large"
    assert "2048" in body["error"]["message"]
    # A body just under the limit is read (and then judged on its merits: unknown client).
    status, body = await live.api("POST", "/send_message", {"client_id": "a", "content": "x"})
    assert status == 404, body


async def test_chunked_body_over_the_limit_is_413(make_gateway: MakeGateway) -> None:
    live = await make_gateway(api_max_body=2048)

    async def chunks():  # no Content-Length: the limit must hold while streaming too
        yield b'{"client_id": "a", "content": "'
        for _ in range(10):
            yield b"x" * 1024
        yield b'"}'

    status, body = await live.api("POST", "/send_message", data=chunks(),
                                  headers={"Content-Type": "application/json"})
    assert status == 413, body


@pytest.mark.parametrize("ctype", ["text/plain", "application/x-www-form-urlencoded",
                                   "multipart/form-data; boundary=x", "application/xml"])
async def test_wrong_content_type_is_415(make_gateway: MakeGateway, ctype: str) -> None:
    live = await make_gateway()
    status, body = await live.api("POST", "/send_message",
                                  data=b'{"client_id": "a", "content": "hi"}',
                                  headers={"Content-Type": ctype})
    assert status == 415, body
    assert body["error"]["code"] == "unsupported_media_type"


async def test_missing_content_type_is_415(make_gateway: MakeGateway) -> None:
    live = await make_gateway()
    async with live.http.post(f"{live.api_url}/broadcast", headers=live.auth(),
                              data=b'{"message_type": "x"}',
                              skip_auto_headers=["Content-Type"]) as resp:
        assert resp.status in (415,), await resp.text()


async def test_json_with_charset_is_accepted(make_gateway: MakeGateway) -> None:
    live = await make_gateway()
    status, body = await live.api("POST", "/broadcast", data=b'{"message_type": "x"}',
                                  headers={"Content-Type": "application/json; charset=utf-8"})
    assert status == 200, body


# --- rate limit -------------------------------------------------------------------------------


async def test_rate_limit_is_429_with_retry_after(make_gateway: MakeGateway) -> None:
    live = await make_gateway(api_rate_limit=0.001, api_rate_burst=3)
    for _ in range(3):
        status, body = await live.api("GET", "/status")
        assert status == 200, body
    async with live.http.get(f"{live.api_url}/status", headers=live.auth()) as resp:
        assert resp.status == 429
        retry_after = resp.headers["Retry-After"]
        body = await resp.json()
    assert retry_after.isdigit() and int(retry_after) >= 1
    assert body["error"]["code"] == "rate_limited"


async def test_rate_limit_is_per_token(make_gateway: MakeGateway) -> None:
    """One caller exhausting its budget does not limit another (X-API-Key vs Bearer are the
    same token and share one budget; a bad token never consumes the good token's budget)."""
    live = await make_gateway(api_rate_limit=0.001, api_rate_burst=2)
    for _ in range(2):
        assert (await live.api("GET", "/status"))[0] == 200
    assert (await live.api("GET", "/status"))[0] == 429
    status, _ = await live.api("GET", "/status", auth=False, headers={"X-API-Key": API_TOKEN})
    assert status == 429, "X-API-Key with the same token shares its budget"
    # Wrong credentials are refused before the limiter (403), never 429.
    status, _ = await live.api("GET", "/status", auth=False,
                               headers={"Authorization": "Bearer nope"})
    assert status == 403


async def test_rate_limit_does_not_apply_to_health(make_gateway: MakeGateway) -> None:
    live = await make_gateway(api_rate_limit=0.001, api_rate_burst=1)
    assert (await live.api("GET", "/status"))[0] == 200
    assert (await live.api("GET", "/status"))[0] == 429
    for _ in range(3):
        assert (await live.api("GET", "/health", auth=False))[0] == 200


# --- CORS -------------------------------------------------------------------------------------


def _preflight(origin: str) -> dict[str, str]:
    return {"Origin": origin, "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "Authorization, Content-Type"}


async def test_cors_preflight_allowed_for_listed_origin(make_gateway: MakeGateway) -> None:
    live = await make_gateway(allowed_origins=("https://app.example.com",))
    async with live.http.options(f"{live.api_url}/send_message",
                                 headers=_preflight("https://app.example.com")) as resp:
        assert resp.status == 200, await resp.text()
        assert resp.headers["Access-Control-Allow-Origin"] == "https://app.example.com"
        allowed = resp.headers["Access-Control-Allow-Headers"].lower()
        assert "authorization" in allowed


@pytest.mark.parametrize("origin", ["https://evil.example", "https://app.example.com.evil.com",
                                    "http://app.example.com", "https://app.example.com:8443",
                                    "https://app.example.com/", "null"])
async def test_cors_preflight_refused_for_other_origins(make_gateway: MakeGateway,
                                                        origin: str) -> None:
    live = await make_gateway(allowed_origins=("https://app.example.com",))
    async with live.http.options(f"{live.api_url}/send_message",
                                 headers=_preflight(origin)) as resp:
        assert resp.status == 403, await resp.text()
        assert "Access-Control-Allow-Origin" not in resp.headers


async def test_cors_simple_request_from_other_origin_gets_no_allow_header(
        make_gateway: MakeGateway) -> None:
    live = await make_gateway(allowed_origins=("https://app.example.com",))
    async with live.http.get(f"{live.api_url}/status",
                             headers={**live.auth(), "Origin": "https://evil.example"}) as resp:
        assert "Access-Control-Allow-Origin" not in resp.headers
    async with live.http.get(f"{live.api_url}/status", headers={
            **live.auth(), "Origin": "https://app.example.com"}) as resp:
        assert resp.headers["Access-Control-Allow-Origin"] == "https://app.example.com"


async def test_cors_headers_on_api_calls_follow_the_origin_header(
        live_gateway: LiveGateway) -> None:
    """Any origin by default: a browser's call (with Origin) gets the CORS headers; a
    server-to-server call (no Origin) gets none (the CORS handler is skipped for it)."""
    live = live_gateway
    await live.connect(client_id="cors-target")
    body = {"client_id": "cors-target", "content": "hi"}
    async with live.http.post(f"{live.api_url}/send_message", json=body, headers={
            **live.auth(), "Origin": "https://front.example"}) as resp:
        assert resp.status == 200, await resp.text()
        assert resp.headers["Access-Control-Allow-Origin"] == "https://front.example"
        assert "Content-Type" not in resp.headers["Access-Control-Expose-Headers"]
    async with live.http.post(f"{live.api_url}/send_message", json=body,
                              headers=live.auth()) as resp:
        assert resp.status == 200, await resp.text()
        assert not any(name.startswith("Access-Control-") for name in resp.headers)


# --- API_TOKEN unset policy -------------------------------------------------------------------


def test_without_api_token_the_api_defaults_to_loopback() -> None:
    settings = Settings(ws_host="0.0.0.0")
    assert settings.effective_api_host == "127.0.0.1"
    settings.check()
    assert Settings(ws_host="0.0.0.0", api_token="t").effective_api_host == "0.0.0.0"


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "10.1.2.3", "example.com"])
def test_non_loopback_api_without_token_refuses_to_start(host: str) -> None:
    with pytest.raises(ConfigError, match="API_TOKEN"):
        Settings.from_env({"API_HOST": host})
    Settings.from_env({"API_HOST": host, "API_INSECURE": "true"})  # explicit opt-out
    Settings.from_env({"API_HOST": host, "API_TOKEN": secrets.token_urlsafe(32)})
    with pytest.raises(ConfigError, match="API_TOKEN: too weak"):
        Settings.from_env({"API_HOST": host, "API_TOKEN": "s3cret"})


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "::1", "127.0.0.2"])
def test_loopback_api_without_token_is_allowed(host: str) -> None:
    Settings.from_env({"API_HOST": host})


async def test_without_api_token_the_loopback_api_is_open(make_gateway: MakeGateway) -> None:
    live = await make_gateway(api_token="")
    status, body = await live.api("GET", "/status", auth=False)
    assert status == 200, body


async def test_without_api_token_the_rate_limit_is_per_address(make_gateway: MakeGateway
                                                               ) -> None:
    """Free-form credentials must not mint fresh budgets when no token is configured."""
    live = await make_gateway(api_token="", api_rate_limit=0.001, api_rate_burst=2)
    for n in range(2):
        status, _ = await live.api("GET", "/status", auth=False,
                                   headers={"Authorization": f"Bearer fake-{n}"})
        assert status == 200
    status, _ = await live.api("GET", "/status", auth=False,
                               headers={"Authorization": "Bearer fake-new"})
    assert status == 429
