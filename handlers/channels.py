"""Channel frames (seed 003 and PRODUCT.md section 8).

``subscribe`` / ``unsubscribe`` {channel} (also in the legacy ``{"action": "subscribe",
"channel": …}`` spelling). A subscribe is checked against the ``CHANNELS`` allow-list (another
channel gets ``invalid_channel`` with ``available_channels``, also at the frame's top level as
seed 003's clients read them), the system channels (``tool_activity``: observers only) and
``CHANNEL_RULES`` with its subscribe webhook (refused: ``forbidden_channel`` {channel,
reason}); beyond ``MAX_CHANNELS_PER_CLIENT`` subscriptions, ``too_many_channels``. A refused
frame changes nothing and the connection stays open. The replies are O(1) in the number of
subscriptions (``channel_count``, not the list; ``list_channels`` gives the list).

``publish`` {channel, data} where the rule allows it → ``published`` {channel, message_id,
recipients, queued}; subscribers get ``publication``. ``presence`` {channel} where the rule
allows it → ``presence`` {channel, count, sessions, users, truncated}. ``channel_history``
{channel, limit?} for a subscriber of a channel whose rule keeps history →
``channel_history`` {channel, frames, count, limit}. See server/channels.py.
"""

from __future__ import annotations

from server.errors import ValidationError
from server.protocol import ClientFrame, Field
from server.router import HandlerContext

CHANNEL = Field("string", required=True, max_length=128)
FIELDS = {"channel": CHANNEL}
PUBLISH_FIELDS = {"channel": CHANNEL, "data": Field("object", required=True)}
HISTORY_FIELDS = {"channel": CHANNEL, "limit": Field("integer")}


async def handle_subscribe(ctx: HandlerContext, frame: ClientFrame) -> None:
    channel = frame.data["channel"]
    await ctx.gateway.channels.subscribe(ctx.session, channel)
    registry = ctx.gateway.registry
    ctx.reply("subscribed", {"channel": channel, "channel_count": len(ctx.session.channels),
                             "subscribers": len(registry.channels.get(channel, ()))})


async def handle_unsubscribe(ctx: HandlerContext, frame: ClientFrame) -> None:
    channel = frame.data["channel"]
    was_subscribed = ctx.gateway.registry.leave(ctx.session, channel)
    await ctx.gateway.channels.settled()  # answered once the cluster's membership has it
    ctx.reply("unsubscribed", {"channel": channel, "was_subscribed": was_subscribed,
                               "channel_count": len(ctx.session.channels)})


async def handle_list_channels(ctx: HandlerContext, frame: ClientFrame) -> None:
    registry = ctx.gateway.registry
    ctx.reply("channels_list", {"channels": registry.channel_stats(),
                                "available_channels": registry.available_channels(),
                                "subscribed": sorted(ctx.session.channels)})


async def handle_publish(ctx: HandlerContext, frame: ClientFrame) -> None:
    answer = await ctx.gateway.channels.publish(ctx.session, frame.data["channel"],
                                                frame.data["data"])
    ctx.reply("published", answer)


async def handle_presence(ctx: HandlerContext, frame: ClientFrame) -> None:
    gateway = ctx.gateway
    ctx.reply("presence", await gateway.channels.presence(
        frame.data["channel"], limit=gateway.settings.presence_limit, asker=ctx.session))


async def handle_channel_history(ctx: HandlerContext, frame: ClientFrame) -> None:
    limit = frame.data.get("limit")
    if limit is not None and limit < 1:
        raise ValidationError("limit must be at least 1", code="invalid_field",
                              details={"field": "limit"})
    ctx.reply("channel_history", await ctx.gateway.channels.history(
        ctx.session, frame.data["channel"], limit))
