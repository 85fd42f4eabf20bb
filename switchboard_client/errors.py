"""Exceptions raised by the Switchboard client library.

Every exception derives from :class:`SwitchboardError`, so ``except SwitchboardError``
catches anything this package raises on purpose. Each one has a human-readable ``str()``
(the CLI prints it as a one-line error) plus structured attributes for programs.
"""

from __future__ import annotations

from typing import Any


class SwitchboardError(Exception):
    """Base class of every error raised by ``switchboard_client``."""


class ConnectError(SwitchboardError):
    """The WebSocket could not be opened, or was refused before ``connection_established``.

    ``status`` is the HTTP status when the gateway refused the upgrade (401 bad credentials,
    403 origin not allowed, 503 at capacity), else ``None``. ``close_code`` is set when the
    gateway accepted the upgrade and then closed the socket before greeting the client.
    ``retryable`` says whether trying again later can help.
    """

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        close_code: int | None = None,
        retryable: bool = True,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.close_code = close_code
        self.retryable = retryable


class ConnectionClosed(SwitchboardError):
    """The client is closed (by :meth:`close`, by the server, or after giving up reconnecting).

    Raised by ``send``/``request`` once no further connection will be made. ``code`` and
    ``reason`` describe the final close (``code`` is ``None`` when the client closed itself
    before any socket was open).
    """

    def __init__(self, message: str, *, code: int | None = None, reason: str = "") -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason


class RequestError(SwitchboardError):
    """The gateway answered a request with an ``error`` frame.

    ``code`` and ``message`` come from the frame's ``data``; ``frame`` is the whole
    :class:`~switchboard_client.protocol.Frame`.
    """

    def __init__(self, code: str, message: str, frame: Any = None) -> None:
        super().__init__(f"{code}: {message}" if code else message)
        self.code = code
        self.message = message
        self.frame = frame


class RequestTimeout(SwitchboardError, TimeoutError):
    """No matching reply (``reply_to`` = the request's ``message_id``) arrived in time."""


class ToolError(SwitchboardError):
    """A tool call finished with ``success: false``; ``result`` holds what the gateway sent."""

    def __init__(self, message: str, *, tool_name: str, result: Any = None) -> None:
        super().__init__(message)
        self.tool_name = tool_name
        self.result = result


class APIError(SwitchboardError):
    """The HTTP API answered with an error status.

    ``status`` is the HTTP status; ``code`` and ``message`` come from the
    ``{"error": {"code", "message"}}`` body (``code`` falls back to ``http_<status>`` when the
    body is not in that shape); ``body`` is the decoded body (dict or text).
    """

    def __init__(self, status: int, code: str, message: str, body: Any = None) -> None:
        super().__init__(f"HTTP {status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.body = body


class APIConnectionError(SwitchboardError):
    """The HTTP API could not be reached at all (refused, DNS failure, timeout)."""
