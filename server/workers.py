"""``WORKERS=N``: N processes sharing both ports (SO_REUSEPORT), one cluster over Redis.

Each worker is a full node (its own event loop, registry and ``NODE_ID`` =
``{NODE_ID or hostname}-w{i}``) serving the WebSocket and API ports with ``reuse_port=True``;
the kernel spreads new connections across them, and the Redis broker makes them one gateway
(any worker's API reaches any client; a client resumes on whichever worker its reconnect lands).
``Settings.check`` refuses ``WORKERS > 1`` with the memory broker.

The parent only supervises: it forwards SIGTERM/SIGINT to every worker, and returns once they
have all exited (0 when each exited cleanly or on our signal, 1 otherwise). A worker that dies
on its own is logged and not restarted (a process supervisor restarts the whole service).
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import os
import signal
import socket
import sys
import time
from multiprocessing.process import BaseProcess
from types import FrameType

import structlog

from server.config import Settings
from server.errors import ConfigError
from server.logging_setup import configure_logging

log = structlog.get_logger("switchboard.workers")

#: Seconds the parent waits for workers after forwarding a signal before killing them.
GRACE_EXTRA = 5.0


def worker_settings(settings: Settings, index: int) -> Settings:
    base = settings.node_id or socket.gethostname()
    return dataclasses.replace(settings, workers=1, node_id=f"{base}-w{index}")


def _worker_main(settings: Settings) -> None:
    """Entry point of one worker process."""
    import asyncio

    from server.runner import serve

    configure_logging(settings.log_level, settings.log_format)
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a default dependency on Linux
        asyncio.run(serve(settings, reuse_port=True))
    else:
        uvloop.run(serve(settings, reuse_port=True))


def run_workers(settings: Settings) -> int:
    """Start ``settings.workers`` worker processes and supervise them until they exit."""
    if settings.workers > 1 and settings.broker_url.startswith("memory"):
        raise ConfigError("WORKERS: more than one worker needs a shared broker; "
                          "set BROKER_URL=redis://…")
    if not hasattr(socket, "SO_REUSEPORT"):  # pragma: no cover - Linux/BSD/macOS have it
        print("switchboard: WORKERS > 1 needs SO_REUSEPORT (Linux, BSD, macOS)",
              file=sys.stderr)
        return 2
    context = multiprocessing.get_context("spawn")
    workers: list[BaseProcess] = []
    stopping = False

    def forward(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True
        for proc in workers:
            if proc.is_alive() and proc.pid is not None:
                os.kill(proc.pid, signum)

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        for index in range(settings.workers):
            child = worker_settings(settings, index)
            proc = context.Process(target=_worker_main, args=(child,),
                                   name=f"switchboard-{child.node_id}")
            proc.start()
            workers.append(proc)
            log.info("worker_started", node_id=child.node_id, pid=proc.pid)
        return _supervise(workers, settings, lambda: stopping)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _supervise(workers: list[BaseProcess], settings: Settings,
               stopping: object) -> int:
    assert callable(stopping)
    failed = False
    alive = list(workers)
    deadline: float | None = None
    while alive:
        for proc in list(alive):
            proc.join(timeout=0.2)
            if proc.exitcode is None:
                continue
            alive.remove(proc)
            clean = proc.exitcode == 0 or (stopping() and proc.exitcode < 0)
            if not clean:
                failed = True
            log.info("worker_exited", name=proc.name, pid=proc.pid, exitcode=proc.exitcode)
        if stopping() and deadline is None:
            deadline = time.monotonic() + settings.shutdown_timeout + GRACE_EXTRA
        if deadline is not None and time.monotonic() > deadline:
            for proc in alive:
                log.warning("worker_killed", name=proc.name, pid=proc.pid)
                proc.kill()
            deadline = time.monotonic() + GRACE_EXTRA
    return 1 if failed else 0
