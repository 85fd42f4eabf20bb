"""The message router: client frame types mapped to handlers, with middleware (seed 004).

Handlers are registered in an explicit table (``handlers/__init__.py``); each route declares the
``data`` fields it needs, which the router validates before the handler runs, so a handler
only sees well-formed frames. Middleware wraps every dispatch::

    async def timing(ctx: HandlerContext, frame: ClientFrame, call_next: Handler) -> None:
        started = time.perf_counter()
        await call_next(ctx, frame)
        log.debug("handled", type=frame.type, ms=...)
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from server.errors import UnknownTypeError
from server.protocol import ClientFrame, Field, validate_fields

if TYPE_CHECKING:
    from server.gateway import Gateway
    from server.sessions import Session


class HandlerContext:
    """What a handler gets besides the frame: the session, the gateway and reply helpers."""

    __slots__ = ("frame", "gateway", "session")

    def __init__(self, gateway: Gateway, session: Session, frame: ClientFrame) -> None:
        self.gateway = gateway
        self.session = session
        self.frame = frame

    def reply(self, frame_type: str, data: dict[str, Any] | None = None) -> int:
        """Send a frame answering this one (``reply_to`` set, kept in history); returns seq."""
        return self.gateway.emit(self.session, frame_type, data, reply_to=self.frame.message_id)

    def reply_ephemeral(self, frame_type: str, data: dict[str, Any] | None = None) -> None:
        """Answer with a frame not kept in history (pong, heartbeat_response)."""
        self.gateway.emit_ephemeral(self.session, frame_type, data,
                                    reply_to=self.frame.message_id)


#: A frame handler: a coroutine function, or a plain function for a handler that never waits
#: (``ping``): the socket endpoint then runs it without a coroutine (the round-trip path).
Handler = Callable[[HandlerContext, ClientFrame], Awaitable[None] | None]
Middleware = Callable[[HandlerContext, ClientFrame, Handler], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class Route:
    type: str
    handler: Handler
    fields: Mapping[str, Field] = field(default_factory=dict)
    description: str = ""
    aliases: tuple[str, ...] = ()
    replies: tuple[str, ...] = ()

    def describe(self) -> dict[str, Any]:
        return {
            "type": self.type,
            "aliases": list(self.aliases),
            "description": self.description,
            "fields": {name: {"type": f.kind, "required": f.required}
                       for name, f in self.fields.items()},
            "replies": list(self.replies),
            "handler": f"{self.handler.__module__}.{self.handler.__qualname__}",
        }


class MessageRouter:
    def __init__(self) -> None:
        self._routes: dict[str, Route] = {}
        self._primary: list[Route] = []
        self._middleware: list[Middleware] = []

    def register(self, frame_type: str, handler: Handler, *,
                 fields: Mapping[str, Field] | None = None, description: str = "",
                 aliases: tuple[str, ...] = (), replies: tuple[str, ...] = ()) -> None:
        route = Route(frame_type, handler, dict(fields or {}), description, aliases, replies)
        for name in (frame_type, *aliases):
            if name in self._routes:
                raise ValueError(f"frame type {name!r} is already registered")
            self._routes[name] = route
        self._primary.append(route)

    def add_middleware(self, middleware: Middleware) -> None:
        """Middleware run outermost-first, in the order added."""
        self._middleware.append(middleware)

    def types(self) -> list[str]:
        return sorted(self._routes)

    def describe(self) -> list[dict[str, Any]]:
        return [route.describe() for route in sorted(self._primary, key=lambda r: r.type)]

    def listing(self) -> dict[str, Any]:
        """``GET /handlers`` (both ports): every handler, and every type accepted."""
        return {"handlers": self.describe(), "types": self.types()}

    def route_for(self, frame_type: str) -> Route:
        route = self._routes.get(frame_type)
        if route is None:
            raise UnknownTypeError(
                f"unknown frame type {frame_type!r}", code="unknown_type",
                details={"supported_types": self.types()})
        return route

    def dispatch(self, ctx: HandlerContext, frame: ClientFrame) -> Awaitable[None] | None:
        """Validate the frame and return its handler's run through the middleware chain (to be
        awaited), or None when a plain handler already ran (no middleware). Raises
        SwitchboardError subclasses at once for bad frames (and what a plain handler raises);
        the endpoint turns them into error frames. Not a coroutine itself: one frame less per
        message."""
        route = self._routes.get(frame.type)
        if route is None:
            route = self.route_for(frame.type)  # raises UnknownTypeError
        if route.fields:
            validate_fields(frame.data, route.fields)
        if not self._middleware:
            return route.handler(ctx, frame)
        return self._chain(0, route.handler)(ctx, frame)

    def _chain(self, index: int, handler: Handler) -> Handler:
        if index == len(self._middleware):
            if inspect.iscoroutinefunction(handler):
                return handler

            async def plain(ctx: HandlerContext, frame: ClientFrame) -> None:
                handler(ctx, frame)  # middleware awaits what it calls

            return plain
        middleware = self._middleware[index]
        inner = self._chain(index + 1, handler)

        async def call(ctx: HandlerContext, frame: ClientFrame) -> None:
            await middleware(ctx, frame, inner)

        return call
