"""Audit record caps: the cheap check that a long record needs no capping says so only when the
capping walk would leave the record unchanged (issue 14: every record with an ``input`` used to
take the walk)."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from extauthz.decision.audit.record import (
    MAX_FIELD_CHARS,
    MAX_LIST_ITEMS,
    _cap,
    encode_body,
    encode_json,
    encode_value,
    fits,
)

_TEXT = st.one_of(
    st.text(max_size=8),
    st.text(alphabet='a"\\é\u2026\x00', min_size=1000, max_size=1100),
    st.text(alphabet="ab", min_size=MAX_FIELD_CHARS - 2, max_size=MAX_FIELD_CHARS + 2),
)
_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | _TEXT,
    lambda inner: st.lists(inner, max_size=MAX_LIST_ITEMS + 3)
    | st.dictionaries(st.text(max_size=5) | _TEXT, inner, max_size=4),
    max_leaves=120,
)


def _padded(value: Any) -> dict[str, Any]:
    """A record long enough that only the checks for long values decide (not the length)."""
    return {"pad": "p" * 600, "pad2": "q" * 600, "value": value}


@settings(max_examples=300, deadline=None)
@given(_VALUES)
def test_encode_body_is_the_capped_record(value: Any) -> None:
    for record in (_padded(value), {"value": value}):
        assert encode_body(record) == encode_json(_cap(record))
        assert encode_value(record) == encode_json(_cap(record))
        assert encode_value(value) == encode_json(_cap(value))


def test_a_string_one_over_the_cap_is_capped() -> None:
    for text in ("x" * (MAX_FIELD_CHARS + 1), "é" * (MAX_FIELD_CHARS + 1), '"' * (MAX_FIELD_CHARS + 1)):
        body = encode_body(_padded(text))
        assert json.loads(body)["value"] == text[:MAX_FIELD_CHARS] + "…"
    exactly = "x" * MAX_FIELD_CHARS
    assert json.loads(encode_body(_padded(exactly)))["value"] == exactly


def test_a_long_list_is_cut_in_a_long_record_and_in_a_short_one() -> None:
    for record in (_padded(list(range(MAX_LIST_ITEMS + 1))), {"value": ["a"] * (MAX_LIST_ITEMS + 1)}):
        assert len(json.loads(encode_body(record))["value"]) == MAX_LIST_ITEMS
        assert not fits(encode_json(record))


def test_fits_a_realistic_long_record() -> None:
    # What a record with an input looks like: > MAX_FIELD_CHARS, nothing to cap, no walk needed.
    record = {"time": "t", "input": {"headers": {f"x-h{i}": "v" * 40 for i in range(30)}}, "l": []}
    body = encode_json(record)
    assert len(body) > MAX_FIELD_CHARS and fits(body)


_JSON_TEXT = st.text(alphabet=st.characters(codec="utf-8"), max_size=12) | st.text(
    alphabet='az"\\/\x00\x1f\x7f\x80é\u2028\U0001f600', max_size=12
)
_JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2**80), max_value=2**80)
    | st.floats(allow_nan=False, allow_infinity=False) | _JSON_TEXT,
    lambda inner: st.lists(inner, max_size=5) | st.tuples(inner, inner)
    | st.dictionaries(_JSON_TEXT, inner, max_size=4),
    max_leaves=40,
)


@settings(max_examples=400, deadline=None)
@given(_JSON_VALUES)
def test_encode_json_is_the_json_modules_ascii_json(value: Any) -> None:
    """orjson's output is taken only where it reads back the same and is plain ASCII without
    DEL (what ``ensure_ascii`` writes): no input can put a raw non-ASCII or control byte, or a
    newline, into an audit line."""
    out = encode_json(value)
    reference = json.dumps(value, ensure_ascii=True, separators=(",", ":"))
    assert json.loads(out) == json.loads(reference)
    assert out.isascii() and "\x7f" not in out and "\n" not in out
    assert all(c >= " " for c in out)


def test_encode_json_falls_back_for_what_orjson_refuses_or_writes_as_utf8() -> None:
    assert encode_json({"a": "é\u2028"}) == '{"a":"\\u00e9\\u2028"}'
    assert encode_json({"a": "x\x7f"}) == '{"a":"x\\u007f"}'
    assert encode_json({1: 2**70}) == '{"1":1180591620717411303424}'
    assert encode_json({"lone": "\udc80"}) == '{"lone":"\\udc80"}'
    assert encode_json({"a": "plain", "n": [1, 2.5, None, True]}) == '{"a":"plain","n":[1,2.5,null,true]}'
