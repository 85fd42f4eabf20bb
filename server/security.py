"""Security controls of both ports, in one place.

* WebSocket handshake: exact ``Origin`` allow-list (403), optional client authentication
  (``WS_AUTH=token`` or ``jwt``; 401), per-IP connection cap (429).
* Per-connection frame rate limit: a token bucket; excess frames are dropped with an ``error``
  frame, and a client that keeps flooding is closed with 4009.
* HTTP API: bearer token / ``X-API-Key`` compared in constant time (401 missing, 403 wrong),
  per-caller rate limit (429 + ``Retry-After``).
* Observers: system channels (``tool_activity``) are readable only by a connection opened with
  an observer ticket (``?observer_ticket=``, from ``POST /observer_ticket`` on the API: HMAC
  signed, valid OBSERVER_TICKET_TTL seconds, so the API token itself never travels to the
  WebSocket port) or with a JWT whose ``roles`` include ``observer`` (server.auth).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import secrets
import time

from aiohttp import web

from server.auth import OBSERVER_ROLE, Identity, JwtVerifier
from server.config import Settings
from server.errors import SwitchboardError

__all__ = ["Identity", "Security"]

#: Seconds an observer ticket is valid (it is only checked at the WebSocket handshake).
OBSERVER_TICKET_TTL = 120
_TICKET_PREFIX = "obs1"


def observer_ticket_key(settings: Settings) -> bytes:
    """The key observer tickets are signed with: derived from API_TOKEN when one is set (every
    node of a cluster shares it, so any node accepts a ticket another issued), else the
    process group's random key (workers share it)."""
    if settings.api_token:
        return hmac.new(settings.api_token.encode(), b"switchboard observer tickets",
                        hashlib.sha256).digest()
    return settings.ticket_key


def _ticket_signature(key: bytes, payload: str) -> str:
    mac = hmac.new(key, f"{_TICKET_PREFIX}.{payload}".encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(mac).rstrip(b"=").decode()


def error_response(status: int, code: str, message: str,
                   headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response({"error": {"code": code, "message": message}}, status=status,
                             headers=headers)


def constant_time_equals(presented: str, expected: str) -> bool:
    return hmac.compare_digest(presented.encode("utf-8", "replace"), expected.encode())


class TokenBucket:
    """Classic token bucket: ``rate`` tokens a second, up to ``burst``."""

    __slots__ = ("burst", "rate", "stamp", "tokens")

    def __init__(self, rate: float, burst: int) -> None:
        self.rate = rate
        self.burst = float(burst)
        self.tokens = float(burst)
        self.stamp = time.monotonic()

    def allow(self, cost: float = 1.0) -> bool:
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= cost:
            self.tokens -= cost
            return True
        return False

    def retry_after(self) -> float:
        """Seconds until one token is available."""
        missing = max(0.0, 1.0 - self.tokens)
        return round(missing / self.rate, 3) if self.rate > 0 else 0.0


class FrameLimiter(TokenBucket):
    """A connection's frame budget. After ``burst`` consecutive refusals it asks to close.
    Warnings are rate-limited too (one error frame per second at most)."""

    __slots__ = ("last_warning", "refused")

    def __init__(self, rate: float, burst: int) -> None:
        super().__init__(rate, burst)
        self.refused = 0
        self.last_warning = 0.0

    def allow(self, cost: float = 1.0) -> bool:
        # TokenBucket.allow inlined: this runs for every client frame.
        now = time.monotonic()
        tokens = self.tokens + (now - self.stamp) * self.rate
        self.stamp = now
        if tokens > self.burst:
            tokens = self.burst
        if tokens >= cost:
            self.tokens = tokens - cost
            self.refused = 0
            return True
        self.tokens = tokens
        self.refused += 1
        return False

    def should_close(self) -> bool:
        return self.refused > self.burst

    def should_warn(self) -> bool:
        now = time.monotonic()
        if now - self.last_warning >= 1.0:
            self.last_warning = now
            return True
        return False


class Security:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.proxies = tuple(ipaddress.ip_network(n, strict=False)
                             for n in settings.trusted_proxies)
        self.per_ip: dict[str, int] = {}
        #: Sockets admitted and not yet released: live ones plus handshakes in progress, so
        #: a burst of simultaneous upgrades cannot overshoot MAX_CONNECTIONS.
        self.admitted = 0
        self.api_buckets: dict[str, TokenBucket] = {}
        self.jwt = JwtVerifier(settings) if settings.ws_auth == "jwt" else None
        #: The one Authorization header every well-behaved API caller sends, as bytes (none
        #: for a token with surrounding spaces, which the parsed form below never accepts).
        token = settings.api_token
        self._bearer_header = (f"Bearer {token}".encode("utf-8", "replace")
                               if token and token == token.strip() else None)

    # --- client address -----------------------------------------------------------------------

    def _trusted(self, address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(ip in network for network in self.proxies)

    def client_ip(self, request: web.Request) -> str:
        """The client's address: the TCP peer, unless the peer is a TRUSTED_PROXIES proxy;
        then X-Forwarded-For is walked right to left, skipping trusted proxies, and the first
        other hop (the one our proxy saw) is the client. Hops further left are the client's
        own claims and are never believed."""
        remote = request.remote or "unknown"
        if not self.proxies or not self._trusted(remote):
            return remote
        hops = [hop.strip() for value in request.headers.getall("X-Forwarded-For", ())
                for hop in value.split(",") if hop.strip()]
        for hop in reversed(hops):
            if self._trusted(hop):
                continue
            try:
                return str(ipaddress.ip_address(hop))
            except ValueError:
                return remote  # a mangled header: fall back to the proxy's own address
        return remote

    # --- WebSocket handshake ------------------------------------------------------------------

    def origin_allowed(self, origin: str | None) -> bool:
        allowed = self.settings.allowed_origins
        if not allowed or "*" in allowed:
            return True
        return origin is not None and origin in allowed

    def check_handshake(self, request: web.Request) -> web.Response | None:
        origin = request.headers.get("Origin")
        if not self.origin_allowed(origin):
            return error_response(403, "origin_not_allowed",
                                  f"origin {origin or '(none)'} is not allowed")
        return None

    async def authenticate_client(self, request: web.Request
                                  ) -> Identity | web.Response | None:
        """None when WS_AUTH=none; an Identity, or a 401 response (503 while a JWKS key set
        cannot be fetched). See server.auth for what a JWT must hold. A valid observer ticket
        authenticates in any mode (only the API token's holder can get one): as
        ``?observer_ticket=``, or in the token's place (``?token=`` / Bearer, where a client
        library's ``getToken`` puts it)."""
        ticket = request.query.get("observer_ticket")
        if ticket is None:
            presented = _bearer(request) or request.query.get("token") or ""
            if presented.startswith(_TICKET_PREFIX + ".") and self.observer_ticket_valid(
                    presented):
                ticket = presented  # else it is judged as the token it claims to be
        if ticket is not None:
            if not self.observer_ticket_valid(ticket):
                return error_response(401, "invalid_observer_ticket",
                                      "observer_ticket is invalid or expired; get a fresh one "
                                      "from POST /observer_ticket on the API")
            return Identity(subject=request.query.get("client_id") or None,
                            roles=frozenset({OBSERVER_ROLE}))
        mode = self.settings.ws_auth
        if mode == "none":
            return None
        presented = _bearer(request) or request.query.get("token")
        if not presented:
            return error_response(401, "unauthorized",
                                  "authentication required: pass ?token= or "
                                  "Authorization: Bearer")
        if mode == "token":
            if not constant_time_equals(presented, self.settings.ws_auth_token):
                return error_response(401, "unauthorized", "invalid token")
            return Identity(subject=request.query.get("client_id") or None, authenticated=True)
        assert self.jwt is not None
        try:
            return await self.jwt.verify(presented)
        except SwitchboardError as exc:
            return error_response(exc.http_status, exc.code, exc.message)

    # --- observer tickets ---------------------------------------------------------------------

    def issue_observer_ticket(self) -> tuple[str, int]:
        """A ticket letting one WebSocket connection read system channels, and its expiry
        (Unix seconds). Issued by ``POST /observer_ticket`` to the API token's holder."""
        expires = int(time.time()) + OBSERVER_TICKET_TTL
        payload = f"{expires}.{secrets.token_urlsafe(9)}"
        signature = _ticket_signature(observer_ticket_key(self.settings), payload)
        return f"{_TICKET_PREFIX}.{payload}.{signature}", expires

    def observer_ticket_valid(self, ticket: str) -> bool:
        prefix, _, rest = ticket.partition(".")
        payload, _, signature = rest.rpartition(".")
        if prefix != _TICKET_PREFIX or not payload or len(ticket) > 200:
            return False
        expected = _ticket_signature(observer_ticket_key(self.settings), payload)
        if not hmac.compare_digest(signature.encode("utf-8", "replace"), expected.encode()):
            return False
        expires, _, _ = payload.partition(".")
        return expires.isdigit() and int(expires) >= time.time()

    def admit_ip(self, ip: str) -> bool:
        cap = self.settings.max_connections_per_ip
        count = self.per_ip.get(ip, 0)
        if cap and count >= cap:
            return False
        self.per_ip[ip] = count + 1
        self.admitted += 1
        return True

    def release_ip(self, ip: str) -> None:
        if ip in self.per_ip:
            self.admitted -= 1
        count = self.per_ip.get(ip, 0) - 1
        if count > 0:
            self.per_ip[ip] = count
        else:
            self.per_ip.pop(ip, None)

    def frame_limiter(self) -> FrameLimiter | None:
        if self.settings.ws_rate_limit <= 0:
            return None
        return FrameLimiter(self.settings.ws_rate_limit, self.settings.ws_rate_burst)

    # --- HTTP API -----------------------------------------------------------------------------

    def check_api_token(self, request: web.Request) -> web.Response | None:
        expected = self.settings.api_token
        if not expected:
            return None
        # Every request of the API path starts here: the common form, exactly
        # "Bearer <API_TOKEN>", is one constant-time compare of the whole header (no
        # parsing); any other (scheme in another case, spaces, X-API-Key, a wrong token) is
        # parsed and compared below, where each refusal is worded.
        header = request.headers.get("Authorization")
        if (header is not None and self._bearer_header is not None
                and hmac.compare_digest(header.encode("utf-8", "replace"), self._bearer_header)):
            return None
        presented = _bearer(request) or request.headers.get("X-API-Key")
        if not presented:
            return error_response(401, "unauthorized",
                                  "missing credentials: send Authorization: Bearer <API_TOKEN> "
                                  "or X-API-Key", headers={"WWW-Authenticate": "Bearer"})
        if not constant_time_equals(presented, expected):
            return error_response(403, "forbidden", "invalid API token")
        return None

    def api_caller(self, request: web.Request) -> str:
        """The rate-limit key of an (already authenticated) API request: a digest of the token
        it presented, however it was presented (Bearer or X-API-Key), so the limit is per
        token; without API_TOKEN, the peer address (free-form headers would let a caller mint
        fresh budgets)."""
        if self.settings.api_token:
            presented = _bearer(request) or request.headers.get("X-API-Key") or ""
            digest = hashlib.sha256(presented.encode("utf-8", "replace")).hexdigest()[:32]
            return f"token:{digest}"
        return f"ip:{self.client_ip(request)}"

    def check_api_rate(self, request: web.Request) -> web.Response | None:
        """429 when the request's caller (see :meth:`api_caller`) is over API_RATE_LIMIT."""
        rate = self.settings.api_rate_limit
        if rate <= 0:
            return None  # off (the default): not even the caller's digest is computed
        caller = self.api_caller(request)
        bucket = self.api_buckets.get(caller)
        if bucket is None:
            if len(self.api_buckets) > 10_000:
                self.api_buckets.clear()
            bucket = self.api_buckets[caller] = TokenBucket(rate, self.settings.api_rate_burst)
        if bucket.allow():
            return None
        retry = max(1, round(bucket.retry_after() + 0.5))
        return error_response(429, "rate_limited", "too many requests",
                              headers={"Retry-After": str(retry)})


def _bearer(request: web.Request) -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return None
