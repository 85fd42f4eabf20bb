"""CHANNEL_RULES without an event loop: pattern syntax, precedence, every rule against every
kind of identity, system channels, the CHANNELS allow-list, and start-up validation."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from server.auth import Identity
from server.channel_rules import (
    FORBIDDEN,
    NOT_ALLOWED,
    Allow,
    AskWebhook,
    ChannelRules,
    Deny,
    load_channel_rules,
    matches,
    validate_pattern,
)
from server.config import Settings
from server.errors import ConfigError

SYSTEM = ("tool_activity",)

ANONYMOUS = None
DECLARED = Identity(subject=None, user_id="alice")  # WS_AUTH=none with a user id: unproven
TOKEN_NO_USER = Identity(subject=None, authenticated=True)
ALICE = Identity(subject="alice", user_id="alice", authenticated=True, verified=True,
                 channels=("team:42", "proj:{user}:*"))
BOB = Identity(subject="bob", user_id="bob", authenticated=True, verified=True)
OBSERVER = Identity(subject="ops", user_id="ops", authenticated=True, verified=True,
                    roles=frozenset({"observer"}))

RULES = {
    "user:{user}": {"subscribe": "owner", "publish": "owner", "presence": True},
    "team:*": {"subscribe": "claim", "publish": "claim", "join_leave": True},
    "proj:*": {"subscribe": "claim"},
    "members:*": {"subscribe": "authenticated", "publish": "authenticated", "presence": True},
    "support:*": {"subscribe": "webhook", "publish": "webhook", "presence": True,
                  "history": 50},
    "news": {"subscribe": "any"},
    "lobby:*": {"subscribe": "any", "publish": "any"},
}


def rules(spec: dict | None = None, *, allow_list: tuple[str, ...] = ()) -> ChannelRules:
    return load_channel_rules(json.dumps(RULES if spec is None else spec),
                              system_channels=SYSTEM, allow_list=allow_list,
                              subscribe_webhook=True, publish_webhook=True)


# --- patterns ------------------------------------------------------------------------------------

@pytest.mark.parametrize(("pattern", "channel", "user", "expected"), [
    ("news", "news", None, True),
    ("news", "news2", None, False),
    ("room:*", "room:1", None, True),
    ("room:*", "room:a:b", None, True),  # * crosses separators
    ("room:*", "lobby:1", None, False),
    ("room:?", "room:7", None, True),
    ("room:?", "room:77", None, False),
    ("a.b", "aXb", None, False),  # regex characters are literal
    ("a[1]", "a[1]", None, True),
    ("a[1]", "a1", None, False),
    ("user:{user}", "user:bob", None, True),  # {user} alone: any user id
    ("user:{user}", "user:", None, False),
    ("user:{user}", "user:a b", None, False),  # not a user id
    ("user:{user}", "user:alice", "alice", True),
    ("user:{user}", "user:bob", "alice", False),
    ("user:{user}", "user:alice.x", "alice", False),
    ("dm:{user}:*", "dm:alice:bob", "alice", True),
])
def test_pattern_matching(pattern: str, channel: str, user: str | None, expected: bool) -> None:
    assert matches(pattern, channel, user) is expected


@pytest.mark.parametrize(("pattern", "why"), [
    ("", "non-empty"),
    ("x" * 300, "at most"),
    ("dm:{user}:{user}", "at most once"),
    ("user:{userid}", "only placeholder"),
    ("a}b", "only placeholder"),
    (7, "non-empty string"),
])
def test_invalid_patterns_are_refused(pattern: object, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        validate_pattern(pattern)


# --- decisions -----------------------------------------------------------------------------------

def allowed(decision: object) -> bool:
    assert isinstance(decision, Allow | Deny), decision
    return isinstance(decision, Allow)


@pytest.mark.parametrize(("channel", "identity", "expected"), [
    ("news", ANONYMOUS, True),                 # any
    ("members:1", ANONYMOUS, False),           # authenticated
    ("members:1", DECLARED, False),            # a self-declared user id proves nothing
    ("members:1", TOKEN_NO_USER, False),       # authenticated, but no user
    ("members:1", BOB, True),
    ("user:alice", ALICE, True),               # owner
    ("user:alice", BOB, False),
    ("user:alice", ANONYMOUS, False),
    ("user:alice", DECLARED, False),
    ("team:42", ALICE, True),                  # claim: listed
    ("team:43", ALICE, False),                 # claim: not listed
    ("team:42", BOB, False),                   # claim: no claim at all
    ("proj:alice:x", ALICE, True),             # claim pattern with {user} = the token's sub
    ("proj:bob:x", ALICE, False),
    ("elsewhere", ALICE, False),               # no rule matches: refused
])
def test_subscribe_decisions(channel: str, identity: Identity | None, expected: bool) -> None:
    assert allowed(rules().decide("subscribe", channel, identity)) is expected


def test_a_refusal_says_why_with_the_forbidden_channel_code() -> None:
    decision = rules().decide("subscribe", "user:alice", BOB)
    assert decision == Deny(FORBIDDEN, "this channel belongs to another user")
    decision = rules().decide("subscribe", "elsewhere", ALICE)
    assert isinstance(decision, Deny) and "no CHANNEL_RULES entry" in decision.reason
    decision = rules().decide("subscribe", "members:1", ANONYMOUS)
    assert isinstance(decision, Deny) and "authenticated" in decision.reason


def test_allow_carries_the_rule_that_decided() -> None:
    decision = rules().decide("subscribe", "team:42", ALICE)
    assert isinstance(decision, Allow)
    assert decision.rule is not None and decision.rule.join_leave is True
    assert rules().rule_for("support:9").history == 50  # type: ignore[union-attr]


def test_webhook_rules_ask_the_webhook() -> None:
    decision = rules().decide("subscribe", "support:9", ANONYMOUS)
    assert isinstance(decision, AskWebhook)
    assert decision.action == "subscribe" and decision.rule.pattern == "support:*"
    assert isinstance(rules().decide("publish", "support:9", BOB), AskWebhook)
    assert isinstance(rules().decide("presence", "support:9", BOB), AskWebhook)


@pytest.mark.parametrize(("channel", "identity", "expected"), [
    ("news", ALICE, False),                    # publish defaults to none
    ("lobby:1", ANONYMOUS, True),              # publish: any
    ("user:alice", ALICE, True),               # publish: owner
    ("user:alice", BOB, False),
    ("team:42", ALICE, True),                  # publish: claim
    ("members:1", ANONYMOUS, False),           # publish: authenticated
])
def test_publish_decisions(channel: str, identity: Identity | None, expected: bool) -> None:
    assert allowed(rules().decide("publish", channel, identity)) is expected


@pytest.mark.parametrize(("channel", "identity", "expected"), [
    ("news", ALICE, False),                    # presence off
    ("members:1", BOB, True),                  # presence on, subscribe check passes
    ("members:1", ANONYMOUS, False),           # presence on, subscribe check fails
    ("user:alice", BOB, False),
    ("user:bob", BOB, True),
])
def test_presence_decisions(channel: str, identity: Identity | None, expected: bool) -> None:
    assert allowed(rules().decide("presence", channel, identity)) is expected


def test_first_listed_pattern_wins() -> None:
    ordered = rules({"room:vip:*": {"subscribe": "authenticated"},
                     "room:*": {"subscribe": "any"}})
    assert not allowed(ordered.decide("subscribe", "room:vip:1", ANONYMOUS))
    assert allowed(ordered.decide("subscribe", "room:1", ANONYMOUS))
    # the same two the other way round: the general pattern decides for both
    general_first = rules({"room:*": {"subscribe": "any"},
                           "room:vip:*": {"subscribe": "authenticated"}})
    assert allowed(general_first.decide("subscribe", "room:vip:1", ANONYMOUS))


def test_an_exact_name_listed_before_a_pattern_decides_for_that_name() -> None:
    table = rules({"room:lobby": {"subscribe": "any"},
                   "room:*": {"subscribe": "authenticated"}})
    assert allowed(table.decide("subscribe", "room:lobby", ANONYMOUS))
    assert not allowed(table.decide("subscribe", "room:2", ANONYMOUS))


def test_system_channels_never_match_a_rule() -> None:
    table = rules({"*": {"subscribe": "any", "publish": "any"}})
    for who in (ANONYMOUS, ALICE, DECLARED):
        decision = table.decide("subscribe", "tool_activity", who)
        assert isinstance(decision, Deny) and decision.code == FORBIDDEN
        assert "system channel" in decision.reason
    assert allowed(table.decide("subscribe", "tool_activity", OBSERVER))
    assert allowed(table.decide("presence", "tool_activity", OBSERVER))
    assert not allowed(table.decide("publish", "tool_activity", OBSERVER))
    unset = ChannelRules(None, system_channels=SYSTEM)
    assert not allowed(unset.decide("subscribe", "tool_activity", ALICE))
    assert allowed(unset.decide("subscribe", "tool_activity", OBSERVER))


def test_without_channel_rules_any_channel_and_no_publish() -> None:
    unset = ChannelRules(None, system_channels=SYSTEM)
    assert not unset.enabled
    assert allowed(unset.decide("subscribe", "anything:at:all", ANONYMOUS))
    for action in ("publish", "presence"):
        decision = unset.decide(action, "anything", ALICE)
        assert isinstance(decision, Deny) and "no CHANNEL_RULES" in decision.reason


def test_the_channels_allow_list_applies_on_top_of_the_rules() -> None:
    table = rules({"*": {"subscribe": "authenticated"}}, allow_list=("alerts", "news"))
    assert allowed(table.decide("subscribe", "alerts", BOB))
    assert table.decide("subscribe", "other", BOB) == Deny(
        NOT_ALLOWED, "channel is not in the CHANNELS allow-list")
    assert not allowed(table.decide("subscribe", "alerts", ANONYMOUS))  # on it, rule refuses
    unset = ChannelRules(None, system_channels=SYSTEM, allow_list=("alerts",))
    assert allowed(unset.decide("subscribe", "alerts", ANONYMOUS))
    assert isinstance(unset.decide("subscribe", "other", ANONYMOUS), Deny)


def test_server_side_subscriptions_skip_the_rule_but_not_system_channels_or_the_allow_list(
) -> None:
    table = rules(allow_list=("user:alice", "tool_activity"))
    assert table.check_server_subscription("user:alice") == Allow(table.rule_for("user:alice"))
    assert isinstance(table.check_server_subscription("tool_activity"), Deny)
    assert table.check_server_subscription("user:bob") == Deny(
        NOT_ALLOWED, "channel is not in the CHANNELS allow-list")


def test_unknown_action_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="unknown channel action"):
        rules().decide("delete", "news", ALICE)  # type: ignore[arg-type]


# --- loading -------------------------------------------------------------------------------------

TOML = """
["user:{user}"]
subscribe = "owner"
publish = "owner"
presence = true

["team:*"]
subscribe = "claim"
publish = "claim"
join_leave = true

["proj:*"]
subscribe = "claim"

["members:*"]
subscribe = "authenticated"
publish = "authenticated"
presence = true

["support:*"]
subscribe = "webhook"
publish = "webhook"
presence = true
history = 50

[news]
subscribe = "any"

["lobby:*"]
subscribe = "any"
publish = "any"
"""


def test_inline_json_json_file_and_toml_file_load_the_same_rules_in_order(tmp_path: Path
                                                                          ) -> None:
    json_file = tmp_path / "rules.json"
    json_file.write_text(json.dumps(RULES))
    toml_file = tmp_path / "rules.toml"
    toml_file.write_text(TOML)
    loaded = [load_channel_rules(value, system_channels=SYSTEM, subscribe_webhook=True,
                                 publish_webhook=True).describe()
              for value in (json.dumps(RULES), str(json_file), str(toml_file))]
    assert loaded[0] == loaded[1] == loaded[2]
    assert [r["pattern"] for r in loaded[0]] == list(RULES)
    assert loaded[0][0] == {"pattern": "user:{user}", "subscribe": "owner", "publish": "owner",
                            "presence": True, "join_leave": False, "history": 0}


def test_unset_channel_rules_is_todays_behaviour() -> None:
    assert not load_channel_rules("", system_channels=SYSTEM).enabled
    assert load_channel_rules("{}", system_channels=SYSTEM).enabled  # set, but empty: refuse


@pytest.mark.parametrize(("value", "expected"), [
    ('{"a": ', "inline JSON is invalid"),
    ("[1, 2]", "expected inline JSON"),
    ('{"a": {"subscribe": "any"}, "b": 3}', "entry 'b': expected an object"),
    ('{"a": {"subscribe": "anyone"}}', "entry 'a': 'subscribe' must be one of any, "
                                       "authenticated, owner, claim, webhook, got 'anyone'"),
    ('{"a": {"publish": "any"}}', "entry 'a': 'subscribe' is required"),
    ('{"a": {"subscribe": "any", "publish": "everyone"}}', "'publish' must be one of none"),
    ('{"a": {"subscribe": "any", "presense": true}}', "entry 'a': unknown key 'presense'"),
    ('{"a": {"subscribe": "any", "presence": "yes"}}', "'presence' must be true or false"),
    ('{"a": {"subscribe": "any", "join_leave": 1}}', "'join_leave' must be true or false"),
    ('{"a": {"subscribe": "any", "history": -1}}', "'history' must be an integer from 0"),
    ('{"a": {"subscribe": "any", "history": true}}', "'history' must be an integer"),
    ('{"a": {"subscribe": "any", "history": 100001}}', "'history' must be an integer"),
    ('{"room:*": {"subscribe": "owner"}}', "entry 'room:*': subscribe 'owner' needs {user}"),
    ('{"u:{userid}": {"subscribe": "any"}}', "entry 'u:{userid}': the only placeholder"),
    ('{"tool_activity": {"subscribe": "any"}}', "entry 'tool_activity': system channels"),
    ('{"room:*": {"subscribe": "any"}, "room:1": {"subscribe": "authenticated"}}',
     "entry 'room:1' is never used: the earlier entry 'room:*'"),
    ('{"*": {"subscribe": "any"}, "room:*": {"subscribe": "any"}}',
     "entry 'room:*' is never used: the earlier entry '*'"),
    ("rules.yaml", "expected inline JSON (starting with '{') or the path of a .json or .toml"),
    ("/nonexistent/rules.json", "cannot read /nonexistent/rules.json"),
])
def test_bad_channel_rules_stop_start_up_with_one_line_naming_the_entry(
        value: str, expected: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_channel_rules(value, system_channels=SYSTEM)
    message = caught.value.message
    assert message.startswith("CHANNEL_RULES: ")
    assert expected in message, message
    assert "\n" not in message


def test_bad_toml_file_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "rules.toml"
    path.write_text('["a"]\nsubscribe = any\n')
    with pytest.raises(ConfigError, match=r"CHANNEL_RULES: .*rules.toml is not valid TOML"):
        load_channel_rules(str(path), system_channels=SYSTEM)


@pytest.mark.parametrize(("env", "expected"), [
    ({"CHANNEL_RULES": '{"support:*": {"subscribe": "webhook"}}'},
     "entry 'support:*': subscribe 'webhook' needs SUBSCRIBE_WEBHOOK_URL"),
    ({"CHANNEL_RULES": '{"support:*": {"subscribe": "any", "publish": "webhook"}}'},
     "publish 'webhook' needs PUBLISH_WEBHOOK_URL"),
    ({"CHANNEL_RULES": '{"tool_activity": {"subscribe": "any"}}'}, "system channels"),
])
def test_settings_validate_channel_rules_at_start_up(env: dict[str, str], expected: str
                                                     ) -> None:
    with pytest.raises(ConfigError, match="CHANNEL_RULES") as caught:
        Settings.from_env(env)
    assert expected in caught.value.message


def test_a_webhook_rule_with_its_url_is_accepted() -> None:
    settings = Settings.from_env({
        "CHANNEL_RULES": '{"support:*": {"subscribe": "webhook", "publish": "webhook"}}',
        "SUBSCRIBE_WEBHOOK_URL": "http://127.0.0.1:9/sub",
        "PUBLISH_WEBHOOK_URL": "http://127.0.0.1:9/pub"})
    assert settings.channel_rules.startswith("{")
