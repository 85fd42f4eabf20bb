"""Chat frames: ``chat_message`` (alias ``text_message``).

Without ``CHAT_WEBHOOK_URL`` the gateway echoes: ``processing``, then ``chat_response``
``"Echo: <content>"`` — or, when the frame asks for ``"stream": true`` (seed 004), the same
answer streamed in a few pieces as ``stream_start`` / ``stream_chunk`` / ``stream_end``
{full_content}. With a backend configured, the message is POSTed to it and its answer relayed
the same way (a JSON reply as ``chat_response``, a streamed reply as stream frames).
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator

from server.protocol import ClientFrame, Field
from server.router import HandlerContext
from server.webhooks import ChatRelay, Piece

FIELDS = {
    "content": Field("string", required=True, max_length=1_000_000),
    "role": Field("string", max_length=64),
    "stream": Field("boolean"),
    "conversation_id": Field("string", max_length=256),
}
#: How many ``stream_chunk`` frames a streamed echo is cut into, at most.
ECHO_CHUNKS = 4
_WORD_START = re.compile(r"(?<=\s)(?=\S)")


async def handle_chat(ctx: HandlerContext, frame: ClientFrame) -> None:
    ctx.reply("processing", {"status": "processing"})
    backend = ctx.gateway.chat_backend
    if backend is None:
        await echo(ctx, frame)
        return
    # A backend may take seconds; the connection keeps reading meanwhile.
    ctx.gateway.spawn(backend(ctx, frame), name=f"chat-{frame.message_id}")


async def echo(ctx: HandlerContext, frame: ClientFrame) -> None:
    """The default chat backend: answers ``Echo: <content>``, streamed when asked."""
    relay = ChatRelay(ctx, frame.data.get("conversation_id"), default_model="echo")
    answer = f"Echo: {frame.data['content']}"
    if frame.data.get("stream") is True:
        await relay.stream(_pieces(echo_chunks(answer)))
    else:
        await relay.complete(answer, None)


def echo_chunks(text: str, parts: int = ECHO_CHUNKS) -> list[str]:
    """``text`` cut at word starts into at most ``parts`` pieces that join back to it."""
    words = _WORD_START.split(text)
    per = -(-len(words) // parts)
    return ["".join(words[i:i + per]) for i in range(0, len(words), per)]


async def _pieces(chunks: list[str]) -> AsyncIterator[Piece]:
    for chunk in chunks:
        yield Piece(chunk)
