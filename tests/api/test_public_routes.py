"""One list of routes that need no token (``api.middleware.PUBLIC_ROUTES``), and everything
that states it agrees: the middleware itself, every route of the app, the OpenAPI document
(and so the /docs page), the README and docs/SECURITY.md."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from api.middleware import is_public, public_routes_text
from api.openapi import build_spec
from tests.conftest import LiveGateway

ROOT = Path(__file__).resolve().parents[2]
#: A list of two or more backticked paths followed by "are public".
PUBLIC_LIST = re.compile(r"((?:`/[^`\s]*`(?:, | and ))+`/[^`\s]*`) are public")
#: Where a document states the list, and how many times.
STATED = {"README.md": 2, "docs/SECURITY.md": 1}
SAMPLE_PATH_VALUES = {"{client_id}": "nobody", "{path:.+}": "docs.css"}


def _sample(path: str) -> str:
    for placeholder, value in SAMPLE_PATH_VALUES.items():
        path = path.replace(placeholder, value)
    return path


async def test_every_route_needs_the_token_exactly_when_it_is_not_listed_public(
        live_gateway: LiveGateway) -> None:
    api_app = live_gateway.api_server.app
    checked: set[str] = set()
    for route in api_app.router.routes():
        resource = route.resource
        if route.method in ("HEAD", "OPTIONS", "*") or resource is None:
            continue
        path = _sample(resource.canonical)
        body = {} if route.method == "POST" else None
        status, _ = await live_gateway.api(route.method, path, body, auth=False)
        if is_public(path):
            assert status != 401, f"{route.method} {path} is listed public but asks for a token"
        else:
            assert status == 401, f"{route.method} {path} answered {status} without a token"
        checked.add(path)
    assert {"/health", "/ready", "/docs", "/dashboard", "/status", "/metrics"} <= checked


def test_the_openapi_document_marks_exactly_the_listed_routes_public() -> None:
    spec = build_spec()
    for path, item in spec["paths"].items():
        for method, op in item.items():
            if method == "parameters":
                continue
            public = op.get("security", spec["security"]) == []
            assert public == is_public(path), f"{method.upper()} {path}"
            assert ("401" in op["responses"]) != public, f"{method.upper()} {path}"
    assert f"{public_routes_text()} are public." in spec["info"]["description"]


async def test_the_docs_page_states_the_same_list(live_gateway: LiveGateway) -> None:
    status, spec = await live_gateway.api("GET", "/openapi.json", auth=False)
    assert status == 200
    assert f"{public_routes_text()} are public." in spec["info"]["description"]


@pytest.mark.parametrize("document", STATED)
def test_documents_state_the_list_of_public_routes_as_the_code_has_it(document: str) -> None:
    text = (ROOT / document).read_text(encoding="utf-8")
    stated = PUBLIC_LIST.findall(text)
    assert len(stated) == STATED[document], stated
    for found in stated:
        assert found == public_routes_text(), f"{document} lists {found}"
