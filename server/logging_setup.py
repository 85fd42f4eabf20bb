"""structlog configuration: one event per line, JSON or console (``LOG_FORMAT``).

Standard-library loggers (aiohttp's) go through the same renderer. Query strings are never
logged by us, and aiohttp's access log is off: tokens travel in query strings.
"""

from __future__ import annotations

import enum
import logging
import sys
from typing import Any
from urllib.parse import urlsplit

import structlog


def plain_enums(logger: Any, method: str, event: dict[str, Any]) -> dict[str, Any]:
    """Write enum fields as their values (``code=1001``, not ``<CloseCode.GOING_AWAY: 1001>``),
    so a close code reads the same in every event and both formats."""
    for key, value in event.items():
        if isinstance(value, enum.Enum):
            event[key] = value.value
    return event


def configure_logging(level: str = "info", fmt: str = "console") -> None:
    numeric = getattr(logging, level.upper(), logging.INFO)
    shared: list[structlog.typing.Processor] = [
        structlog.contextvars.merge_contextvars,
        plain_enums,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer: structlog.typing.Processor
    if fmt == "json":
        renderer = structlog.processors.JSONRenderer()
        shared.append(structlog.processors.format_exc_info)
    else:
        # Fields in the order the event gives them (URLs first at start-up), not sorted.
        renderer = structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty(), sort_keys=False)
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared, processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer]))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(numeric)
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)


def url_for_logs(url: str) -> str:
    """Scheme, host and path of a URL: never its query or credentials."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}{parts.path}"
