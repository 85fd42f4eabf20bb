"""Settings, read from environment variables (and optionally a ``.env`` file) and validated once.

Every variable has a safe default. A bad value raises :class:`ConfigError` whose message is one
line naming the variable (and, for a value read from a ``.env`` file, the file and line);
``run_websocket_server.py`` prints it and exits with status 2. ``switchboard --help`` is
generated from :data:`SETTINGS_DOC`, and tests/test_readme.py holds the README's configuration
table to it row by row.

Misspelt names: a variable that is not a setting but is close to one's name (``BROKER_ULR``,
``WS_PROT``, ``api_token``) is reported by :meth:`Settings.load`: as a warning when it comes
from the environment (shared with the shell, the container runtime and other programs, so it
may be someone else's), and as an error in a ``.env`` file (the file is ours: a misspelling
there is a mistake, and starting without the setting would hide it).
"""

from __future__ import annotations

import difflib
import ipaddress
import os
import re
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from server.errors import ConfigError

LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})
#: HS256 keys shorter than the hash output are guessable offline (RFC 7518 section 3.2). The
#: same floor applies to WEBHOOK_SECRET, and to API_TOKEN when the API is reachable beyond
#: loopback.
MIN_SECRET_BYTES = 32
#: A secret made of fewer different characters than this ("aaaa…", "passwordpassword…") is
#: weak whatever its length.
MIN_SECRET_DISTINCT_CHARS = 8
#: How to make a strong token (quoted in error messages and the README).
TOKEN_RECIPE = "python3 -c 'import secrets; print(secrets.token_urlsafe(32))'"
#: A name at least this similar to a setting's (difflib ratio, compared in upper case) is taken
#: for a misspelling of it: one swapped, missing or doubled letter in a name of six or more
#: characters scores 0.85 or more, while other programs' variables (TIMEOUT, WEBHOOK_URL,
#: NODE_ENV, REDIS_URL, API_KEY) stay below.
MISSPELLING_CUTOFF = 0.85


def _int(name: str, raw: str, lo: int, hi: int) -> int:
    try:
        value = int(raw.strip())
    except ValueError:
        raise ConfigError(f"{name}: expected an integer, got {raw!r}") from None
    if not lo <= value <= hi:
        raise ConfigError(f"{name}: must be between {lo} and {hi}, got {value}")
    return value


def _float(name: str, raw: str, lo: float, hi: float) -> float:
    try:
        value = float(raw.strip())
    except ValueError:
        raise ConfigError(f"{name}: expected a number of seconds, got {raw!r}") from None
    if not lo <= value <= hi:
        raise ConfigError(f"{name}: must be between {lo:g} and {hi:g}, got {value:g}")
    return value


def _bool(name: str, raw: str) -> bool:
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off", ""):
        return False
    raise ConfigError(f"{name}: expected true/false, got {raw!r}")


def _choice(name: str, raw: str, choices: tuple[str, ...]) -> str:
    value = raw.strip().lower()
    if value not in choices:
        raise ConfigError(f"{name}: expected one of {', '.join(choices)}, got {raw!r}")
    return value


def _list(raw: str) -> tuple[str, ...]:
    return tuple(item.strip() for item in raw.split(",") if item.strip())


def _host(name: str, raw: str) -> str:
    value = raw.strip()
    if not value or any(c.isspace() for c in value) or "/" in value:
        raise ConfigError(f"{name}: expected a host name or IP address, got {raw!r}")
    return value


def _url(name: str, raw: str, schemes: tuple[str, ...]) -> str:
    value = raw.strip()
    if not value:
        return ""
    parts = urlsplit(value)
    if parts.scheme not in schemes or (parts.scheme not in ("memory",) and not parts.netloc):
        raise ConfigError(f"{name}: expected a {'/'.join(schemes)} URL, got {value!r}")
    return value


def _origins(name: str, raw: str) -> tuple[str, ...]:
    origins = _list(raw)
    for origin in origins:
        if origin == "*":
            continue
        parts = urlsplit(origin)
        if parts.scheme not in ("http", "https") or not parts.netloc or parts.path not in ("",):
            raise ConfigError(
                f"{name}: each origin must look like https://app.example.com (no path), "
                f"got {origin!r}"
            )
    return origins


def _networks(name: str, raw: str) -> tuple[str, ...]:
    items = _list(raw)
    for item in items:
        try:
            ipaddress.ip_network(item, strict=False)
        except ValueError:
            raise ConfigError(f"{name}: expected IP addresses or CIDR networks, got {item!r}"
                              ) from None
    return items


def is_loopback(host: str) -> bool:
    if host in LOOPBACK_HOSTS:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def is_weak_secret(secret: str) -> bool:
    """Shorter than :data:`MIN_SECRET_BYTES`, or a repetition of a few characters."""
    return (len(secret.encode()) < MIN_SECRET_BYTES
            or len(set(secret)) < MIN_SECRET_DISTINCT_CHARS)


def _may_share_a_port(host_a: str, host_b: str) -> bool:
    """Whether two listeners on these hosts would clash on one port: always, unless both are
    different, specific IP addresses (a wildcard or a host name may cover the other)."""
    try:
        a, b = ipaddress.ip_address(host_a), ipaddress.ip_address(host_b)
    except ValueError:
        return True
    return a == b or a.is_unspecified or b.is_unspecified


@dataclass(frozen=True, slots=True)
class Settings:
    """All runtime settings. Build with :meth:`from_env`; tests use ``Settings(**overrides)``."""

    ws_host: str = "0.0.0.0"
    ws_port: int = 9004
    api_host: str = ""  # "" means: loopback without API_TOKEN, else WS_HOST
    api_port: int = 9005
    ws_heartbeat: float = 30.0
    ws_timeout: float = 300.0
    max_connections: int = 10_000
    max_connections_per_ip: int = 0
    max_message_size: int = 1024 * 1024
    history_limit: int = 1000
    history_bytes: int = 16 * 1024 * 1024  # twice send_queue_bytes: see HISTORY_BYTES
    session_ttl: float = 300.0
    max_sessions: int = 20_000
    max_sessions_per_user: int = 16
    max_channels_per_client: int = 100
    max_json_depth: int = 64
    send_queue_frames: int = 256  # well below history_limit: see SEND_QUEUE_FRAMES
    send_queue_bytes: int = 8 * 1024 * 1024
    api_token: str = field(default="", repr=False)
    api_insecure: bool = False
    api_max_body: int = 1024 * 1024
    api_rate_limit: float = 0.0
    api_rate_burst: int = 200
    ws_rate_limit: float = 100.0
    ws_rate_burst: int = 200
    ws_compression: bool = False
    request_header_timeout: float = 15.0
    request_body_timeout: float = 30.0
    ws_auth: str = "none"
    ws_auth_token: str = field(default="", repr=False)
    ws_jwt_secret: str = field(default="", repr=False)
    ws_jwt_public_key: str = field(default="", repr=False)
    ws_jwks_url: str = ""
    ws_jwks_cache_ttl: float = 300.0
    ws_jwt_audience: tuple[str, ...] = ()
    ws_jwt_issuer: tuple[str, ...] = ()
    allowed_origins: tuple[str, ...] = ()
    trusted_proxies: tuple[str, ...] = ()
    channels: tuple[str, ...] = ()
    channel_rules: str = ""
    subscribe_webhook_url: str = ""
    publish_webhook_url: str = ""
    channel_webhook_timeout: float = 5.0
    presence_limit: int = 1000
    channel_history_bytes: int = 256 * 1024
    channel_history_channels: int = 1000
    channel_history_ttl: float = 3600.0
    events_webhook_url: str = ""
    events_queue_size: int = 10_000
    events_batch_size: int = 100
    events_batch_wait: float = 0.5
    chat_webhook_url: str = ""
    tool_webhook_url: str = ""
    webhook_timeout: float = 30.0
    webhook_secret: str = field(default="", repr=False)
    call_tool_timeout: float = 30.0
    permission_timeout: float = 60.0
    idempotency_ttl: float = 300.0
    broker_url: str = "memory://"
    workers: int = 1
    node_id: str = ""
    log_level: str = "info"
    log_format: str = "console"
    shutdown_timeout: float = 10.0
    #: Signs observer tickets when no API_TOKEN is set: random per process group (workers get
    #: the parent's settings, so they share it). Not an environment variable.
    ticket_key: bytes = field(default_factory=lambda: secrets.token_bytes(32), repr=False,
                              compare=False)

    @property
    def effective_api_host(self) -> str:
        """Where the API listens: API_HOST, else WS_HOST when a token protects it, else
        loopback only (an unauthenticated push API is never exposed by default)."""
        if self.api_host:
            return self.api_host
        return self.ws_host if self.api_token else "127.0.0.1"

    @property
    def sessions_survive_restart(self) -> bool:
        """Whether sessions live outside this process (Redis) and so survive its restart."""
        return urlsplit(self.broker_url).scheme in ("redis", "rediss")

    @property
    def session_durability(self) -> str:
        """What a restart does to sessions (said at start-up and shutdown)."""
        if self.sessions_survive_restart:
            return "sessions live in Redis: clients resume on any node, across restarts"
        return ("sessions live in this process (memory://): a restart ends them all; "
                "BROKER_URL=redis://... keeps them")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None,
                 env_file: str | os.PathLike[str] | None = None) -> Settings:
        """Read and validate every setting. Raises ConfigError naming the bad variable.

        Values already in the environment win over those in ``env_file`` (``.env`` style:
        ``KEY=value`` lines, ``#`` comments).
        """
        return cls.load(environ, env_file).settings

    @classmethod
    def load(cls, environ: Mapping[str, str] | None = None,
             env_file: str | os.PathLike[str] | None = None) -> LoadedSettings:
        """:meth:`from_env`, plus what an operator should hear about: variables that look
        like misspelt settings, and where each setting's value came from.

        Raises ConfigError for a bad value (prefixed with ``file:line`` when it came from
        ``env_file``), a malformed ``env_file`` line, or a misspelt name in ``env_file``.
        """
        environment = os.environ if environ is None else environ
        entries: dict[str, EnvFileEntry] = {}
        if env_file is not None and Path(env_file).is_file():
            entries = read_env_file(Path(env_file))
        unknown: list[UnknownVariable] = []
        for name, entry in entries.items():
            if name in KNOWN_VARIABLES:
                continue
            guess = likely_setting(name)
            if guess is not None:
                raise ConfigError(f"{entry.where}: {name} is not a setting; did you mean "
                                  f"{guess}?")
            unknown.append(UnknownVariable(name, entry.where, None))
        for name in environment:
            guess = likely_setting(name)
            if guess is not None:
                unknown.append(UnknownVariable(name, "environment", guess))
        sources = {name: entry.where for name, entry in entries.items()}
        sources.update(dict.fromkeys(environment.keys() & KNOWN_VARIABLES, "environment"))
        env = {name: entry.value for name, entry in entries.items()}
        env.update(environment)
        try:
            values: dict[str, Any] = {}
            for spec in SETTINGS_DOC:
                raw = env.get(spec.env)
                if raw is None or (raw.strip() == "" and spec.env not in _EMPTY_ALLOWED):
                    continue
                values[spec.attr] = spec.parse(spec.env, raw)
            settings = cls(**values)
            settings.check()
        except ConfigError as exc:
            variable = exc.message.partition(":")[0]
            where = sources.get(variable, "environment")
            if where == "environment":
                raise
            raise ConfigError(f"{where}: {exc.message}") from None
        return LoadedSettings(settings, tuple(unknown),
                              {name: sources[name] for name in sources
                               if name in KNOWN_VARIABLES})

    def check(self) -> None:
        """Cross-field rules (each message names the variable to change)."""
        api_host = self.effective_api_host
        if self.ws_port == self.api_port and _may_share_a_port(self.ws_host, api_host):
            raise ConfigError(
                f"API_PORT: must differ from WS_PORT (both are {self.api_port}): the WebSocket "
                f"app and the HTTP API each need a port of their own")
        if not self.api_token and not self.api_insecure and not is_loopback(api_host):
            raise ConfigError(
                f"API_TOKEN: required when the API listens beyond loopback "
                f"(API_HOST={api_host}); set API_TOKEN, or API_INSECURE=true "
                f"to expose an unauthenticated push API on purpose"
            )
        if (self.api_token and not self.api_insecure and not is_loopback(api_host)
                and is_weak_secret(self.api_token)):
            raise ConfigError(
                f"API_TOKEN: too weak for an API listening beyond loopback (API_HOST={api_host}"
                f"): use {MIN_SECRET_BYTES}+ random bytes, e.g. "
                f"export API_TOKEN=$({TOKEN_RECIPE}); or set API_HOST=127.0.0.1 to keep the "
                f"API local, or API_INSECURE=true to accept this token on purpose"
            )
        self._check_jwt()
        if self.webhook_secret and len(self.webhook_secret.encode()) < MIN_SECRET_BYTES:
            raise ConfigError(f"WEBHOOK_SECRET: must be at least {MIN_SECRET_BYTES} bytes "
                              f"(e.g. python -c 'import secrets; print(secrets.token_hex(32))')")
        if self.ws_auth == "token" and not self.ws_auth_token:
            raise ConfigError("WS_AUTH_TOKEN: required when WS_AUTH=token")
        scheme = urlsplit(self.broker_url).scheme
        if self.workers > 1 and scheme == "memory":
            raise ConfigError(
                "WORKERS: more than one worker needs a shared broker; set BROKER_URL=redis://…"
            )
        if self.send_queue_bytes < self.max_message_size:
            raise ConfigError("SEND_QUEUE_BYTES: must be at least MAX_MESSAGE_SIZE")
        if self.history_bytes - self.history_bytes // 8 < self.send_queue_bytes:
            # A client closed with 4008 missed its whole send queue, and history keeps at
            # least 7/8 of HISTORY_BYTES: below this it could never resume completely.
            raise ConfigError(f"HISTORY_BYTES: must be at least 8/7 of SEND_QUEUE_BYTES "
                              f"({-(-self.send_queue_bytes * 8 // 7)}), or a slow consumer "
                              f"closed with 4008 can never resume completely")
        if self.max_sessions < self.max_connections:
            raise ConfigError(f"MAX_SESSIONS: must be at least MAX_CONNECTIONS "
                              f"({self.max_connections}): connected sessions are never evicted")
        self._check_channel_rules()

    def _check_jwt(self) -> None:
        if self.ws_auth != "jwt":
            return
        if not (self.ws_jwt_secret or self.ws_jwt_public_key or self.ws_jwks_url):
            raise ConfigError("WS_JWT_SECRET: WS_AUTH=jwt needs WS_JWT_SECRET (HS256), "
                              "WS_JWT_PUBLIC_KEY or WS_JWKS_URL (RS256/ES256)")
        if self.ws_jwt_secret and len(self.ws_jwt_secret.encode()) < MIN_SECRET_BYTES:
            raise ConfigError(f"WS_JWT_SECRET: must be at least {MIN_SECRET_BYTES} bytes "
                              f"for HS256 (RFC 7518 section 3.2)")
        if self.ws_jwt_public_key and self.ws_jwks_url:
            raise ConfigError("WS_JWT_PUBLIC_KEY: set either WS_JWT_PUBLIC_KEY or WS_JWKS_URL, "
                              "not both")
        if self.ws_jwt_public_key:
            from server.auth import load_public_key

            try:
                load_public_key(self.ws_jwt_public_key)
            except ValueError as exc:
                raise ConfigError(f"WS_JWT_PUBLIC_KEY: {exc}") from None
        jwks = urlsplit(self.ws_jwks_url)
        if jwks.scheme == "http" and not is_loopback(jwks.hostname or ""):
            raise ConfigError("WS_JWKS_URL: must be https:// (plain http only on loopback): "
                              "whoever can alter the key set can mint tokens")

    def _check_channel_rules(self) -> None:
        """CHANNEL_RULES parses and each ``webhook`` rule has its URL (see
        server.channel_rules)."""
        if not self.channel_rules:
            return
        from server.channel_rules import load_channel_rules
        from server.gateway import SYSTEM_CHANNELS

        load_channel_rules(self.channel_rules, system_channels=SYSTEM_CHANNELS,
                           allow_list=self.channels,
                           subscribe_webhook=bool(self.subscribe_webhook_url),
                           publish_webhook=bool(self.publish_webhook_url))

    def public_dict(self) -> dict[str, Any]:
        """Settings without secrets, for logs and ``/status``."""
        out: dict[str, Any] = {}
        for f in fields(self):
            if f.name in _SECRETS:
                out[f.name] = bool(getattr(self, f.name))
            else:
                out[f.name] = getattr(self, f.name)
        return out


_SECRETS = frozenset({"api_token", "ws_auth_token", "ws_jwt_secret", "webhook_secret",
                      # not secret, but a PEM is long: shown as set / unset
                      "ws_jwt_public_key", "ticket_key"})
_EMPTY_ALLOWED = frozenset({"ALLOWED_ORIGINS", "CHANNELS"})


@dataclass(frozen=True, slots=True)
class SettingSpec:
    env: str
    attr: str
    parse: Callable[[str, str], Any]
    default: str
    doc: str


def _spec(env: str, parse: Callable[[str, str], Any], default: str, doc: str) -> SettingSpec:
    return SettingSpec(env, env.lower(), parse, default, doc)


def _port(n: str, r: str) -> int:
    return _int(n, r, 1, 65535)


def _http_url(n: str, r: str) -> str:
    return _url(n, r, ("http", "https"))


#: Every environment variable, its parser, default and one-line meaning (the README's table).
SETTINGS_DOC: tuple[SettingSpec, ...] = (
    _spec("WS_HOST", _host, "0.0.0.0", "Interface the WebSocket app listens on."),
    _spec("WS_PORT", _port, "9004", "WebSocket port (paths /, /ws, /ws/chat, /ws/mcplog, "
          "/agent_backend/ws/{session_id}; also GET /ws/status, /ws/handlers)."),
    _spec("API_HOST", _host, "WS_HOST if API_TOKEN set, else 127.0.0.1",
          "Interface of the HTTP API."),
    _spec("API_PORT", _port, "9005", "HTTP API port."),
    _spec("WS_HEARTBEAT", lambda n, r: _float(n, r, 0, 3600), "30",
          "A connection from which nothing arrived for this many seconds is pinged; one whose "
          "pong (or any frame) has not arrived half of it later is dropped without a close "
          "frame (the client sees 1006): within 1.5-1.75 × this. 0 disables."),
    _spec("WS_TIMEOUT", lambda n, r: _float(n, r, 1, 86400), "300",
          "Close a connection from which nothing arrived, not even a heartbeat pong, for this "
          "many seconds (close 4011). A silent listener that answers pings stays connected."),
    _spec("MAX_CONNECTIONS", lambda n, r: _int(n, r, 1, 10_000_000), "10000",
          "Concurrent WebSocket connections; beyond it the upgrade gets HTTP 503."),
    _spec("MAX_CONNECTIONS_PER_IP", lambda n, r: _int(n, r, 0, 10_000_000), "0",
          "Concurrent connections from one IP (0 = no limit); beyond it HTTP 429."),
    _spec("MAX_MESSAGE_SIZE", lambda n, r: _int(n, r, 256, 64 * 1024 * 1024), "1048576",
          "Largest client frame in bytes (that size is accepted); larger closes with 1009."),
    _spec("HISTORY_LIMIT", lambda n, r: _int(n, r, 1, 1_000_000), "1000",
          "Frames of history kept per session (both directions)."),
    _spec("HISTORY_BYTES", lambda n, r: _int(n, r, 1024, 2**40), "16777216",
          "Bytes of encoded frames one session's history holds at most (both directions); "
          "past it the oldest go, down to 7/8 of it (the newest is always kept). At least "
          "8/7 of SEND_QUEUE_BYTES; the default, twice it, also covers what sat in TCP "
          "buffers when a slow consumer was closed with 4008, so it can still resume "
          "completely."),
    _spec("SESSION_TTL", lambda n, r: _float(n, r, 0, 30 * 86400), "300",
          "Seconds a dropped session is kept for resume."),
    _spec("MAX_SESSIONS", lambda n, r: _int(n, r, 1, 100_000_000), "20000",
          "Sessions one node keeps (connected or waiting for resume). At the cap the session "
          "offline longest is ended to make room (its resume then gets 4003); a connected one "
          "never is. At least MAX_CONNECTIONS."),
    _spec("MAX_SESSIONS_PER_USER", lambda n, r: _int(n, r, 1, 1_000_000), "16",
          "Sessions one user (JWT sub, or the connection's user_id) may hold at once, over "
          "every node. At the cap the user's session offline longest is ended to make room; "
          "when all are connected the new connection is closed with 4012."),
    _spec("MAX_CHANNELS_PER_CLIENT", lambda n, r: _int(n, r, 1, 1_000_000), "100",
          "Channels one session may subscribe to; beyond it subscribe gets an error frame "
          "too_many_channels (the connection stays open)."),
    _spec("MAX_JSON_DEPTH", lambda n, r: _int(n, r, 2, 128), "64",
          "Deepest JSON nesting accepted in client frames, API bodies, tool results and "
          "webhook answers (error json_too_deep / HTTP 422 beyond); well below what the "
          "encoder can write back (254 levels)."),
    _spec("SEND_QUEUE_FRAMES", lambda n, r: _int(n, r, 1, 10_000_000), "256",
          "Frames queued for one slow connection before it is closed with 4008. Keep it well "
          "below HISTORY_LIMIT: the client resumes completely only if everything it missed "
          "(this queue plus what sat in TCP buffers) is still in history."),
    _spec("SEND_QUEUE_BYTES", lambda n, r: _int(n, r, 1024, 2**40), "8388608",
          "Bytes queued for one slow connection before it is closed with 4008."),
    _spec("API_TOKEN", lambda n, r: r.strip(), "(unset)",
          "Bearer token the HTTP API requires (also accepted as X-API-Key); at least 32 "
          "bytes (8+ different characters) when the API listens beyond loopback."),
    _spec("API_INSECURE", _bool, "false",
          "Allow an unauthenticated API, or a weak API_TOKEN, on a non-loopback interface."),
    _spec("API_MAX_BODY", lambda n, r: _int(n, r, 1024, 2**31), "1048576",
          "Largest HTTP request body in bytes (413 beyond)."),
    _spec("API_RATE_LIMIT", lambda n, r: _float(n, r, 0, 1e9), "0",
          "API requests per second per token/IP (0 = unlimited); 429 beyond."),
    _spec("API_RATE_BURST", lambda n, r: _int(n, r, 1, 10_000_000), "200",
          "Burst size of the API rate limit."),
    _spec("WS_RATE_LIMIT", lambda n, r: _float(n, r, 0, 1e9), "100",
          "Client frames per second per connection (0 = unlimited)."),
    _spec("WS_RATE_BURST", lambda n, r: _int(n, r, 1, 10_000_000), "200",
          "Burst size of the frame rate limit."),
    _spec("WS_COMPRESSION", _bool, "false", "Offer permessage-deflate."),
    _spec("REQUEST_HEADER_TIMEOUT", lambda n, r: _float(n, r, 1, 3600), "15",
          "Seconds an HTTP connection (either port) gets to send complete request headers, "
          "and may sit idle between keep-alive requests, before it is closed (slowloris)."),
    _spec("REQUEST_BODY_TIMEOUT", lambda n, r: _float(n, r, 1, 3600), "30",
          "Seconds an API request gets to send its whole body (408 beyond)."),
    _spec("WS_AUTH", lambda n, r: _choice(n, r, ("none", "token", "jwt")), "none",
          "Client authentication: none, token (WS_AUTH_TOKEN) or jwt (WS_JWT_SECRET, "
          "WS_JWT_PUBLIC_KEY or WS_JWKS_URL)."),
    _spec("WS_AUTH_TOKEN", lambda n, r: r.strip(), "(unset)",
          "Static token clients present when WS_AUTH=token."),
    _spec("WS_JWT_SECRET", lambda n, r: r.strip(), "(unset)",
          "HS256 secret for client JWTs when WS_AUTH=jwt (32+ bytes)."),
    _spec("WS_JWT_PUBLIC_KEY", lambda n, r: r.strip(), "(unset)",
          "RS256 (RSA 2048+) or ES256 (EC P-256) public key for client JWTs: an inline PEM "
          "(\\n escapes allowed) or a PEM file's path; a certificate works too."),
    _spec("WS_JWKS_URL", _http_url, "(unset)",
          "JWKS endpoint whose RS256/ES256 keys verify client JWTs by kid (https, or http on "
          "loopback); not with WS_JWT_PUBLIC_KEY."),
    _spec("WS_JWKS_CACHE_TTL", lambda n, r: _float(n, r, 10, 86400), "300",
          "Seconds JWKS keys are kept before a refetch; an unknown kid refetches at most once "
          "per 30 s."),
    _spec("WS_JWT_AUDIENCE", lambda n, r: _list(r), "(unchecked)",
          "Comma-separated accepted aud values; when unset, tokens that carry aud are refused."),
    _spec("WS_JWT_ISSUER", lambda n, r: _list(r), "(unchecked)",
          "Comma-separated accepted iss values (the claim is then required)."),
    _spec("ALLOWED_ORIGINS", _origins, "(any)",
          "Comma-separated exact Origins allowed to open sockets and call the API from a "
          "browser."),
    _spec("TRUSTED_PROXIES", _networks, "(none)",
          "Comma-separated reverse-proxy IPs/CIDRs whose X-Forwarded-For names the client "
          "(per-IP cap, API rate limit, logs); others' X-Forwarded-For is ignored."),
    _spec("CHANNELS", lambda n, r: _list(r), "(any)", "Comma-separated channel allow-list."),
    _spec("CHANNEL_RULES", lambda n, r: r.strip(), "(unset)",
          "Channel permissions: inline JSON or a .json/.toml file mapping channel patterns to "
          "rules: who may subscribe, publish, see presence, get join/leave frames, fetch "
          "history (see Channel rules). Unset: any channel may be subscribed to, nobody "
          "publishes."),
    _spec("SUBSCRIBE_WEBHOOK_URL", _http_url, "(unset)",
          "Backend asked about subscriptions (and presence) on channels whose rule is "
          "webhook; signed like the other webhooks."),
    _spec("PUBLISH_WEBHOOK_URL", _http_url, "(unset)",
          "Backend that may reject or rewrite every client publication before delivery."),
    _spec("CHANNEL_WEBHOOK_TIMEOUT", lambda n, r: _float(n, r, 0.1, 60), "5",
          "Seconds the subscribe/publish webhooks get; no answer in time is a refusal."),
    _spec("PRESENCE_LIMIT", lambda n, r: _int(n, r, 1, 100_000), "1000",
          "Most sessions one presence answer lists (GET /channels/{channel}/presence, the "
          "presence frame); the counts are always whole, truncated says when the list is "
          "not."),
    _spec("CHANNEL_HISTORY_BYTES", lambda n, r: _int(n, r, 1024, 2**31), "262144",
          "Bytes of recent frames one channel's history keeps (its rule's history sets how "
          "many frames); past it the oldest go. A channel_history answer also stops at half "
          "of SEND_QUEUE_BYTES."),
    _spec("CHANNEL_HISTORY_CHANNELS", lambda n, r: _int(n, r, 1, 10_000_000), "1000",
          "Channels whose history is kept at once; beyond it the one written least recently "
          "is dropped."),
    _spec("CHANNEL_HISTORY_TTL", lambda n, r: _float(n, r, 1, 30 * 86400), "3600",
          "Seconds a channel's history is kept after its last frame."),
    _spec("EVENTS_WEBHOOK_URL", _http_url, "(unset)",
          "Backend that receives lifecycle events (sessions started/ended, channels "
          "occupied/vacated, members added/removed), batched, signed and retried off the "
          "delivery path, exactly once over the cluster."),
    _spec("EVENTS_QUEUE_SIZE", lambda n, r: _int(n, r, 1, 10_000_000), "10000",
          "Lifecycle events waiting for EVENTS_WEBHOOK_URL; beyond it new events are dropped "
          "(counted in switchboard_events_total)."),
    _spec("EVENTS_BATCH_SIZE", lambda n, r: _int(n, r, 1, 10_000), "100",
          "Most events in one POST to EVENTS_WEBHOOK_URL."),
    _spec("EVENTS_BATCH_WAIT", lambda n, r: _float(n, r, 0, 60), "0.5",
          "Seconds the first event of a batch waits for more before the POST."),
    _spec("CHAT_WEBHOOK_URL", lambda n, r: _url(n, r, ("http", "https")), "(echo)",
          "Backend that answers chat messages (JSON or streamed)."),
    _spec("TOOL_WEBHOOK_URL", lambda n, r: _url(n, r, ("http", "https")), "(unset)",
          "Backend that runs tools not in the local registry."),
    _spec("WEBHOOK_TIMEOUT", lambda n, r: _float(n, r, 0.1, 3600), "30",
          "Seconds to wait for a webhook backend."),
    _spec("WEBHOOK_SECRET", lambda n, r: r.strip(), "(unset)",
          "Signs every webhook request (X-Switchboard-Signature: sha256=HMAC of "
          "timestamp.body) so backends can check it came from the gateway; 32+ bytes."),
    _spec("CALL_TOOL_TIMEOUT", lambda n, r: _float(n, r, 0.1, 3600), "30",
          "Default seconds POST /call_tool waits for the client (504 beyond), and the longest "
          "a server-side tool may run (a failed call beyond)."),
    _spec("PERMISSION_TIMEOUT", lambda n, r: _float(n, r, 0.1, 3600), "60",
          "Seconds a high-risk tool waits for permission_response."),
    _spec("IDEMPOTENCY_TTL", lambda n, r: _float(n, r, 1, 86400), "300",
          "Seconds an idempotency_key is remembered."),
    _spec("BROKER_URL", lambda n, r: _url(n, r, ("memory", "redis", "rediss")), "memory://",
          "memory:// (one process) or redis://host:port/db to scale out."),
    _spec("WORKERS", lambda n, r: _int(n, r, 1, 256), "1",
          "Processes sharing both ports (needs a redis BROKER_URL when > 1)."),
    _spec("NODE_ID", lambda n, r: r.strip(), "(hostname-pid)", "This node's name in a cluster."),
    _spec("LOG_LEVEL", lambda n, r: _choice(n, r, ("debug", "info", "warning", "error")),
          "info", "Log level."),
    _spec("LOG_FORMAT", lambda n, r: _choice(n, r, ("json", "console")), "console",
          "json (one object per line) or console."),
    _spec("SHUTDOWN_TIMEOUT", lambda n, r: _float(n, r, 0, 600), "10",
          "Seconds to finish in-flight work on SIGINT/SIGTERM."),
)


#: Every variable Switchboard reads.
KNOWN_VARIABLES = frozenset(spec.env for spec in SETTINGS_DOC)
_KNOWN_SORTED = sorted(KNOWN_VARIABLES)


def likely_setting(name: str) -> str | None:
    """The setting ``name`` is probably a misspelling of (``ws_port`` → ``WS_PORT``,
    ``BROKER_ULR`` → ``BROKER_URL``); None when ``name`` is a setting or unlike any."""
    if name in KNOWN_VARIABLES:
        return None
    matches = difflib.get_close_matches(name.upper(), _KNOWN_SORTED, n=1,
                                        cutoff=MISSPELLING_CUTOFF)
    return matches[0] if matches else None


@dataclass(frozen=True, slots=True)
class UnknownVariable:
    """A variable that is not a setting: its name, where it was set (``environment`` or
    ``/path/.env:3``) and the setting it looks like a misspelling of, if any."""

    name: str
    where: str
    did_you_mean: str | None


@dataclass(frozen=True, slots=True)
class LoadedSettings:
    """What :meth:`Settings.load` found: the settings, variables that are not settings, and
    where each setting that was set came from (``environment`` or ``/path/.env:3``)."""

    settings: Settings
    unknown: tuple[UnknownVariable, ...] = ()
    sources: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class EnvFileEntry:
    value: str
    where: str  # "/path/.env:3"


_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def read_env_file(path: Path) -> dict[str, EnvFileEntry]:
    """``KEY=value`` lines (``export KEY=value`` too; blank lines and ``#`` comments skipped;
    one pair of matching quotes around a value removed). A line that is none of these is a
    ConfigError naming the file and line."""
    location = path.resolve()
    out: dict[str, EnvFileEntry] = {}
    for number, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        key, equals, value = line.partition("=")
        key = key.strip().removeprefix("export ").strip()
        if not equals or not _ENV_NAME.fullmatch(key):
            shown = line if len(line) <= 60 else line[:57] + "..."
            raise ConfigError(f"{location}:{number}: expected KEY=value, got {shown!r}")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        out[key] = EnvFileEntry(value, f"{location}:{number}")
    return out
