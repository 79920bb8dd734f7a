"""Dynamic metadata and identity headers on the CheckResponse."""

from __future__ import annotations

import json
from typing import Any

import pytest
from helpers.decisions import POLICY, fake_resolver

from extauthz._pb.envoy.config.core.v3 import base_pb2
from extauthz._pb.envoy.service.auth.v3 import external_auth_pb2 as ext
from extauthz.envoy import response
from extauthz.identity.headers import IdentityHeaders
from extauthz.identity.model import Identity, Token
from extauthz.identity.resolver import IdentityContext
from extauthz.pipeline import CheckCore
from extauthz.policy import compile_policies, load_text
from extauthz.settings import SettingsError, build_settings
from extauthz.tools.samples import check_request

ENGINE = compile_policies(load_text(POLICY))
OVERWRITE = base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD


def answer(core: CheckCore, **kw: Any) -> ext.CheckResponse:
    return ext.CheckResponse.FromString(core.answer(check_request(**kw).SerializeToString()))


def test_allow_carries_dynamic_metadata() -> None:
    resp = answer(CheckCore(lambda: ENGINE), request_id="rid-1", headers={"x-tenant": "acme"})
    md = resp.dynamic_metadata.fields
    assert resp.status.code == 0
    assert len(md["decision_id"].string_value) == 32  # the service's id, not x-request-id
    assert md["policy"].string_value == "shop/frontend-to-api"
    assert md["peer"].string_value == "spiffe://example.org/ns/shop/sa/frontend"
    assert md["peer_verified"].bool_value is False
    assert md["allowed"].bool_value is True
    assert "request_principal" not in md  # no token: no key at all


def test_deny_carries_dynamic_metadata_too() -> None:
    resp = answer(CheckCore(lambda: ENGINE), request_id="rid-2", path="/api/admin")
    md = resp.dynamic_metadata.fields
    assert resp.status.code == 7
    assert md["decision_id"].string_value == json.loads(resp.denied_response.body)["decision_id"]
    assert len(md["decision_id"].string_value) == 32
    assert md["reason"].string_value == "denied_by_policy"
    assert md["policy"].string_value == "istio-system/deny-admin"


def test_token_identity_in_metadata_and_configured_headers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(IdentityContext, "resolver", fake_resolver)
    headers = IdentityHeaders.from_mapping(
        {"x-spiffe-id": "peer", "x-user": "token_subject", "x-principal": "request_principal"}
    )
    core = CheckCore(lambda: ENGINE, identity_headers=headers)
    resp = answer(
        core,
        path="/tokens/1",
        headers={"authorization": "Bearer https://issuer.example|alice|9999999999"},
    )
    assert resp.status.code == 0
    md = resp.dynamic_metadata.fields
    assert md["token_issuer"].string_value == "https://issuer.example"
    assert md["token_subject"].string_value == "alice"
    set_ = {h.header.key: (h.header.value, h.append_action) for h in resp.ok_response.headers}
    assert set_ == {
        "x-spiffe-id": ("spiffe://example.org/ns/shop/sa/frontend", OVERWRITE),
        "x-user": ("alice", OVERWRITE),
        "x-principal": ("https://issuer.example/alice", OVERWRITE),
    }
    assert list(resp.ok_response.headers_to_remove) == []
    # Never the token itself, anywhere in the answer.
    assert b"Bearer" not in resp.SerializeToString()


def test_unset_identity_headers_are_removed_so_client_copies_never_pass() -> None:
    headers = IdentityHeaders.from_mapping({"x-spiffe-id": "peer", "x-user": "token_subject"})
    core = CheckCore(lambda: ENGINE, identity_headers=headers)
    resp = answer(core, headers={"x-tenant": "acme", "x-user": "admin", "x-spiffe-id": "forged"})
    assert resp.status.code == 0
    assert [h.header.key for h in resp.ok_response.headers] == ["x-spiffe-id"]
    assert resp.ok_response.headers[0].header.value == "spiffe://example.org/ns/shop/sa/frontend"
    assert list(resp.ok_response.headers_to_remove) == ["x-user", "x-forwarded-client-cert"]


def test_identity_header_values_with_control_characters_are_not_set() -> None:
    headers = IdentityHeaders.from_mapping({"x-user": "token_subject", "x-iss": "token_issuer"})
    ident = Identity(token=Token(issuer="https://i", subject="alice\r\nx-admin: 1"))
    assert headers.values(ident) == (("x-iss", "https://i"),)
    assert headers.names == ("x-user", "x-iss")  # x-user is then removed, never passed through


@pytest.mark.parametrize(
    "mapping",
    [{"Host": "peer"}, {"x-a": "password"}, {"bad header": "peer"}, {":path": "peer"}],
)
def test_bad_identity_header_settings_are_refused(mapping: dict[str, str]) -> None:
    with pytest.raises(ValueError):
        IdentityHeaders.from_mapping(mapping)
    with pytest.raises(SettingsError):
        build_settings(None, {"identity_headers": mapping})


def test_settings_defaults() -> None:
    s = build_settings(None, {})
    assert s.identity_headers == {"x-spiffe-id": "peer"}
    assert s.anomaly_quarantine is False
    assert s.audit_overflow == "drop-allowed"
    assert s.cache_size > 0
    with pytest.raises(SettingsError):
        build_settings(None, {"audit_overflow": "maybe"})


def _bp_check_response(data: bytes) -> Any:
    import envoy_data_plane.envoy.service.auth.v3 as bp_auth

    return bp_auth.CheckResponse.parse(data)


def test_spliced_deny_parses_as_one_message_in_both_parsers() -> None:
    body = response.deny(403, "rid-7", "denied_by_policy", metadata={"policy": "ns/p"})
    ours = ext.CheckResponse.FromString(body)
    assert ours.status.code == 7 and ours.status.message == "denied_by_policy"
    d = ours.denied_response
    assert d.status.code == 403
    assert [(h.header.key, h.header.value) for h in d.headers] == [
        ("content-type", "application/json"),
        ("x-extauthz-decision-id", "rid-7"),
    ]
    assert json.loads(d.body) == {"decision_id": "rid-7", "status": 403, "reason": "denied_by_policy"}
    assert dict(ours.dynamic_metadata.fields.items()).keys() == {"policy", "decision_id"}
    # The independent betterproto2 parser merges the two parts the same way.
    theirs = _bp_check_response(body)
    assert theirs.status.code == 7
    assert theirs.denied_response.status.code.value == 403 or theirs.denied_response.status.code == 403
    assert [h.header.key for h in theirs.denied_response.headers] == [
        "content-type",
        "x-extauthz-decision-id",
    ]
    assert json.loads(theirs.denied_response.body)["decision_id"] == "rid-7"
    assert theirs.dynamic_metadata.to_dict() == {"policy": "ns/p", "decision_id": "rid-7"}


def test_spliced_allow_parses_as_one_message_in_both_parsers() -> None:
    core = CheckCore(lambda: ENGINE)
    body = core.answer(check_request(request_id="rid-8", headers={"x-tenant": "acme"}).SerializeToString())
    theirs = _bp_check_response(body)
    assert theirs.status.code == 0 and theirs.ok_response is not None
    assert [h.header.key for h in theirs.ok_response.headers] == ["x-spiffe-id"]
    md = theirs.dynamic_metadata.to_dict()
    assert len(md["decision_id"]) == 32 and md["policy"] == "shop/frontend-to-api"


# multi-byte varint lengths; 32 hex digits (a real id: joined into the split parts); 32 other
# characters (built whole)
@pytest.mark.parametrize("rid", ["r", "x" * 300, "0123456789abcdef" * 2, '"' * 32, "é" * 32])
def test_prepared_responses_equal_a_one_piece_build(rid: str) -> None:
    md = {"policy": "ns/" + "p" * 200, "allowed": False, "peer": None, "n": 3}
    # deny, built the plain way
    want = ext.CheckResponse()
    want.status.code = 7
    want.status.message = "denied_by_policy"
    want.denied_response.status.code = 403  # type: ignore[assignment]
    for k, v in (("content-type", "application/json"), ("x-extauthz-decision-id", rid)):
        want.denied_response.headers.append(
            base_pb2.HeaderValueOption(header=base_pb2.HeaderValue(key=k, value=v), append_action=OVERWRITE)
        )
    want.denied_response.body = json.dumps(
        {"decision_id": rid, "status": 403, "reason": "denied_by_policy"}, separators=(",", ":")
    )
    want.dynamic_metadata.fields["policy"].string_value = md["policy"]  # type: ignore[assignment]
    want.dynamic_metadata.fields["allowed"].bool_value = False
    want.dynamic_metadata.fields["n"].number_value = 3
    want.dynamic_metadata.fields["decision_id"].string_value = rid
    got = response.prepare_deny(403, "denied_by_policy", metadata=md).finish(rid)
    assert ext.CheckResponse.FromString(got) == want
    assert response.prepare_deny(403, "denied_by_policy", metadata=md).split().finish(rid) == got
    assert _bp_check_response(got).to_dict() == _bp_check_response(want.SerializeToString()).to_dict()
    # allow
    want = ext.CheckResponse()
    want.status.code = 0
    want.ok_response.headers.append(
        base_pb2.HeaderValueOption(
            header=base_pb2.HeaderValue(key="x-spiffe-id", value="spiffe://a/b"), append_action=OVERWRITE
        )
    )
    want.ok_response.headers_to_remove.append("x-user")
    want.dynamic_metadata.fields["decision_id"].string_value = rid
    prepared = response.prepare_allow([("x-spiffe-id", "spiffe://a/b")], managed=("x-spiffe-id", "x-user"))
    got = prepared.finish(rid)
    assert ext.CheckResponse.FromString(got) == want
    assert prepared.split().finish(rid) == got
    assert _bp_check_response(got).to_dict() == _bp_check_response(want.SerializeToString()).to_dict()


@pytest.mark.parametrize("rid", ["", "a", "é-ü", "x" * 127, "y" * 128, "z" * 20000])
def test_decision_id_entry_is_a_struct_entry(rid: str) -> None:
    from google.protobuf import struct_pb2

    want = struct_pb2.Struct()
    want.fields["decision_id"].string_value = rid
    assert response._decision_id_entry(rid) == want.SerializeToString()
    assert struct_pb2.Struct.FromString(response._decision_id_entry(rid)) == want


@pytest.mark.parametrize(
    "md",
    [
        {},
        {"a": "x", "b": True, "c": False, "d": 0, "e": -3, "f": 2**40},
        {"policy": "ns/" + "p" * 300, "é": "ü", "peer": None},
    ],
)
def test_metadata_content_leaves_out_none_and_the_decision_id(md: dict[str, Any]) -> None:
    from google.protobuf import struct_pb2

    want = struct_pb2.Struct()
    response._set_metadata(want, md)
    got = struct_pb2.Struct.FromString(response._metadata_content({**md, "decision_id": "x"}))
    assert got == want
    assert "decision_id" not in got.fields and "peer" not in got.fields


def test_x_spiffe_id_stays_managed_when_the_setting_names_other_headers() -> None:
    headers = IdentityHeaders.from_mapping({"x-peer": "peer"})
    core = CheckCore(lambda: ENGINE, identity_headers=headers)
    resp = answer(core, headers={"x-tenant": "acme", "x-spiffe-id": "spiffe://evil/x"})
    assert resp.status.code == 0
    assert [h.header.key for h in resp.ok_response.headers] == ["x-peer"]
    assert "x-spiffe-id" in resp.ok_response.headers_to_remove


def test_a_response_holding_the_stand_in_id_is_built_whole() -> None:
    """Were a value copied into the response (a claim, a policy name) the stand-in for the id,
    splitting at it would misplace the id: such a response is built whole instead."""
    rid = "fedcba9876543210" * 2
    odd = response.prepare_deny(403, "denied_by_policy", metadata={"policy": response._STAND_IN})
    assert odd.split().parts is None
    odd = odd.split()
    parsed = ext.CheckResponse.FromString(odd.finish(rid))
    assert parsed.dynamic_metadata.fields["policy"].string_value == response._STAND_IN
    assert parsed.dynamic_metadata.fields["decision_id"].string_value == rid
    assert json.loads(parsed.denied_response.body)["decision_id"] == rid
    plain = response.prepare_deny(403, "denied_by_policy", metadata={"policy": "ns/p"})
    assert plain.parts is None  # answered once: not split
    plain = plain.split()
    assert plain.parts is not None and len(plain.parts) == 4
    assert plain.finish(rid) == plain.build(rid)
