"""Shared by the client library and CLI tests: a fake gateway, and a bounded wait."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable
from typing import TypeVar

import pytest

from switchboard_client.testing import FakeGateway

T = TypeVar("T")
WAIT = 5.0


async def within(aw: Awaitable[T], limit: float = WAIT) -> T:
    """``aw``'s result, or a TimeoutError after ``limit`` seconds (no test waits forever)."""
    return await asyncio.wait_for(aw, limit)


@pytest.fixture
async def gw() -> AsyncIterator[FakeGateway]:
    async with FakeGateway() as gateway:
        yield gateway
