"""Properties of the SPIFFE ID parser (``extauthz.identity.model.parse_spiffe_id``).

- no input raises anything but ``SpiffeIdError``;
- an accepted ID round-trips: ``str(parse(x)) == x`` (the scheme is exactly ``spiffe://``);
- an accepted ID satisfies every rule of /work/shared/docs/spiffe-rules.md, checked here by
  ``spiffe_rule_violations`` written from the rules, not from the parser;
- completeness: an ID built to follow the rules is accepted.
"""

from __future__ import annotations

import string

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from extauthz.identity.model import SpiffeId, SpiffeIdError, parse_spiffe_id

SETTINGS = settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])

TD_CHARS = set(string.ascii_lowercase + string.digits + ".-_")
SEG_CHARS = set(string.ascii_letters + string.digits + ".-_")


def spiffe_rule_violations(value: str) -> list[str]:
    """Every rule of spiffe-rules.md ("SPIFFE ID") that ``value`` breaks."""
    out: list[str] = []
    if len(value.encode("utf-8", "surrogatepass")) > 2048:
        out.append("longer than 2048 bytes")
    if value[:9] != "spiffe://":  # exactly: SPIFFE:// is another scheme (spiffe-rules.md)
        return [*out, "scheme is not spiffe://"]
    rest = value[9:]
    td, slash, path = rest.partition("/")
    if not td:
        out.append("empty trust domain")
    if len(td.encode("utf-8", "surrogatepass")) > 255:
        out.append("trust domain over 255 bytes")
    if not set(td) <= TD_CHARS:
        out.append("trust domain characters (includes %, :, @, upper case)")
    if slash:
        segments = path.split("/")
        if path.endswith("/"):
            out.append("trailing /")
        for seg in segments:
            if not seg:
                out.append("empty segment")
            elif seg in (".", ".."):
                out.append("dot segment")
            elif not set(seg) <= SEG_CHARS:
                out.append("segment characters (includes %, ?, #, space)")
    for forbidden in "?#@%":
        if forbidden in value:
            out.append(f"contains {forbidden!r}")
    return out


# Inputs assembled from the pieces of IDs and of the ways they go wrong.
SCHEMES = st.sampled_from(["spiffe", "SPIFFE", "Spiffe", "spiffE", "http", "spiff", "", "spiffe "])
SEPS = st.sampled_from(["://", ":/", ":///", "//", ":", ""])
TD = st.text(alphabet="abcz09.-_AZ:@%/é\x00 ", max_size=12)
SEG = st.text(alphabet="abAZ09.-_%/?#é\n\\", max_size=8)
ASSEMBLED = st.builds(
    lambda scheme, sep, td, segs, tail: scheme + sep + td + "".join("/" + s for s in segs) + tail,
    SCHEMES, SEPS, TD, st.lists(SEG, max_size=5), st.sampled_from(["", "/", "?q", "#f", ":80", "%2F"]),
)
VALID = st.builds(
    lambda scheme, td, segs: scheme + "://" + td + "".join("/" + s for s in segs),
    st.just("spiffe"),
    st.text(alphabet=sorted(TD_CHARS), min_size=1, max_size=40),
    st.lists(
        st.text(alphabet=sorted(SEG_CHARS), min_size=1, max_size=20).filter(lambda s: s not in (".", "..")),
        max_size=8,
    ),
)


def _parse(value: str) -> SpiffeId | None:
    try:
        return parse_spiffe_id(value)
    except SpiffeIdError:
        return None


@SETTINGS
@given(st.one_of(st.text(), ASSEMBLED))
@example("spiffe://" + "a" * 300)
@example("spiffe://td/" + "\ud800")
def test_no_input_raises_anything_but_spiffe_id_error(value: str) -> None:
    try:
        sid = parse_spiffe_id(value)
    except SpiffeIdError:
        return
    assert isinstance(sid, SpiffeId)


@SETTINGS
@given(st.one_of(st.text(), ASSEMBLED, VALID))
def test_accepted_ids_round_trip(value: str) -> None:
    sid = _parse(value)
    if sid is not None:
        assert str(sid) == value
        assert sid.principal == str(sid)[len("spiffe://") :]
        assert _parse(str(sid)) == sid


@SETTINGS
@given(st.one_of(st.text(), ASSEMBLED, VALID))
def test_accepted_ids_follow_every_rule(value: str) -> None:
    if _parse(value) is not None:
        assert spiffe_rule_violations(value) == []


@SETTINGS
@given(VALID)
def test_ids_that_follow_the_rules_are_accepted(value: str) -> None:
    assert spiffe_rule_violations(value) == []
    assert _parse(value) is not None, value


def test_the_rule_checker_rejects_the_documented_examples() -> None:
    """The reference checker itself, on the must-reject list of spiffe-rules.md."""
    for bad in ["spiffe://", "spiffe:///p", "spiffe://td:80/p", "spiffe://u@td/p", "spiffe://td/p?q",
                "spiffe://td/p#f", "spiffe://td/", "spiffe://td//p", "spiffe://td/./p",
                "spiffe://td/a%20b", "http://td/p"]:
        assert spiffe_rule_violations(bad), bad
        assert _parse(bad) is None, bad
