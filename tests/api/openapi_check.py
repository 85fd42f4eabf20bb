"""Validate real HTTP answers against the OpenAPI document with jsonschema.

OpenAPI 3.0 schemas are not quite JSON Schema (``nullable``, boolean ``exclusiveMinimum``,
``#/components/schemas`` references), so :func:`to_json_schema` translates them to Draft
2020-12 first.
"""

from __future__ import annotations

from typing import Any

from jsonschema import Draft202012Validator

from api.openapi import build_spec

_DROP = frozenset({"example", "nullable", "discriminator", "xml", "externalDocs", "deprecated",
                   "readOnly", "writeOnly"})


def to_json_schema(node: Any) -> Any:
    """An OpenAPI 3.0 schema (or part of one) as JSON Schema 2020-12."""
    if isinstance(node, list):
        return [to_json_schema(item) for item in node]
    if not isinstance(node, dict):
        return node
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in _DROP:
            continue
        if key == "$ref":
            out[key] = value.replace("#/components/schemas/", "#/$defs/")
        elif key in ("properties", "patternProperties"):
            out[key] = {name: to_json_schema(sub) for name, sub in value.items()}
        else:
            out[key] = to_json_schema(value)
    for bound, limit in (("exclusiveMinimum", "minimum"), ("exclusiveMaximum", "maximum")):
        if node.get(bound) is True:
            out[bound] = out.pop(limit)
        elif node.get(bound) is False:
            del out[bound]
    if node.get("nullable"):
        out = {"anyOf": [out, {"type": "null"}]}
    return out


class SpecChecker:
    """Looks up an operation's declared answer for a status and validates a body against it."""

    def __init__(self, spec: dict[str, Any] | None = None) -> None:
        self.spec = spec or build_spec()
        self.defs = {name: to_json_schema(schema)
                     for name, schema in self.spec["components"]["schemas"].items()}
        self.seen: set[tuple[str, str, int]] = set()

    def _resolve(self, node: dict[str, Any]) -> dict[str, Any]:
        ref = node.get("$ref")
        if ref is None:
            return node
        *_, kind, name = ref.split("/")
        return self.spec["components"][kind][name]

    def operation(self, method: str, template: str) -> dict[str, Any]:
        item = self.spec["paths"].get(template)
        assert item is not None, f"{template} is not in the OpenAPI document"
        op = item.get(method.lower())
        assert op is not None, f"{method} {template} is not in the OpenAPI document"
        return op

    def check(self, method: str, template: str, status: int, content_type: str,
              body: Any) -> None:
        """Fail unless ``status`` is declared for the operation and ``body`` fits its schema."""
        op = self.operation(method, template)
        declared = op["responses"].get(str(status)) or op["responses"].get("default")
        assert declared is not None, (
            f"{method} {template} answered {status}, which the document does not declare "
            f"(declared: {sorted(op['responses'])}); body: {body!r}"[:2000])
        declared = self._resolve(declared)
        self.seen.add((method.upper(), template, status))
        content = declared.get("content")
        if not content:
            return
        base_type = content_type.split(";")[0].strip().lower()
        assert base_type in content, (
            f"{method} {template} {status}: Content-Type {content_type!r} is not declared "
            f"({sorted(content)})")
        if base_type != "application/json":
            return
        schema = to_json_schema(content[base_type]["schema"])
        validator = Draft202012Validator({**schema, "$defs": self.defs})
        errors = sorted(validator.iter_errors(body), key=lambda e: list(e.absolute_path))
        assert not errors, (
            f"{method} {template} {status}: body does not match the document: "
            + "; ".join(f"{'/'.join(map(str, e.absolute_path)) or '(root)'}: {e.message}"
                        for e in errors[:5])
            + f"\nbody: {body!r}"[:2000])
