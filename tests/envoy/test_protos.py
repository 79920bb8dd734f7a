"""Tests for the project's own ``protos/`` and the code generated from them.

* staleness: the committed ``extauthz/_pb`` equals a fresh generation, and the
  check notices a changed proto;
* wire compatibility with Envoy 1.40: messages encoded with our generated
  classes decode with the independent betterproto2 classes shipped in
  ``envoy-data-plane`` (and vice versa), and every declared field's number,
  name, type, cardinality and oneof matches betterproto2's metadata.
"""

from __future__ import annotations

import dataclasses
import datetime
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import betterproto2
import envoy_data_plane.envoy.config.core.v3 as bp_core
import envoy_data_plane.envoy.service.auth.v3 as bp_auth
import envoy_data_plane.envoy.type.v3 as bp_type
import envoy_data_plane.google.protobuf as bp_wkt
import envoy_data_plane.google.rpc as bp_rpc
import pytest
from envoy_data_plane.message_pool import default_message_pool
from google.protobuf import descriptor_pb2, struct_pb2, timestamp_pb2
from google.protobuf.descriptor import Descriptor, FieldDescriptor, FileDescriptor
from google.rpc import status_pb2
from grpc_tools import protoc

from extauthz._pb.envoy.config.core.v3 import address_pb2, base_pb2
from extauthz._pb.envoy.service.auth.v3 import (
    attribute_context_pb2,
    external_auth_pb2,
    external_auth_pb2_grpc,
)
from extauthz._pb.envoy.type.v3 import http_status_pb2
from extauthz.tools import protogen

OUR_FILES: list[FileDescriptor] = [
    address_pb2.DESCRIPTOR,
    base_pb2.DESCRIPTOR,
    http_status_pb2.DESCRIPTOR,
    attribute_context_pb2.DESCRIPTOR,
    external_auth_pb2.DESCRIPTOR,
    # Provided at runtime by googleapis-common-protos (see protogen.EXTERNAL_PROTOS).
    status_pb2.DESCRIPTOR,
]

CHECK_PATH = "/envoy.service.auth.v3.Authorization/Check"


# --------------------------------------------------------------------------- staleness


def test_committed_output_is_up_to_date() -> None:
    diffs = protogen.check(protogen.DEFAULT_PROTO_DIR, protogen.DEFAULT_OUT_DIR)
    assert diffs == [], "run `python -m extauthz.tools.protogen`:\n" + "\n".join(diffs)


def test_main_check_mode_passes_on_committed_output() -> None:
    assert protogen.main(["--check"]) == 0


def test_check_detects_modified_proto(tmp_path: Path) -> None:
    protos = tmp_path / "protos"
    out = tmp_path / "out"
    shutil.copytree(protogen.DEFAULT_PROTO_DIR, protos)
    protogen.generate(protos, out)
    # Fresh output is deterministic: an immediate check finds nothing.
    assert protogen.check(protos, out) == []

    target = protos / "envoy" / "service" / "auth" / "v3" / "external_auth.proto"
    text = target.read_text(encoding="utf-8")
    assert "  AttributeContext attributes = 1;\n" in text
    target.write_text(
        text.replace("  AttributeContext attributes = 1;\n", "  AttributeContext attrs = 1;\n"),
        encoding="utf-8",
    )

    diffs = protogen.check(protos, out)
    assert "differs: envoy/service/auth/v3/external_auth_pb2.py" in diffs
    assert protogen.main(["--check", "--proto-dir", str(protos), "--out-dir", str(out)]) == 1


def test_check_detects_added_and_removed_files(tmp_path: Path) -> None:
    protos = tmp_path / "protos"
    out = tmp_path / "out"
    shutil.copytree(protogen.DEFAULT_PROTO_DIR, protos)
    protogen.generate(protos, out)
    (out / "envoy" / "type" / "v3" / "http_status_pb2.pyi").unlink()
    (out / "envoy" / "stray_pb2.py").write_text("# stale\n", encoding="utf-8")
    assert protogen.check(protos, out) == [
        "missing: envoy/type/v3/http_status_pb2.pyi",
        "extra: envoy/stray_pb2.py",
    ]


def test_generate_refuses_to_clobber_foreign_directory(tmp_path: Path) -> None:
    foreign = tmp_path / "not_generated"
    foreign.mkdir()
    (foreign / "important.txt").write_text("keep me", encoding="utf-8")
    with pytest.raises(FileExistsError):
        protogen.generate(protogen.DEFAULT_PROTO_DIR, foreign)
    assert (foreign / "important.txt").read_text(encoding="utf-8") == "keep me"


# --------------------------------------------------------------------------- layout


def test_generated_modules_live_under_extauthz_prefix() -> None:
    for module in (address_pb2, base_pb2, http_status_pb2, attribute_context_pb2):
        assert module.__name__.startswith("extauthz._pb.")
        assert module.DESCRIPTOR.name.startswith("extauthz/_pb/envoy/")
    # Wire-level names are the upstream ones.
    assert (
        external_auth_pb2.CheckRequest.DESCRIPTOR.full_name == "envoy.service.auth.v3.CheckRequest"
    )
    assert (
        base_pb2.HeaderValueOption.DESCRIPTOR.full_name == "envoy.config.core.v3.HeaderValueOption"
    )
    assert http_status_pb2.HttpStatus.DESCRIPTOR.full_name == "envoy.type.v3.HttpStatus"


def test_status_is_the_shared_googleapis_type() -> None:
    """google.rpc.Status comes from googleapis-common-protos, not a private copy.

    A second definition of ``google.rpc.Status`` (even under another file name)
    makes upb's default pool raise ``duplicate symbol`` at import time.
    """
    assert status_pb2.DESCRIPTOR.name == "google/rpc/status.proto"
    status_field = external_auth_pb2.CheckResponse.DESCRIPTOR.fields_by_name["status"]
    assert status_field.message_type is status_pb2.Status.DESCRIPTOR
    assert isinstance(external_auth_pb2.CheckResponse().status, status_pb2.Status)


def test_our_status_declaration_matches_googleapis(tmp_path: Path) -> None:
    """protos/google/rpc/status.proto (compile-time only) agrees with the runtime one."""
    out = tmp_path / "status.pb"
    rc = protoc.main(
        [
            "grpc_tools.protoc",
            f"-I{protogen.DEFAULT_PROTO_DIR}",
            f"-I{protogen._well_known_include()}",
            f"--descriptor_set_out={out}",
            "google/rpc/status.proto",
        ]
    )
    assert rc == 0
    fds = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes())
    (ours,) = [f for f in fds.file if f.name == "google/rpc/status.proto"]
    assert ours.package == "google.rpc"
    (message,) = ours.message_type
    declared = {(f.name, f.number, f.type, f.label, f.type_name) for f in message.field}
    runtime = descriptor_pb2.DescriptorProto()
    status_pb2.Status.DESCRIPTOR.CopyToProto(runtime)
    assert message.name == runtime.name == "Status"
    assert declared == {(f.name, f.number, f.type, f.label, f.type_name) for f in runtime.field}


def test_service_contract() -> None:
    service = external_auth_pb2.DESCRIPTOR.services_by_name["Authorization"]
    assert service.full_name == "envoy.service.auth.v3.Authorization"
    check = service.methods_by_name["Check"]
    assert check.input_type is external_auth_pb2.CheckRequest.DESCRIPTOR
    assert check.output_type is external_auth_pb2.CheckResponse.DESCRIPTOR
    assert not check.client_streaming and not check.server_streaming
    assert f"/{service.full_name}/{check.name}" == CHECK_PATH
    assert hasattr(external_auth_pb2_grpc, "AuthorizationServicer")
    assert hasattr(external_auth_pb2_grpc, "AuthorizationStub")
    assert hasattr(external_auth_pb2_grpc, "add_AuthorizationServicer_to_server")


# --------------------------------------------------------------------------- descriptors


_BP_TYPE = {
    FieldDescriptor.TYPE_BOOL: betterproto2.TYPE_BOOL,
    FieldDescriptor.TYPE_BYTES: betterproto2.TYPE_BYTES,
    FieldDescriptor.TYPE_DOUBLE: betterproto2.TYPE_DOUBLE,
    FieldDescriptor.TYPE_ENUM: betterproto2.TYPE_ENUM,
    FieldDescriptor.TYPE_FIXED32: betterproto2.TYPE_FIXED32,
    FieldDescriptor.TYPE_FIXED64: betterproto2.TYPE_FIXED64,
    FieldDescriptor.TYPE_FLOAT: betterproto2.TYPE_FLOAT,
    FieldDescriptor.TYPE_INT32: betterproto2.TYPE_INT32,
    FieldDescriptor.TYPE_INT64: betterproto2.TYPE_INT64,
    FieldDescriptor.TYPE_MESSAGE: betterproto2.TYPE_MESSAGE,
    FieldDescriptor.TYPE_SFIXED32: betterproto2.TYPE_SFIXED32,
    FieldDescriptor.TYPE_SFIXED64: betterproto2.TYPE_SFIXED64,
    FieldDescriptor.TYPE_SINT32: betterproto2.TYPE_SINT32,
    FieldDescriptor.TYPE_SINT64: betterproto2.TYPE_SINT64,
    FieldDescriptor.TYPE_STRING: betterproto2.TYPE_STRING,
    FieldDescriptor.TYPE_UINT32: betterproto2.TYPE_UINT32,
    FieldDescriptor.TYPE_UINT64: betterproto2.TYPE_UINT64,
}


def _walk(messages: Any) -> Iterator[Descriptor]:
    for message in messages:
        if message.GetOptions().map_entry:
            continue
        yield message
        yield from _walk(message.nested_types)


def _declared_messages() -> list[Descriptor]:
    return [m for f in OUR_FILES for m in _walk(f.message_types_by_name.values())]


def _bp_class(full_name: str) -> Any:
    return default_message_pool.url_to_type[f"type.googleapis.com/{full_name}"]


def _bp_full_name(cls: Any) -> str:
    url: str = default_message_pool.type_to_url[cls]
    return url.removeprefix("type.googleapis.com/")


def _is_map(field: FieldDescriptor) -> bool:
    return field.message_type is not None and bool(field.message_type.GetOptions().map_entry)


def test_every_expected_message_is_declared() -> None:
    names = {m.full_name for m in _declared_messages()}
    assert names >= {
        "envoy.service.auth.v3.CheckRequest",
        "envoy.service.auth.v3.CheckResponse",
        "envoy.service.auth.v3.DeniedHttpResponse",
        "envoy.service.auth.v3.OkHttpResponse",
        "envoy.service.auth.v3.AttributeContext",
        "envoy.service.auth.v3.AttributeContext.Peer",
        "envoy.service.auth.v3.AttributeContext.Request",
        "envoy.service.auth.v3.AttributeContext.HttpRequest",
        "envoy.service.auth.v3.AttributeContext.TLSSession",
        "envoy.config.core.v3.HeaderValue",
        "envoy.config.core.v3.HeaderValueOption",
        "envoy.config.core.v3.HeaderMap",
        "envoy.config.core.v3.Metadata",
        "envoy.config.core.v3.QueryParameter",
        "envoy.config.core.v3.Address",
        "envoy.config.core.v3.SocketAddress",
        "envoy.config.core.v3.Pipe",
        "envoy.type.v3.HttpStatus",
        "google.rpc.Status",
    }


@pytest.mark.parametrize("message", _declared_messages(), ids=lambda m: m.full_name)
def test_fields_match_betterproto_metadata(message: Descriptor) -> None:
    bp_cls = _bp_class(message.full_name)
    bp_fields = {f.name: f for f in dataclasses.fields(bp_cls)}
    bp_meta = bp_cls._betterproto.meta_by_field_name

    ours = {(f.number, f.name) for f in message.fields}
    theirs = {(meta.number, name) for name, meta in bp_meta.items()}
    assert ours == theirs, f"{message.full_name}: field (number, name) sets differ"

    for field in message.fields:
        meta = bp_meta[field.name]
        where = f"{message.full_name}.{field.name}"
        oneof = field.containing_oneof.name if field.containing_oneof else None
        assert meta.group == oneof, where

        if _is_map(field):
            key, value = (
                field.message_type.fields_by_name["key"],
                field.message_type.fields_by_name["value"],
            )
            assert meta.proto_type == betterproto2.TYPE_MAP, where
            assert meta.map_meta is not None
            assert meta.map_meta[0].proto_type == _BP_TYPE[key.type], where
            assert meta.map_meta[1].proto_type == _BP_TYPE[value.type], where
            if value.message_type is not None:
                value_cls = bp_cls._cls_for(bp_fields[field.name], index=1)
                assert _bp_full_name(value_cls) == value.message_type.full_name, where
            continue

        assert meta.proto_type == _BP_TYPE[field.type], where
        assert meta.repeated == field.is_repeated, where
        if field.message_type is not None:
            target = meta.unwrap() if meta.unwrap else bp_cls._betterproto.cls_by_field[field.name]
            assert _bp_full_name(target) == field.message_type.full_name, where
        if field.enum_type is not None:
            enum_cls = bp_cls._betterproto.cls_by_field[field.name]
            assert {m.name: m.value for m in enum_cls} == {
                v.name: v.number for v in field.enum_type.values
            }, where


def test_top_level_enum_matches_betterproto() -> None:
    ours = {
        v.name: v.number for v in http_status_pb2.DESCRIPTOR.enum_types_by_name["StatusCode"].values
    }
    assert ours == {m.name: m.value for m in bp_type.StatusCode}
    assert {"OK", "BadRequest", "Unauthorized", "Forbidden", "NotFound"} <= ours.keys()
    assert ours["Forbidden"] == 403 and ours["TooManyRequests"] == 429


# --------------------------------------------------------------------------- wire round trips


def _struct(data: dict[str, Any]) -> struct_pb2.Struct:
    s = struct_pb2.Struct()
    s.update(data)
    return s


def _bp_headers(options: list[Any]) -> list[tuple[str, str, int, bool]]:
    return [
        (o.header.key, o.header.value, int(o.append_action), o.keep_empty_value) for o in options
    ]


def test_deny_response_decodes_in_betterproto() -> None:
    hvo = base_pb2.HeaderValueOption
    ours = external_auth_pb2.CheckResponse(
        status=status_pb2.Status(code=7, message="denied by policy allow-frontend"),
        denied_response=external_auth_pb2.DeniedHttpResponse(
            status=http_status_pb2.HttpStatus(code=http_status_pb2.Forbidden),
            headers=[
                hvo(
                    header=base_pb2.HeaderValue(key="x-extauthz-reason", value="rbac"),
                    append_action=hvo.OVERWRITE_IF_EXISTS_OR_ADD,
                ),
                hvo(
                    header=base_pb2.HeaderValue(key="www-authenticate", value='Bearer realm="x"'),
                    append_action=hvo.ADD_IF_ABSENT,
                    keep_empty_value=True,
                ),
            ],
            body='{"error":"forbidden"}',
        ),
        dynamic_metadata=_struct({"decision": "deny", "policy": "allow-frontend"}),
    )
    decoded = bp_auth.CheckResponse.parse(ours.SerializeToString())

    assert decoded.status is not None
    assert (decoded.status.code, decoded.status.message) == (7, "denied by policy allow-frontend")
    assert decoded.ok_response is None and decoded.error_response is None
    denied = decoded.denied_response
    assert denied is not None and denied.status is not None
    assert denied.status.code == bp_type.StatusCode.Forbidden == 403
    assert _bp_headers(denied.headers) == [
        (
            "x-extauthz-reason",
            "rbac",
            bp_core.HeaderValueOptionHeaderAppendAction.OVERWRITE_IF_EXISTS_OR_ADD,
            False,
        ),
        (
            "www-authenticate",
            'Bearer realm="x"',
            bp_core.HeaderValueOptionHeaderAppendAction.ADD_IF_ABSENT,
            True,
        ),
    ]
    assert denied.body == '{"error":"forbidden"}'
    assert decoded.dynamic_metadata is not None
    assert decoded.dynamic_metadata.to_dict() == {"decision": "deny", "policy": "allow-frontend"}


def test_allow_response_decodes_in_betterproto() -> None:
    hvo = base_pb2.HeaderValueOption
    ours = external_auth_pb2.CheckResponse(
        status=status_pb2.Status(code=0),
        ok_response=external_auth_pb2.OkHttpResponse(
            headers=[
                hvo(
                    header=base_pb2.HeaderValue(
                        key="x-spiffe-id", value="spiffe://cluster.local/ns/a/sa/b"
                    ),
                    append_action=hvo.OVERWRITE_IF_EXISTS_OR_ADD,
                )
            ],
            headers_to_remove=["authorization", "cookie"],
            response_headers_to_add=[
                hvo(
                    header=base_pb2.HeaderValue(key="x-authz", value="ok"),
                    append_action=hvo.APPEND_IF_EXISTS_OR_ADD,
                )
            ],
            query_parameters_to_set=[base_pb2.QueryParameter(key="tenant", value="t1")],
            query_parameters_to_remove=["token"],
        ),
        dynamic_metadata=_struct(
            {"principal": "spiffe://cluster.local/ns/a/sa/b", "level": 3, "ok": True}
        ),
    )
    decoded = bp_auth.CheckResponse.parse(ours.SerializeToString())

    assert decoded.status is not None and decoded.status.code == 0 and decoded.status.message == ""
    assert decoded.denied_response is None
    ok = decoded.ok_response
    assert ok is not None
    assert _bp_headers(ok.headers) == [
        ("x-spiffe-id", "spiffe://cluster.local/ns/a/sa/b", 2, False),
    ]
    assert ok.headers_to_remove == ["authorization", "cookie"]
    assert _bp_headers(ok.response_headers_to_add) == [("x-authz", "ok", 0, False)]
    assert [(q.key, q.value) for q in ok.query_parameters_to_set] == [("tenant", "t1")]
    assert ok.query_parameters_to_remove == ["token"]
    assert decoded.dynamic_metadata is not None
    assert decoded.dynamic_metadata.to_dict() == {
        "principal": "spiffe://cluster.local/ns/a/sa/b",
        "level": 3.0,
        "ok": True,
    }


def test_error_response_decodes_in_betterproto() -> None:
    ours = external_auth_pb2.CheckResponse(
        status=status_pb2.Status(code=14, message="policy store unavailable"),
        error_response=external_auth_pb2.DeniedHttpResponse(
            status=http_status_pb2.HttpStatus(code=http_status_pb2.ServiceUnavailable),
            body="retry later",
        ),
    )
    assert ours.WhichOneof("http_response") == "error_response"
    decoded = bp_auth.CheckResponse.parse(ours.SerializeToString())
    assert decoded.denied_response is None and decoded.ok_response is None
    assert decoded.error_response is not None and decoded.error_response.status is not None
    assert decoded.error_response.status.code == 503
    assert decoded.error_response.body == "retry later"


def _our_rich_request() -> external_auth_pb2.CheckRequest:
    ctx = attribute_context_pb2.AttributeContext
    time = timestamp_pb2.Timestamp(seconds=1_700_000_000, nanos=123_456_000)
    return external_auth_pb2.CheckRequest(
        attributes=ctx(
            source=ctx.Peer(
                address=address_pb2.Address(
                    socket_address=address_pb2.SocketAddress(address="10.0.0.7", port_value=43512)
                ),
                principal="spiffe://cluster.local/ns/frontend/sa/web",
                certificate="-----BEGIN%20CERTIFICATE-----%0AMIIB...",
                service="frontend",
                labels={"app": "web"},
            ),
            destination=ctx.Peer(
                address=address_pb2.Address(
                    socket_address=address_pb2.SocketAddress(
                        protocol=address_pb2.SocketAddress.TCP, address="10.0.0.9", port_value=8443
                    )
                ),
                principal="spiffe://cluster.local/ns/backend/sa/api",
            ),
            request=ctx.Request(
                time=time,
                http=ctx.HttpRequest(
                    id="3f2a-req",
                    method="POST",
                    headers={":authority": "api.internal", "content-type": "application/json"},
                    path="/v1/orders?id=7",
                    host="api.internal",
                    scheme="https",
                    size=42,
                    protocol="HTTP/2",
                    body='{"a":1}',
                    raw_body=b"\x00\xffraw",
                ),
            ),
            context_extensions={"virtual_host": "api", "cluster": "backend"},
            metadata_context=base_pb2.Metadata(
                filter_metadata={"envoy.filters.http.jwt_authn": _struct({"sub": "u1"})}
            ),
            tls_session=ctx.TLSSession(sni="api.internal"),
        )
    )


def test_check_request_decodes_in_betterproto() -> None:
    ours = _our_rich_request()
    decoded = bp_auth.CheckRequest.parse(ours.SerializeToString())

    attrs = decoded.attributes
    assert attrs is not None
    src, dst = attrs.source, attrs.destination
    assert src is not None and dst is not None
    assert src.principal == "spiffe://cluster.local/ns/frontend/sa/web"
    assert src.certificate == "-----BEGIN%20CERTIFICATE-----%0AMIIB..."
    assert (src.service, src.labels) == ("frontend", {"app": "web"})
    assert src.address is not None and src.address.socket_address is not None
    assert (src.address.socket_address.address, src.address.socket_address.port_value) == (
        "10.0.0.7",
        43512,
    )
    assert src.address.socket_address.protocol == bp_core.SocketAddressProtocol.TCP
    assert dst.principal == "spiffe://cluster.local/ns/backend/sa/api"
    assert dst.address is not None and dst.address.socket_address is not None
    assert (dst.address.socket_address.address, dst.address.socket_address.port_value) == (
        "10.0.0.9",
        8443,
    )

    assert attrs.request is not None and attrs.request.http is not None
    assert attrs.request.time == datetime.datetime(
        2023, 11, 14, 22, 13, 20, 123456, tzinfo=datetime.UTC
    )
    http = attrs.request.http
    assert (http.id, http.method, http.host, http.path, http.scheme, http.protocol) == (
        "3f2a-req",
        "POST",
        "api.internal",
        "/v1/orders?id=7",
        "https",
        "HTTP/2",
    )
    assert http.headers == {":authority": "api.internal", "content-type": "application/json"}
    assert (http.size, http.body, http.raw_body) == (42, '{"a":1}', b"\x00\xffraw")
    assert attrs.context_extensions == {"virtual_host": "api", "cluster": "backend"}
    assert attrs.metadata_context is not None
    assert attrs.metadata_context.filter_metadata["envoy.filters.http.jwt_authn"].to_dict() == {
        "sub": "u1"
    }
    assert attrs.tls_session is not None and attrs.tls_session.sni == "api.internal"

    # Re-encoding through betterproto2 loses nothing.
    assert external_auth_pb2.CheckRequest.FromString(decoded.SerializeToString()) == ours


def test_betterproto_check_request_decodes_with_our_classes() -> None:
    peer = bp_auth.AttributeContextPeer
    theirs = bp_auth.CheckRequest(
        attributes=bp_auth.AttributeContext(
            source=peer(
                address=bp_core.Address(
                    socket_address=bp_core.SocketAddress(address="192.168.1.2", port_value=55000)
                ),
                principal="spiffe://example.org/ns/default/sa/client",
                certificate="cert-pem-urlencoded",
            ),
            destination=peer(
                address=bp_core.Address(pipe=bp_core.Pipe(path="/run/envoy.sock", mode=0o600)),
                service="gateway",
            ),
            request=bp_auth.AttributeContextRequest(
                time=datetime.datetime(2024, 5, 6, 7, 8, 9, 500000, tzinfo=datetime.UTC),
                http=bp_auth.AttributeContextHttpRequest(
                    id="req-1",
                    method="GET",
                    header_map=bp_core.HeaderMap(
                        headers=[
                            bp_core.HeaderValue(key="x-a", raw_value=b"1"),
                            bp_core.HeaderValue(key="x-a", raw_value=b"\xff2"),
                        ]
                    ),
                    path="/healthz",
                    host="svc.local",
                    protocol="HTTP/1.1",
                    size=-1,
                ),
            ),
            context_extensions={"route": "r1"},
            route_metadata_context=bp_core.Metadata(
                filter_metadata={"extauthz": bp_wkt.Struct.from_dict({"policy": "p1"})}
            ),
            tls_session=bp_auth.AttributeContextTlsSession(sni="svc.local"),
        )
    )
    ours = external_auth_pb2.CheckRequest.FromString(theirs.SerializeToString())

    attrs = ours.attributes
    assert attrs.source.principal == "spiffe://example.org/ns/default/sa/client"
    assert attrs.source.certificate == "cert-pem-urlencoded"
    assert attrs.source.address.WhichOneof("address") == "socket_address"
    assert attrs.source.address.socket_address.address == "192.168.1.2"
    assert attrs.source.address.socket_address.port_value == 55000
    assert attrs.source.address.socket_address.WhichOneof("port_specifier") == "port_value"
    assert attrs.destination.address.WhichOneof("address") == "pipe"
    assert (attrs.destination.address.pipe.path, attrs.destination.address.pipe.mode) == (
        "/run/envoy.sock",
        0o600,
    )
    assert attrs.destination.service == "gateway"
    assert attrs.request.time.ToDatetime(tzinfo=datetime.UTC) == datetime.datetime(
        2024, 5, 6, 7, 8, 9, 500000, tzinfo=datetime.UTC
    )
    http = attrs.request.http
    assert (http.id, http.method, http.path, http.host, http.protocol, http.size) == (
        "req-1",
        "GET",
        "/healthz",
        "svc.local",
        "HTTP/1.1",
        -1,
    )
    assert len(http.headers) == 0
    assert [(h.key, h.value, h.raw_value) for h in http.header_map.headers] == [
        ("x-a", "", b"1"),
        ("x-a", "", b"\xff2"),
    ]
    assert dict(attrs.context_extensions) == {"route": "r1"}
    assert dict(attrs.route_metadata_context.filter_metadata["extauthz"]) == {"policy": "p1"}
    assert attrs.tls_session.sni == "svc.local"
    assert not attrs.HasField("metadata_context")

    # And back: our re-encoding is accepted by betterproto2 unchanged.
    again = bp_auth.CheckRequest.parse(ours.SerializeToString())
    assert again.to_dict() == theirs.to_dict()


def test_betterproto_check_response_decodes_with_our_classes() -> None:
    theirs = bp_auth.CheckResponse(
        status=bp_rpc.Status(code=16, message="missing credentials"),
        denied_response=bp_auth.DeniedHttpResponse(
            status=bp_type.HttpStatus(code=bp_type.StatusCode.Unauthorized),
            headers=[
                bp_core.HeaderValueOption(
                    header=bp_core.HeaderValue(key="www-authenticate", value="Bearer"),
                    append_action=bp_core.HeaderValueOptionHeaderAppendAction.OVERWRITE_IF_EXISTS,
                )
            ],
            body="unauthorized",
        ),
    )
    ours = external_auth_pb2.CheckResponse.FromString(theirs.SerializeToString())
    assert (ours.status.code, ours.status.message) == (16, "missing credentials")
    assert ours.WhichOneof("http_response") == "denied_response"
    assert ours.denied_response.status.code == http_status_pb2.Unauthorized == 401
    (header,) = ours.denied_response.headers
    assert (header.header.key, header.header.value) == ("www-authenticate", "Bearer")
    assert header.append_action == base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS == 3
    assert not header.HasField("append")
    assert ours.denied_response.body == "unauthorized"
