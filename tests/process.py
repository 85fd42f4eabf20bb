"""Running the real gateway (and the CLI) as a new user would: a subprocess, a clean environment.

``run_script`` runs ``run_websocket_server.py`` (or another command) to completion;
``running_server`` starts the gateway on free loopback ports, waits until it logs
``switchboard_started`` and stops it with SIGTERM on exit.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from tests.conftest_redis import free_port

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "run_websocket_server.py"
BIN = Path(sys.executable).parent
START_TIMEOUT = 30.0
#: An API token that passes the strength rule (32+ bytes): tests bind the API to loopback
#: anyway, where any token is accepted.
STRONG_TOKEN = "operator-test-token-0123456789abcdefXYZ"


def base_env(**settings: str) -> dict[str, str]:
    """A clean environment: only what Python needs plus the given settings."""
    env = {key: os.environ[key] for key in ("PATH", "HOME", "LANG", "SYSTEMROOT")
           if key in os.environ}
    env.update(settings)
    return env


def run_script(cwd: Path, *args: str, env: dict[str, str] | None = None,
               command: Sequence[str] = (sys.executable, str(SCRIPT)),
               timeout: float = 30) -> subprocess.CompletedProcess[str]:
    """Run a command to completion (a gateway that starts instead of exiting times out)."""
    return subprocess.run([*command, *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env=base_env() if env is None else env)


@dataclass
class Running:
    process: asyncio.subprocess.Process
    ws_port: int
    api_port: int
    log: Path

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.ws_port}/"

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    def output(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace")

    async def wait_for_output(self, text: str, timeout: float = START_TIMEOUT) -> None:  # noqa: ASYNC109
        deadline = time.monotonic() + timeout
        while text not in self.output():
            if self.process.returncode is not None:
                raise AssertionError(f"gateway exited before logging {text!r}:\n"
                                     f"{self.output()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"gateway did not log {text!r}:\n{self.output()}")
            await asyncio.sleep(0.05)

    async def stop(self, sig: int = signal.SIGTERM) -> int:
        """Send ``sig`` and return the exit status."""
        if self.process.returncode is None:
            self.process.send_signal(sig)
        return await self.exited()

    async def exited(self) -> int:
        """The exit status, once the process has exited by itself (or on an earlier signal)."""
        return await asyncio.wait_for(self.process.wait(), START_TIMEOUT)


@contextlib.asynccontextmanager
async def running_server(cwd: Path, **settings: str) -> AsyncIterator[Running]:
    """The gateway on free loopback ports (``settings`` override), started and stopped."""
    ws_port, api_port = free_port(), free_port()
    env = base_env(WS_HOST="127.0.0.1", API_HOST="127.0.0.1", WS_PORT=str(ws_port),
                   API_PORT=str(api_port), SHUTDOWN_TIMEOUT="5")
    env.update(settings)
    log = cwd / "gateway.log"
    with log.open("wb") as log_file:
        process = await asyncio.create_subprocess_exec(
            sys.executable, str(SCRIPT), cwd=cwd, stdout=log_file, stderr=log_file, env=env)
    live = Running(process, int(env["WS_PORT"]), int(env["API_PORT"]), log)
    try:
        await live.wait_for_output("switchboard_started")
        yield live
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
