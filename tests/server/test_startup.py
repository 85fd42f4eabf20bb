"""An operator's first hour, through the real process: --help, misspelt settings, .env
mistakes, port clashes, weak tokens, the start-up URLs, close codes in logs and what a restart
keeps. Every test runs ``run_websocket_server.py`` (or the ``switchboard`` script) as a
subprocess in a clean environment, on free loopback ports."""

from __future__ import annotations

import json
import re
import signal
import socket
import sys
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from server.config import SETTINGS_DOC
from tests.process import (
    BIN,
    SCRIPT,
    STRONG_TOKEN,
    base_env,
    free_port,
    run_script,
    running_server,
)

#: A gateway that starts instead of doing what the test expects is cut off after this long.
NO_START = 15


def loopback_env(**settings: str) -> dict[str, str]:
    """Free loopback ports, so a gateway that does start never touches 9004/9005."""
    return base_env(**{"WS_HOST": "127.0.0.1", "WS_PORT": str(free_port()),
                       "API_PORT": str(free_port()), **settings})


def json_events(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def one_error_line(result: Any) -> str:
    """The single stderr line of a refused start (exit 2, no traceback, nothing on stdout)."""
    assert result.returncode == 2, result
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


# ---------------------------------------------------------------------- 1. --help


HELP_COMMANDS = {
    "switchboard --help": ([str(BIN / "switchboard")], "--help"),
    "run_websocket_server.py -h": ([sys.executable, str(SCRIPT)], "-h"),
    "python -m server --help": ([sys.executable, "-m", "server"], "--help"),
}


@pytest.mark.parametrize("name", HELP_COMMANDS)
def test_help_lists_every_setting_with_its_default_and_binds_nothing(
        tmp_path: Path, name: str) -> None:
    command, flag = HELP_COMMANDS[name]
    env = loopback_env()
    result = run_script(tmp_path, flag, command=command, env=env, timeout=NO_START)
    assert result.returncode == 0, result
    assert result.stdout.startswith("usage: "), result.stdout
    assert result.stderr == ""
    for spec in SETTINGS_DOC:
        line = rf"^  {spec.env}  +default: {re.escape(spec.default)}$"
        assert re.search(line, result.stdout, re.MULTILINE), f"{spec.env} missing from --help"
    # Nothing was bound: the port the gateway would have used is free.
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", int(env["WS_PORT"])))


def test_an_unknown_argument_is_a_usage_error(tmp_path: Path) -> None:
    result = run_script(tmp_path, "--port", "9000", env=loopback_env(), timeout=NO_START)
    assert result.returncode == 2, result
    assert "usage: " in result.stderr and "--port" in result.stderr
    assert "WS_PORT" in result.stderr  # settings are environment variables: say so
    assert result.stdout == ""


# ---------------------------------------------------------------------- 2. misspelt settings


async def test_a_misspelt_variable_is_named_with_its_likely_meaning_at_start_up(
        tmp_path: Path) -> None:
    async with running_server(tmp_path, LOG_FORMAT="json", BROKER_ULR="redis://127.0.0.1:1/0",
                              WS_PROT="19014", api_token="lower-case-is-a-typo-too",
                              NODE_ENV="production", REDIS_URL="redis://x",
                              LOG_DIR="/var/log") as live:
        warnings = {event["variable"]: event for event in json_events(live.output())
                    if event["event"] == "unknown_setting"}
        assert await live.stop() == 0
    assert warnings.keys() == {"BROKER_ULR", "WS_PROT", "api_token"}, warnings
    assert warnings["BROKER_ULR"]["did_you_mean"] == "BROKER_URL"
    assert warnings["WS_PROT"]["did_you_mean"] == "WS_PORT"
    assert warnings["api_token"]["did_you_mean"] == "API_TOKEN"
    assert all(event["level"] == "warning" for event in warnings.values())


def test_a_misspelt_variable_in_env_file_is_refused_naming_file_line_and_match(
        tmp_path: Path) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text("# ours\nLOG_LEVEL=info\nBROKER_ULR=redis://127.0.0.1:1/0\n",
                        encoding="utf-8")
    line = one_error_line(run_script(tmp_path, env=loopback_env(), timeout=NO_START))
    assert f"{env_file.resolve()}:3:" in line
    assert "BROKER_ULR" in line and "BROKER_URL" in line


# ---------------------------------------------------------------------- 3. .env values


@pytest.mark.parametrize(("content", "line_no", "names"), [
    ("WS_HEARTBEAT=30\n\nLOG_FORMAT=yaml\n", 3, "LOG_FORMAT"),
    ("export WS_TIMEOUT=soon\n", 1, "WS_TIMEOUT"),
    ("LOG_LEVEL=info\nBROKER_URL redis://x\n", 2, "KEY=value"),
])
def test_a_bad_env_file_line_names_the_file_and_line(
        tmp_path: Path, content: str, line_no: int, names: str) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text(content, encoding="utf-8")
    line = one_error_line(run_script(tmp_path, env=loopback_env(), timeout=NO_START))
    assert line.startswith(f"switchboard: configuration error: {env_file.resolve()}:{line_no}: ")
    assert names in line


# ---------------------------------------------------------------------- 4. ports


def test_ws_port_equal_to_api_port_is_a_config_error_naming_both(tmp_path: Path) -> None:
    port = str(free_port())
    line = one_error_line(run_script(
        tmp_path, env=base_env(WS_HOST="127.0.0.1", API_HOST="localhost", WS_PORT=port,
                               API_PORT=port), timeout=NO_START))
    assert "WS_PORT" in line and "API_PORT" in line and port in line


@pytest.mark.parametrize("busy", ["WS_PORT", "API_PORT"])
def test_a_port_clash_names_the_variable_and_starts_nothing_first(
        tmp_path: Path, busy: str) -> None:
    env = loopback_env(API_HOST="127.0.0.1", LOG_LEVEL="debug")
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        env[busy] = str(holder.getsockname()[1])
        result = run_script(tmp_path, env=env, timeout=NO_START)
    assert result.returncode == 1, result
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr  # no broker_started (or anything) before it
    assert f"127.0.0.1:{env[busy]}" in lines[0] and f"set {busy}" in lines[0]
    assert "already in use" in lines[0]


# ---------------------------------------------------------------------- 5. weak API tokens


@pytest.mark.parametrize("token", ["secret", "x", "a" * 40])
def test_a_weak_api_token_on_a_non_loopback_api_is_refused(tmp_path: Path, token: str) -> None:
    # API_TOKEN set and API_HOST unset: the API follows WS_HOST onto every interface.
    line = one_error_line(run_script(
        tmp_path, env=loopback_env(WS_HOST="0.0.0.0", API_TOKEN=token), timeout=NO_START))
    assert line.startswith("switchboard: configuration error: API_TOKEN: ")
    assert "0.0.0.0" in line and "API_INSECURE" in line and "secrets.token_urlsafe" in line
    if len(token) > 8:
        assert token not in line  # the token itself is never echoed


# ---------------------------------------------------------------------- 6. start-up URLs


async def test_start_up_prints_working_urls_for_socket_api_docs_and_dashboard(
        tmp_path: Path) -> None:
    async with running_server(tmp_path, LOG_FORMAT="json", API_TOKEN=STRONG_TOKEN) as live:
        started = next(e for e in json_events(live.output())
                       if e["event"] == "switchboard_started")
        assert started["websocket"] == live.ws_url
        assert started["api"] == f"{live.api_url}/"
        assert started["docs"] == f"{live.api_url}/docs"
        assert started["dashboard"] == f"{live.api_url}/dashboard"
        async with aiohttp.ClientSession() as http:
            for page in ("docs", "dashboard"):
                async with http.get(started[page]) as resp:
                    assert resp.status == 200 and resp.content_type == "text/html"
            async with http.get(f"{started['api']}status",
                                headers={"Authorization": f"Bearer {STRONG_TOKEN}"}) as resp:
                assert resp.status == 200
            async with http.ws_connect(started["websocket"]) as ws:
                hello = orjson.loads((await ws.receive(timeout=10)).data)
                assert hello["type"] == "connection_established"
        assert await live.stop() == 0


# ---------------------------------------------------------------------- 8. close codes in logs


async def test_logs_write_close_codes_as_plain_integers(tmp_path: Path) -> None:
    async with running_server(tmp_path, LOG_FORMAT="console",
                              API_TOKEN=STRONG_TOKEN) as live:
        async with aiohttp.ClientSession() as http:
            ended = await http.ws_connect(f"{live.ws_url}?client_id=ended")
            await ended.receive(timeout=10)
            stays = await http.ws_connect(f"{live.ws_url}?client_id=stays")
            await stays.receive(timeout=10)
            async with http.delete(f"{live.api_url}/clients/ended",
                                   headers={"Authorization": f"Bearer {STRONG_TOKEN}"}) as resp:
                assert resp.status == 200
            assert (await ended.receive(timeout=10)).type is aiohttp.WSMsgType.CLOSE
            assert ended.close_code == 4001
            await live.wait_for_output("client_disconnected")
            live.process.send_signal(signal.SIGTERM)
            assert (await stays.receive(timeout=10)).type is aiohttp.WSMsgType.CLOSE
            assert stays.close_code == 1001
            await ended.close()
            await stays.close()
        assert await live.exited() == 0
    log = live.output()
    codes = re.findall(r"\bcode=(\S+)", log)
    assert "4001" in codes and "1001" in codes, log
    assert all(code.isdigit() for code in codes), codes


# ---------------------------------------------------------------------- 10. restarts


async def test_memory_broker_says_a_restart_ends_every_session(tmp_path: Path) -> None:
    async with running_server(tmp_path, LOG_FORMAT="json") as live:
        started = next(e for e in json_events(live.output())
                       if e["event"] == "switchboard_started")
        assert "restart" in started["sessions"] and "redis://" in started["sessions"]
        async with aiohttp.ClientSession() as http, http.ws_connect(live.ws_url) as ws:
            await ws.receive(timeout=10)
            live.process.send_signal(signal.SIGTERM)
            msg = await ws.receive(timeout=10)
            assert msg.type is aiohttp.WSMsgType.CLOSE and ws.close_code == 1001
            reason = msg.extra or ""
            assert "reconnect" in reason and "resume" not in reason, reason
        assert await live.exited() == 0
    stopping = next(e for e in json_events(live.output()) if e["event"] == "switchboard_stopping")
    assert stopping["sessions"] == started["sessions"]


# ---------------------------------------------------------------------- --check


def test_check_shows_each_value_and_its_source_and_binds_nothing(tmp_path: Path) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text("LOG_LEVEL=debug\n", encoding="utf-8")
    env = loopback_env(API_TOKEN=STRONG_TOKEN, WS_PROT="1",
                       BROKER_URL="redis://:hunter2@127.0.0.1:1/0")
    result = run_script(tmp_path, "--check", env=env, timeout=NO_START)
    assert result.returncode == 0, result
    lines = {line.split()[0]: line for line in result.stdout.splitlines()}
    assert lines.keys() == {spec.env for spec in SETTINGS_DOC}
    assert lines["WS_PORT"].split()[1:] == [env["WS_PORT"], "(environment)"]
    assert lines["LOG_LEVEL"].split()[1:] == ["debug", f"({env_file.resolve()}:1)"]
    assert lines["HISTORY_LIMIT"].split()[1:] == ["1000", "(default)"]
    assert lines["API_TOKEN"].split()[1] == "(set)" and STRONG_TOKEN not in result.stdout
    assert lines["BROKER_URL"].split()[1] == "redis://127.0.0.1:1/0"  # no password
    assert "WS_PROT" in result.stderr and "WS_PORT?" in result.stderr
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", int(env["WS_PORT"])))
