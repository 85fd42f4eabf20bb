"""Liveness and status frames: ``ping`` / ``heartbeat`` and ``get_status``."""

from __future__ import annotations

from server.protocol import ClientFrame
from server.router import HandlerContext


def handle_ping(ctx: HandlerContext, frame: ClientFrame) -> None:
    """``ping`` → ``pong``; ``heartbeat`` (seed 004) → ``heartbeat_response``. Not kept in
    history: a liveness answer is worthless after a reconnect. A plain function, not a
    coroutine: it never waits, and the socket endpoint runs such a handler without a
    coroutine (the round trip clients measure)."""
    reply = "heartbeat_response" if frame.type == "heartbeat" else "pong"
    data = {"client_id": ctx.session.client_id}
    if frame.timestamp is not None:
        data["echo_timestamp"] = frame.timestamp
    ctx.reply_ephemeral(reply, data)


async def handle_get_status(ctx: HandlerContext, frame: ClientFrame) -> None:
    """``get_status`` → ``status_response`` with this node's counters (``GET /status`` has the
    whole cluster's; a frame a client may send 100 times a second stays node-local)."""
    stats = ctx.gateway.node_status()
    ctx.reply("status_response", stats)
