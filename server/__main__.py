"""``switchboard`` / ``python -m server`` / ``run_websocket_server.py``: start the gateway.

Configuration comes from environment variables (and ``.env`` in the working directory); the
command line only takes ``--help``, ``--version`` and ``--check``. ``--help`` lists every
setting with its default, generated from :data:`server.config.SETTINGS_DOC`.

Exit status: 0 after a clean stop (or ``--help``/``--version``/a valid ``--check``), 1 when a
port cannot be bound or a worker failed, 2 for a configuration or usage error.
"""

from __future__ import annotations

import argparse
import os
import sys
import textwrap
from collections.abc import Sequence
from dataclasses import fields
from importlib import metadata
from typing import Any, NoReturn

import structlog

from server.config import SETTINGS_DOC, LoadedSettings, Settings
from server.errors import ConfigError, StartupError
from server.logging_setup import configure_logging, url_for_logs

ENV_FILE = ".env"

DESCRIPTION = """\
Switchboard: a real-time gateway. WebSocket clients connect to WS_HOST:WS_PORT; services
reach them through the HTTP API on API_HOST:API_PORT. Stop it with Ctrl-C or SIGTERM.

Every setting is an environment variable; a .env file in the working directory is read too
(the environment wins). A bad value stops start-up with one line naming the variable (and
the .env line), exit status 2. A variable that looks like a misspelt setting is reported:
a warning at start-up when it comes from the environment, an error in .env."""


def _prog(argv0: str) -> str:
    name = os.path.basename(argv0)
    return "python -m server" if name in ("__main__.py", "") else name


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(2, f"{self.prog}: error: {message}\n{self.prog}: settings are environment "
                     f"variables (e.g. WS_PORT=9104), not options; see --help\n")


def settings_help(width: int = 79) -> str:
    """Every setting with its default and meaning (the ``--help`` epilog)."""
    lines = ["settings (environment variables):"]
    for spec in SETTINGS_DOC:
        lines.append(f"  {spec.env}  default: {spec.default}")
        lines.extend(textwrap.wrap(spec.doc, width, initial_indent=" " * 6,
                                   subsequent_indent=" " * 6))
    return "\n".join(lines)


def build_parser(prog: str) -> argparse.ArgumentParser:
    parser = _Parser(prog=prog, description=DESCRIPTION, epilog=settings_help(),
                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version",
                        version=f"%(prog)s {_version()}")
    parser.add_argument("--check", action="store_true",
                        help="validate the configuration, print each setting's value and "
                             "where it came from, and exit (0 valid, 2 not); binds nothing")
    return parser


def _version() -> str:
    try:
        return metadata.version("switchboard")
    except metadata.PackageNotFoundError:  # pragma: no cover - running from a bare checkout
        return "(not installed)"


def _shown(value: Any, secret: bool) -> str:
    if secret:
        return "(set)" if value else "(unset)"
    if isinstance(value, tuple):
        return ",".join(value)
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, str) and "://" in value:
        return url_for_logs(value)  # never a password or a token from a URL
    return str(value)


def _current(settings: Settings, env: str) -> str:
    """A setting's effective value as ``--check`` shows it (secrets as set/unset)."""
    spec = next(spec for spec in SETTINGS_DOC if spec.env == env)
    if env == "API_HOST":
        return settings.effective_api_host
    secret = not next(f for f in fields(settings) if f.name == spec.attr).repr
    return _shown(getattr(settings, spec.attr), secret) or spec.default


def print_check(loaded: LoadedSettings) -> None:
    """``--check``: one ``NAME=value  (source)`` line per setting, warnings on stderr."""
    width = max(len(spec.env) for spec in SETTINGS_DOC)
    for spec in SETTINGS_DOC:
        value = _current(loaded.settings, spec.env)
        source = loaded.sources.get(spec.env, "default")
        print(f"{spec.env:<{width}}  {value:<24} ({source})")
    for unknown in loaded.unknown:
        hint = f"; did you mean {unknown.did_you_mean}?" if unknown.did_you_mean else ""
        print(f"warning: {unknown.name} ({unknown.where}) is not a setting{hint}",
              file=sys.stderr)


def warn_unknown(loaded: LoadedSettings) -> None:
    """Log each variable that is not a setting but looks like one (start-up warnings)."""
    log = structlog.get_logger("switchboard.config")
    for unknown in loaded.unknown:
        if unknown.did_you_mean:
            current = _current(loaded.settings, unknown.did_you_mean)
            log.warning("unknown_setting", variable=unknown.name, where=unknown.where,
                        did_you_mean=unknown.did_you_mean,
                        effect=f"ignored; {unknown.did_you_mean} is {current}")
        else:
            log.warning("unknown_setting", variable=unknown.name, where=unknown.where,
                        effect="ignored")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser(_prog(sys.argv[0])).parse_args(argv)
    try:
        loaded = Settings.load(env_file=ENV_FILE)
    except ConfigError as exc:
        print(f"switchboard: configuration error: {exc.message}", file=sys.stderr)
        return 2
    if args.check:
        print_check(loaded)
        return 0
    settings = loaded.settings
    configure_logging(settings.log_level, settings.log_format)
    warn_unknown(loaded)
    try:
        from server.ws import check_aiohttp

        check_aiohttp()
    except StartupError as exc:
        print(f"switchboard: cannot start: {exc.message}", file=sys.stderr)
        return 2
    if settings.workers > 1:
        from server.workers import run_workers

        return run_workers(settings)
    from server.runner import run

    return run(settings)


if __name__ == "__main__":
    sys.exit(main())
