"""Parsers of attacker-controlled input fail only with their own error types, never otherwise."""

from __future__ import annotations

import base64
import contextlib
import functools

from helpers.identity import inline_rule, request_authn, resolver, view
from hypothesis import given, settings
from hypothesis import strategies as st

from extauthz.identity.jwt import TokenError, decode_unverified
from extauthz.identity.model import SpiffeIdError, parse_spiffe_id
from extauthz.identity.resolver import IdentityResolver
from extauthz.identity.svid import SvidError, decode_certificate_field
from extauthz.identity.xfcc import XfccError, last_element

_TOKENISH = st.lists(
    st.one_of(
        st.text(max_size=40),
        st.binary(max_size=60).map(lambda b: base64.urlsafe_b64encode(b).rstrip(b"=").decode()),
        st.sampled_from(['{"alg":"RS256"}', '{"alg":"none"}', "{}", "[]", '{"a":1,"a":2}']).map(
            lambda j: base64.urlsafe_b64encode(j.encode()).rstrip(b"=").decode()
        ),
    ),
    min_size=1,
    max_size=5,
).map(".".join)


@settings(max_examples=300, deadline=None)
@given(_TOKENISH)
def test_token_decoder_raises_only_token_errors(raw: str) -> None:
    with contextlib.suppress(TokenError):
        decode_unverified(raw)


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.sampled_from(list('URI=By;,"\\\\ Cert=Hash=DNS=spiffe://a/b%0A')), max_size=80))
def test_xfcc_parser_raises_only_xfcc_errors(header: str) -> None:
    with contextlib.suppress(XfccError):
        last_element(header)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=200))
def test_certificate_field_raises_only_svid_errors(value: str) -> None:
    with contextlib.suppress(SvidError):
        decode_certificate_field(value)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=80))
def test_spiffe_parser_raises_only_spiffe_errors(value: str) -> None:
    try:
        sid = parse_spiffe_id(value)
    except SpiffeIdError:
        return
    assert parse_spiffe_id(str(sid)) == sid  # what parses, round-trips


@functools.cache
def _resolver() -> IdentityResolver:
    return resolver(request_authn(inline_rule()), trusted=("10.0.0.0/8",))


@settings(max_examples=200, deadline=None)
@given(auth=st.text(max_size=120), xfcc=st.text(max_size=120), query=st.text(max_size=60))
def test_resolver_never_raises(auth: str, xfcc: str, query: str) -> None:
    headers = {"authorization": "Bearer " + auth, "x-forwarded-client-cert": xfcc}
    req = view(headers=headers, path="/api?" + query.replace("#", ""))
    res = _resolver().resolve(req)
    assert res.status in (200, 401, 403)
