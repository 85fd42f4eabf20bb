#!/usr/bin/env python3
"""Start Switchboard: the WebSocket app (WS_PORT, 9004) and the HTTP API (API_PORT, 9005).

Configuration is read from environment variables (and ``.env`` in the working directory, if
present); see the README. A bad setting stops start-up with one line naming the variable.
"""

from __future__ import annotations

import sys

from server.__main__ import main

if __name__ == "__main__":
    sys.exit(main())
