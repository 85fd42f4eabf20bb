"""``AppKey``s for state shared through the aiohttp applications (no module globals)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

if TYPE_CHECKING:
    from server.channel_rules import ChannelRules
    from server.channel_webhooks import ChannelWebhooks
    from server.events import EventEmitter
    from server.gateway import Gateway
    from server.router import MessageRouter
    from server.security import Security
    from server.ws import Connection, PublicStatus

GATEWAY: web.AppKey[Gateway] = web.AppKey("gateway")
ROUTER: web.AppKey[MessageRouter] = web.AppKey("router")
SECURITY: web.AppKey[Security] = web.AppKey("security")
CONNECTIONS: web.AppKey[set[Connection]] = web.AppKey("connections")
#: Channel permissions (CHANNEL_RULES), the subscribe/publish webhooks and the lifecycle
#: events emitter: on both apps, for the handlers and routes that use them (issue 13).
CHANNEL_RULES: web.AppKey[ChannelRules] = web.AppKey("channel_rules")
CHANNEL_WEBHOOKS: web.AppKey[ChannelWebhooks] = web.AppKey("channel_webhooks")
EVENTS: web.AppKey[EventEmitter] = web.AppKey("events")
PUBLIC_STATUS: web.AppKey[PublicStatus] = web.AppKey("public_status")
