"""Load Istio security resources from a directory of YAML files, strictly.

Anything unknown (a kind, a field, a ``when`` key) is a ``PolicyError`` naming file, line, the
resource and the field: a policy that is silently half-read is a policy that silently allows.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from extauthz.policy.authentication import peer_authentication, request_authentication
from extauthz.policy.authorization import authorization_policy
from extauthz.policy.model import (
    AuthorizationPolicy,
    PeerAuthentication,
    PolicySet,
    RequestAuthentication,
    Where,
)
from extauthz.policy.strict import (
    Ctx,
    Map,
    PolicyError,
    as_list,
    as_map,
    as_str,
    check_fields,
    parse_yaml,
    type_name,
)

__all__ = ["PolicyError", "build_policy_set", "load_directory", "load_text", "policy_files", "read_documents"]

API_GROUP = "security.istio.io"
API_VERSIONS = ("v1", "v1beta1")


def policy_files(directory: Path) -> list[Path]:
    """The ``*.yaml`` / ``*.yml`` files of ``directory`` (not recursive, hidden files skipped)."""
    if not directory.is_dir():
        raise PolicyError(Where(str(directory), 0), "policy directory does not exist")
    return sorted(
        p
        for p in directory.iterdir()
        if p.suffix in (".yaml", ".yml") and not p.name.startswith(".") and p.is_file()
    )


def load_directory(directory: str | Path, *, root_namespace: str = "istio-system") -> PolicySet:
    """Load every policy file of ``directory``; raise ``PolicyError`` on the first problem."""
    directory = Path(directory)
    files = policy_files(directory)
    docs: list[tuple[str, Any]] = []
    for path in files:
        docs.extend((str(path), doc) for doc in read_documents(path))
    return build_policy_set(docs, root_namespace=root_namespace, files=[str(f) for f in files])


def load_text(text: str, name: str = "<text>", *, root_namespace: str = "istio-system") -> PolicySet:
    """Load policies from a YAML string (used by tests and ``extauthz test``)."""
    docs = [(name, doc) for doc in parse_yaml(text, name)]
    return build_policy_set(docs, root_namespace=root_namespace, files=[name])


def read_documents(path: Path) -> list[Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise PolicyError(Where(str(path), 0), f"cannot read file: {exc}") from exc
    return parse_yaml(text, str(path))


def build_policy_set(
    docs: Iterable[tuple[str, Any]], *, root_namespace: str, files: list[str]
) -> PolicySet:
    authz: list[AuthorizationPolicy] = []
    request_authn: list[RequestAuthentication] = []
    peer_authn: list[PeerAuthentication] = []
    seen: dict[tuple[str, str, str], Where] = {}
    for file, doc in docs:
        ctx = Ctx(file, "")
        items: list[Any] = [doc]
        if isinstance(doc, Map) and doc.get("kind") == "List" and "items" in doc:
            items = as_list(ctx, doc, "items", doc["items"])
        for item in items:
            kind, name, namespace, where = _header(Ctx(file, ""), item)
            key = (kind, namespace, name)
            if key in seen:
                raise PolicyError(
                    where, f"{kind} {namespace}/{name} is also defined at {seen[key]}"
                )
            seen[key] = where
            rctx = Ctx(file, f"{kind} {namespace}/{name}")
            if kind == "AuthorizationPolicy":
                authz.append(authorization_policy(rctx, item, name, namespace, where))
            elif kind == "RequestAuthentication":
                request_authn.append(request_authentication(rctx, item, name, namespace, where))
            else:
                peer_authn.append(peer_authentication(rctx, item, name, namespace, where))
    return PolicySet(
        authorization=tuple(authz),
        request_authentication=tuple(request_authn),
        peer_authentication=tuple(peer_authn),
        root_namespace=root_namespace,
        files=tuple(files),
    )


def _header(ctx: Ctx, doc: Any) -> tuple[str, str, str, Where]:
    if not isinstance(doc, Map):
        raise ctx.error(doc, f"a document must be a mapping, got {type_name(doc)}")
    where = Where(ctx.file, doc.line)
    check_fields(ctx, doc, "resource", ("apiVersion", "kind", "metadata", "spec", "status"))
    api = doc.get("apiVersion")
    group, _, version = str(api).partition("/")
    if group != API_GROUP or version not in API_VERSIONS:
        raise ctx.error(
            doc, f"apiVersion {api!r} is not supported (use {API_GROUP}/v1 or /v1beta1)"
        )
    kind = doc.get("kind")
    if kind not in ("AuthorizationPolicy", "RequestAuthentication", "PeerAuthentication"):
        raise ctx.error(doc, f"kind {kind!r} is not a supported security resource")
    meta = as_map(ctx, doc, "metadata", doc.get("metadata"))
    check_fields(
        ctx,
        meta,
        "metadata",
        (
            "name", "namespace", "annotations", "labels", "uid", "resourceVersion",
            "generation", "creationTimestamp", "managedFields",
        ),
    )
    name = as_str(ctx, meta, "metadata.name", meta.get("name"))
    namespace = meta.get("namespace", "")
    if namespace is not None:
        namespace = as_str(ctx, meta, "metadata.namespace", namespace)
    if not name:
        raise ctx.error(meta, "metadata.name must not be empty")
    return str(kind), name, namespace or "", where
