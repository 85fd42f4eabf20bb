"""``python -m server`` / ``switchboard``: the same entry point as run_websocket_server.py."""

from __future__ import annotations

import sys

from server.config import Settings
from server.errors import ConfigError
from server.logging_setup import configure_logging


def main() -> int:
    try:
        settings = Settings.from_env(env_file=".env")
    except ConfigError as exc:
        print(f"switchboard: configuration error: {exc.message}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level, settings.log_format)
    if settings.workers > 1:
        from server.workers import run_workers

        return run_workers(settings)
    from server.runner import run

    return run(settings)


if __name__ == "__main__":
    sys.exit(main())
