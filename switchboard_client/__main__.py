"""``python -m switchboard_client``: the command-line client (see :mod:`switchboard_client.cli`)."""

from __future__ import annotations

from switchboard_client.cli import main

raise SystemExit(main())
