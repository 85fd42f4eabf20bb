"""Channel frames (seed 003): ``subscribe`` / ``unsubscribe`` {channel}, also in the legacy
``{"action": "subscribe", "channel": …}`` spelling. With a ``CHANNELS`` allow-list, other
channels get an ``error`` ``invalid_channel`` whose ``message`` and ``available_channels`` (the
configured channels) are also at the frame's top level, as seed 003's clients read them.

System channels (``tool_activity``) are readable only by observers (a connection opened with an
observer ticket or a JWT whose ``roles`` include ``observer``): anyone else gets
``forbidden_channel``. Beyond ``MAX_CHANNELS_PER_CLIENT`` subscriptions a subscribe gets
``too_many_channels``. The replies are O(1) in the number of subscriptions (``channel_count``,
not the list; ``list_channels`` gives the list)."""

from __future__ import annotations

from server.errors import ForbiddenError, InvalidChannel
from server.gateway import SYSTEM_CHANNELS
from server.protocol import ClientFrame, Field
from server.router import HandlerContext

FIELDS = {"channel": Field("string", required=True, max_length=128)}


async def handle_subscribe(ctx: HandlerContext, frame: ClientFrame) -> None:
    channel = frame.data["channel"]
    registry = ctx.gateway.registry
    if not registry.channel_allowed(channel):
        raise InvalidChannel(f"Invalid channel: {channel}",
                             details={"channel": channel,
                                      "available_channels": registry.available_channels()})
    if channel in SYSTEM_CHANNELS and not ctx.session.observer:
        raise ForbiddenError(
            f"{channel} is a system channel: open the connection with an observer_ticket "
            f"(POST /observer_ticket on the API) or a JWT whose roles include observer",
            code="forbidden_channel", details={"channel": channel})
    registry.join(ctx.session, channel)
    ctx.reply("subscribed", {"channel": channel, "channel_count": len(ctx.session.channels),
                             "subscribers": len(registry.channels.get(channel, ()))})


async def handle_unsubscribe(ctx: HandlerContext, frame: ClientFrame) -> None:
    channel = frame.data["channel"]
    was_subscribed = ctx.gateway.registry.leave(ctx.session, channel)
    ctx.reply("unsubscribed", {"channel": channel, "was_subscribed": was_subscribed,
                               "channel_count": len(ctx.session.channels)})


async def handle_list_channels(ctx: HandlerContext, frame: ClientFrame) -> None:
    registry = ctx.gateway.registry
    ctx.reply("channels_list", {"channels": registry.channel_stats(),
                                "available_channels": registry.available_channels(),
                                "subscribed": sorted(ctx.session.channels)})
