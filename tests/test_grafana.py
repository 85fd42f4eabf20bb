"""The Grafana dashboard (docs/grafana/switchboard.json) cannot rot: every metric its PromQL
queries is exported by a live gateway, with the labels it groups by, and every panel reads from
the templated data source."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import LiveGateway

DASHBOARD = Path(__file__).resolve().parent.parent / "docs" / "grafana" / "switchboard.json"
#: Words in PromQL that are neither metrics nor functions called with "(".
KEYWORDS = frozenset({"by", "without", "on", "ignoring", "group_left", "group_right", "bool",
                      "and", "or", "unless", "offset", "inf", "nan"})
#: Labels Prometheus adds to every series it scrapes (not in the exposition itself).
TARGET_LABELS = frozenset({"instance", "job", "le"})
SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"),
            "summary": ("_sum", "_count"), "gauge": ("",), "info": ("_info",),
            "unknown": ("",)}


def panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for panel in dashboard["panels"]:
        out.append(panel)
        out.extend(panel.get("panels", []))  # a collapsed row holds its panels
    return out


def expressions(dashboard: dict[str, Any]) -> list[str]:
    return [target["expr"] for panel in panels(dashboard) for target in panel.get("targets", [])]


def parse(expr: str) -> tuple[set[str], set[str]]:
    """(metric names, labels grouped by) of a PromQL expression."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # strings
    text = re.sub(r"\{[^}]*\}", "", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", "", text)  # range selectors
    grouped: set[str] = set()
    for labels in re.findall(r"\b(?:by|without)\s*\(([^)]*)\)", text):
        grouped.update(label.strip() for label in labels.split(",") if label.strip())
    text = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", text)
    names = set()
    for match in re.finditer(r"(?<![\w.])[A-Za-z_:][\w:]*", text):
        if text[match.end():].lstrip().startswith("(") or match.group() in KEYWORDS:
            continue  # a function call, or a keyword
        names.add(match.group())
    return names, grouped


def test_the_parser_finds_metrics_and_grouping_labels() -> None:
    names, grouped = parse('histogram_quantile(0.99, sum by (le, route) (rate('
                           'switchboard_api_request_seconds_bucket{instance=~"$instance"}'
                           '[$__rate_interval]))) / on(instance) group_left up')
    assert names == {"switchboard_api_request_seconds_bucket", "up"}
    assert grouped == {"le", "route"}


def test_every_panel_reads_the_templated_prometheus_data_source() -> None:
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    templated = {"type": "prometheus", "uid": "${datasource}"}
    for panel in panels(dashboard):
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == templated, panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == templated, panel["title"]
    assert len({panel["id"] for panel in panels(dashboard)}) == len(panels(dashboard))


async def _exported(live: LiveGateway) -> dict[str, set[str]]:
    """Every sample name /metrics can carry, with the labels seen on it."""
    async with live.http.get(f"{live.api_url}/metrics", headers=live.auth()) as resp:
        assert resp.status == 200
        text = await resp.text()
    exported: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(text):
        for suffix in SUFFIXES.get(family.type, ("",)):
            exported.setdefault(family.name + suffix, set())
        for sample in family.samples:
            exported.setdefault(sample.name, set()).update(sample.labels)
    return exported


async def test_every_metric_the_dashboard_queries_is_exported_by_a_live_gateway(
        live_gateway: LiveGateway) -> None:
    # Some traffic, so that labelled series exist and their labels can be checked too.
    client = await live_gateway.connect(client_id="graf")
    await client.send("ping")
    await client.recv_type("pong")
    await client.close()
    status, _ = await live_gateway.api("POST", "/call_tool",
                                       {"client_id": "nobody", "tool_name": "echo"})
    assert status == 404
    exported = await _exported(live_gateway)

    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    queried: set[str] = set()
    for expr in expressions(dashboard):
        names, grouped = parse(expr)
        assert names, f"no metric in {expr!r}"
        missing = names - exported.keys()
        assert not missing, f"{expr!r} queries {missing}, which /metrics does not export"
        known_labels = set().union(*(exported[name] for name in names))
        if known_labels:  # labels are only visible once a series has samples
            unknown = grouped - known_labels - TARGET_LABELS
            assert not unknown, f"{expr!r} groups by {unknown}, labels no series carries"
        queried |= names
    for wanted in ("switchboard_connections", "switchboard_sessions",
                   "switchboard_frames_in_total", "switchboard_frames_out_total",
                   "switchboard_slow_clients_total", "switchboard_resumes_total",
                   "switchboard_tool_calls_total", "switchboard_api_request_seconds_bucket",
                   "process_resident_memory_bytes", "process_cpu_seconds_total",
                   "process_open_fds"):
        assert wanted in queried, f"the dashboard has no panel for {wanted}"


@pytest.mark.parametrize("expr", ["sum(rate(switchboard_frames_in_totl[5m]))",
                                  "sum by (flavour) (rate(switchboard_frames_in_total[5m]))"])
async def test_a_misspelt_metric_or_label_would_fail(live_gateway: LiveGateway,
                                                     expr: str) -> None:
    client = await live_gateway.connect(client_id="graf2")
    await client.send("ping")
    await client.recv_type("pong")
    exported = await _exported(live_gateway)
    names, grouped = parse(expr)
    labels = set().union(*(exported.get(name, set()) for name in names))
    assert not names <= exported.keys() or grouped - labels - TARGET_LABELS
