"""Who a WebSocket client is: JWT verification (``WS_AUTH=jwt``) and the :class:`Identity` it
yields. No aiohttp here; the handshake (``server.security``) calls :meth:`JwtVerifier.verify`.

Keys (``WS_AUTH=jwt`` needs at least one; algorithms are pinned to the keys configured):

=====================  ========================================================================
``WS_JWT_SECRET``      HS256 (32+ bytes).
``WS_JWT_PUBLIC_KEY``  RS256 (RSA, 2048+ bits) or ES256 (EC P-256), chosen by the key's type: an
                       inline PEM (a value containing ``-----BEGIN``; ``\\n`` escapes are
                       turned into newlines, for ``.env`` files) or the path of a PEM file. A
                       public key or an X.509 certificate; a private key is refused.
``WS_JWKS_URL``        RS256 / ES256 keys by ``kid`` from a JWKS endpoint (PyJWT's
                       ``PyJWKClient``); cannot be combined with ``WS_JWT_PUBLIC_KEY``.
=====================  ========================================================================

A token's ``alg`` must be one of those, and is verified only with a key of that algorithm:
``none`` is never accepted, HS256 is never checked against a public key, and a JWKS key is used
only for its own algorithm. Claims: ``exp`` and ``sub`` are required; ``aud`` must be one of
``WS_JWT_AUDIENCE`` when that is set (a token with an ``aud`` is refused when it is not), ``iss``
must be ``WS_JWT_ISSUER`` when that is set; ``nbf`` / ``iat`` are checked when present.

Identity claims besides ``sub`` (all optional; a malformed one refuses the token with 401):

* ``channels``: either a list of channel patterns the user may subscribe to (the ``claim``
  channel rule; same syntax as CHANNEL_RULES, ``{user}`` = the token's ``sub``), or an object
  ``{"allow": [patterns…], "subs": [channel names…]}`` where ``subs`` are channels the
  session is to join at connect (server-side subscriptions). At most 256 of each, 256
  characters each.
* ``roles``: a string or a list of strings (``observer`` is the role that may read system
  channels such as ``tool_activity``).

JWKS caching (``WS_JWKS_URL``): keys are fetched on first use and kept ``WS_JWKS_CACHE_TTL``
seconds; a token whose ``kid`` is not in the set triggers one refresh, and then no other
unknown-``kid`` refresh for :data:`JWKS_COOLDOWN` seconds, so random ``kid``s cost an attacker
one fetch per cooldown at most. A failed fetch keeps the previous keys (if any) and is not
retried before the cooldown either. Fetches run in a worker thread (PyJWKClient uses urllib)
one at a time, with :data:`JWKS_TIMEOUT`; the event loop never blocks on them. With no key set
at all (the endpoint never answered) a handshake gets 503 ``auth_unavailable``: retry later.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jwt
import structlog
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from server.channel_rules import validate_pattern
from server.errors import AuthError, Unavailable
from server.logging_setup import url_for_logs
from server.metrics import JWKS_FETCH_FAILED, JWKS_FETCH_OK
from server.sessions import valid_client_id

if TYPE_CHECKING:
    from server.config import Settings

log = structlog.get_logger("switchboard.auth")

#: The role that may subscribe to system channels (``tool_activity``).
OBSERVER_ROLE = "observer"
ASYMMETRIC_ALGORITHMS = ("RS256", "ES256")
MIN_RSA_BITS = 2048
#: Seconds between two refreshes triggered by unknown ``kid``s (or after a failed fetch).
JWKS_COOLDOWN = 30.0
#: Seconds one JWKS fetch may take.
JWKS_TIMEOUT = 5.0
MAX_CLAIM_ENTRIES = 256
MAX_CLAIM_ITEM = 256
MAX_ROLES = 256


@dataclass(frozen=True, slots=True)
class Identity:
    """An authenticated (or declared) WebSocket client.

    ``subject`` is the JWT ``sub`` (with WS_AUTH=token the ``client_id`` query parameter).
    ``user_id`` is the user the connection acts for: the JWT ``sub``, or (WS_AUTH=token /
    none) the ``user_id`` it declares (server.ws); a user may hold several sessions.
    ``channels``, ``subs`` and ``roles`` come from the JWT claims of the same names (see the
    module doc).
    """

    subject: str | None
    expires_at: float | None = None
    #: True when the credential proves the subject (a JWT's ``sub``), so it may resume its own
    #: session without ``session_token``; a shared static token proves nothing about who.
    verified: bool = False
    user_id: str | None = None
    #: True when the connection passed WS_AUTH (token or jwt); the ``authenticated``,
    #: ``owner`` and ``claim`` channel rules also need a ``user_id``.
    authenticated: bool = False
    channels: tuple[str, ...] = ()
    subs: tuple[str, ...] = ()
    roles: frozenset[str] = frozenset()

    @property
    def observer(self) -> bool:
        """May read system channels (``tool_activity``)."""
        return OBSERVER_ROLE in self.roles


class TokenRejected(AuthError):
    """A JWT was refused: 401 before the upgrade (``code`` unauthorized or token_expired)."""


class KeySetUnavailable(Unavailable):
    """No JWKS key set could be fetched yet: 503 before the upgrade; retry later."""

    code = "auth_unavailable"


# --- keys ----------------------------------------------------------------------------------------

def load_public_key(value: str) -> tuple[str, Any]:
    """``(algorithm, key)`` from a WS_JWT_PUBLIC_KEY value: an inline PEM or a PEM file's path.
    Raises ValueError saying what is wrong (the caller names the setting)."""
    text = value.strip()
    if "-----BEGIN" in text:
        pem = text.replace("\\n", "\n")
    else:
        path = Path(text).expanduser()
        try:
            pem = path.read_text(encoding="ascii")
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) else "not a PEM text file"
            raise ValueError(f"cannot read {path}: {reason} (give a PEM file's path or the "
                             f"PEM itself)") from None
    if "PRIVATE KEY" in pem:
        raise ValueError("this is a private key: give the public key (openssl pkey -pubout)")
    try:
        if "BEGIN CERTIFICATE" in pem:
            key: Any = x509.load_pem_x509_certificate(pem.encode()).public_key()
        else:
            key = serialization.load_pem_public_key(pem.encode())
    except ValueError:
        raise ValueError("not a PEM public key or certificate") from None
    if isinstance(key, rsa.RSAPublicKey):
        if key.key_size < MIN_RSA_BITS:
            raise ValueError(f"RSA key of {key.key_size} bits: at least {MIN_RSA_BITS} needed")
        return "RS256", key
    if isinstance(key, ec.EllipticCurvePublicKey) and key.curve.name == "secp256r1":
        return "ES256", key
    raise ValueError("unsupported key: RSA (RS256) or EC P-256 (ES256) keys only")


class JwksKeys:
    """The signing keys of a JWKS endpoint, fetched and parsed by PyJWT's ``PyJWKClient``,
    cached here by ``kid`` with bounded refreshes (see the module doc)."""

    def __init__(self, url: str, *, cache_ttl: float, cooldown: float = JWKS_COOLDOWN,
                 timeout: float = JWKS_TIMEOUT) -> None:
        self.url = url
        self.cache_ttl = cache_ttl
        self.cooldown = cooldown
        self.timeout = timeout
        # PyJWKClient's own set cache is off: this class keeps the keys, so that a refresh can
        # fail without losing them and a cache hit never leaves the event loop.
        self.client = jwt.PyJWKClient(url, cache_jwk_set=False, cache_keys=False,
                                      timeout=timeout,
                                      headers={"User-Agent": "switchboard-jwks"})
        self.keys: dict[str, jwt.PyJWK] | None = None
        self.fetches = 0
        self._expires_at = 0.0
        self._retry_at = 0.0  # no fetch before (a failed fetch backs off)
        self._unknown_kid_at = 0.0  # no unknown-kid refresh before
        self._inflight: asyncio.Task[None] | None = None

    async def key(self, kid: str) -> jwt.PyJWK:
        """The key for ``kid``. Raises TokenRejected (unknown kid) or KeySetUnavailable."""
        now = time.monotonic()
        fetched = False
        if (self.keys is None or now >= self._expires_at) and now >= self._retry_at:
            await self._fetch()
            fetched = True
        elif self._inflight is not None:
            await self._fetch()  # a refresh is under way: its keys may have this kid
        key = self.keys.get(kid) if self.keys is not None else None
        if key is None and self.keys is not None and not fetched:
            now = time.monotonic()
            if now >= self._unknown_kid_at and now >= self._retry_at:
                self._unknown_kid_at = now + self.cooldown
                await self._fetch()
                key = self.keys.get(kid)
        if key is not None:
            return key
        if self.keys is None:
            raise KeySetUnavailable("cannot verify tokens right now: the JWKS key set could not "
                                    "be fetched; retry later")
        raise TokenRejected(f"invalid token: unknown key id {_short(kid)!r}")

    async def _fetch(self) -> None:
        """Fetch the set once, however many callers wait for it; never raises."""
        if self._inflight is None:
            self._inflight = asyncio.get_running_loop().create_task(self._run_fetch(),
                                                                    name="jwks-fetch")
        task = self._inflight
        try:  # the thread cannot be cancelled: a waiter gives up, the fetch runs on
            await asyncio.wait_for(asyncio.shield(task), self.timeout + 1)
        except TimeoutError:
            pass

    async def _run_fetch(self) -> None:
        started = time.monotonic()
        self.fetches += 1
        try:
            fetched = await asyncio.to_thread(self.client.get_signing_keys, True)
            keys = {k.key_id: k for k in fetched
                    if k.key_id and k.algorithm_name in ASYMMETRIC_ALGORITHMS}
            if not keys:
                raise jwt.PyJWKClientError("the JWKS has no RS256 or ES256 signing key with a "
                                           "kid")
        except Exception as exc:  # any failure keeps the old keys and backs off
            self._retry_at = time.monotonic() + self.cooldown
            JWKS_FETCH_FAILED.inc()
            log.warning("jwks_fetch_failed", url=url_for_logs(self.url),
                        error=f"{type(exc).__name__}: {exc}", kept_keys=len(self.keys or ()),
                        retry_in=self.cooldown)
        else:
            self.keys = keys
            self._expires_at = time.monotonic() + self.cache_ttl
            self._retry_at = 0.0
            JWKS_FETCH_OK.inc()
            log.info("jwks_fetched", url=url_for_logs(self.url), keys=sorted(keys),
                     ms=round((time.monotonic() - started) * 1000, 1))
        finally:
            self._inflight = None


# --- verification --------------------------------------------------------------------------------

class JwtVerifier:
    """Verifies client JWTs with the keys configured in ``settings`` (see the module doc)."""

    def __init__(self, settings: Settings) -> None:
        self.static_keys: dict[str, Any] = {}
        if settings.ws_jwt_secret:
            self.static_keys["HS256"] = settings.ws_jwt_secret
        if settings.ws_jwt_public_key:
            algorithm, key = load_public_key(settings.ws_jwt_public_key)
            self.static_keys[algorithm] = key
        self.jwks = (JwksKeys(settings.ws_jwks_url, cache_ttl=settings.ws_jwks_cache_ttl)
                     if settings.ws_jwks_url else None)
        accepted = set(self.static_keys)
        if self.jwks is not None:
            accepted.update(ASYMMETRIC_ALGORITHMS)
        self.algorithms = tuple(sorted(accepted))
        self.audience = list(settings.ws_jwt_audience) or None
        self.issuer = (settings.ws_jwt_issuer[0] if len(settings.ws_jwt_issuer) == 1
                       else list(settings.ws_jwt_issuer) or None)
        self.required = ["exp", "sub"]
        if self.audience:
            self.required.append("aud")
        if self.issuer:
            self.required.append("iss")

    async def verify(self, token: str) -> Identity:
        """The identity a token proves. Raises TokenRejected (401) or KeySetUnavailable
        (503)."""
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:
            raise TokenRejected(f"invalid token: {exc}") from None
        algorithm = header.get("alg")
        if algorithm not in self.algorithms:
            raise TokenRejected(f"invalid token: algorithm {_short(algorithm)!r} is not "
                                f"accepted (accepted: {', '.join(self.algorithms)})")
        key = self.static_keys.get(algorithm)
        if key is None:
            assert self.jwks is not None  # the algorithm is accepted only through the JWKS
            kid = header.get("kid")
            if not isinstance(kid, str) or not kid:
                raise TokenRejected("invalid token: no kid header (required with WS_JWKS_URL)")
            key = await self.jwks.key(kid)
            if key.algorithm_name != algorithm:
                raise TokenRejected(f"invalid token: key {_short(kid)!r} is for "
                                    f"{key.algorithm_name}, the token says {algorithm}")
        try:
            claims = jwt.decode(token, key, algorithms=[algorithm], audience=self.audience,
                                issuer=self.issuer,
                                options={"require": self.required,
                                         "enforce_minimum_key_length": True})
        except jwt.ExpiredSignatureError:
            raise TokenRejected("token expired", code="token_expired") from None
        except jwt.InvalidAudienceError as exc:
            hint = "" if self.audience else " (set WS_JWT_AUDIENCE to accept tokens with aud)"
            raise TokenRejected(f"invalid token: {exc}{hint}") from None
        except jwt.PyJWTError as exc:  # InvalidTokenError, and InvalidKeyError (weak key)
            raise TokenRejected(f"invalid token: {exc}") from None
        return identity_from_claims(claims)


def identity_from_claims(claims: Mapping[str, Any]) -> Identity:
    """The identity of verified claims. Raises TokenRejected for a malformed claim."""
    subject = claims.get("sub")
    if not isinstance(subject, str) or not valid_client_id(subject):
        raise TokenRejected("invalid token: sub must be a client id (1-128 letters, digits or "
                            "-_.:@)")
    allow: Any = claims.get("channels", ())
    subs: Any = ()
    if isinstance(allow, Mapping):
        unknown = sorted(set(allow) - {"allow", "subs"})
        if unknown:
            raise TokenRejected(f"invalid token: channels claim: unknown key {unknown[0]!r} "
                                f"(expected allow, subs)")
        allow, subs = allow.get("allow", ()), allow.get("subs", ())
    patterns = _claim_list("channels", allow, MAX_CLAIM_ENTRIES)
    for pattern in patterns:
        try:
            validate_pattern(pattern)
        except ValueError as exc:
            raise TokenRejected(f"invalid token: channels claim: {_short(pattern)!r}: {exc}"
                                ) from None
    roles: Any = claims.get("roles", ())
    if isinstance(roles, str):
        roles = (roles,)
    return Identity(
        subject=subject, expires_at=float(claims["exp"]), verified=True, user_id=subject,
        authenticated=True, channels=patterns,
        subs=_claim_list("channels.subs", subs, MAX_CLAIM_ENTRIES),
        roles=frozenset(_claim_list("roles", roles, MAX_ROLES)))


def _claim_list(name: str, value: Any, limit: int) -> tuple[str, ...]:
    if not isinstance(value, Sequence) or isinstance(value, str | bytes):
        raise TokenRejected(f"invalid token: {name} claim must be a list of strings")
    if len(value) > limit:
        raise TokenRejected(f"invalid token: {name} claim has more than {limit} entries")
    for item in value:
        if not isinstance(item, str) or not 0 < len(item) <= MAX_CLAIM_ITEM:
            raise TokenRejected(f"invalid token: {name} claim entries must be strings of 1-"
                                f"{MAX_CLAIM_ITEM} characters")
    return tuple(value)


def _short(value: Any, limit: int = 64) -> str:
    """An attacker-controlled header value, bounded for messages and logs."""
    text = value if isinstance(value, str) else repr(value)
    return text if len(text) <= limit else text[:limit] + "…"
