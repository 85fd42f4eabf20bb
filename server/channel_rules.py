"""Channel permissions: ``CHANNEL_RULES`` parsed, validated and asked (no I/O, no aiohttp).

``CHANNEL_RULES`` is inline JSON (a value starting with ``{``) or the path of a ``.json`` or
``.toml`` file. It maps channel-name patterns to rules, in order::

    {
      "user:{user}":  {"subscribe": "owner", "publish": "owner", "presence": true},
      "team:*":       {"subscribe": "claim", "publish": "claim", "join_leave": true},
      "support:*":    {"subscribe": "webhook", "history": 50},
      "*":            {"subscribe": "any"}
    }

The same file in TOML: one table per pattern, ``["user:{user}"]`` then its keys.

Patterns
    ``*`` matches any run of characters (``:`` included), ``?`` one character, ``{user}`` one
    user id (letters, digits and ``-_.:@``, 1-128 of them); anything else matches itself. At most
    one ``{user}`` per pattern; another ``{…}`` is refused (a typo such as ``{userid}``).

Precedence
    The **first listed** pattern that matches a channel decides, like firewall rules: list
    specific patterns before general ones and a catch-all ``*`` last. An entry that an earlier
    one always shadows (an exact name matched by an earlier pattern, anything after ``*``) is a
    start-up error. A channel that no entry matches is refused: with ``CHANNEL_RULES`` set,
    access is granted only by an entry.

Rules (``subscribe`` is required; the others have the defaults shown)
    ``subscribe``: ``any`` | ``authenticated`` (the connection passed ``WS_AUTH`` and has a
    user id) | ``owner`` (authenticated, and the channel's ``{user}`` part is the subscriber's
    user id) | ``claim`` (the JWT ``channels`` claim lists a pattern matching the channel) |
    ``webhook`` (``SUBSCRIBE_WEBHOOK_URL`` answers).
    ``publish`` (client ``publish`` frames): ``none`` (default) or one of the same five
    (``webhook`` asks ``PUBLISH_WEBHOOK_URL``).
    ``presence`` (``false``): whether subscribers may ask who is in the channel.
    ``join_leave`` (``false``): whether subscribers get ``join`` / ``leave`` frames.
    ``history`` (``0``, at most 10000): channel frames a new subscriber may fetch.

Without ``CHANNEL_RULES`` today's behaviour stays: any channel may be subscribed to, nobody
publishes, presence is off. The ``CHANNELS`` allow-list applies on top in both cases: a
channel must be on it (when it is set) *and* pass its rule. System channels
(``tool_activity``) never match a rule: only an identity with the ``observer`` role may
subscribe to them, nobody publishes to them.

:meth:`ChannelRules.decide` is the one decision point: handlers call it with the action, the
channel and the connection's :class:`~server.auth.Identity` and get :class:`Allow`,
:class:`Deny` (a code and a human reason for the client's ``error`` frame) or
:class:`AskWebhook` (the caller asks the webhook, see ``server.channel_webhooks``).
"""

from __future__ import annotations

import functools
import json
import re
import tomllib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from server.errors import ConfigError

if TYPE_CHECKING:
    from server.auth import Identity

SETTING = "CHANNEL_RULES"
USER_PLACEHOLDER = "{user}"
#: What ``{user}`` matches when it stands for any user: a valid user id.
USER_ID_PATTERN = r"[A-Za-z0-9_.:@-]{1,128}"
MAX_PATTERN_LENGTH = 256
MAX_RULES = 1000
MAX_CHANNEL_HISTORY = 10_000

Action = Literal["subscribe", "publish", "presence"]
ACTIONS: tuple[Action, ...] = ("subscribe", "publish", "presence")
SUBSCRIBE_CHOICES = ("any", "authenticated", "owner", "claim", "webhook")
PUBLISH_CHOICES = ("none", *SUBSCRIBE_CHOICES)
_RULE_KEYS = frozenset({"subscribe", "publish", "presence", "join_leave", "history"})

#: ``Deny.code`` for a refusal by a rule (or a system channel), and for a channel that is not
#: on the ``CHANNELS`` allow-list (today's code for that case, with ``available_channels``).
FORBIDDEN = "forbidden_channel"
NOT_ALLOWED = "invalid_channel"


# --- patterns ------------------------------------------------------------------------------------

def validate_pattern(pattern: Any) -> str:
    """``pattern`` if it is a valid channel pattern, else ValueError saying why."""
    if not isinstance(pattern, str) or not pattern:
        raise ValueError("a pattern must be a non-empty string")
    if len(pattern) > MAX_PATTERN_LENGTH:
        raise ValueError(f"a pattern must be at most {MAX_PATTERN_LENGTH} characters")
    if pattern.count(USER_PLACEHOLDER) > 1:
        raise ValueError("a pattern may hold {user} at most once")
    rest = pattern.replace(USER_PLACEHOLDER, "")
    if "{" in rest or "}" in rest:
        raise ValueError("the only placeholder is {user}")
    return pattern


@functools.lru_cache(maxsize=4096)
def compile_pattern(pattern: str, user: str | None = None) -> re.Pattern[str]:
    """The regular expression of a (valid) pattern; ``{user}`` matches ``user`` exactly when
    given, else any user id."""
    parts: list[str] = []
    for piece in re.split(r"(\{user\}|\*|\?)", pattern):
        if piece == USER_PLACEHOLDER:
            parts.append(re.escape(user) if user is not None else USER_ID_PATTERN)
        elif piece == "*":
            parts.append(".*")
        elif piece == "?":
            parts.append(".")
        elif piece:
            parts.append(re.escape(piece))
    return re.compile("".join(parts), re.DOTALL)


def is_literal(pattern: str) -> bool:
    """True when the pattern is an exact channel name (no ``*``, ``?`` or ``{user}``)."""
    return not any(mark in pattern for mark in ("*", "?", USER_PLACEHOLDER))


def matches(pattern: str, channel: str, user: str | None = None) -> bool:
    """Whether ``channel`` matches ``pattern`` (``{user}`` = ``user`` when given)."""
    if is_literal(pattern):
        return pattern == channel
    return compile_pattern(pattern, user).fullmatch(channel) is not None


# --- rules ---------------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class ChannelRule:
    """One ``CHANNEL_RULES`` entry."""

    pattern: str
    subscribe: str
    publish: str = "none"
    presence: bool = False
    join_leave: bool = False
    history: int = 0

    def matches(self, channel: str) -> bool:
        return matches(self.pattern, channel)

    def owned_by(self, channel: str, user_id: str | None) -> bool:
        """True when the channel's ``{user}`` part is ``user_id`` (never without ``{user}``)."""
        return (user_id is not None and USER_PLACEHOLDER in self.pattern
                and matches(self.pattern, channel, user_id))


@dataclass(frozen=True, slots=True)
class Allow:
    """Go ahead. ``rule`` is the entry that decided (None without CHANNEL_RULES or for a
    system channel); ``data`` is set only by a publish webhook that rewrote the publication."""

    rule: ChannelRule | None = None
    data: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class Deny:
    """Refused: ``code`` (``forbidden_channel`` or ``invalid_channel``) and a reason for the
    client, which names no secret."""

    code: str
    reason: str


@dataclass(frozen=True, slots=True)
class AskWebhook:
    """The rule says ``webhook``: the caller asks ``SUBSCRIBE_WEBHOOK_URL`` (subscribe,
    presence) or ``PUBLISH_WEBHOOK_URL`` (publish), whose answer decides."""

    rule: ChannelRule
    action: Action


Decision = Allow | Deny | AskWebhook


class ChannelRules:
    """The channel rules in force. ``rules=None`` means CHANNEL_RULES is unset (today's
    behaviour); an empty sequence refuses every ordinary channel."""

    def __init__(self, rules: Sequence[ChannelRule] | None, *,
                 system_channels: Iterable[str], allow_list: Iterable[str] = ()) -> None:
        self.rules = tuple(rules) if rules is not None else None
        self.system_channels = frozenset(system_channels)
        self.allow_list = frozenset(allow_list)
        # Exact names first: a load-time check guarantees no earlier pattern matches them, so
        # looking them up first gives the same answer as the ordered scan.
        self._exact: dict[str, ChannelRule] = {}
        self._patterns: list[ChannelRule] = []
        for rule in self.rules or ():
            if is_literal(rule.pattern):
                self._exact.setdefault(rule.pattern, rule)
            else:
                self._patterns.append(rule)

    @property
    def enabled(self) -> bool:
        """True when CHANNEL_RULES is set."""
        return self.rules is not None

    def rule_for(self, channel: str) -> ChannelRule | None:
        """The entry that governs ``channel`` (the first listed that matches), or None."""
        rule = self._exact.get(channel)
        if rule is not None:
            return rule
        for rule in self._patterns:
            if rule.matches(channel):
                return rule
        return None

    def decide(self, action: Action, channel: str, identity: Identity | None) -> Decision:
        """May ``identity`` (None: an anonymous connection) ``subscribe`` to, ``publish`` on,
        or ask the ``presence`` of ``channel``?

        * System channels: subscribe and presence only for an ``observer`` identity; never
          publish.
        * ``CHANNELS`` allow-list: a channel not on it is ``Deny(invalid_channel)``.
        * Without CHANNEL_RULES: subscribe is allowed, publish and presence are refused.
        * Else the channel's rule decides (no rule: refused). ``presence`` needs the rule's
          ``presence`` and then the subscribe check (a ``webhook`` subscribe rule gives
          :class:`AskWebhook`: a caller may skip it for a session already subscribed, since the
          webhook approved that subscription).
        """
        if action not in ACTIONS:
            raise ValueError(f"unknown channel action {action!r}")
        if channel in self.system_channels:
            if action != "publish" and identity is not None and identity.observer:
                return Allow()
            return Deny(FORBIDDEN, "system channel: only observers may subscribe"
                        if action != "publish" else "system channel: nobody publishes here")
        if self.allow_list and channel not in self.allow_list:
            return Deny(NOT_ALLOWED, "channel is not in the CHANNELS allow-list")
        if self.rules is None:
            if action == "subscribe":
                return Allow()
            return Deny(FORBIDDEN, f"{action} is off: the gateway has no CHANNEL_RULES")
        rule = self.rule_for(channel)
        if rule is None:
            return Deny(FORBIDDEN, "no CHANNEL_RULES entry matches this channel")
        if action == "presence" and not rule.presence:
            return Deny(FORBIDDEN, "presence is off for this channel")
        who = rule.publish if action == "publish" else rule.subscribe
        return _check(who, action, rule, channel, identity)

    def check_server_subscription(self, channel: str) -> Allow | Deny:
        """May the backend subscribe a session to ``channel`` (the JWT ``subs`` claim, the
        API)? Such subscriptions bypass the subscribe rule (the backend vouches for them) but
        not the system channels nor the ``CHANNELS`` allow-list."""
        if channel in self.system_channels:
            return Deny(FORBIDDEN, "system channel: server-side subscriptions are not allowed")
        if self.allow_list and channel not in self.allow_list:
            return Deny(NOT_ALLOWED, "channel is not in the CHANNELS allow-list")
        return Allow(self.rule_for(channel) if self.rules is not None else None)

    def describe(self) -> list[dict[str, Any]]:
        """The rules as loaded, in precedence order (for /status, logs and docs)."""
        return [{"pattern": r.pattern, "subscribe": r.subscribe, "publish": r.publish,
                 "presence": r.presence, "join_leave": r.join_leave, "history": r.history}
                for r in self.rules or ()]


def _check(who: str, action: Action, rule: ChannelRule, channel: str,
           identity: Identity | None) -> Decision:
    if who == "any":
        return Allow(rule)
    if who == "none":
        return Deny(FORBIDDEN, f"nobody may {action} on this channel")
    if who == "webhook":
        return AskWebhook(rule, action)
    user_id = identity.user_id if identity is not None else None
    if identity is None or not identity.authenticated or user_id is None:
        return Deny(FORBIDDEN, "this channel needs an authenticated user")
    if who == "authenticated":
        return Allow(rule)
    if who == "owner":
        if rule.owned_by(channel, user_id):
            return Allow(rule)
        return Deny(FORBIDDEN, "this channel belongs to another user")
    # claim
    if any(matches(pattern, channel, user_id) for pattern in identity.channels):
        return Allow(rule)
    return Deny(FORBIDDEN, "the token's channels claim does not list this channel")


# --- loading -------------------------------------------------------------------------------------

def load_channel_rules(value: str, *, system_channels: Iterable[str],
                       allow_list: Iterable[str] = (), subscribe_webhook: bool = False,
                       publish_webhook: bool = False) -> ChannelRules:
    """Parse and validate CHANNEL_RULES (inline JSON or a .json/.toml path; "" = unset).
    ``subscribe_webhook`` / ``publish_webhook`` say whether SUBSCRIBE_WEBHOOK_URL /
    PUBLISH_WEBHOOK_URL are set: a ``webhook`` rule needs its URL. Raises ConfigError with
    one line naming CHANNEL_RULES and the offending entry."""
    system = frozenset(system_channels)
    if not value.strip():
        return ChannelRules(None, system_channels=system, allow_list=allow_list)
    raw = _read(value.strip())
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{SETTING}: expected an object mapping channel patterns to rules")
    if len(raw) > MAX_RULES:
        raise ConfigError(f"{SETTING}: at most {MAX_RULES} entries, got {len(raw)}")
    rules: list[ChannelRule] = []
    for pattern, body in raw.items():
        rule = _rule(pattern, body, system, subscribe_webhook, publish_webhook)
        _check_reachable(rule, rules)
        rules.append(rule)
    return ChannelRules(rules, system_channels=system, allow_list=allow_list)


def _read(value: str) -> Any:
    if value.startswith("{"):
        try:
            return json.loads(value)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{SETTING}: inline JSON is invalid: {exc}") from None
    path = Path(value).expanduser()
    suffix = path.suffix.lower()
    if suffix not in (".json", ".toml"):
        raise ConfigError(f"{SETTING}: expected inline JSON (starting with '{{') or the path "
                          f"of a .json or .toml file, got {value!r}")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise ConfigError(f"{SETTING}: cannot read {path}: {reason}") from None
    try:
        return tomllib.loads(text) if suffix == ".toml" else json.loads(text)
    except (tomllib.TOMLDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{SETTING}: {path} is not valid {suffix[1:].upper()}: {exc}"
                          ) from None


def _rule(pattern: Any, body: Any, system: frozenset[str], subscribe_webhook: bool,
          publish_webhook: bool) -> ChannelRule:
    where = f"{SETTING}: entry {pattern!r}"
    try:
        validate_pattern(pattern)
    except ValueError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    if pattern in system:
        raise ConfigError(f"{where}: system channels cannot be configured (they are open to "
                          f"observers only)")
    if not isinstance(body, Mapping):
        raise ConfigError(f"{where}: expected an object such as {{\"subscribe\": \"any\"}}")
    unknown = sorted(set(body) - _RULE_KEYS)
    if unknown:
        raise ConfigError(f"{where}: unknown key {unknown[0]!r} (expected "
                          f"{', '.join(sorted(_RULE_KEYS))})")
    if "subscribe" not in body:
        raise ConfigError(f"{where}: 'subscribe' is required ({', '.join(SUBSCRIBE_CHOICES)})")
    subscribe = _choice(where, "subscribe", body["subscribe"], SUBSCRIBE_CHOICES)
    publish = _choice(where, "publish", body.get("publish", "none"), PUBLISH_CHOICES)
    for key, choice, configured, url in (("subscribe", subscribe, subscribe_webhook,
                                          "SUBSCRIBE_WEBHOOK_URL"),
                                         ("publish", publish, publish_webhook,
                                          "PUBLISH_WEBHOOK_URL")):
        if choice == "webhook" and not configured:
            raise ConfigError(f"{where}: {key} 'webhook' needs {url}")
        if choice == "owner" and USER_PLACEHOLDER not in pattern:
            raise ConfigError(f"{where}: {key} 'owner' needs {{user}} in the pattern")
    history = body.get("history", 0)
    if isinstance(history, bool) or not isinstance(history, int) or not (
            0 <= history <= MAX_CHANNEL_HISTORY):
        raise ConfigError(f"{where}: 'history' must be an integer from 0 to "
                          f"{MAX_CHANNEL_HISTORY}, got {history!r}")
    return ChannelRule(pattern, subscribe, publish, _flag(where, body, "presence"),
                       _flag(where, body, "join_leave"), history)


def _choice(where: str, key: str, value: Any, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise ConfigError(f"{where}: {key!r} must be one of {', '.join(choices)}, got {value!r}")
    return str(value)


def _flag(where: str, body: Mapping[str, Any], key: str) -> bool:
    value = body.get(key, False)
    if not isinstance(value, bool):
        raise ConfigError(f"{where}: {key!r} must be true or false, got {value!r}")
    return value


def _check_reachable(rule: ChannelRule, earlier: Sequence[ChannelRule]) -> None:
    """Refuse an entry that an earlier one always shadows."""
    for before in earlier:
        shadowed = (before.pattern.strip("*") == "" or
                    (is_literal(rule.pattern) and before.matches(rule.pattern)))
        if shadowed:
            raise ConfigError(f"{SETTING}: entry {rule.pattern!r} is never used: the earlier "
                              f"entry {before.pattern!r} matches its channels first (list "
                              f"specific patterns first)")
