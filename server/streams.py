"""One streamed answer relayed to one client as seed 004's stream frames.

Used by ``POST /stream/{client_id}`` (a third party streams text) and by the chat webhook (a
backend streams its answer to a ``chat_message``): both send

* ``stream_start`` {stream_id, …tags}
* ``stream_chunk`` {stream_id, content, index} — one per piece, as soon as it arrives
* ``stream_end`` {stream_id, full_content, chunks, status: "completed", …tags}

or, when the stream breaks, an ``error`` frame carrying the ``stream_id`` and the
``partial_content`` relayed so far. Every frame is delivered through the gateway, so it
reaches the client wherever its session is held (another node, or a node it moved to while
the stream was running) and is kept in its history for resume.
"""

from __future__ import annotations

import secrets
from typing import TYPE_CHECKING, Any

from server.errors import SwitchboardError

if TYPE_CHECKING:
    from server.gateway import Gateway


def new_stream_id() -> str:
    """A fresh ``stream_id``."""
    return secrets.token_hex(12)


class StreamRelay:
    """Delivers one stream's frames to ``client_id`` (all ``reply_to`` the frame it answers,
    when given), counting the frames delivered live and those queued for resume."""

    def __init__(self, gateway: Gateway, client_id: str, *, reply_to: str | None = None,
                 stream_id: str | None = None, tags: dict[str, Any] | None = None) -> None:
        self.gateway = gateway
        self.client_id = client_id
        self.reply_to = reply_to
        self.stream_id = stream_id or new_stream_id()
        #: Added to stream_start and stream_end (source, conversation_id…).
        self.tags = tags or {}
        self.started = False
        self.delivered = 0
        self.queued = 0
        self.index = 0
        self.parts: list[str] = []

    @property
    def content(self) -> str:
        """Everything relayed so far."""
        return "".join(self.parts)

    async def send(self, frame_type: str, data: dict[str, Any]) -> None:
        """One frame to the client (raises ClientNotFound when its session is gone)."""
        answer = await self.gateway.deliver(self.client_id, frame_type, data,
                                            reply_to=self.reply_to)
        if answer["status"] == "delivered":
            self.delivered += 1
        else:
            self.queued += 1

    async def start(self, **data: Any) -> None:
        self.started = True
        await self.send("stream_start", {"stream_id": self.stream_id, **self.tags, **data})

    async def chunk(self, content: str) -> None:
        if not content:
            return
        index = self.index
        # Counted before the delivery is awaited: if the stream breaks meanwhile (the caller
        # went away), the chunk may well have reached the client already.
        self.index += 1
        self.parts.append(content)
        await self.send("stream_chunk", {"stream_id": self.stream_id, "content": content,
                                         "index": index})

    async def end(self, **data: Any) -> None:
        await self.send("stream_end", {"stream_id": self.stream_id, "full_content": self.content,
                                       "chunks": self.index, "status": "completed",
                                       **self.tags, **data})

    async def fail(self, code: str, message: str, **details: Any) -> None:
        """An ``error`` frame ending the stream (with its ``stream_id`` and what was relayed,
        once started). Best effort: the client's session may be gone itself."""
        data: dict[str, Any] = {"code": code, "message": message, **details}
        if self.started:
            data["stream_id"] = self.stream_id
            data["partial_content"] = self.content
        try:
            await self.send("error", data)
        except SwitchboardError:
            pass
