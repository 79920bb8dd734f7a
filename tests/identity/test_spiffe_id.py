"""The strict SPIFFE ID parser: one parser, used everywhere."""

from __future__ import annotations

import pytest

from extauthz.identity.model import SpiffeIdError, parse_spiffe_id

VALID = [
    ("spiffe://example.org", "example.org", ""),
    ("spiffe://example.org/ns/shop/sa/frontend", "example.org", "/ns/shop/sa/frontend"),
    ("spiffe://td-1_x.y/A.b-c_D", "td-1_x.y", "/A.b-c_D"),
]

INVALID = [
    "spiffe://",
    "spiffe:///p",
    "spiffe://td:80/p",
    "spiffe://u@td/p",
    "spiffe://td/p?q",
    "spiffe://td/p#f",
    "spiffe://td/",
    "spiffe://td//p",
    "spiffe://td/./p",
    "spiffe://td/../p",
    "spiffe://td/p/.",
    "spiffe://td/a%20b",
    "spiffe://td/a%2Fb",
    "http://td/p",
    "spiffe:/td/p",
    "spiffe//td/p",
    "td/p",
    "",
    "spiffe://Example.org/p",  # strict reading: trust domains are lower case
    # The scheme is exactly "spiffe" (the standard, go-spiffe): never an alias of spiffe://.
    "SPIFFE://example.org/a",
    "Spiffe://example.org/a",
    "spiFFe://example.org/a",
    "spiffe://td/p/",
    "spiffe://td/p q",
    "spiffe://td/caf\u00e9",
    "spiffe://t\u00e9.org/p",
    "spiffe://td/p\x00",
    "spiffe://td/p\n",
    "spiffe://" + "a" * 256 + "/p",
    "spiffe://td/" + "a" * 2100,
]


@pytest.mark.parametrize(("value", "td", "path"), VALID)
def test_valid_ids(value: str, td: str, path: str) -> None:
    sid = parse_spiffe_id(value)
    assert (sid.trust_domain, sid.path) == (td, path)
    assert sid.principal == td + path


@pytest.mark.parametrize("value", INVALID)
def test_invalid_ids_are_rejected(value: str) -> None:
    with pytest.raises(SpiffeIdError):
        parse_spiffe_id(value)


def test_longest_accepted_id() -> None:
    value = "spiffe://td/" + "a" * (2048 - len("spiffe://td/"))
    assert len(value) == 2048
    assert parse_spiffe_id(value).path.startswith("/a")
