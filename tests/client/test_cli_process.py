"""``switchboard-client`` as an operator runs it: a real subprocess against a real gateway,
configured by the gateway's own variables (WS_PORT, API_PORT, API_TOKEN), piped into tools
that stop reading early, filtering broadcasts by client type."""

from __future__ import annotations

import asyncio
import os
import re
from dataclasses import dataclass

import pytest

from tests.conftest import LiveGateway
from tests.conftest_redis import unused_port
from tests.process import BIN, base_env

CLI = str(BIN / "switchboard-client")
RUN_TIMEOUT = 30
#: A Unix tool killed by SIGPIPE exits 128 + 13 as far as the shell is concerned.
SIGPIPE_STATUS = 141


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str


async def cli(*argv: str, env: dict[str, str], stdout: int | None = asyncio.subprocess.PIPE,
              ) -> Result:
    proc = await asyncio.create_subprocess_exec(
        CLI, *argv, env=env, stdout=stdout, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), RUN_TIMEOUT)
    assert proc.returncode is not None
    return Result(proc.returncode, (out or b"").decode(), err.decode())


def gateway_env(live: LiveGateway, **extra: str) -> dict[str, str]:
    """How an operator's shell looks after starting the gateway: its own settings exported."""
    return base_env(WS_PORT=str(live.ws_server.port), API_PORT=str(live.api_server.port),
                    API_TOKEN=live.api_token, **extra)


async def test_the_gateway_settings_in_the_environment_reach_it(
        live_gateway: LiveGateway) -> None:
    env = gateway_env(live_gateway)
    status = await cli("api", "status", env=env)
    assert status.returncode == 0, status
    assert re.search(r"^status\s+running$", status.stdout, re.MULTILINE)
    pong = await cli("send", "ping", env=env)
    assert pong.returncode == 0, pong
    assert "pong" in pong.stdout


async def test_switchboard_url_and_api_win_over_the_ports(live_gateway: LiveGateway) -> None:
    env = gateway_env(live_gateway, SWITCHBOARD_API=live_gateway.api_url)
    env["API_PORT"] = str(unused_port())  # nothing listens there
    result = await cli("api", "health", env=env)
    assert result.returncode == 0, result


async def test_help_states_the_defaults_and_where_they_come_from() -> None:
    result = await cli("--help", env=base_env())
    assert result.returncode == 0
    for text in ("ws://127.0.0.1:9004/", "http://127.0.0.1:9005", "SWITCHBOARD_URL",
                 "SWITCHBOARD_API", "WS_PORT", "API_PORT", "API_TOKEN"):
        assert text in result.stdout, text


@pytest.mark.parametrize(("env", "origin"), [
    ({}, "default"),
    ({"API_PORT": "{port}"}, "API_PORT"),
    ({"SWITCHBOARD_API": "http://127.0.0.1:{port}"}, "SWITCHBOARD_API"),
])
async def test_a_connection_error_says_which_address_and_where_it_came_from(
        env: dict[str, str], origin: str) -> None:
    port = str(unused_port()) if env else "9005"
    settings = {key: value.format(port=port) for key, value in env.items()}
    if not env and await _listening(9005):
        pytest.fail("something listens on 127.0.0.1:9005; this test needs the default free")
    result = await cli("api", "status", env=base_env(**settings))
    assert result.returncode == 1, result
    assert "Traceback" not in result.stderr
    line, = result.stderr.strip().splitlines()
    assert f"http://127.0.0.1:{port}" in line and origin in line, line


async def _listening(port: int) -> bool:
    try:
        _, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        return False
    writer.close()
    return True


@pytest.mark.parametrize("flag", ["--client-type", "--to-type"])
async def test_api_broadcast_filters_by_client_type(live_gateway: LiveGateway,
                                                    flag: str) -> None:
    browser = await live_gateway.connect(client_id="tab", client_type="browser")
    agent = await live_gateway.connect(client_id="bot", client_type="agent")
    result = await cli("api", "broadcast", "notice", '{"n": 1}', flag, "browser",
                       env=gateway_env(live_gateway))
    assert result.returncode == 0, result
    assert "to 1 recipient(s)" in result.stdout
    assert (await browser.recv_type("notice"))["data"] == {"n": 1}
    await agent.send("ping")
    assert (await agent.recv())["type"] == "pong"  # nothing else arrived first


async def test_the_cli_s_own_client_type_is_refused_for_api_commands(
        live_gateway: LiveGateway) -> None:
    result = await cli("--client-type", "browser", "api", "broadcast", "notice",
                       env=gateway_env(live_gateway))
    assert result.returncode == 2, result
    assert "api broadcast" in result.stderr and "--client-type" in result.stderr


async def test_output_into_a_closed_pipe_ends_quietly(live_gateway: LiveGateway) -> None:
    read_end, write_end = os.pipe()
    os.close(read_end)  # like `| head -1` after its line
    try:
        result = await cli("api", "status", env=gateway_env(live_gateway), stdout=write_end)
    finally:
        os.close(write_end)
    assert result.returncode == SIGPIPE_STATUS, result
    assert result.stderr == ""


async def test_listen_into_a_closed_pipe_stops_at_the_first_frame(
        live_gateway: LiveGateway) -> None:
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        proc = await asyncio.create_subprocess_exec(
            CLI, "--client-id", "piped", "listen", env=gateway_env(live_gateway),
            stdout=write_end, stderr=asyncio.subprocess.PIPE)
    finally:
        os.close(write_end)
    assert proc.stderr is not None
    await asyncio.wait_for(proc.stderr.readline(), RUN_TIMEOUT)  # "connecting to ..."
    await asyncio.wait_for(proc.stderr.readline(), RUN_TIMEOUT)  # "connected to ..."
    status, _ = await live_gateway.api("POST", "/send_message",
                                       {"client_id": "piped", "content": "hello"})
    assert status == 200
    err = await asyncio.wait_for(proc.stderr.read(), RUN_TIMEOUT)
    assert await asyncio.wait_for(proc.wait(), RUN_TIMEOUT) == SIGPIPE_STATUS
    assert b"Traceback" not in err and b"BrokenPipe" not in err, err
