"""Server-side tools: a registry with a few built-ins, and the seed-001 execution lifecycle.

Adding a tool::

    from server.tools import ToolContext, default_tools

    @default_tools.tool(
        "reverse", "Reverse a string.",
        parameters={"type": "object", "properties": {"text": {"type": "string"}},
                    "required": ["text"]},
        risk_level="low",
    )
    async def reverse(params: dict, ctx: ToolContext) -> str:
        return params["text"][::-1]

A tool returns a string (a ``text`` result), a JSON object or list (``structured``), or raises
:class:`ToolError` / any exception (an ``error`` result). ``risk_level="high"`` makes the gateway
ask the client for permission (``mcp_tool_waiting_permission`` / ``permission_response``) first.
Tools not in the registry go to ``TOOL_WEBHOOK_URL`` when it is set.
"""

from __future__ import annotations

import ast
import inspect
import math
import operator
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from jsonschema import Draft202012Validator

from server.errors import ToolError, ValidationError

if TYPE_CHECKING:
    from server.gateway import Gateway
    from server.sessions import Session

RISK_LEVELS = ("low", "medium", "high")
TOOL_NAME = re.compile(r"^[A-Za-z0-9_.:\-]{1,128}$")
SENSITIVE_KEY = re.compile(
    r"pass(word|wd|phrase)?|secret|token|api[_-]?key|apikey|auth(orization)?|credential|"
    r"private[_-]?key|cookie|session[_-]?id",
    re.IGNORECASE,
)
REDACTED = "***"
MAX_PARAM_CHARS = 200
#: The largest integer ``calculate`` returns: 2**53 - 1, the last one every JSON reader (a
#: browser's included) holds exactly.
MAX_EXACT_INT = 2**53 - 1


@dataclass(slots=True)
class ToolContext:
    """What a tool may use: the gateway, the calling session (None for HTTP-initiated runs)."""

    gateway: Gateway
    session: Session | None
    call_id: str


ToolFunc = Callable[[dict[str, Any], ToolContext], Awaitable[Any] | Any]


@dataclass(slots=True)
class Tool:
    name: str
    description: str
    func: ToolFunc
    parameters: dict[str, Any] = field(default_factory=lambda: {"type": "object"})
    risk_level: str = "low"
    validator: Draft202012Validator | None = None

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "description": self.description,
                "parameters": self.parameters, "risk_level": self.risk_level}

    def validate(self, params: Mapping[str, Any]) -> None:
        """Raise ToolError naming the first parameter that does not fit the schema."""
        if self.validator is None:
            return
        error = next(iter(sorted(self.validator.iter_errors(params), key=str)), None)
        if error is not None:
            where = ".".join(str(p) for p in error.absolute_path) or "params"
            raise ToolError(f"invalid parameters for {self.name}: {where}: {error.message}",
                            code="invalid_params")


class ToolRegistry:
    """Named tools. ``default_tools`` holds the built-ins; the app copies it at start-up."""

    def __init__(self) -> None:
        self._tools: dict[str, Tool] = {}

    def __contains__(self, name: str) -> bool:
        return name in self._tools

    def get(self, name: str) -> Tool | None:
        return self._tools.get(name)

    def names(self) -> list[str]:
        return sorted(self._tools)

    def describe(self) -> list[dict[str, Any]]:
        return [self._tools[n].describe() for n in self.names()]

    def add(self, name: str, description: str, func: ToolFunc, *,
            parameters: dict[str, Any] | None = None, risk_level: str = "low") -> Tool:
        if not TOOL_NAME.match(name):
            raise ValueError(f"invalid tool name {name!r}")
        if risk_level not in RISK_LEVELS:
            raise ValueError(f"risk_level must be one of {RISK_LEVELS}")
        schema = parameters or {"type": "object"}
        Draft202012Validator.check_schema(schema)
        tool = Tool(name, description, func, schema, risk_level, Draft202012Validator(schema))
        self._tools[name] = tool
        return tool

    def tool(self, name: str, description: str, *, parameters: dict[str, Any] | None = None,
             risk_level: str = "low") -> Callable[[ToolFunc], ToolFunc]:
        """Decorator form of :meth:`add`."""

        def register(func: ToolFunc) -> ToolFunc:
            self.add(name, description, func, parameters=parameters, risk_level=risk_level)
            return func

        return register

    def copy(self) -> ToolRegistry:
        clone = ToolRegistry()
        clone._tools = dict(self._tools)
        return clone


async def invoke(tool: Tool, params: dict[str, Any], ctx: ToolContext) -> Any:
    """Validate and run one tool (sync or async)."""
    tool.validate(params)
    result = tool.func(params, ctx)
    if inspect.isawaitable(result):
        result = await result
    return result


# --- seed 001 result shapes and redaction -----------------------------------------------------


def shape_result(raw: Any) -> dict[str, Any]:
    """The ``result`` object of ``mcp_tool_execution_complete``: text, structured (success)."""
    if isinstance(raw, Mapping) and isinstance(raw.get("content"), list):
        # MCP CallToolResult: {"content": [{"type": "text", "text": "..."}], "isError": bool}
        texts = [c.get("text", "") for c in raw["content"]
                 if isinstance(c, Mapping) and c.get("type") == "text"]
        if raw.get("isError"):
            return error_result("\n".join(texts) or "tool reported an error", raw)
        if texts and len(texts) == len(raw["content"]):
            return {"type": "text", "content": "\n".join(texts), "raw_data": raw,
                    "success": True}
        return {"type": "structured", "content": raw, "raw_data": raw, "success": True}
    if isinstance(raw, str):
        return {"type": "text", "content": raw, "raw_data": raw, "success": True}
    if isinstance(raw, Mapping | list):
        return {"type": "structured", "content": raw, "raw_data": raw, "success": True}
    return {"type": "text", "content": "" if raw is None else str(raw), "raw_data": raw,
            "success": True}


def error_result(message: str, raw: Any = None) -> dict[str, Any]:
    return {"type": "error", "content": message, "raw_data": raw, "success": False}


def redact(value: Any, *, depth: int = 0) -> Any:
    """Copy of tool parameters safe to show: sensitive keys masked, long strings truncated."""
    if depth > 8:
        return "…"
    if isinstance(value, Mapping):
        return {str(k): (REDACTED if SENSITIVE_KEY.search(str(k)) else
                         redact(v, depth=depth + 1)) for k, v in value.items()}
    if isinstance(value, list):
        items = [redact(v, depth=depth + 1) for v in value[:50]]
        if len(value) > 50:
            items.append(f"… (+{len(value) - 50} items)")
        return items
    if isinstance(value, str) and len(value) > MAX_PARAM_CHARS:
        return f"{value[:MAX_PARAM_CHARS]}… (+{len(value) - MAX_PARAM_CHARS} chars)"
    return value


# --- built-in tools ---------------------------------------------------------------------------

default_tools = ToolRegistry()

_BIN_OPS: dict[type, Callable[[Any, Any], Any]] = {
    ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul,
    ast.Div: operator.truediv, ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}
_UNARY_OPS: dict[type, Callable[[Any], Any]] = {ast.UAdd: operator.pos, ast.USub: operator.neg}


def _evaluate(node: ast.AST) -> float | int:
    if isinstance(node, ast.Expression):
        return _evaluate(node.body)
    if isinstance(node, ast.Constant) and isinstance(node.value, int | float) and not isinstance(
            node.value, bool):
        return node.value
    if isinstance(node, ast.BinOp) and type(node.op) in _BIN_OPS:
        left, right = _evaluate(node.left), _evaluate(node.right)
        if isinstance(node.op, ast.Pow) and (abs(right) > 100 or abs(left) > 1e6):
            raise ToolError("exponent too large", code="invalid_params")
        return _BIN_OPS[type(node.op)](left, right)
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY_OPS:
        return _UNARY_OPS[type(node.op)](_evaluate(node.operand))
    raise ToolError("only numbers and + - * / // % ** ( ) are allowed", code="invalid_params")


@default_tools.tool(
    "echo", "Return the text it is given.",
    parameters={"type": "object", "properties": {"text": {"type": "string"}},
                "required": ["text"]},
)
def _echo(params: dict[str, Any], ctx: ToolContext) -> str:
    return params["text"]


@default_tools.tool(
    "calculate", "Evaluate an arithmetic expression, e.g. '(2 + 3) * 4'.",
    parameters={"type": "object",
                "properties": {"expression": {"type": "string", "maxLength": 200}},
                "required": ["expression"]},
)
def _calculate(params: dict[str, Any], ctx: ToolContext) -> dict[str, Any]:
    expression = params["expression"]
    try:
        tree = ast.parse(expression, mode="eval")
    except SyntaxError:
        raise ToolError(f"not an arithmetic expression: {expression!r}",
                        code="invalid_params") from None
    try:
        value = _evaluate(tree)
    except ZeroDivisionError:
        raise ToolError("division by zero", code="invalid_params") from None
    except OverflowError:
        raise ToolError("result out of range", code="invalid_params") from None
    if isinstance(value, complex):
        raise ToolError("the result is not a real number", code="invalid_params")
    if isinstance(value, int) and not -MAX_EXACT_INT <= value <= MAX_EXACT_INT:
        raise ToolError(f"the result has more digits than JSON carries exactly "
                        f"(beyond ±{MAX_EXACT_INT})", code="invalid_params")
    if isinstance(value, float) and not math.isfinite(value):
        raise ToolError("the result is not a finite number", code="invalid_params")
    return {"expression": expression, "result": value}


@default_tools.tool(
    "get_time", "The server's current time (UTC, ISO-8601 and Unix seconds).",
    parameters={"type": "object", "properties": {}},
)
def _get_time(params: dict[str, Any], ctx: ToolContext) -> dict[str, Any]:
    now = time.time()
    return {"utc": datetime.fromtimestamp(now, UTC).isoformat(timespec="milliseconds"),
            "unix": round(now, 3)}


@default_tools.tool(
    "word_count", "Count words, lines and characters in a text.",
    parameters={"type": "object", "properties": {"text": {"type": "string"}},
                "required": ["text"]},
)
def _word_count(params: dict[str, Any], ctx: ToolContext) -> dict[str, int]:
    text = params["text"]
    return {"words": len(text.split()), "lines": len(text.splitlines()) or (1 if text else 0),
            "characters": len(text)}


@default_tools.tool(
    "server_status", "The gateway's counters (connected clients, channels, messages).",
    parameters={"type": "object", "properties": {}},
)
def _server_status(params: dict[str, Any], ctx: ToolContext) -> dict[str, Any]:
    return ctx.gateway.registry.stats()


@default_tools.tool(
    "notify_all", "Broadcast a notice to every connected client (needs permission).",
    parameters={"type": "object",
                "properties": {"message": {"type": "string", "minLength": 1,
                                           "maxLength": 2000}},
                "required": ["message"]},
    risk_level="high",
)
async def _notify_all(params: dict[str, Any], ctx: ToolContext) -> dict[str, Any]:
    result = await ctx.gateway.broadcast("notification", {"message": params["message"]})
    return {"recipients": result["recipients"]}


#: The names a caller may give a tool's parameters under, in both directions (``POST
#: /call_tool`` and the ``tool_call`` frame): ``params`` (ours and the seeds' HTTP API), MCP's
#: ``arguments`` and ``parameters`` (the name seed 001's lifecycle frames show them under).
#: Callers reach for all three; a misspelt name would otherwise run the tool with none.
PARAMS_NAMES = ("params", "arguments", "parameters")


def call_params(body: Mapping[str, Any]) -> dict[str, Any]:
    """The tool parameters of a call ``body`` (already validated as objects), under whichever
    of :data:`PARAMS_NAMES` it uses (null or absent: none); 422 ``invalid_field`` when it has
    more than one of the names, even null."""
    given = [name for name in PARAMS_NAMES if name in body]
    if len(given) > 1:
        raise ValidationError(f"give the tool's parameters once, as {given[0]} or "
                              f"{given[1]}, not both", code="invalid_field",
                              details={"field": given[1]})
    return (body[given[0]] or {}) if given else {}
