"""Secrets never reach the logs (issue 5): tokens in query strings, session tokens, API tokens
and JWTs. The gateway runs in a child process exactly as ``python -m server`` runs it (same
runner, ``configure_logging`` at debug level, JSON lines) so global logging state stays local
to that process; every line it writes is searched for the secrets."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import textwrap
from pathlib import Path

from server.config import Settings
from server.runner import runner_options
from tests.conftest_redis import free_port

ROOT = Path(__file__).resolve().parents[2]

CHILD = textwrap.dedent('''
    import asyncio, json, logging, sys
    import aiohttp
    from server.config import Settings
    from server.logging_setup import configure_logging
    from server.runner import serve

    async def main() -> None:
        settings = Settings.from_env()
        configure_logging("debug", "json")
        # Even with aiohttp's access logger at debug, nothing may log request lines.
        for name in ("aiohttp.access", "aiohttp.server", "aiohttp.web", "aiohttp.websocket"):
            logging.getLogger(name).setLevel(logging.DEBUG)
        stop = asyncio.Event()
        server = asyncio.get_running_loop().create_task(serve(settings, stop=stop))
        ws_url = f"http://127.0.0.1:{settings.ws_port}/"
        api = f"http://127.0.0.1:{settings.api_port}"
        secrets = {"ws_token": settings.ws_auth_token, "api_token": settings.api_token}
        async with aiohttp.ClientSession() as http:
            for _ in range(500):
                try:
                    async with http.get(f"{api}/health") as resp:
                        if resp.status == 200:
                            break
                except aiohttp.ClientConnectionError:
                    await asyncio.sleep(0.01)
            ws = await http.ws_connect(ws_url, params={"token": settings.ws_auth_token,
                                                       "client_id": "alice"})
            hello = json.loads((await ws.receive()).data)
            secrets["session_token"] = hello["data"]["session_token"]
            await ws.send_str('{"type": "ping"}')
            await ws.receive()
            await ws.close()
            ws = await http.ws_connect(ws_url, params={
                "token": settings.ws_auth_token, "client_id": "alice",
                "session_token": secrets["session_token"], "last_seq": "0"})
            assert json.loads((await ws.receive()).data)["data"]["resumed"]
            await ws.close()
            # Refusals: a wrong token (401) and a wrong session token (4003).
            try:
                await http.ws_connect(ws_url, params={"token": "WRONG-WS-TOKEN-7d1f0c"})
            except aiohttp.WSServerHandshakeError as exc:
                assert exc.status == 401
            ws = await http.ws_connect(ws_url, params={
                "token": settings.ws_auth_token, "client_id": "alice",
                "session_token": "WRONG-SESSION-TOKEN-9a8b7c"})
            await ws.receive()
            await ws.receive()
            await ws.close()
            auth = {"Authorization": f"Bearer {settings.api_token}"}
            async with http.get(f"{api}/status?token={settings.ws_auth_token}",
                                headers=auth) as resp:
                assert resp.status == 200
            async with http.get(f"{api}/status", headers={"X-API-Key": "WRONG-API-KEY-5e4d"}
                                ) as resp:
                assert resp.status == 403
            async with http.post(f"{api}/send_message", headers=auth,
                                 json={"client_id": "alice", "content": "hi"}) as resp:
                assert resp.status in (200, 202)
            async with http.get(f"{api}/nowhere?api_key={settings.api_token}",
                                headers=auth) as resp:
                assert resp.status == 404
        stop.set()
        await server
        secrets.update(wrong_ws="WRONG-WS-TOKEN-7d1f0c",
                       wrong_session="WRONG-SESSION-TOKEN-9a8b7c",
                       wrong_api="WRONG-API-KEY-5e4d")
        print(json.dumps(secrets))

    asyncio.run(main())
''')


async def test_no_secret_reaches_the_logs() -> None:
    env = {**os.environ, "WS_HOST": "127.0.0.1", "API_HOST": "127.0.0.1",
           "WS_PORT": str(free_port()), "API_PORT": str(free_port()),
           "WS_AUTH": "token", "WS_AUTH_TOKEN": "QUERY-SECRET-3f9a2b1c",
           "API_TOKEN": "API-SECRET-8e7d6c5b", "LOG_LEVEL": "debug", "LOG_FORMAT": "json",
           "WS_HEARTBEAT": "0", "SHUTDOWN_TIMEOUT": "2"}
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-c", CHILD, cwd=ROOT, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    async with asyncio.timeout(60):
        out, err = await child.communicate()
    logs = err.decode()
    assert child.returncode == 0, logs
    secrets = json.loads(out.decode().strip().splitlines()[-1])
    assert len(secrets) == 6 and all(len(value) >= 12 for value in secrets.values())
    # The logs did record the events (the test would prove nothing otherwise) ...
    events = [json.loads(line) for line in logs.splitlines() if line.startswith("{")]
    names = {event.get("event") for event in events}
    assert {"client_connected", "client_disconnected", "resume_refused",
            "switchboard_started", "api_request", "message_sent"} <= names, names
    # At LOG_LEVEL=debug every API request has its access line (built only when debug is on).
    sends = [e for e in events if e.get("event") == "api_request"
             and e.get("path") == "/send_message"]
    assert len(sends) == 1 and sends[0]["method"] == "POST" and sends[0]["status"] in (200, 202)
    assert sends[0]["ms"] >= 0
    # ... and none of them, nor any other line, carries a secret.
    for name, secret in secrets.items():
        assert secret not in logs, f"{name} leaked into the logs"
    assert "token=" not in logs


def test_the_access_log_is_off_in_production() -> None:
    options = runner_options(Settings())
    assert options["access_log"] is None


def test_settings_never_print_secrets() -> None:
    settings = Settings(api_token="API-SECRET-1", ws_auth_token="WS-SECRET-2",
                        ws_jwt_secret="JWT-SECRET-3" * 3, webhook_secret="HOOK-SECRET-4" * 3)
    text = repr(settings) + json.dumps(settings.public_dict(), default=str)
    for secret in ("API-SECRET-1", "WS-SECRET-2", "JWT-SECRET-3", "HOOK-SECRET-4"):
        assert secret not in text
    assert settings.public_dict()["api_token"] is True
