"""Record encoding: compact ASCII JSON with every value capped, and RFC 3339 timestamps."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from typing import Any

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


def encode_body(record: dict[str, Any]) -> str:
    """The record as compact ASCII JSON, capped; without the chain members."""
    if "seq" not in record and "prev_hash" not in record and "hash" not in record:
        try:
            body = _ENCODER.encode(record)
        except (TypeError, ValueError):
            body = ""
        # A line this short cannot hold an over-long value: skip the capping walk (the common case).
        if body.startswith("{") and len(body) <= MAX_FIELD_CHARS:
            return body
    rec = _cap(record)
    for k in _CHAIN_KEYS:
        rec.pop(k, None)
    return _ENCODER.encode(rec)
