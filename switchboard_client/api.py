"""Async wrapper of the Switchboard HTTP API (port 9005 by default).

Every method returns the decoded JSON answer (a dict) and raises
:class:`~switchboard_client.errors.APIError` (with ``status``, ``code``, ``message``) for an
error status, or :class:`~switchboard_client.errors.APIConnectionError` when the API cannot be
reached. Use it as ``async with SwitchboardAPI(url, token) as api:`` or call :meth:`close`.
"""

# Methods mirror the HTTP API, where ``timeout`` is a field of /call_tool.
# ruff: noqa: ASYNC109

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

import aiohttp
import orjson
from yarl import URL

from switchboard_client.errors import APIConnectionError, APIError
from switchboard_client.protocol import dumps

DEFAULT_API_URL = "http://127.0.0.1:9005"


class SwitchboardAPI:
    """Client of the HTTP API.

    Arguments:
        base_url: ``http://host:9005`` (a path prefix is kept).
        token: the gateway's ``API_TOKEN``; sent as ``Authorization: Bearer <token>``.
        session: an existing ``aiohttp.ClientSession`` (not closed by :meth:`close`).
        timeout: seconds allowed per request (``call_tool`` adds its own timeout to this).
    """

    def __init__(
        self,
        base_url: str = DEFAULT_API_URL,
        token: str | None = None,
        *,
        session: aiohttp.ClientSession | None = None,
        timeout: float = 30.0,
    ) -> None:
        self.base_url = URL(base_url.rstrip("/") or base_url)
        self.token = token
        self.timeout = timeout
        self._session = session
        self._own_session = session is None

    async def __aenter__(self) -> SwitchboardAPI:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the HTTP session if this object created it."""
        if self._own_session and self._session is not None:
            await self._session.close()
            self._session = None

    # ------------------------------------------------------------------ endpoints

    async def status(self) -> dict[str, Any]:
        """``GET /status``: ``{status, connected_clients, server_time, uptime, ...}``."""
        return await self.request("GET", "status")

    async def health(self) -> dict[str, Any]:
        """``GET /health``: liveness/readiness."""
        return await self.request("GET", "health")

    async def clients(
        self, *, limit: int | None = None, offset: int | None = None, **filters: Any
    ) -> dict[str, Any]:
        """``GET /clients``: ``{clients: [...], total}``; extra keyword args are filters."""
        params = {"limit": limit, "offset": offset, **filters}
        return await self.request("GET", "clients", params=params)

    async def client(self, client_id: str) -> dict[str, Any]:
        """``GET /clients/{id}``: one client (404 -> :class:`APIError`)."""
        return await self.request("GET", ("clients", client_id))

    async def messages(
        self,
        client_id: str,
        *,
        after_seq: int | None = None,
        before_seq: int | None = None,
        limit: int | None = None,
    ) -> dict[str, Any]:
        """``GET /clients/{id}/messages``: the session's history, oldest first."""
        params = {"after_seq": after_seq, "before_seq": before_seq, "limit": limit}
        return await self.request("GET", ("clients", client_id, "messages"), params=params)

    async def disconnect(self, client_id: str) -> dict[str, Any]:
        """``DELETE /clients/{id}``: disconnect the client and end its session."""
        return await self.request("DELETE", ("clients", client_id))

    async def send_message(
        self,
        client_id: str,
        content: Any,
        *,
        message_type: str | None = None,
        data: Mapping[str, Any] | None = None,
        idempotency_key: str | None = None,
    ) -> dict[str, Any]:
        """``POST /send_message``: ``{status: delivered|queued, message_id, seq}``."""
        return await self.request("POST", "send_message", json=_message_body(
            {"client_id": client_id}, content, message_type, data, idempotency_key))

    async def send_to_user(
        self,
        user_id: str,
        content: Any,
        *,
        message_type: str | None = None,
        data: Mapping[str, Any] | None = None,
        idempotency_key: str | None = None,
    ) -> dict[str, Any]:
        """``POST /send_message`` with ``user_id``: to every session of the user;
        ``{user_id, message_id, sessions: [{client_id, status, seq}], delivered, queued}``."""
        return await self.request("POST", "send_message", json=_message_body(
            {"user_id": user_id}, content, message_type, data, idempotency_key))

    async def user(self, user_id: str) -> dict[str, Any]:
        """``GET /users/{id}``: the user's sessions (404 -> :class:`APIError`)."""
        return await self.request("GET", ("users", user_id))

    async def presence(self, channel: str, *, limit: int | None = None) -> dict[str, Any]:
        """``GET /channels/{channel}/presence``: its sessions and users on every node."""
        return await self.request("GET", ("channels", channel, "presence"),
                                  params={"limit": limit})

    async def subscribe(self, channel: str, *, client_id: str | None = None,
                        user_id: str | None = None) -> dict[str, Any]:
        """Subscribe one session (``client_id``) or every session of a user (``user_id``)
        to ``channel``, server-side."""
        return await self.request("POST", (*_owner(client_id, user_id), "channels"),
                                  json={"channel": channel})

    async def unsubscribe(self, channel: str, *, client_id: str | None = None,
                          user_id: str | None = None) -> dict[str, Any]:
        """The opposite of :meth:`subscribe`."""
        return await self.request("DELETE", (*_owner(client_id, user_id), "channels", channel))

    async def call_tool(
        self,
        client_id: str,
        tool_name: str,
        params: Mapping[str, Any] | None = None,
        *,
        timeout: float | None = None,
    ) -> dict[str, Any]:
        """``POST /call_tool``: run a tool on a client; ``{call_id, success, result|error}``.

        ``timeout`` is how long the gateway waits for the client (504 when exceeded); the HTTP
        request itself is allowed that long plus :attr:`timeout`.
        """
        body: dict[str, Any] = {
            "client_id": client_id,
            "tool_name": tool_name,
            "params": dict(params or {}),
        }
        if timeout is not None:
            body["timeout"] = timeout
        return await self.request(
            "POST", "call_tool", json=body, timeout=self.timeout + (timeout or 0)
        )

    async def broadcast(
        self,
        message_type: str,
        data: Mapping[str, Any] | None = None,
        *,
        channel: str | None = None,
        client_type: str | None = None,
        idempotency_key: str | None = None,
    ) -> dict[str, Any]:
        """``POST /broadcast``: ``{recipients, message_id}``; filter by channel/client_type."""
        body: dict[str, Any] = {"message_type": message_type, "data": dict(data or {})}
        if channel is not None:
            body["channel"] = channel
        if client_type is not None:
            body["client_type"] = client_type
        if idempotency_key is not None:
            body["idempotency_key"] = idempotency_key
        return await self.request("POST", "broadcast", json=body)

    async def channels(self) -> dict[str, Any]:
        """``GET /channels``: per-channel subscriber counts."""
        return await self.request("GET", "channels")

    async def handlers(self) -> dict[str, Any]:
        """``GET /handlers``: the registered frame types."""
        return await self.request("GET", "handlers")

    async def metrics(self) -> str:
        """``GET /metrics``: Prometheus text."""
        return await self.request("GET", "metrics")

    # ------------------------------------------------------------------ plumbing

    async def request(
        self,
        method: str,
        path: str | tuple[str, ...],
        *,
        params: Mapping[str, Any] | None = None,
        json: Any = None,
        timeout: float | None = None,
    ) -> Any:
        """Send one request and return the decoded body (JSON, or text for non-JSON bodies).

        ``path`` is relative to the base URL; a tuple's parts are URL-quoted one by one (use it
        for ids). ``None`` values in ``params`` are dropped.
        """
        if self._session is None:
            self._session = aiohttp.ClientSession()
        url = self.base_url
        for part in (path,) if isinstance(path, str) else path:
            url = url / part
        query = {k: str(v) for k, v in (params or {}).items() if v is not None}
        headers = {"Accept": "application/json"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        data = None
        if json is not None:
            data = dumps(json)
            headers["Content-Type"] = "application/json"
        limit = timeout if timeout is not None else self.timeout
        try:
            async with (
                asyncio.timeout(limit),
                self._session.request(
                    method, url, params=query or None, data=data, headers=headers
                ) as resp,
            ):
                raw = await resp.read()
                status = resp.status
                content_type = resp.content_type
        except TimeoutError:
            raise APIConnectionError(
                f"no answer from {self.base_url} within {limit:g} s ({method} /{_path(path)})"
            ) from None
        except aiohttp.ClientConnectorError as exc:
            why = (
                "connection refused"
                if isinstance(exc.os_error, ConnectionRefusedError)
                else exc.os_error.strerror or str(exc.os_error)
            )
            raise APIConnectionError(f"cannot reach the API at {self.base_url}: {why}") from None
        except aiohttp.ClientError as exc:
            raise APIConnectionError(
                f"request to {self.base_url} failed: {exc or type(exc).__name__}"
            ) from None
        body = _decode(raw, content_type)
        if status >= 400:
            code, message = f"http_{status}", ""
            if isinstance(body, dict) and isinstance(body.get("error"), dict):
                code = str(body["error"].get("code") or code)
                message = str(body["error"].get("message") or "")
            elif isinstance(body, str):
                message = body.strip()[:200]
            raise APIError(status, code, message or _REASONS.get(status, "request failed"), body)
        return body


_REASONS = {
    400: "bad request",
    401: "unauthorized (check API_TOKEN)",
    403: "forbidden",
    404: "not found",
    405: "method not allowed",
    413: "body too large",
    422: "invalid field",
    429: "rate limited",
    503: "not ready",
    504: "timed out",
}


def _owner(client_id: str | None, user_id: str | None) -> tuple[str, str]:
    """The path of one session or of a user's sessions (exactly one must be given)."""
    if client_id is not None and user_id is None:
        return "clients", client_id
    if user_id is not None and client_id is None:
        return "users", user_id
    raise ValueError("give exactly one of client_id or user_id")


def _path(path: str | tuple[str, ...]) -> str:
    return path if isinstance(path, str) else "/".join(path)


def _decode(raw: bytes, content_type: str) -> Any:
    if content_type == "application/json" or raw[:1] in (b"{", b"["):
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError:
            pass
    return raw.decode("utf-8", errors="replace")


def _message_body(target: dict[str, Any], content: Any, message_type: str | None,
                  data: Mapping[str, Any] | None, idempotency_key: str | None
                  ) -> dict[str, Any]:
    """A ``POST /send_message`` body for ``target`` (``client_id`` or ``user_id``); fields
    left ``None`` are omitted so the gateway's defaults apply."""
    body: dict[str, Any] = {**target, "content": content}
    if message_type is not None:
        body["message_type"] = message_type
    if data is not None:
        body["data"] = dict(data)
    if idempotency_key is not None:
        body["idempotency_key"] = idempotency_key
    return body
