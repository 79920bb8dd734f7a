"""Record encoding: compact ASCII JSON with every value capped, and RFC 3339 timestamps."""

from __future__ import annotations

import json
import re
import time
from datetime import UTC, datetime
from typing import Any

import orjson

MAX_FIELD_CHARS = 1024  # every string value is capped: no input can blow up a record
MAX_LIST_ITEMS = 64


_second: tuple[int, str] = (-1, "")  # the last whole second formatted (one tuple: swapped whole)


def rfc3339_now() -> str:
    """The current UTC time, RFC 3339 with microseconds (``2026-11-23T11:18:03.123456Z``).

    On every check: the date and time are formatted once a second, the microseconds each call.
    """
    global _second
    us = time.time_ns() // 1000
    sec, frac = divmod(us, 1_000_000)
    cached = _second
    if cached[0] != sec:
        cached = _second = (sec, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec)))
    return f"{cached[1]}.{frac:06d}Z"


def rfc3339(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _cap(value: Any) -> Any:
    """A copy of ``value`` with every string capped (keys too) and only JSON types left."""
    if isinstance(value, str):
        value = str(value)  # a plain str, whatever subclass came in
        return value if len(value) <= MAX_FIELD_CHARS else value[:MAX_FIELD_CHARS] + "…"
    if value is None or isinstance(value, bool | int | float):
        return value
    if isinstance(value, dict):
        return {_cap(str(k)): _cap(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_cap(v) for v in value[:MAX_LIST_ITEMS]]
    return _cap(str(value))


def encode_record(record: dict[str, Any]) -> str:
    """One line of JSON: ASCII only, so no input byte can split or forge a line."""
    return json.dumps(_cap(record), ensure_ascii=True, separators=(",", ":"))


_CHAIN_KEYS = ("seq", "prev_hash", "hash")


# Built once: json.dumps() with arguments builds a new encoder on every call.
_ENCODER = json.JSONEncoder(ensure_ascii=True, separators=(",", ":"))
# orjson refuses (TypeError) dataclasses, dates and subclasses of str/int/dict/list, which then go
# to the json module (and capping) as before. (A plain Enum orjson writes as its value; no record
# holds one.)
_PLAIN_TYPES_ONLY = (
    orjson.OPT_PASSTHROUGH_DATACLASS | orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_PASSTHROUGH_SUBCLASS
)


def encode_json(value: Any) -> str:
    """``value`` as compact ASCII JSON (not capped): what ``_ENCODER.encode`` gives, up to the
    spelling of floats (``1e-7`` here, ``1e-07`` there: a cache hit's record, spliced from a
    template, may spell a claim's float otherwise than a miss's record would; both are the
    same JSON, and the chain seals the bytes written).

    orjson first (~1.3 us for a miss's record where the json module took ~14 us, issue 14); its
    output is taken only when it is plain ASCII without DEL, as the json module with
    ``ensure_ascii`` writes it. Anything else (non-ASCII text, which orjson writes as UTF-8;
    types or keys orjson refuses; integers over 64 bits) is encoded by the json module.
    A float NaN or infinity (a claim can hold one: ``json.loads`` reads ``NaN``) is ``null`` from
    orjson, ``NaN`` from the json module.
    """
    try:
        out = orjson.dumps(value, option=_PLAIN_TYPES_ONLY).decode("ascii")
    except (TypeError, UnicodeDecodeError):  # orjson.JSONEncodeError is a TypeError
        return _ENCODER.encode(value)
    return out if "\x7f" not in out else _ENCODER.encode(value)

# A run of more than MAX_FIELD_CHARS characters without a quote: where a too-long string would be.
_LONG_RUN = re.compile(f'[^"]{{{MAX_FIELD_CHARS + 1}}}')


def fits(body: str) -> bool:
    """Whether ``body`` (compact JSON, ASCII) is what ``_cap`` would leave unchanged: no string
    over ``MAX_FIELD_CHARS`` characters and no list over ``MAX_LIST_ITEMS`` items; False when
    that cannot be shown cheaply (then the caller caps).

    Without an escaped quote every ``"`` delimits a string, so a string's encoding (never shorter
    than the string) is a run without quotes, and a body that short holds no long string; a list
    of more than ``MAX_LIST_ITEMS`` items holds at least ``MAX_LIST_ITEMS`` commas after the
    first ``[``."""
    if len(body) > MAX_FIELD_CHARS and ('\\"' in body or _LONG_RUN.search(body) is not None):
        return False
    bracket = body.find("[")
    return (
        bracket == -1
        or body.count("[") == body.count("[]")  # every list empty
        or body.count(",", bracket) < MAX_LIST_ITEMS
    )


def json_string(text: str) -> str:
    """``text`` as a JSON string, capped like a record's values."""
    if len(text) > MAX_FIELD_CHARS:
        text = text[:MAX_FIELD_CHARS] + "…"
    return encode_json(str(text))


def encode_value(value: Any) -> str:
    """``value`` as compact ASCII JSON, capped like a record's values."""
    try:
        body = encode_json(value)
    except (TypeError, ValueError):
        return encode_json(_cap(value))
    return body if fits(body) else encode_json(_cap(value))


def encode_body(record: dict[str, Any]) -> str:
    """The record as compact ASCII JSON, capped; without the chain members."""
    if "seq" not in record and "prev_hash" not in record and "hash" not in record:
        try:
            body = encode_json(record)
        except (TypeError, ValueError):
            body = ""
        # Nothing to cap (the common case, ~2 us to show on a long record): skip the capping walk.
        if body.startswith("{") and fits(body):
            return body
    rec = _cap(record)
    for k in _CHAIN_KEYS:
        rec.pop(k, None)
    return encode_json(rec)
