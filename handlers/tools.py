"""Tool frames.

* ``tool_call`` {tool_name, params (or arguments, parameters), call_id?}: the gateway runs a server-side tool (or forwards
  it to ``TOOL_WEBHOOK_URL``) with the seed-001 lifecycle frames, then ``tool_response``.
* ``tool_result`` {call_id, result | error}: the client's answer to a server-initiated
  ``tool_call`` (``POST /call_tool``). Only the addressed client can answer a call.
* ``permission_response`` {call_id, granted}: grants or denies a high-risk tool.
* ``list_tools``: the server-side tools with their schemas and risk levels.
"""

from __future__ import annotations

from server.errors import NotFoundError
from server.protocol import ClientFrame, Field
from server.router import HandlerContext
from server.tools import PARAMS_NAMES, call_params

TOOL_CALL_FIELDS = {
    "tool_name": Field("string", required=True, max_length=128),
    **{name: Field("object") for name in PARAMS_NAMES},
    "call_id": Field("string", max_length=128),
}
TOOL_RESULT_FIELDS = {"call_id": Field("string", required=True, max_length=128)}
PERMISSION_FIELDS = {
    "call_id": Field("string", required=True, max_length=128),
    "granted": Field("boolean", required=True),
}


async def handle_tool_call(ctx: HandlerContext, frame: ClientFrame) -> None:
    params = call_params(frame.data)
    ctx.gateway.spawn(
        ctx.gateway.run_tool(ctx.session, frame.data["tool_name"], params,
                             call_id=frame.data.get("call_id"), reply_to=frame.message_id),
        name=f"tool-{frame.message_id}")


async def handle_tool_result(ctx: HandlerContext, frame: ClientFrame) -> None:
    call_id = frame.data["call_id"]
    if not await ctx.gateway.resolve_tool_result(ctx.session, call_id, frame.data):
        # Same answer whether the call never existed or belongs to someone else.
        raise NotFoundError(f"no pending tool call {call_id!r} for this client",
                            code="unknown_call")
    ctx.reply("tool_result_ack", {"call_id": call_id})


async def handle_permission(ctx: HandlerContext, frame: ClientFrame) -> None:
    call_id = frame.data["call_id"]
    if not await ctx.gateway.resolve_permission(ctx.session, call_id, frame.data["granted"]):
        raise NotFoundError(f"no pending permission request {call_id!r} for this client",
                            code="unknown_call")


async def handle_list_tools(ctx: HandlerContext, frame: ClientFrame) -> None:
    ctx.reply("tools_list", {"tools": ctx.gateway.tools.describe()})
