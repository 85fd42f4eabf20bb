"""Settings.from_env: defaults, parsing, and one clear error naming the bad variable."""

from __future__ import annotations

from pathlib import Path

import pytest

from server.config import SETTINGS_DOC, Settings
from server.errors import ConfigError


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
    ({"MAX_MESSAGE_SIZE": "2000000", "SEND_QUEUE_BYTES": "1048576"}, "SEND_QUEUE_BYTES"),
])
def test_a_bad_value_names_the_variable_on_one_line(env: dict[str, str], variable: str) -> None:
    with pytest.raises(ConfigError) as info:
        Settings.from_env(env)
    message = info.value.message
    assert message.startswith(f"{variable}:"), message
    assert "\n" not in message


def test_api_beyond_loopback_is_allowed_with_a_token_or_explicit_insecure() -> None:
    assert Settings.from_env({"API_HOST": "0.0.0.0", "API_TOKEN": "t"}).api_host == "0.0.0.0"
    assert Settings.from_env({"API_HOST": "0.0.0.0", "API_INSECURE": "true"}).api_insecure


def test_env_file_is_read_and_the_environment_wins(tmp_path: Path) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text("# comment\nexport WS_PORT=7100\nHISTORY_LIMIT='7'\nnonsense\n",
                        encoding="utf-8")
    settings = Settings.from_env({"HISTORY_LIMIT": "9"}, env_file=env_file)
    assert settings.ws_port == 7100
    assert settings.history_limit == 9


def test_empty_values_fall_back_to_defaults() -> None:
    assert Settings.from_env({"WS_PORT": "", "SESSION_TTL": "  "}).ws_port == 9004


def test_secrets_are_not_exposed() -> None:
    hook_secret = "w" * 40
    settings = Settings.from_env({"API_TOKEN": "s3cret", "WS_AUTH": "token",
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
