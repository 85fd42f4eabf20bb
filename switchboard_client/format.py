"""Readable, colour-coded rendering of frames and client events (used by the CLI).

Colours follow seed 000's table, by *family* of frame type:

========== ====== ====================================================================
family     colour types
========== ====== ====================================================================
connection blue   ``connection_*``, ``pong``, ``subscribed``, ``status_response``, lifecycle
handoff    orange anything containing ``handoff``
tool       green  ``tool_*``, ``tool_execution``, ``mcp_tool_execution_*``
mcp        purple other ``mcp_*`` (``mcp_event``, ``mcp_tool_waiting_permission``)
error      red    ``error``, ``*_error``, and any frame with ``success: false`` or a
                  ``status`` of ``error`` / ``failed``
chat       cyan   ``chat_*``, ``stream_*``, ``processing``, ``message``
========== ====== ====================================================================
"""

from __future__ import annotations

import os
from datetime import datetime
from typing import Any, TextIO

from switchboard_client.protocol import Frame, dumps

RESET = "\033[0m"
DIM = "\033[2m"
BOLD = "\033[1m"
COLOURS = {
    "connection": "\033[34m",
    "handoff": "\033[38;5;208m",
    "tool": "\033[32m",
    "mcp": "\033[35m",
    "error": "\033[31m",
    "chat": "\033[36m",
    "other": "",
}
ICONS = {
    "connection": "🔗",
    "handoff": "🚀",
    "tool": "🔧",
    "mcp": "📡",
    "error": "❌",
    "chat": "💬",
    "other": "📨",
}
_CONNECTION_TYPES = frozenset(
    {"pong", "heartbeat_response", "subscribed", "unsubscribed", "status_response"}
)
_CHAT_TYPES = frozenset({"processing", "message", "text_message"})


def frame_family(type: str, data: dict[str, Any] | None = None) -> str:
    """Return the colour family of a frame: connection, handoff, tool, mcp, error, chat, other."""
    data = data or {}
    if (
        type == "error"
        or type.endswith("_error")
        or data.get("success") is False
        or data.get("status") in ("error", "failed")
    ):
        return "error"
    if type.startswith(("connection", "client.")) or type in _CONNECTION_TYPES:
        return "connection"
    if "handoff" in type:
        return "handoff"
    if type.startswith(("tool_", "mcp_tool_execution")) or type == "tool_execution":
        return "tool"
    if type.startswith("mcp"):
        return "mcp"
    if type.startswith(("chat_", "stream_")) or type in _CHAT_TYPES:
        return "chat"
    return "other"


def use_colour(stream: TextIO, mode: str = "auto") -> bool:
    """Decide whether to colour output: ``always``, ``never`` or ``auto`` (a TTY, no NO_COLOR)."""
    if mode == "always":
        return True
    if mode == "never" or os.environ.get("NO_COLOR"):
        return False
    return bool(getattr(stream, "isatty", lambda: False)())


def paint(text: str, family: str, colour: bool) -> str:
    """Wrap ``text`` in the ANSI colour of ``family`` when ``colour`` is true."""
    code = COLOURS.get(family, "")
    return f"{code}{text}{RESET}" if colour and code else text


def short(value: Any, limit: int = 120) -> str:
    """Render a value compactly: strings as-is, other values as compact JSON, truncated."""
    text = value if isinstance(value, str) else dumps(value)
    text = text.replace("\n", "⏎")
    return text if len(text) <= limit else text[: limit - 1] + "…"


def summarize(frame: Frame) -> str:
    """One-line human summary of a frame's data (the most telling fields first)."""
    data = frame.data
    t = frame.type
    if t == "error":
        extra = {k: v for k, v in data.items() if k not in ("code", "message")}
        tail = f"  {short(extra, 80)}" if extra else ""
        return f"{data.get('code', 'error')}: {data.get('message', '')}{tail}"
    if t == "connection_established":
        parts = [f"client_id={data.get('client_id')}"]
        for key in ("client_type", "resumed", "recovered", "last_seq"):
            if key in data:
                parts.append(f"{key}={short(data[key])}")
        return " ".join(parts)
    if t in ("tool_call", "mcp_tool_execution_start", "mcp_tool_waiting_permission"):
        params = data.get("params", data.get("parameters", {}))
        head = f"{data.get('tool_name', '?')}({short(params, 100)})"
        rest = {k: v for k, v in data.items() if k in ("call_id", "risk_level")}
        return head + "".join(f" {k}={short(v, 40)}" for k, v in rest.items())
    if t in ("tool_response", "tool_result", "mcp_tool_execution_complete"):
        name = data.get("tool_name", "")
        if "error" in data:
            outcome = f"error={short(data['error'])}"
        else:
            result = data.get("result")
            if isinstance(result, dict) and "content" in result:
                result = result["content"]
            ok = data.get("success")
            outcome = ("" if ok is None else f"success={short(ok)} ") + f"result={short(result)}"
        return f"{name} {outcome}".strip()
    for key in ("content", "full_content", "chunk"):
        if isinstance(data.get(key), str):
            rest = {k: v for k, v in data.items() if k != key}
            tail = " ".join(f"{k}={short(v, 40)}" for k, v in list(rest.items())[:4])
            return short(data[key], 200) + (f"  {tail}" if tail else "")
    return " ".join(f"{k}={short(v, 60)}" for k, v in data.items())


def _clock(timestamp: str | None) -> str:
    if timestamp:
        try:
            moment = datetime.fromisoformat(timestamp.replace("Z", "+00:00")).astimezone()
        except ValueError:
            pass
        else:
            return moment.strftime("%H:%M:%S")
    return datetime.now().strftime("%H:%M:%S")


def format_frame(frame: Frame, *, colour: bool = False) -> str:
    """Render a frame as ``HH:MM:SS #seq icon type  summary  ↩ reply_to`` (one line)."""
    family = frame_family(frame.type, frame.data)
    seq = f"#{frame.seq}" if frame.seq is not None else ""
    prefix = f"{_clock(frame.timestamp)} {seq:>5}"
    label = f"{ICONS[family]} {frame.type}"
    reply = f"  ↩ {frame.reply_to[:8]}" if frame.reply_to else ""
    body = summarize(frame)
    if colour:
        return (
            f"{DIM}{prefix}{RESET} {paint(BOLD + label, family, True)}  {body}{DIM}{reply}{RESET}"
        )
    return f"{prefix} {label}  {body}{reply}"


def format_event(text: str, family: str, *, colour: bool = False) -> str:
    """Render a client-side progress line (``HH:MM:SS      icon text``)."""
    line = f"{datetime.now().strftime('%H:%M:%S')}       {ICONS[family]} {text}"
    return paint(line, family, colour)
