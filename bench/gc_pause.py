"""How long a full cyclic-GC collection pauses a gateway process that has just started.

    python -m bench.gc_pause

Builds both apps as start-up does (``create_apps``), collects, then times ``gc.collect()``
(min of 5) before and after ``gc.freeze()`` — what ``server.runner.serve`` now does once its
sockets listen. While a full collection runs, the event loop (every socket) waits.
"""

from __future__ import annotations

import asyncio
import gc
import time

from server.app import create_apps
from server.config import Settings


def full_collection_ms() -> float:
    times = []
    for _ in range(5):
        started = time.perf_counter()
        gc.collect()
        times.append(time.perf_counter() - started)
    return min(times) * 1e3


async def main() -> None:
    settings = Settings.from_env({"API_TOKEN": "gc-pause-bench-token", "API_HOST": "127.0.0.1"})
    apps = create_apps(settings)
    gc.collect()
    print(f"objects the collector tracks after start-up: {len(gc.get_objects()):,}")
    print(f"full collection, not frozen: {full_collection_ms():.2f} ms (min of 5)")
    gc.freeze()
    print(f"full collection, frozen:     {full_collection_ms():.2f} ms (min of 5)")
    del apps


if __name__ == "__main__":
    asyncio.run(main())
