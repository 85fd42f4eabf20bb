"""The real process: run_websocket_server.py on free ports, graceful shutdown, bad settings."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from server.runner import display_host
from tests.process import SCRIPT, base_env, free_port

TOKEN = "runner-test-token"
START_TIMEOUT = 20.0


@dataclass
class Server:
    process: asyncio.subprocess.Process
    ws_url: str
    api_url: str
    log: Path


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[Server]:
    ws_port, api_port = free_port(), free_port()
    log = tmp_path / "server.log"
    with log.open("wb") as log_file:
        process = await asyncio.create_subprocess_exec(
            sys.executable, str(SCRIPT), cwd=tmp_path, stdout=log_file, stderr=log_file,
            env=base_env(WS_HOST="127.0.0.1", API_HOST="127.0.0.1", WS_PORT=str(ws_port),
                         API_PORT=str(api_port), API_TOKEN=TOKEN, LOG_FORMAT="json",
                         SHUTDOWN_TIMEOUT="5"))
    live = Server(process, f"ws://127.0.0.1:{ws_port}/", f"http://127.0.0.1:{api_port}", log)
    try:
        await _wait_until_ready(live)
        yield live
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def _wait_until_ready(live: Server) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    async with aiohttp.ClientSession() as http:
        while True:
            if live.process.returncode is not None:
                raise AssertionError(f"server exited: {live.log.read_text()}")
            try:
                async with http.get(f"{live.api_url}/health") as resp:
                    if resp.status == 200:
                        return
            except aiohttp.ClientConnectionError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"server did not start: {live.log.read_text()}")
            await asyncio.sleep(0.05)


async def test_sigterm_closes_sockets_with_1001_and_exits_0(server: Server) -> None:
    async with aiohttp.ClientSession() as http:
        ws = await http.ws_connect(f"{server.ws_url}?client_id=proc")
        hello = orjson.loads((await ws.receive(timeout=5)).data)
        assert hello["type"] == "connection_established"
        assert hello["data"]["client_id"] == "proc"
        # The API of the same process reaches the client.
        async with http.post(f"{server.api_url}/send_message",
                             json={"client_id": "proc", "content": "hi"},
                             headers={"Authorization": f"Bearer {TOKEN}"}) as resp:
            assert resp.status == 200
        assert orjson.loads((await ws.receive(timeout=5)).data)["data"]["content"] == "hi"

        server.process.send_signal(signal.SIGTERM)
        msg = await ws.receive(timeout=10)
        assert msg.type is aiohttp.WSMsgType.CLOSE, msg
        assert ws.close_code == 1001
        assert "reconnect" in (msg.extra or "")
        await ws.close()
    assert await asyncio.wait_for(server.process.wait(), 15) == 0
    log = server.log.read_text()
    assert "switchboard_stopped" in log
    assert TOKEN not in log  # secrets never reach the logs
    assert "Traceback" not in log


async def test_sigint_also_shuts_down_cleanly_and_fails_waiting_tool_calls(
        server: Server) -> None:
    async with aiohttp.ClientSession() as http:
        ws = await http.ws_connect(f"{server.ws_url}?client_id=worker")
        await ws.receive(timeout=5)
        call = asyncio.get_running_loop().create_task(http.post(
            f"{server.api_url}/call_tool",
            json={"client_id": "worker", "tool_name": "t", "timeout": 30},
            headers={"Authorization": f"Bearer {TOKEN}"}))
        frame = orjson.loads((await ws.receive(timeout=5)).data)
        assert frame["type"] == "tool_call"
        server.process.send_signal(signal.SIGINT)
        msg = await ws.receive(timeout=10)
        assert msg.type is aiohttp.WSMsgType.CLOSE and ws.close_code == 1001
        # The in-flight request finishes with a clear answer instead of hanging.
        resp = await asyncio.wait_for(call, 10)
        assert resp.status == 502
        assert (await resp.json())["error"]["code"] == "client_disconnected"
        resp.release()
        await ws.close()
    assert await asyncio.wait_for(server.process.wait(), 15) == 0


@pytest.mark.parametrize(("settings", "variable"), [
    ({"WS_PORT": "abc"}, "WS_PORT"),
    ({"LOG_FORMAT": "xml"}, "LOG_FORMAT"),
    ({"API_HOST": "0.0.0.0"}, "API_TOKEN"),  # every other variable: tests/server/test_config.py
])
def test_a_bad_setting_exits_2_with_one_line_naming_the_variable(
        tmp_path: Path, settings: dict[str, str], variable: str) -> None:
    result = subprocess.run(
        [sys.executable, str(SCRIPT)], cwd=tmp_path, capture_output=True, text=True,
        timeout=30, env=base_env(**{"WS_HOST": "127.0.0.1", "WS_PORT": str(free_port()),
                                    "API_PORT": str(free_port()), **settings}))
    assert result.returncode == 2, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert variable in lines[0]
    assert "Traceback" not in result.stderr
    assert result.stdout == ""


@pytest.mark.parametrize(("bound", "shown"), [
    ("0.0.0.0", "127.0.0.1"), ("::", "[::1]"), ("10.0.0.5", "10.0.0.5"),
    ("fd00::5", "[fd00::5]"), ("gateway.internal", "gateway.internal"),
])
def test_start_up_urls_use_an_address_a_person_can_open(bound: str, shown: str) -> None:
    assert display_host(bound) == shown


async def eventually(check: Callable[[], Awaitable[bool]], what: str) -> None:
    """Poll an async condition with a deadline (no fixed sleeps as synchronisation)."""
    deadline = time.monotonic() + 10
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


async def test_shutdown_answers_calls_still_waiting_for_an_offline_client(
        server: Server) -> None:
    auth = {"Authorization": f"Bearer {TOKEN}"}
    async with aiohttp.ClientSession() as http:

        async def session() -> dict[str, Any]:
            async with http.get(f"{server.api_url}/clients/away", headers=auth) as resp:
                return await resp.json()

        async def offline() -> bool:
            return (await session())["connected"] is False

        async def call_queued() -> bool:
            return (await session())["last_seq"] == 1

        ws = await http.ws_connect(f"{server.ws_url}?client_id=away")
        await ws.receive(timeout=5)
        await ws.close()
        await eventually(offline, "the client to be seen offline")
        call = asyncio.get_running_loop().create_task(http.post(
            f"{server.api_url}/call_tool", headers=auth,
            json={"client_id": "away", "tool_name": "t", "timeout": 60,
                  "wait_for_client": True}))
        await eventually(call_queued, "the tool_call to be queued for the offline client")
        server.process.send_signal(signal.SIGTERM)
        resp = await asyncio.wait_for(call, 10)  # answered, not dropped at SHUTDOWN_TIMEOUT
        assert resp.status == 503
        assert (await resp.json())["error"]["code"] == "unavailable"
        resp.release()
    assert await asyncio.wait_for(server.process.wait(), 15) == 0


async def test_serve_freezes_what_start_up_made_out_of_the_cyclic_collector() -> None:
    """Start-up's objects live as long as the process: once serving, they are frozen, so no
    full collection walks them again (each one paused every socket for ~20 ms or more)."""
    import gc

    from server.config import Settings
    from server.runner import serve

    settings = Settings.from_env(base_env(
        WS_HOST="127.0.0.1", API_HOST="127.0.0.1", WS_PORT=str(free_port()),
        API_PORT=str(free_port()), API_TOKEN=TOKEN))
    stop = asyncio.Event()
    gc.unfreeze()
    task = asyncio.get_running_loop().create_task(serve(settings, stop=stop))
    try:
        health = f"http://127.0.0.1:{settings.api_port}/health"
        async with aiohttp.ClientSession() as http:
            deadline = time.monotonic() + START_TIMEOUT
            while not task.done():
                with contextlib.suppress(aiohttp.ClientConnectionError):
                    async with http.get(health) as resp:
                        if resp.status == 200:
                            break
                assert time.monotonic() < deadline, "the gateway did not start"
                await asyncio.sleep(0.05)  # polling a server for its start, bounded
        assert gc.get_freeze_count() > 10_000, gc.get_freeze_count()
    finally:
        stop.set()
        await asyncio.wait_for(task, START_TIMEOUT)
        gc.unfreeze()  # the test process's objects go back to the collector
