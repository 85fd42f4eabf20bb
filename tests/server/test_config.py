"""Settings.from_env: defaults, parsing, and one clear error naming the bad variable."""

from __future__ import annotations

from pathlib import Path

import pytest

from server.config import SETTINGS_DOC, Settings, likely_setting
from server.errors import ConfigError

STRONG = "Zk3-q9Vw_7LmN2pXr8TbY4sHc6JdF1gE0aQ"  # 35 bytes, many different characters


def test_defaults_match_the_product_contract() -> None:
    settings = Settings.from_env({})
    assert settings.ws_host == "0.0.0.0"
    assert settings.ws_port == 9004
    assert settings.api_port == 9005
    assert settings.ws_heartbeat == 30.0
    assert settings.ws_timeout == 300.0
    assert settings.max_message_size == 1024 * 1024
    assert settings.broker_url == "memory://"
    assert settings.log_format in ("json", "console")
    # No API_TOKEN: the push API stays on loopback.
    assert settings.effective_api_host == "127.0.0.1"



def test_default_send_queue_leaves_history_room_for_a_slow_client_to_resume() -> None:
    # A client closed with 4008 missed at least SEND_QUEUE_FRAMES frames (plus whatever sat in
    # TCP buffers); with a queue as long as the history it could never resume completely.
    settings = Settings.from_env({})
    assert settings.send_queue_frames * 2 <= settings.history_limit
    assert settings.send_queue_bytes * 2 <= settings.history_bytes


def test_caps_have_safe_defaults() -> None:
    settings = Settings.from_env({})
    assert settings.max_sessions >= settings.max_connections
    assert 0 < settings.max_channels_per_client <= 1000
    assert 16 <= settings.max_json_depth <= 128

def test_values_are_read_from_the_environment() -> None:
    settings = Settings.from_env({
        "WS_HOST": "127.0.0.1", "WS_PORT": "7000", "API_PORT": "7001", "WS_HEARTBEAT": "5",
        "WS_TIMEOUT": "60", "MAX_CONNECTIONS": "10", "MAX_MESSAGE_SIZE": "2048",
        "HISTORY_LIMIT": "50", "SESSION_TTL": "12.5", "API_TOKEN": " secret ",
        "ALLOWED_ORIGINS": "https://a.example, https://b.example", "CHANNELS": "news,alerts",
        "LOG_FORMAT": "JSON", "LOG_LEVEL": "debug", "SEND_QUEUE_BYTES": "4096",
        "IDEMPOTENCY_TTL": "60",
    })
    assert (settings.ws_host, settings.ws_port, settings.api_port) == ("127.0.0.1", 7000, 7001)
    assert settings.ws_heartbeat == 5.0 and settings.ws_timeout == 60.0
    assert settings.max_connections == 10 and settings.max_message_size == 2048
    assert settings.history_limit == 50 and settings.session_ttl == 12.5
    assert settings.api_token == "secret"
    assert settings.allowed_origins == ("https://a.example", "https://b.example")
    assert settings.channels == ("news", "alerts")
    assert settings.log_format == "json" and settings.log_level == "debug"
    assert settings.idempotency_ttl == 60.0
    # With a token the API follows WS_HOST.
    assert settings.effective_api_host == "127.0.0.1"


@pytest.mark.parametrize(("env", "variable"), [
    ({"WS_PORT": "abc"}, "WS_PORT"),
    ({"WS_PORT": "0"}, "WS_PORT"),
    ({"API_PORT": "70000"}, "API_PORT"),
    ({"WS_HEARTBEAT": "soon"}, "WS_HEARTBEAT"),
    ({"WS_TIMEOUT": "-1"}, "WS_TIMEOUT"),
    ({"MAX_CONNECTIONS": "0"}, "MAX_CONNECTIONS"),
    ({"MAX_MESSAGE_SIZE": "1MB"}, "MAX_MESSAGE_SIZE"),
    ({"HISTORY_LIMIT": "0"}, "HISTORY_LIMIT"),
    ({"SESSION_TTL": "forever"}, "SESSION_TTL"),
    ({"LOG_FORMAT": "xml"}, "LOG_FORMAT"),
    ({"LOG_LEVEL": "loud"}, "LOG_LEVEL"),
    ({"WS_COMPRESSION": "maybe"}, "WS_COMPRESSION"),
    ({"WS_HOST": "my host"}, "WS_HOST"),
    ({"ALLOWED_ORIGINS": "example.com"}, "ALLOWED_ORIGINS"),
    ({"CHAT_WEBHOOK_URL": "ftp://x"}, "CHAT_WEBHOOK_URL"),
    ({"BROKER_URL": "kafka://x"}, "BROKER_URL"),
    ({"API_HOST": "0.0.0.0"}, "API_TOKEN"),
    ({"WS_AUTH": "jwt"}, "WS_JWT_SECRET"),
    ({"WEBHOOK_SECRET": "short"}, "WEBHOOK_SECRET"),
    ({"WORKERS": "2"}, "WORKERS"),
    ({"WS_HOST": "127.0.0.1", "WS_PORT": "9000", "API_PORT": "9000", "API_TOKEN": "t"},
     "API_PORT"),
    ({"WS_PORT": "9000", "API_PORT": "9000"}, "API_PORT"),  # 0.0.0.0 covers 127.0.0.1
    ({"WS_HOST": "127.0.0.1", "API_HOST": "localhost", "WS_PORT": "9000", "API_PORT": "9000"},
     "API_PORT"),
    ({"API_TOKEN": "secret"}, "API_TOKEN"),  # the API follows WS_HOST=0.0.0.0
    ({"API_HOST": "10.1.2.3", "API_TOKEN": "x" * 64}, "API_TOKEN"),
    ({"API_HOST": "10.1.2.3", "API_TOKEN": "passwordpasswordpasswordpassword"}, "API_TOKEN"),
    ({"MAX_MESSAGE_SIZE": "2000000", "SEND_QUEUE_BYTES": "1048576"}, "SEND_QUEUE_BYTES"),
    ({"HISTORY_BYTES": "4194304"}, "HISTORY_BYTES"),  # below SEND_QUEUE_BYTES (8 MiB)
    ({"HISTORY_BYTES": "1k"}, "HISTORY_BYTES"),
    ({"MAX_SESSIONS": "5000"}, "MAX_SESSIONS"),  # below MAX_CONNECTIONS (10000)
    ({"MAX_CHANNELS_PER_CLIENT": "0"}, "MAX_CHANNELS_PER_CLIENT"),
    ({"MAX_JSON_DEPTH": "500"}, "MAX_JSON_DEPTH"),  # more than the encoder can write back
    ({"MAX_SESSIONS_PER_USER": "0"}, "MAX_SESSIONS_PER_USER"),
    ({"PRESENCE_LIMIT": "lots"}, "PRESENCE_LIMIT"),
    ({"CHANNEL_HISTORY_BYTES": "10"}, "CHANNEL_HISTORY_BYTES"),
    ({"CHANNEL_HISTORY_CHANNELS": "0"}, "CHANNEL_HISTORY_CHANNELS"),
    ({"CHANNEL_HISTORY_TTL": "-5"}, "CHANNEL_HISTORY_TTL"),
])
def test_a_bad_value_names_the_variable_on_one_line(env: dict[str, str], variable: str) -> None:
    with pytest.raises(ConfigError) as info:
        Settings.from_env(env)
    message = info.value.message
    assert message.startswith(f"{variable}:"), message
    assert "\n" not in message


def test_api_beyond_loopback_is_allowed_with_a_strong_token_or_explicit_insecure() -> None:
    assert Settings.from_env({"API_HOST": "0.0.0.0", "API_TOKEN": STRONG}).api_host == "0.0.0.0"
    assert Settings.from_env({"API_HOST": "0.0.0.0", "API_INSECURE": "true"}).api_insecure
    weak = {"API_HOST": "0.0.0.0", "API_TOKEN": "secret", "API_INSECURE": "true"}
    assert Settings.from_env(weak).api_token == "secret"  # on purpose


@pytest.mark.parametrize("host", ["127.0.0.1", "::1", "localhost"])
def test_any_token_is_accepted_on_a_loopback_api(host: str) -> None:
    assert Settings.from_env({"API_HOST": host, "API_TOKEN": "t"}).api_token == "t"


def test_the_same_port_on_two_specific_addresses_is_allowed() -> None:
    settings = Settings.from_env({"WS_HOST": "127.0.0.1", "API_HOST": "127.0.0.2",
                                  "WS_PORT": "9000", "API_PORT": "9000"})
    assert settings.ws_port == settings.api_port == 9000


@pytest.mark.parametrize(("name", "meant"), [
    ("BROKER_ULR", "BROKER_URL"), ("WS_PROT", "WS_PORT"), ("BORKER_URL", "BROKER_URL"),
    ("api_token", "API_TOKEN"), ("LOGLEVEL", "LOG_LEVEL"), ("WORKER", "WORKERS"),
    ("SESION_TTL", "SESSION_TTL"), ("TRUSTED_PROXY", "TRUSTED_PROXIES"),
])
def test_a_misspelt_name_is_matched_to_the_setting_it_resembles(name: str, meant: str) -> None:
    assert likely_setting(name) == meant


@pytest.mark.parametrize("name", ["WS_PORT", "PATH", "HOME", "TIMEOUT", "WEBHOOK_URL",
                                  "NODE_ENV", "NODE_OPTIONS", "REDIS_URL", "API_KEY",
                                  "API_URL", "LOG_DIR", "SWITCHBOARD_URL", "HOSTNAME"])
def test_settings_and_other_programs_variables_are_not_taken_for_misspellings(
        name: str) -> None:
    assert likely_setting(name) is None


def test_load_reports_misspelt_environment_variables_and_where_settings_came_from(
        tmp_path: Path) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text("LOG_LEVEL=debug\nCOMPOSE_PROJECT_NAME=demo\n", encoding="utf-8")
    loaded = Settings.load({"WS_PROT": "1", "WS_PORT": "7000", "PATH": "/bin"},
                           env_file=env_file)
    assert loaded.settings.ws_port == 7000 and loaded.settings.log_level == "debug"
    assert [(u.name, u.where, u.did_you_mean) for u in loaded.unknown] == [
        ("COMPOSE_PROJECT_NAME", f"{env_file.resolve()}:2", None),
        ("WS_PROT", "environment", "WS_PORT")]
    assert loaded.sources == {"LOG_LEVEL": f"{env_file.resolve()}:1", "WS_PORT": "environment"}


def test_a_cross_field_error_from_env_file_names_its_line(tmp_path: Path) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text("WS_PORT=9000\nAPI_PORT=9000\n", encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        Settings.from_env({}, env_file=env_file)
    assert info.value.message.startswith(f"{env_file.resolve()}:2: API_PORT: ")


def test_env_file_is_read_and_the_environment_wins(tmp_path: Path) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text("# comment\nexport WS_PORT=7100\nHISTORY_LIMIT='7'\n\n",
                        encoding="utf-8")
    settings = Settings.from_env({"HISTORY_LIMIT": "9"}, env_file=env_file)
    assert settings.ws_port == 7100
    assert settings.history_limit == 9


def test_empty_values_fall_back_to_defaults() -> None:
    assert Settings.from_env({"WS_PORT": "", "SESSION_TTL": "  "}).ws_port == 9004


def test_secrets_are_not_exposed() -> None:
    hook_secret = "w" * 40
    settings = Settings.from_env({"API_TOKEN": "s3cret", "API_HOST": "127.0.0.1",
                                  "WS_AUTH": "token",
                                  "WS_AUTH_TOKEN": "other", "WEBHOOK_SECRET": hook_secret})
    public = settings.public_dict()
    assert public["api_token"] is True and public["ws_auth_token"] is True
    assert public["webhook_secret"] is True
    assert "s3cret" not in repr(settings) and "s3cret" not in str(public)
    assert hook_secret not in str(public)


def test_every_setting_is_documented_once() -> None:
    names = [spec.env for spec in SETTINGS_DOC]
    assert len(names) == len(set(names))
    for required in ("WS_HOST", "WS_PORT", "API_HOST", "API_PORT", "WS_HEARTBEAT", "WS_TIMEOUT",
                     "MAX_CONNECTIONS", "MAX_MESSAGE_SIZE", "HISTORY_LIMIT", "SESSION_TTL",
                     "API_TOKEN", "ALLOWED_ORIGINS", "CHANNELS", "CHAT_WEBHOOK_URL",
                     "TOOL_WEBHOOK_URL", "BROKER_URL", "WORKERS", "LOG_LEVEL", "LOG_FORMAT",
                     "SEND_QUEUE_FRAMES", "SEND_QUEUE_BYTES", "IDEMPOTENCY_TTL"):
        assert required in names
    assert all(spec.doc for spec in SETTINGS_DOC)
