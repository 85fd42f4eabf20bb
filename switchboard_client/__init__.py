"""Python client for the Switchboard real-time gateway.

- :class:`SwitchboardClient`: WebSocket client with automatic reconnect and resume
  (``session_token`` + ``last_seq``, no frame delivered twice), ``on(type)`` handlers,
  requests matched by ``reply_to``, tools answering server ``tool_call`` frames.
- :class:`SwitchboardAPI`: async wrapper of the HTTP API.
- ``python -m switchboard_client`` / ``switchboard-client``: the CLI.
- :mod:`switchboard_client.testing`: an in-process fake gateway for tests.
"""

from __future__ import annotations

from switchboard_client.api import SwitchboardAPI
from switchboard_client.client import Backoff, ClientStats, SwitchboardClient
from switchboard_client.errors import (
    APIConnectionError,
    APIError,
    ConnectError,
    ConnectionClosed,
    RequestError,
    RequestTimeout,
    SwitchboardError,
    ToolError,
)
from switchboard_client.protocol import CloseAction, CloseCode, Frame, Lifecycle, close_action

__all__ = [
    "APIConnectionError",
    "APIError",
    "Backoff",
    "ClientStats",
    "CloseAction",
    "CloseCode",
    "ConnectError",
    "ConnectionClosed",
    "Frame",
    "Lifecycle",
    "RequestError",
    "RequestTimeout",
    "SwitchboardAPI",
    "SwitchboardClient",
    "SwitchboardError",
    "ToolError",
    "close_action",
]
