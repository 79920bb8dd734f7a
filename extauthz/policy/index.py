"""The scope index: compiled rules filed by scope, selector label, leading path segments and
exact principals, so a check walks only the rules that can apply to it.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from extauthz.envoy.request import RequestView
from extauthz.policy.attributes import Context
from extauthz.policy.compile import CompiledPolicy, CompiledRule
from extauthz.policy.model import Rule


class _Node:
    """A path-segment trie node: rules whose every path starts with the segments leading here.

    Inside a node, rules whose every source names exact principals are filed by principal too.
    """

    __slots__ = ("by_principal", "children", "rules")

    def __init__(self) -> None:
        self.children: dict[str, _Node] = {}
        self.rules: list[CompiledRule] = []
        self.by_principal: dict[str, list[CompiledRule]] = {}

    def add(self, segments: Sequence[str], rule: CompiledRule, principals: Sequence[str]) -> None:
        node = self
        for s in segments:
            nxt = node.children.get(s)
            if nxt is None:
                nxt = node.children[s] = _Node()
            node = nxt
        targets = [node.by_principal.setdefault(p, []) for p in principals] if principals else [node.rules]
        for lst in targets:
            if not lst or lst[-1] is not rule:
                lst.append(rule)

    def lists(self, segments: Sequence[str], principal: str) -> Iterator[list[CompiledRule]]:
        node = self
        for i in range(len(segments) + 1):
            if node.rules:
                yield node.rules
            if node.by_principal:
                lst = node.by_principal.get(principal)
                if lst:
                    yield lst
            if i == len(segments):
                return
            nxt = node.children.get(segments[i])
            if nxt is None:
                return
            node = nxt


def principal_keys(rule: Rule) -> tuple[str, ...]:
    """The exact principals one of which every request the rule matches has; () if not so."""
    if not rule.sources:
        return ()
    keys: list[str] = []
    for s in rule.sources:
        if not s.principals or any("*" in p for p in s.principals):
            return ()
        keys.extend(s.principals)
    return tuple(dict.fromkeys(keys))


def _literal_prefix(pattern: str) -> tuple[str, bool]:
    """The literal text every path matching ``pattern`` starts with, and whether it is exact."""
    if "{" in pattern:
        return pattern[: pattern.index("{")], False
    if pattern == "*" or pattern.startswith("*"):
        return "", False
    if pattern.endswith("*"):
        return pattern[:-1], False
    return pattern, True


def path_segments_key(rule: Rule) -> list[tuple[str, ...]]:
    """Trie keys for a rule: whole leading segments every path it matches must have.

    A rule that can match a path outside any such key (no ``to``, an operation without positive
    ``paths``, a suffix or ``*`` path) goes to the root: ``[()]``.
    """
    if not rule.operations:
        return [()]
    keys: list[tuple[str, ...]] = []
    for op in rule.operations:
        if not op.paths:
            return [()]
        for p in op.paths:
            literal, exact = _literal_prefix(p)
            if not literal.startswith("/"):
                return [()]
            pieces = literal[1:].split("/")
            keys.append(tuple(pieces if exact else pieces[:-1]))
    return keys


class _Bucket:
    """The rules of one action in one scope group, in a path trie."""

    __slots__ = ("trie",)

    def __init__(self) -> None:
        self.trie = _Node()


class ScopeIndex:
    """Buckets by scope: ``None`` = everywhere, else a namespace; inside, plain or by one label."""

    def __init__(self) -> None:
        self.scopes: dict[str | None, tuple[_Bucket, dict[tuple[str, str], _Bucket]]] = {}

    def add(self, rule: CompiledRule) -> None:
        cp = rule.policy
        scope = None if cp.scope.everywhere else cp.scope.namespace
        entry = self.scopes.get(scope)
        if entry is None:
            entry = self.scopes[scope] = (_Bucket(), {})
        plain, by_label = entry
        sel = cp.scope.selector
        if sel:
            label = min(sel.items())
            bucket = by_label.get(label)
            if bucket is None:
                bucket = by_label[label] = _Bucket()
        else:
            bucket = plain
        principals = principal_keys(rule.rule)
        for key in path_segments_key(rule.rule):
            bucket.trie.add(key, rule, principals)

    def tries(self, req: RequestView) -> list[_Node]:
        out: list[_Node] = []
        ns = req.namespace
        for scope in (None, ns) if ns else (None,):
            entry = self.scopes.get(scope)
            if entry is None:
                continue
            plain, by_label = entry
            out.append(plain.trie)
            if by_label:
                for item in req.context_extensions.items():
                    b = by_label.get(item)
                    if b is not None:
                        out.append(b.trie)
        return out

    def first_match(self, ctx: Context, segments: Sequence[str]) -> CompiledRule | None:
        """The matching rule first in load order, or None."""
        best: CompiledRule | None = None
        best_order = 1 << 62
        principal = ctx.identity.principal
        for trie in self.tries(ctx.request):
            for rules in trie.lists(segments, principal):
                for r in rules:
                    if r.order >= best_order:
                        break
                    if r.match(ctx):
                        best, best_order = r, r.order
                        break
        return best

    def all_matches(self, ctx: Context, segments: Sequence[str]) -> list[CompiledPolicy]:
        """Every policy with a matching rule, in load order."""
        found: dict[int, CompiledPolicy] = {}
        principal = ctx.identity.principal
        for trie in self.tries(ctx.request):
            for rules in trie.lists(segments, principal):
                for r in rules:
                    if r.policy.order not in found and r.match(ctx):
                        found[r.policy.order] = r.policy
        return [found[k] for k in sorted(found)]


def request_segments(path: str) -> list[str]:
    return path[1:].split("/") if path.startswith("/") else []
