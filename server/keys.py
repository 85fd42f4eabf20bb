"""``AppKey``s for state shared through the aiohttp applications (no module globals)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

if TYPE_CHECKING:
    from server.gateway import Gateway
    from server.router import MessageRouter
    from server.security import Security
    from server.ws import Connection

GATEWAY: web.AppKey[Gateway] = web.AppKey("gateway")
ROUTER: web.AppKey[MessageRouter] = web.AppKey("router")
SECURITY: web.AppKey[Security] = web.AppKey("security")
CONNECTIONS: web.AppKey[set[Connection]] = web.AppKey("connections")
