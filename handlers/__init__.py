"""Frame handlers, one module per message family, registered in one explicit table.

To add a frame type: write ``async def handle_x(ctx, frame)`` in a module here (or your own),
add a line to :data:`HANDLER_TABLE`, and it is dispatched, validated and listed by
``GET /handlers``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple

from handlers import channels, chat, system, tools
from server.protocol import Field
from server.router import Handler, MessageRouter


class Registration(NamedTuple):
    type: str
    handler: Handler
    fields: Mapping[str, Field]
    description: str
    aliases: tuple[str, ...] = ()
    replies: tuple[str, ...] = ()


HANDLER_TABLE: tuple[Registration, ...] = (
    Registration("chat_message", chat.handle_chat, chat.FIELDS,
                 "A chat message; echoed, or answered by CHAT_WEBHOOK_URL's backend.",
                 aliases=("text_message",),
                 replies=("processing", "chat_response", "stream_start", "stream_chunk",
                          "stream_end")),
    Registration("tool_call", tools.handle_tool_call, tools.TOOL_CALL_FIELDS,
                 "Run a server-side tool, with lifecycle frames and permission for high risk.",
                 replies=("mcp_tool_execution_start", "mcp_tool_waiting_permission",
                          "mcp_tool_execution_complete", "tool_response")),
    Registration("tool_result", tools.handle_tool_result, tools.TOOL_RESULT_FIELDS,
                 "The client's answer to a server-initiated tool_call (POST /call_tool).",
                 replies=("tool_result_ack",)),
    Registration("permission_response", tools.handle_permission, tools.PERMISSION_FIELDS,
                 "Grant or deny a high-risk tool waiting for permission."),
    Registration("list_tools", tools.handle_list_tools, {},
                 "The server-side tools, their parameter schemas and risk levels.",
                 replies=("tools_list",)),
    Registration("ping", system.handle_ping, {}, "Liveness check.",
                 aliases=("heartbeat",), replies=("pong", "heartbeat_response")),
    Registration("get_status", system.handle_get_status, {}, "The server's counters.",
                 replies=("status_response",)),
    Registration("subscribe", channels.handle_subscribe, channels.FIELDS,
                 "Join a channel (where CHANNEL_RULES allows).", replies=("subscribed",)),
    Registration("unsubscribe", channels.handle_unsubscribe, channels.FIELDS,
                 "Leave a channel.", replies=("unsubscribed",)),
    Registration("list_channels", channels.handle_list_channels, {},
                 "Channels with subscriber counts.", replies=("channels_list",)),
    Registration("publish", channels.handle_publish, channels.PUBLISH_FIELDS,
                 "Publish to a channel where its rule allows (subscribers get publication).",
                 replies=("published",)),
    Registration("presence", channels.handle_presence, channels.FIELDS,
                 "Who is in a channel, where its rule allows presence.",
                 replies=("presence",)),
    Registration("channel_history", channels.handle_channel_history,
                 channels.HISTORY_FIELDS,
                 "A channel's recent frames, for a subscriber (the rule's history).",
                 replies=("channel_history",)),
)


def build_router(table: tuple[Registration, ...] = HANDLER_TABLE) -> MessageRouter:
    router = MessageRouter()
    for entry in table:
        router.register(entry.type, entry.handler, fields=entry.fields,
                        description=entry.description, aliases=entry.aliases,
                        replies=entry.replies)
    return router
