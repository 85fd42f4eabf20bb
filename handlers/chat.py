"""Chat frames: ``chat_message`` (alias ``text_message``).

Without ``CHAT_WEBHOOK_URL`` the gateway echoes: ``processing``, then ``chat_response``. With a
backend configured, the message is POSTed to it and its answer relayed (a JSON reply as
``chat_response``, a streamed reply as ``stream_start`` / ``stream_chunk`` / ``stream_end``).
"""

from __future__ import annotations

from server.protocol import ClientFrame, Field
from server.router import HandlerContext

FIELDS = {
    "content": Field("string", required=True, max_length=1_000_000),
    "role": Field("string", max_length=64),
    "stream": Field("boolean"),
    "conversation_id": Field("string", max_length=256),
}


async def handle_chat(ctx: HandlerContext, frame: ClientFrame) -> None:
    ctx.reply("processing", {"status": "processing"})
    backend = ctx.gateway.chat_backend
    if backend is None:
        ctx.reply("chat_response", {
            "content": f"Echo: {frame.data['content']}",
            "status": "completed",
            "model": "echo",
            "role": "assistant",
        })
        return
    # A backend may take seconds; the connection keeps reading meanwhile.
    ctx.gateway.spawn(backend(ctx, frame), name=f"chat-{frame.message_id}")
