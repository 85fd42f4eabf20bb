"""``POST /send_message``'s quick body check (``api.routes._plain_send``) vouches only for
bodies the generic field walk accepts, so a body it lets through is one SEND_FIELDS allows
and every refusal is still worded by :func:`server.protocol.validate_fields`."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from api.routes import SEND_FIELDS, _plain_send
from server.errors import ValidationError
from server.protocol import validate_fields

SCALARS = (st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False)
           | st.text(max_size=3) | st.text(min_size=60, max_size=70)
           | st.text(min_size=124, max_size=132))
JSON_VALUES = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=3)
                           | st.dictionaries(st.text(max_size=4), inner, max_size=3),
                           max_leaves=4)
BODIES = st.dictionaries(st.sampled_from(["client_id", "user_id", "content", "message_type",
                                          "data", "idempotency_key", "other"]),
                         JSON_VALUES, max_size=6)


def _walk_accepts(body: dict[str, Any]) -> bool:
    try:
        validate_fields(body, SEND_FIELDS, prefix="")
    except ValidationError:
        return False
    return True


@settings(max_examples=500, deadline=None)
@given(BODIES)
def test_the_quick_check_vouches_only_for_bodies_the_field_walk_accepts(
        body: dict[str, Any]) -> None:
    if _plain_send(body):
        assert _walk_accepts(body), body


def test_the_common_bodies_take_the_quick_check() -> None:
    assert _plain_send({"client_id": "a", "content": "x"})
    assert _plain_send({"client_id": "a" * 128, "content": None, "message_type": "t" * 64,
                        "data": {"k": 1}})
    # Anything else is left to the field walk (which then accepts or words the error).
    for body in ({"client_id": "a" * 129}, {"client_id": "a", "message_type": "t" * 65},
                 {"client_id": "a", "data": [1]}, {"client_id": 5},
                 {"client_id": "a", "user_id": "u"}, {"user_id": "u", "content": "x"}):
        assert not _plain_send(body), body
