"""Access control: policies, their evaluation, token records and a decision cache.

This module owns what a token may do and why. It must not read clocks, files, sockets or the
environment, and never makes random bytes: times arrive as millisecond timestamps, accessor ids
and secrets are formatted from random bytes the caller draws, and the pepper that keys secret
hashes is handed in. The Raft state machine stores ``Policy`` and ``TokenRecord`` values; every
agent evaluates requests against its local replica.

Theory of operation
-------------------
A request asks for one ``Capability`` on one resource: a pack or a node (by name), or the
``operator`` or ``audit`` surface (no name). Each rule of a policy covers one resource kind and
either an exact name (``web``), a name prefix (``ci-*``) or everything (``*``); operator and audit
rules always cover everything. A rule grants ``access = "read"`` (the ``read`` capability only:
list, show, history), ``access = "write"`` (every capability of its kind) and/or an explicit list of
``capabilities``; or it is ``access = "deny"`` (nothing at all on what it covers, no list).

1. Within one policy, only the most specific matching rule counts: an exact name beats any
   prefix, a longer prefix beats a shorter one. It decides wholly, so ``prod-*`` read under
   ``*`` write makes ``prod-`` packs read-only.
2. Across the token's policies, deny wins: one policy whose deciding rule denies the resource
   denies the request, whatever the others grant. Otherwise one grant is enough.
3. Nothing matching, or nothing granting, means denied (default deny).

``PolicySet`` compiles a token's policies into one index per kind, so an evaluation costs one dict
probe per distinct prefix length, whatever the number of policies; ``DecisionCache`` remembers
decisions per policy version. ``Decision.explain()`` says why in one line, naming the capability
and the rules consulted; ``Decision.to_error()`` is the 403.

``read`` does not imply ``logs`` or ``exec-env``: logs and a pack's environment can carry secrets,
so each needs its own capability (or ``write``).

Policies as TOML (``canidae policy apply ci.toml``); this CI policy lets runners see, spawn, stop
and read the logs of packs named ``ci-...`` and nothing else::

    name = "ci"
    description = "CI runners: their own ci-* packs only"

    [pack."ci-*"]
    access = "read"
    capabilities = ["spawn", "stop", "logs"]

    [node."*"]          # optional: see the fleet
    access = "read"

    [operator]          # operator and audit tables have no name
    access = "deny"

Built-ins (their names are reserved): ``management`` (write on everything), ``read-only``
(``read`` on every kind; no logs, no exec-env) and, for pack tokens, ``pack_policy(name)``:
``yip-send`` to every pack and ``yip-recv`` on its own pack only; the cluster narrows sending
by attaching policies with deny rules to the token.

Token records, accessor ids and secret hashes are in ``canidae.core.tokens`` (re-exported here);
this module says which policies a token acts under (``resolve_policies``).
"""

from __future__ import annotations

import re
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from canidae.core.errors import InvalidInput, PermissionDenied
from canidae.core.tokens import (
    SECRET_RE,
    TokenKind,
    TokenRecord,
    check_token,
    format_accessor,
    format_secret,
    hash_secret,
    secret_matches,
)
from canidae.core.types import validate_name


class ResourceKind(StrEnum):
    PACK = "pack"
    NODE = "node"
    OPERATOR = "operator"
    AUDIT = "audit"


class Access(StrEnum):
    READ = "read"
    WRITE = "write"
    DENY = "deny"


class Capability(StrEnum):
    READ = "read"            # list, show, history, status of any kind
    SPAWN = "spawn"          # pack create / place / spawn
    STOP = "stop"            # pack stop / kill
    DELETE = "delete"
    MIGRATE = "migrate"
    LOGS = "logs"
    EXEC_ENV = "exec-env"    # see or set a pack's environment (may hold secrets)
    YIP_SEND = "yip-send"    # send to this pack's mailbox
    YIP_RECV = "yip-recv"    # read this pack's mailbox
    CORDON = "cordon"        # node cordon / uncordon
    DRAIN = "drain"
    DRILLS = "drills"
    REBALANCE = "rebalance"
    KEYS = "keys"
    POLICIES = "policies"    # write policies
    TOKENS = "tokens"        # create, revoke tokens
    AUTOSCALE = "autoscale"  # autoscale policy, pause/resume, recording decisions and their outcomes


_C = Capability
CAPABILITIES: Mapping[ResourceKind, frozenset[Capability]] = {
    ResourceKind.PACK: frozenset({_C.READ, _C.SPAWN, _C.STOP, _C.DELETE, _C.MIGRATE, _C.LOGS,
                                  _C.EXEC_ENV, _C.YIP_SEND, _C.YIP_RECV}),
    ResourceKind.NODE: frozenset({_C.READ, _C.CORDON, _C.DRAIN}),
    ResourceKind.OPERATOR: frozenset({_C.READ, _C.DRILLS, _C.REBALANCE, _C.KEYS, _C.POLICIES, _C.TOKENS,
                                      _C.AUTOSCALE}),
    ResourceKind.AUDIT: frozenset({_C.READ}),
}
NAMED_KINDS = frozenset({ResourceKind.PACK, ResourceKind.NODE})
BUILTIN_POLICIES = frozenset({"management", "read-only", "pack"})
_PREFIX_RE = re.compile(r"^(?:[A-Za-z0-9][A-Za-z0-9._-]{0,61})?$")


def kind_of(capability: Capability) -> ResourceKind:
    """The one kind a capability belongs to (``spawn`` -> pack); ``read`` is ambiguous."""
    kinds = [k for k, caps in CAPABILITIES.items() if capability in caps]
    if len(kinds) != 1:
        raise InvalidInput(f"capability '{capability}' applies to {', '.join(kinds)}: name the kind")
    return kinds[0]


def _describe_resource(kind: ResourceKind, name: str) -> str:
    return f"{kind.value} '{name}'" if kind in NAMED_KINDS else kind.value


@dataclass(frozen=True, slots=True)
class Rule:
    """One line of a policy: what it grants (or denies) on which resources."""

    kind: ResourceKind
    match: str = "*"                                  # "web" exact, "ci-*" prefix, "*" everything
    access: Access | None = None
    capabilities: tuple[Capability, ...] = ()
    granted: frozenset[Capability] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        where = f"{self.kind.value} rule '{self.match}'"
        if self.kind not in NAMED_KINDS and self.match != "*":
            raise InvalidInput(f"{where}: {self.kind.value} rules cover everything and take no name")
        if self.match.endswith("*"):
            if not _PREFIX_RE.match(self.match[:-1]):
                raise InvalidInput(f"{where}: a prefix is name characters followed by one '*'")
        else:
            validate_name(f"{self.kind.value} rule", self.match)
        allowed = CAPABILITIES[self.kind]
        for cap in self.capabilities:
            if cap not in allowed:
                raise InvalidInput(f"{where}: capability '{cap}' does not apply to {self.kind.value} "
                                   f"(it takes {', '.join(sorted(allowed))})")
        if self.access is Access.DENY and self.capabilities:
            raise InvalidInput(f"{where}: a deny rule denies everything and takes no capabilities")
        if self.access is None and not self.capabilities:
            raise InvalidInput(f"{where}: give an access (read, write, deny) or capabilities")
        caps = set(self.capabilities)
        if self.access is Access.WRITE:
            caps |= allowed
        elif self.access is Access.READ:
            caps.add(Capability.READ)
        object.__setattr__(self, "capabilities", tuple(sorted(set(self.capabilities))))
        object.__setattr__(self, "granted", frozenset(caps))

    @property
    def is_prefix(self) -> bool:
        return self.match.endswith("*")

    def matches(self, name: str) -> bool:
        return name.startswith(self.match[:-1]) if self.is_prefix else name == self.match

    def describe(self) -> str:
        """``pack 'ci-*' read+spawn,stop`` / ``node 'n1' deny`` / ``operator write``."""
        grant = "+".join(p for p in (self.access.value if self.access else "",
                                     ",".join(self.capabilities)) if p)
        return f"{_describe_resource(self.kind, self.match)} {grant}"

    def body(self) -> dict[str, Any]:
        d: dict[str, Any] = {}
        if self.access is not None:
            d["access"] = self.access.value
        if self.capabilities:
            d["capabilities"] = [c.value for c in self.capabilities]
        return d


@dataclass(frozen=True, slots=True)
class RuleRef:
    """A rule and the policy it belongs to, as decisions and explanations name it."""

    policy: str
    rule: Rule

    def describe(self) -> str:
        return f"{self.policy}: {self.rule.describe()}"


@dataclass(frozen=True, slots=True)
class Policy:
    """A named set of rules; at most one rule per (kind, match)."""

    name: str
    rules: tuple[Rule, ...]
    description: str = ""
    # Per kind: (is prefix, exact name or prefix, rule ref), ready for PolicySet to merge.
    entries: dict[ResourceKind, tuple[tuple[bool, str, RuleRef], ...]] = field(
        init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.name != "pack" and not self.name.startswith("pack:"):
            validate_name("policy", self.name)
        # Rule order means nothing; a canonical order makes equal policies equal values.
        order = list(ResourceKind)
        object.__setattr__(self, "rules", tuple(sorted(self.rules, key=lambda r: (order.index(r.kind), r.match))))
        seen: set[tuple[ResourceKind, str]] = set()
        for r in self.rules:
            if (r.kind, r.match) in seen:
                raise InvalidInput(f"policy '{self.name}': two rules for {_describe_resource(r.kind, r.match)}")
            seen.add((r.kind, r.match))
        object.__setattr__(self, "entries", {k: tuple(
            (r.is_prefix, r.match[:-1] if r.is_prefix else r.match, RuleRef(self.name, r))
            for r in self.rules if r.kind is k) for k in ResourceKind})

    @staticmethod
    def from_toml_dict(d: Mapping[str, Any]) -> Policy:
        """Build a user policy from parsed TOML (the format is in the module docstring)."""
        if not isinstance(d, Mapping):
            raise InvalidInput("a policy is a TOML table")
        name = validate_name("policy", d.get("name"))
        if name in BUILTIN_POLICIES:
            raise InvalidInput(f"policy name '{name}' is built in; choose another")
        unknown = set(d) - {"name", "description", *ResourceKind}
        if unknown:
            raise InvalidInput(f"policy '{name}': unknown field '{min(unknown)}' "
                               "(expected name, description, pack, node, operator, audit)")
        description = d.get("description", "")
        if not isinstance(description, str):
            raise InvalidInput(f"policy '{name}': description must be a string")
        rules: list[Rule] = []
        for kind in ResourceKind:
            table = d.get(kind.value)
            if table is None:
                continue
            if not isinstance(table, Mapping):
                raise InvalidInput(f"policy '{name}': {kind.value} must be a table")
            if kind in NAMED_KINDS:
                for match, body in table.items():
                    rules.append(_rule_from_toml(name, kind, match, body, f"{kind.value}.'{match}'"))
            else:
                rules.append(_rule_from_toml(name, kind, "*", table, kind.value))
        if not rules:
            raise InvalidInput(f"policy '{name}': no rules (a policy with none would grant nothing)")
        return Policy(name, tuple(rules), description)

    def to_dict(self) -> dict[str, Any]:
        """The TOML form (``from_toml_dict(p.to_dict()) == p`` for user policies)."""
        d: dict[str, Any] = {"name": self.name}
        if self.description:
            d["description"] = self.description
        for r in self.rules:
            if r.kind in NAMED_KINDS:
                d.setdefault(r.kind.value, {})[r.match] = r.body()
            else:
                d[r.kind.value] = r.body()
        return d


def _rule_from_toml(policy: str, kind: ResourceKind, match: Any, body: Any, where: str) -> Rule:
    prefix = f"policy '{policy}': {where}"
    if not isinstance(body, Mapping):
        raise InvalidInput(f"{prefix}: must be a table with access and/or capabilities")
    unknown = set(body) - {"access", "capabilities"}
    if unknown:
        raise InvalidInput(f"{prefix}: unknown field '{min(unknown)}' (expected access, capabilities)")
    access = body.get("access")
    if access is not None and (not isinstance(access, str) or access not in set(Access)):
        raise InvalidInput(f"{prefix}.access: '{access}' is not one of read, write, deny")
    caps = body.get("capabilities", [])
    if not isinstance(caps, list) or not all(isinstance(c, str) for c in caps):
        raise InvalidInput(f"{prefix}.capabilities: must be a list of names")
    for c in caps:
        if c not in set(Capability):
            raise InvalidInput(f"{prefix}.capabilities: unknown capability '{c}'")
    try:
        return Rule(kind, str(match), Access(access) if access else None, tuple(Capability(c) for c in caps))
    except InvalidInput as e:
        raise InvalidInput(f"policy '{policy}': {e.message}") from None


MANAGEMENT = Policy("management", tuple(Rule(k, "*", Access.WRITE) for k in ResourceKind),
                    "everything, on every resource")
READ_ONLY = Policy("read-only", tuple(Rule(k, "*", Access.READ) for k in ResourceKind),
                   "read every resource; no logs, no pack environments")


def pack_policy(pack: str) -> Policy:
    """The built-in policy of a pack token: send to any pack, read its own mailbox only."""
    validate_name("pack", pack)
    # The exact rule decides wholly for the pack itself, so it repeats yip-send.
    return Policy(f"pack:{pack}", (
        Rule(ResourceKind.PACK, "*", None, (Capability.YIP_SEND,)),
        Rule(ResourceKind.PACK, pack, None, (Capability.YIP_SEND, Capability.YIP_RECV)),
    ), f"pack token of '{pack}'")


@dataclass(frozen=True, slots=True)
class Decision:
    """The answer to one request, with what decided it and what was looked at."""

    allowed: bool
    capability: Capability
    kind: ResourceKind
    name: str
    token: str = ""
    policies: tuple[str, ...] = ()
    decided_by: RuleRef | None = None      # the granting rule, or the deny rule that won
    matched: tuple[RuleRef, ...] = ()      # each policy's most specific matching rule
    consulted: tuple[RuleRef, ...] = ()    # every rule of this kind in the token's policies
    missing_policies: tuple[str, ...] = ()  # named by the token, not found

    def explain(self, max_rules: int = 8) -> str:
        """One human line: allowed or denied, and why."""
        who = f"token {self.token or '?'} (policies {', '.join(self.policies) or 'none'})"
        res = _describe_resource(self.kind, self.name)
        if self.allowed:
            assert self.decided_by is not None
            return f"allowed: {who} has '{self.capability}' on {res}: granted by {self.decided_by.describe()}"
        if self.decided_by is not None:
            why = f"may not '{self.capability}' on {res}: {self.decided_by.describe()} denies it (deny wins)"
        elif not self.policies:
            why = f"lacks '{self.capability}' on {res}: the token has no policies (default deny)"
        elif self.matched:
            rules = "; ".join(m.describe() for m in self.matched)
            why = f"lacks '{self.capability}' on {res}: the most specific matching rules ({rules}) do not grant it"
        else:
            why = f"lacks '{self.capability}' on {res}: no rule matches {res}"
        shown = "; ".join(r.describe() for r in self.consulted[:max_rules])
        if len(self.consulted) > max_rules:
            shown += f"; and {len(self.consulted) - max_rules} more"
        line = f"denied: {who} {why} (rules consulted: {shown or f'no {self.kind.value} rules'})"
        if self.missing_policies:
            line += f"; policies not found: {', '.join(self.missing_policies)}"
        return line

    def to_dict(self, max_rules: int = 50) -> dict[str, Any]:
        return {
            "allowed": self.allowed, "capability": self.capability.value,
            "resource": {"kind": self.kind.value, "name": self.name}, "token": self.token,
            "policies": list(self.policies),
            "decided_by": self.decided_by.describe() if self.decided_by else None,
            "rules_consulted": [r.describe() for r in self.consulted[:max_rules]],
            "missing_policies": list(self.missing_policies), "explanation": self.explain(),
        }

    def to_error(self) -> PermissionDenied:
        """The 403 of a denied request: names the capability and the rules consulted."""
        return PermissionDenied(self.explain(), self.to_dict())

    def require(self) -> None:
        if not self.allowed:
            raise self.to_error()


class _KindIndex:
    """Every rule of one kind across a set of policies, keyed by exact name and by prefix, each
    entry listing (policy position, rule): one dict probe per distinct prefix length serves all
    the policies at once."""

    __slots__ = ("consulted", "exact", "lengths", "prefixes")

    def __init__(self, policies: Sequence[Policy], kind: ResourceKind) -> None:
        self.exact: dict[str, list[tuple[int, RuleRef]]] = {}
        self.prefixes: dict[str, list[tuple[int, RuleRef]]] = {}
        consulted: list[RuleRef] = []
        for pos, p in enumerate(policies):
            for is_prefix, key, ref in p.entries[kind]:
                consulted.append(ref)
                (self.prefixes if is_prefix else self.exact).setdefault(key, []).append((pos, ref))
        self.consulted = tuple(consulted)
        self.lengths = tuple(sorted({len(k) for k in self.prefixes}, reverse=True))


class PolicySet:
    """A token's policies compiled for evaluation. Build it once per token and policy version
    (agents keep one per (accessor, version) beside the decision cache); ``evaluate`` then costs a
    few dict probes whatever the number of policies."""

    __slots__ = ("_index", "missing", "names", "policies", "token")

    def __init__(self, policies: Sequence[Policy], *, token: str = "", missing: tuple[str, ...] = ()) -> None:
        self.policies, self.token, self.missing = tuple(policies), token, missing
        self.names = tuple(p.name for p in self.policies)
        self._index = {k: _KindIndex(self.policies, k) for k in ResourceKind}

    @staticmethod
    def for_token(token: TokenRecord, catalog: Mapping[str, Policy]) -> PolicySet:
        """The policies ``token`` acts under (``resolve_policies``), compiled."""
        policies, missing = resolve_policies(token, catalog)
        return PolicySet(policies, token=token.name, missing=missing)

    def evaluate(self, kind: ResourceKind, name: str, capability: Capability) -> Decision:
        """Decide one request (the rules are in the module docstring)."""
        if capability not in CAPABILITIES[kind]:
            raise InvalidInput(f"capability '{capability}' does not apply to {kind.value}")
        if kind not in NAMED_KINDS:
            name = ""
        idx = self._index[kind]
        found: list[RuleRef | None] = [None] * len(self.policies)
        left = len(found)
        # Most specific first: the exact name, then prefixes from the longest; a policy's first hit
        # is the rule that decides for it.
        for pos, ref in idx.exact.get(name, ()):
            found[pos] = ref
            left -= 1
        n = len(name)
        for length in idx.lengths:
            if not left:
                break
            if length <= n:
                for pos, ref in idx.prefixes.get(name[:length], ()):
                    if found[pos] is None:
                        found[pos] = ref
                        left -= 1
        matched = tuple(ref for ref in found if ref is not None)
        deny = grant = None
        for ref in matched:
            if ref.rule.access is Access.DENY:
                deny = ref
                break
            if grant is None and capability in ref.rule.granted:
                grant = ref
        return Decision(deny is None and grant is not None, capability, kind, name, self.token, self.names,
                        deny or grant, matched, idx.consulted, self.missing)


def evaluate(policies: Sequence[Policy], kind: ResourceKind, name: str, capability: Capability, *,
             token: str = "", missing_policies: tuple[str, ...] = ()) -> Decision:
    """Decide one request against a list of policies (compiles them each time: see ``PolicySet``)."""
    return PolicySet(policies, token=token, missing=missing_policies).evaluate(kind, name, capability)


# -- tokens and their policies -----------------------------------------------------------------


def resolve_policies(token: TokenRecord, catalog: Mapping[str, Policy]
                     ) -> tuple[tuple[Policy, ...], tuple[str, ...]]:
    """The policies a token acts under, and the names it lists that do not exist (ignored: default
    deny). Management tokens act under ``management`` alone; pack tokens add their pack policy."""
    if token.kind is TokenKind.MANAGEMENT:
        return (MANAGEMENT,), ()
    found: list[Policy] = []
    missing: list[str] = []
    for name in token.policies:
        p = MANAGEMENT if name == "management" else READ_ONLY if name == "read-only" else catalog.get(name)
        if p is None:
            missing.append(name)
        else:
            found.append(p)
    if token.kind is TokenKind.PACK:
        found.append(pack_policy(token.pack))
    return tuple(found), tuple(missing)


def authorize(token: TokenRecord, catalog: Mapping[str, Policy], kind: ResourceKind, name: str,
              capability: Capability) -> Decision:
    """Evaluate a request of ``token`` (already checked with ``check_token``); the one-off form of
    ``PolicySet.for_token(token, catalog).evaluate(...)``."""
    return PolicySet.for_token(token, catalog).evaluate(kind, name, capability)


# -- the decision cache --------------------------------------------------------------------------

CacheKey = tuple[str, int, ResourceKind, str, Capability]


class DecisionCache:
    """Recent decisions keyed by (accessor, policy version, kind, name, capability), TTL and LRU.

    The policy version is one cluster-wide number: the Raft index of the last change that can
    alter a decision (a policy written or deleted, a token's policy list changed). A new version
    makes every older entry unreachable, so a change is effective at the next request; entries of
    older versions are never returned, even to a caller that asks with an older version after a
    newer one was seen, and age out by LRU and TTL. Every request runs ``check_token`` on the
    current token record before the cache, so revocation, expiry and deletion take effect without
    a new version, and creating a token needs none (no entry exists for a new accessor): bumping on
    those too is correct, only wasteful (pack tokens come and go with every pack run). A cache miss
    is best served by a ``PolicySet`` kept per (accessor, version). Not thread-safe: one per event
    loop, or behind a lock.
    """

    __slots__ = ("_entries", "_floor", "hits", "max_entries", "misses", "ttl_ms")

    def __init__(self, max_entries: int = 100_000, ttl_ms: int = 60_000) -> None:
        if max_entries < 1 or ttl_ms < 1:
            raise InvalidInput("a decision cache needs max_entries >= 1 and ttl_ms >= 1")
        self.max_entries, self.ttl_ms = max_entries, ttl_ms
        self._entries: OrderedDict[CacheKey, tuple[int, Decision]] = OrderedDict()
        self._floor = 0
        self.hits = self.misses = 0

    def get(self, key: CacheKey, now_ms: int) -> Decision | None:
        entry = self._entries.get(key)
        if entry is None or key[1] < self._floor:
            self.misses += 1
            return None
        stored_at, decision = entry
        if not 0 <= now_ms - stored_at < self.ttl_ms:  # expired, or the clock went back
            del self._entries[key]
            self.misses += 1
            return None
        self._entries.move_to_end(key)
        self.hits += 1
        return decision

    def put(self, key: CacheKey, decision: Decision, now_ms: int) -> None:
        if key[1] < self._floor:
            return
        self._floor = key[1]
        self._entries[key] = (now_ms, decision)
        self._entries.move_to_end(key)
        if len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

    def __len__(self) -> int:
        return len(self._entries)


__all__ = [
    "CAPABILITIES", "MANAGEMENT", "READ_ONLY", "SECRET_RE", "Access", "CacheKey", "Capability",
    "Decision", "DecisionCache", "Policy", "PolicySet", "ResourceKind", "Rule", "RuleRef", "TokenKind", "TokenRecord",
    "authorize", "check_token", "evaluate", "format_accessor", "format_secret", "hash_secret", "kind_of",
    "pack_policy", "resolve_policies", "secret_matches",
]
