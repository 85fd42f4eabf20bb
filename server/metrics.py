"""Prometheus metrics (prometheus-client), served by ``GET /metrics`` on the API port.

Metric objects live in their own ``CollectorRegistry`` (not the process default), declared once
here as prometheus-client expects; gauges that mirror live state are computed at scrape time.
prometheus-client's own collectors are registered on it too: ``process_*`` (memory, CPU, open
file descriptors, start time), ``python_gc_*`` and ``python_info``. They describe the process,
so they are registered once at import, however many gateways the process runs (tests run two).

Hot paths stay cheap. Per-connection and per-request events use label children bound once
(``CONNECTS_NEW``, ``disconnect_counter(code)``, ...). Per-frame counts (frames in by type,
frames out) are plain integer attributes of :data:`HOT`, bumped without a lock or a label
lookup and exported as counters at scrape time by :class:`HotCollector`; so are the HTTP
API's per-request count and latency (:class:`ApiRequestCounts`). Label values are
bounded: frame types are the registered ones (else ``unknown``), close codes the known ones
(else ``other``).

| metric | labels | what |
|---|---|---|
| ``switchboard_connects_total`` | resumed | WebSocket connections accepted |
| ``switchboard_disconnects_total`` | code | connections closed, by close code |
| ``switchboard_handshakes_refused_total`` | reason | upgrades refused before the handshake |
| ``switchboard_frames_in_total`` | type | client frames, by type (+ invalid, binary, unknown) |
| ``switchboard_frames_out_total`` | kind | server frames: sent (to a socket), replayed (on resume), queued (kept for an offline session) |
| ``switchboard_slow_clients_total`` | | clients closed for send-queue overflow (4008) |
| ``switchboard_limit_hits_total`` | limit | a cap bit: ``history_bytes`` (frames dropped from a history over HISTORY_BYTES), ``max_sessions`` (sessions evicted), ``channels_per_client`` (subscribes refused), ``json_depth`` (frames, bodies or answers nested too deep), ``header_value`` (stored header values truncated), ``sessions_per_user`` (a user's offline session ended for a new one, or a new one refused with 4012), ``presence_listing`` (a presence answer cut at PRESENCE_LIMIT), ``channel_history_bytes`` / ``channel_history_channels`` (channel history frames or whole rings dropped) |
| ``switchboard_resumes_total`` | outcome | resumes: recovered, partial, refused |
| ``switchboard_tool_calls_total`` | origin, outcome | tool calls from the API (``api``) or clients (``client``) |
| ``switchboard_api_requests_total`` | method, route, status | HTTP API requests |
| ``switchboard_api_request_seconds`` | route | HTTP API latency histogram |
| ``switchboard_broker_up`` | | 1 when the broker is reachable |
| ``switchboard_jwks_fetches_total`` | result | WS_JWKS_URL key-set fetches: ok, failed |
| ``switchboard_events_total`` | outcome | lifecycle events (EVENTS_WEBHOOK_URL): delivered, dropped_queue_full, dropped_rejected, dropped_retries, dropped_shutdown |
| ``switchboard_events_posts_total`` | result | event webhook POSTs: ok, failed (each failed attempt), retried |
| ``switchboard_channel_webhook_total`` | action, outcome | subscribe/publish webhook answers: allow, deny, failed |
| ``switchboard_connections``, ``_sessions``, ``_channels``, ``_send_queue_frames``, ``_send_queue_bytes``, ``_send_queue_max_frames``, ``_pending_tool_calls``, ``_events_queued`` | | live state at scrape time |
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Iterator
from itertools import accumulate
from typing import Any, Protocol

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

# No ``*_created`` series: they double the exposition for little use.
disable_created_metrics()

REGISTRY = CollectorRegistry(auto_describe=True)
ProcessCollector(registry=REGISTRY)
GCCollector(registry=REGISTRY)
PlatformCollector(registry=REGISTRY)

CONNECTS = Counter("switchboard_connects", "WebSocket connections accepted",
                   ["resumed"], registry=REGISTRY)
DISCONNECTS = Counter("switchboard_disconnects", "WebSocket connections closed, by close code",
                      ["code"], registry=REGISTRY)
REFUSED = Counter("switchboard_handshakes_refused", "Upgrades refused before the handshake",
                  ["reason"], registry=REGISTRY)
SLOW_CLIENTS = Counter("switchboard_slow_clients", "Clients closed for send-queue overflow",
                       registry=REGISTRY)
RESUMES = Counter("switchboard_resumes", "Session resumes, by outcome", ["outcome"],
                  registry=REGISTRY)
TOOL_CALLS = Counter("switchboard_tool_calls", "Tool calls, by origin and outcome",
                     ["origin", "outcome"], registry=REGISTRY)
BROKER_UP = Gauge("switchboard_broker_up", "1 when the broker is reachable", registry=REGISTRY)
JWKS_FETCHES = Counter("switchboard_jwks_fetches", "WS_JWKS_URL key-set fetches, by result",
                       ["result"], registry=REGISTRY)
JWKS_FETCH_OK = JWKS_FETCHES.labels("ok")
JWKS_FETCH_FAILED = JWKS_FETCHES.labels("failed")
EVENTS = Counter("switchboard_events", "Lifecycle events for EVENTS_WEBHOOK_URL, by outcome",
                 ["outcome"], registry=REGISTRY)
#: ``EVENT_OUTCOME[outcome]``: delivered, or dropped for a full queue, a 4xx answer, retries
#: exhausted, or still queued at shutdown.
EVENT_OUTCOME = {outcome: EVENTS.labels(outcome) for outcome in (
    "delivered", "dropped_queue_full", "dropped_rejected", "dropped_retries", "dropped_shutdown")}
EVENT_POSTS = Counter("switchboard_events_posts", "Event webhook POSTs: ok, failed (every "
                      "failed attempt), retried (attempts after a failure)", ["result"],
                      registry=REGISTRY)
EVENT_POST = {result: EVENT_POSTS.labels(result) for result in ("ok", "failed", "retried")}
CHANNEL_WEBHOOK = Counter("switchboard_channel_webhook", "Subscribe/publish webhook answers",
                          ["action", "outcome"], registry=REGISTRY)


#: ``switchboard_api_request_seconds``' bucket bounds (seconds).
API_LATENCY_BUCKETS = (.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30)


class ApiRequestCounts:
    """Per-request API counts as plain numbers, like :class:`HotCounters`: a prometheus-client
    counter and histogram cost 13 Python calls and three lock round trips per request (a
    third of what separated the API path from bare aiohttp's, ``bench/api_calls.py``); a dict
    increment and a ``bisect`` cost four. Exported by :class:`HotCollector` as
    ``switchboard_api_requests_total`` and the ``switchboard_api_request_seconds`` histogram.
    Keys are bounded: routes are the canonical paths (or ``unmatched``) and aiohttp refuses
    unknown methods with a 400 before any middleware runs.
    """

    __slots__ = ("latency", "requests")

    def __init__(self) -> None:
        self.requests: dict[tuple[str, str, int], int] = {}
        #: route -> a count per bucket (``API_LATENCY_BUCKETS`` then +Inf, not cumulative),
        #: then the sum of the observed seconds.
        self.latency: dict[str, list[float]] = {}

    def done(self, method: str, route: str, status: int, seconds: float) -> None:
        """Count one HTTP API request and observe its latency."""
        requests = self.requests
        key = (method, route, status)
        requests[key] = requests.get(key, 0) + 1
        series = self.latency.get(route)
        if series is None:
            series = self.latency[route] = [0] * (len(API_LATENCY_BUCKETS) + 2)
        series[bisect_left(API_LATENCY_BUCKETS, seconds)] += 1  # le is inclusive
        series[-1] += seconds

    def collect(self) -> Iterator[CounterMetricFamily | HistogramMetricFamily]:
        requests = CounterMetricFamily("switchboard_api_requests", "HTTP API requests",
                                       labels=["method", "route", "status"])
        for (method, route, status), count in sorted(self.requests.items()):
            requests.add_metric([method, route, str(status)], count)
        yield requests
        latency = HistogramMetricFamily("switchboard_api_request_seconds", "HTTP API latency",
                                        labels=["route"])
        bounds = [floatToGoString(b) for b in API_LATENCY_BUCKETS] + ["+Inf"]
        for route, series in sorted(self.latency.items()):
            cumulative = list(accumulate(series[:-1]))
            latency.add_metric([route], list(zip(bounds, cumulative, strict=True)),
                               sum_value=series[-1])
        yield latency


# Label children bound once: the code paths below only call .inc().
CONNECTS_NEW = CONNECTS.labels("false")
CONNECTS_RESUMED = CONNECTS.labels("true")
RESUME_RECOVERED = RESUMES.labels("recovered")
RESUME_PARTIAL = RESUMES.labels("partial")
RESUME_REFUSED = RESUMES.labels("refused")
REFUSED_NOT_WEBSOCKET = REFUSED.labels("not_websocket")
REFUSED_SHUTTING_DOWN = REFUSED.labels("shutting_down")
REFUSED_ORIGIN = REFUSED.labels("origin")
REFUSED_AUTH = REFUSED.labels("auth")
REFUSED_MAX_CONNECTIONS = REFUSED.labels("max_connections")
REFUSED_PER_IP = REFUSED.labels("per_ip_limit")
REFUSED_BAD_REQUEST = REFUSED.labels("bad_request")

#: Close codes reported as themselves; any other becomes ``other`` (clients choose their own).
KNOWN_CLOSE_CODES = frozenset({1000, 1001, 1002, 1003, 1005, 1006, 1007, 1008, 1009, 1010,
                               1011, 1012, 1013, 1014, 4000, 4001, 4003, 4008, 4009, 4010,
                               4011, 4012})
_DISCONNECT_CHILDREN: dict[int | None, Any] = {}


def disconnect_counter(code: int | None) -> Any:
    """The ``switchboard_disconnects_total`` child for a close code (``none`` when the socket
    went away without one), bound on first use."""
    child = _DISCONNECT_CHILDREN.get(code)
    if child is None:
        label = "none" if code is None else str(code) if code in KNOWN_CLOSE_CODES else "other"
        child = _DISCONNECT_CHILDREN[code] = DISCONNECTS.labels(label)
    return child


TOOL_OUTCOMES = {
    "api": ("success", "failure", "timeout", "client_disconnected", "client_offline",
            "not_found", "error"),
    "client": ("success", "failure", "permission_denied", "unknown_tool"),
}
#: ``TOOL_CALL[origin][outcome]``: every child bound at import.
TOOL_CALL = {origin: {outcome: TOOL_CALLS.labels(origin, outcome) for outcome in outcomes}
             for origin, outcomes in TOOL_OUTCOMES.items()}


class Routes(Protocol):
    """What :meth:`HotCounters.frame_in` needs of a router: ``route_for`` raises for a type
    it does not know."""

    def route_for(self, frame_type: str) -> object: ...


#: The caps counted by ``switchboard_limit_hits_total`` (PRODUCT.md section 7).
LIMITS = ("history_bytes", "max_sessions", "channels_per_client", "json_depth", "header_value",
          "sessions_per_user", "presence_listing", "channel_history_bytes",
          "channel_history_channels")


class HotCounters:
    """Per-frame counts as plain integers (an attribute increment costs a few ns; a labelled
    prometheus counter costs a lock and a lookup). Exported by :class:`HotCollector`.

    ``frames_in`` maps a frame type to its count; :meth:`frame_in` keeps its keys to the
    types a router knows, so a client cannot mint label values.
    """

    __slots__ = ("frames_in", "frames_out_queued", "frames_out_replayed", "frames_out_sent",
                 "limits")

    def __init__(self) -> None:
        self.frames_in: dict[str, int] = {}
        self.frames_out_sent = 0
        self.frames_out_replayed = 0
        self.frames_out_queued = 0
        #: ``switchboard_limit_hits_total`` by limit (the names are fixed: :data:`LIMITS`).
        self.limits = dict.fromkeys(LIMITS, 0)

    def limit_hit(self, limit: str, count: int = 1) -> None:
        """A cap bit ``count`` times (``limit`` is one of :data:`LIMITS`)."""
        self.limits[limit] += count

    def frame_in(self, frame_type: str, routes: Routes) -> None:
        """Count a decoded client frame; a type ``routes`` does not know counts as
        ``unknown`` (only a first sighting of a known type takes the slow path)."""
        counts = self.frames_in
        count = counts.get(frame_type)
        if count is not None:
            counts[frame_type] = count + 1
            return
        try:
            routes.route_for(frame_type)
            key = frame_type
        except Exception:
            key = "unknown"
        counts[key] = counts.get(key, 0) + 1

    def frame_in_special(self, kind: str) -> None:
        """``invalid`` (not a JSON object with a type) or ``binary``."""
        self.frames_in[kind] = self.frames_in.get(kind, 0) + 1


HOT = HotCounters()
API_COUNTS = ApiRequestCounts()


class HotCollector(Collector):
    """Exports :data:`HOT` (``switchboard_frames_in_total``, ``switchboard_frames_out_total``,
    ``switchboard_limit_hits_total``) and :data:`API_COUNTS`."""

    def __init__(self, hot: HotCounters) -> None:
        self.hot = hot

    def describe(self) -> list[Any]:
        return list(self.collect())

    def collect(self) -> Iterator[CounterMetricFamily]:
        hot = self.hot
        frames_in = CounterMetricFamily("switchboard_frames_in",
                                        "Client frames received, by type", labels=["type"])
        for frame_type, count in sorted(hot.frames_in.items()):
            frames_in.add_metric([frame_type], count)
        yield frames_in
        frames_out = CounterMetricFamily(
            "switchboard_frames_out",
            "Server frames: sent to a socket, replayed on resume, queued for an offline session",
            labels=["kind"])
        frames_out.add_metric(["sent"], hot.frames_out_sent)
        frames_out.add_metric(["replayed"], hot.frames_out_replayed)
        frames_out.add_metric(["queued"], hot.frames_out_queued)
        yield frames_out
        limits = CounterMetricFamily("switchboard_limit_hits",
                                     "Times a cap bit (what was refused, dropped or evicted)",
                                     labels=["limit"])
        for limit, count in hot.limits.items():
            limits.add_metric([limit], count)
        yield limits
        yield from API_COUNTS.collect()


REGISTRY.register(HotCollector(HOT))


class LiveStateCollector(Collector):
    """Gauges read at scrape time from the gateways running in this process (connections,
    queues, sessions): one in production. Like every metric of the process's registry, they
    add up when one process runs more than one (the two nodes of a cluster test); a
    ``*_max_*`` gauge is the largest."""

    def __init__(self) -> None:
        self.samplers: list[Callable[[], dict[str, float]]] = []

    def collect(self):  # type: ignore[no-untyped-def]
        totals: dict[str, float] = {}
        for sample in self.samplers:
            for name, value in sample().items():
                if "_max_" in name:
                    totals[name] = max(totals.get(name, value), value)
                else:
                    totals[name] = totals.get(name, 0) + value
        for name, value in totals.items():
            yield GaugeMetricFamily(f"switchboard_{name}", name.replace("_", " "), value=value)


LIVE_STATE = LiveStateCollector()
REGISTRY.register(LIVE_STATE)  # type: ignore[arg-type]


def render() -> bytes:
    return generate_latest(REGISTRY)
