"""Channel frames (seed 003): ``subscribe`` / ``unsubscribe`` {channel}, also in the legacy
``{"action": "subscribe", "channel": …}`` spelling. With a ``CHANNELS`` allow-list, other
channels get an ``error`` ``invalid_channel`` whose ``message`` and ``available_channels`` (the
configured channels) are also at the frame's top level, as seed 003's clients read them."""

from __future__ import annotations

from server.errors import InvalidChannel
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
    registry.join(ctx.session, channel)
    ctx.reply("subscribed", {"channel": channel, "channels": sorted(ctx.session.channels),
                             "subscribers": len(registry.channels.get(channel, ()))})


async def handle_unsubscribe(ctx: HandlerContext, frame: ClientFrame) -> None:
    channel = frame.data["channel"]
    was_subscribed = ctx.gateway.registry.leave(ctx.session, channel)
    ctx.reply("unsubscribed", {"channel": channel, "was_subscribed": was_subscribed,
                               "channels": sorted(ctx.session.channels)})


async def handle_list_channels(ctx: HandlerContext, frame: ClientFrame) -> None:
    registry = ctx.gateway.registry
    ctx.reply("channels_list", {"channels": registry.channel_stats(),
                                "available_channels": registry.available_channels(),
                                "subscribed": sorted(ctx.session.channels)})
