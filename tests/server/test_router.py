"""The message router: plain and async handlers, with and without middleware."""

from __future__ import annotations

import inspect
from typing import Any

from server.protocol import ClientFrame
from server.router import Handler, HandlerContext, MessageRouter


def _frame(frame_type: str) -> ClientFrame:
    return ClientFrame(frame_type, {}, "m1")


def _router(seen: list[str]) -> MessageRouter:
    def plain(ctx: HandlerContext, frame: ClientFrame) -> None:
        seen.append(f"plain {frame.type}")

    async def waits(ctx: HandlerContext, frame: ClientFrame) -> None:
        seen.append(f"async {frame.type}")

    router = MessageRouter()
    router.register("plain", plain)
    router.register("async", waits)
    return router


def test_a_plain_handler_has_run_when_dispatch_returns() -> None:
    seen: list[str] = []
    result = _router(seen).dispatch(Any, _frame("plain"))  # type: ignore[arg-type]
    assert result is None
    assert seen == ["plain plain"]


async def test_an_async_handler_runs_when_its_result_is_awaited() -> None:
    seen: list[str] = []
    result = _router(seen).dispatch(Any, _frame("async"))  # type: ignore[arg-type]
    assert inspect.isawaitable(result) and seen == []
    await result
    assert seen == ["async async"]


async def test_middleware_wraps_plain_and_async_handlers_alike() -> None:
    seen: list[str] = []
    router = _router(seen)

    async def around(ctx: HandlerContext, frame: ClientFrame, call_next: Handler) -> None:
        seen.append("before")
        await call_next(ctx, frame)  # type: ignore[misc]
        seen.append("after")

    router.add_middleware(around)
    for frame_type in ("plain", "async"):
        result = router.dispatch(Any, _frame(frame_type))  # type: ignore[arg-type]
        assert result is not None
        await result
    assert seen == ["before", "plain plain", "after", "before", "async async", "after"]
