"""Prometheus metrics (prometheus-client), served by ``GET /metrics`` on the API port.

Metric objects live in their own ``CollectorRegistry`` (not the process default), declared once
here as prometheus-client expects; gauges that mirror live state are computed at scrape time.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

REGISTRY = CollectorRegistry(auto_describe=True)

CONNECTS = Counter("switchboard_connects", "WebSocket connections accepted",
                   ["resumed"], registry=REGISTRY)
DISCONNECTS = Counter("switchboard_disconnects", "WebSocket connections closed, by close code",
                      ["code"], registry=REGISTRY)
REFUSED = Counter("switchboard_handshakes_refused", "Upgrades refused before the handshake",
                  ["reason"], registry=REGISTRY)
FRAMES_IN = Counter("switchboard_frames_in", "Client frames received, by type",
                    ["type"], registry=REGISTRY)
FRAMES_OUT = Counter("switchboard_frames_out", "Server frames delivered or queued, by kind",
                     ["kind"], registry=REGISTRY)
SLOW_CLIENTS = Counter("switchboard_slow_clients", "Clients closed for send-queue overflow",
                       registry=REGISTRY)
RESUMES = Counter("switchboard_resumes", "Session resumes, by outcome", ["outcome"],
                  registry=REGISTRY)
TOOL_CALLS = Counter("switchboard_tool_calls", "Tool calls, by origin and outcome",
                     ["origin", "outcome"], registry=REGISTRY)
API_REQUESTS = Counter("switchboard_api_requests", "HTTP API requests",
                       ["method", "route", "status"], registry=REGISTRY)
API_LATENCY = Histogram("switchboard_api_request_seconds", "HTTP API latency", ["route"],
                        registry=REGISTRY,
                        buckets=(.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5,
                                 5, 10, 30))
BROKER_UP = Gauge("switchboard_broker_up", "1 when the broker is reachable", registry=REGISTRY)


class LiveStateCollector(Collector):
    """Gauges read from the running gateway at scrape time (connections, queues, sessions)."""

    def __init__(self, sample: Callable[[], dict[str, float]]) -> None:
        self.sample = sample

    def collect(self):  # type: ignore[no-untyped-def]
        for name, value in self.sample().items():
            yield GaugeMetricFamily(f"switchboard_{name}", name.replace("_", " "), value=value)


def render() -> bytes:
    return generate_latest(REGISTRY)
