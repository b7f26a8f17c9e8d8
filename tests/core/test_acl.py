"""Tests of access control (canidae.core.acl): policies, evaluation, tokens, the decision cache.

Evaluation is checked against a brute-force model written from the rules in the module's
docstring (scan every rule, pick the most specific per policy, deny wins), so an indexing bug
cannot hide behind the code's own bookkeeping.
"""

from __future__ import annotations

import re
import textwrap
import tomllib
from dataclasses import replace

import pytest
import tomli_w
from canidae.core import acl
from canidae.core.acl import (
    CAPABILITIES,
    MANAGEMENT,
    READ_ONLY,
    Access,
    Capability,
    Decision,
    DecisionCache,
    Policy,
    PolicySet,
    ResourceKind,
    Rule,
    authorize,
    evaluate,
    kind_of,
    pack_policy,
    resolve_policies,
)
from canidae.core.errors import InvalidInput, NotAuthenticated, PermissionDenied
from canidae.core.tokens import (
    TokenKind,
    TokenRecord,
    check_token,
    format_accessor,
    format_secret,
    hash_secret,
    secret_matches,
)
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

PROPS = settings(max_examples=200, deadline=None, derandomize=True, database=None,
                 suppress_health_check=[HealthCheck.too_slow])
K = ResourceKind
C = Capability

# -- strategies: a small alphabet so that prefixes and names collide often -------------------------

names = st.text(alphabet="ab-", min_size=0, max_size=4).map(lambda s: "a" + s)
patterns = st.one_of(st.just("*"), names.map(lambda n: n + "*"), names,
                     st.text(alphabet="ab-", max_size=3).map(lambda s: ("a" + s + "*") if s else "*"))
kinds = st.sampled_from(list(ResourceKind))


@st.composite
def rules(draw: st.DrawFn, kind: ResourceKind | None = None, allow_deny: bool = True) -> Rule:
    k = kind or draw(kinds)
    match = draw(patterns) if k in acl.NAMED_KINDS else "*"
    access = draw(st.sampled_from([None, Access.READ, Access.WRITE] + ([Access.DENY] if allow_deny else [])))
    caps: tuple[Capability, ...] = ()
    if access is not Access.DENY:
        caps = tuple(draw(st.lists(st.sampled_from(sorted(CAPABILITIES[k])), unique=True,
                                   min_size=0 if access else 1, max_size=3)))
    return Rule(k, match, access, caps)


@st.composite
def policies(draw: st.DrawFn, name: str = "p", allow_deny: bool = True) -> Policy:
    rs = draw(st.lists(rules(allow_deny=allow_deny), min_size=0, max_size=8,
                       unique_by=lambda r: (r.kind, r.match)))
    return Policy(name, tuple(rs))


@st.composite
def policy_sets(draw: st.DrawFn, max_size: int = 4) -> list[Policy]:
    n = draw(st.integers(0, max_size))
    return [draw(policies(name=f"p{i}")) for i in range(n)]


@st.composite
def requests(draw: st.DrawFn) -> tuple[ResourceKind, str, Capability]:
    k = draw(kinds)
    name = draw(names) if k in acl.NAMED_KINDS else ""
    return k, name, draw(st.sampled_from(sorted(CAPABILITIES[k])))


# -- the model -------------------------------------------------------------------------------------


def model_matches(match: str, name: str) -> bool:
    return name.startswith(match[:-1]) if match.endswith("*") else name == match


def model_granted(rule: Rule) -> set[Capability]:
    out = set(rule.capabilities)
    if rule.access is Access.WRITE:
        out |= set(CAPABILITIES[rule.kind])
    if rule.access is Access.READ:
        out.add(C.READ)
    return out


def model_deciders(pols: list[Policy], kind: ResourceKind, name: str) -> list[Rule]:
    out = []
    for p in pols:
        hits = [r for r in p.rules if r.kind is kind and model_matches(r.match, name)]
        if hits:
            out.append(max(hits, key=lambda r: (not r.match.endswith("*"), len(r.match))))
    return out


def model_allowed(pols: list[Policy], kind: ResourceKind, name: str, cap: Capability) -> bool:
    deciders = model_deciders(pols, kind, name)
    if any(r.access is Access.DENY for r in deciders):
        return False
    return any(cap in model_granted(r) for r in deciders)


# -- properties ------------------------------------------------------------------------------------


@PROPS
@given(policy_sets(), st.lists(requests(), min_size=1, max_size=5))
def test_evaluation_agrees_with_the_brute_force_model(pols, reqs):
    compiled = PolicySet(pols, token="t")  # one compiled set answers many requests
    for kind, name, cap in reqs:
        d = compiled.evaluate(kind, name, cap)
        assert d == evaluate(pols, kind, name, cap, token="t")
        assert d.allowed == model_allowed(pols, kind, name, cap)
        deciders = model_deciders(pols, kind, name)
        assert [m.rule for m in d.matched] == deciders
        if d.allowed:
            # The first policy, in the token's order, whose deciding rule grants it is named.
            assert d.decided_by is not None and d.decided_by.rule == next(
                r for r in deciders if cap in model_granted(r))
            assert d.explain().startswith("allowed: ")
        else:
            assert d.decided_by is None or d.decided_by.rule.access is Access.DENY
            assert d.explain().startswith("denied: ") and f"'{cap}'" in d.explain()
        assert {r.rule for r in d.consulted} == {r for p in pols for r in p.rules if r.kind is kind}


@PROPS
@given(policy_sets(), requests(), st.booleans(), st.integers(0, 4))
def test_deny_wins_over_any_allow(pols, req, exact, cut):
    kind, name, cap = req
    match = (name if exact else name[:cut] + "*") if kind in acl.NAMED_KINDS else "*"
    denier = Policy("deny", (Rule(kind, match, Access.DENY),))
    for at in range(len(pols) + 1):
        with_deny = [*pols[:at], denier, *pols[at:]]
        d = evaluate([*with_deny, MANAGEMENT], kind, name, cap)
        assert not d.allowed and d.decided_by is not None and d.decided_by.rule.access is Access.DENY
        assert "deny wins" in d.explain()


@PROPS
@given(policies(), st.sampled_from([K.PACK, K.NODE]), names, st.booleans(), st.data())
def test_a_more_specific_rule_overrides_a_less_specific_one(pol, kind, name, exact, data):
    cap = data.draw(st.sampled_from(sorted(CAPABILITIES[kind])))
    # A rule more specific than every rule of the policy that matches the name: the exact name, or
    # a prefix longer than every matching prefix.
    rest = [r for r in pol.rules if not (r.kind is kind and r.match == name)]
    longest = max((len(r.match) - 1 for r in rest if r.kind is kind and r.matches(name)), default=-1)
    match = name if exact or longest + 1 > len(name) else name[:longest + 1] + "*"
    drawn = data.draw(rules(kind=kind))
    specific = Rule(kind, match, drawn.access, drawn.capabilities)
    both = Policy("p", (*(r for r in rest if (r.kind, r.match) != (kind, match)), specific))
    alone = Policy("p", (specific,))
    assert evaluate([both], kind, name, cap).allowed == evaluate([alone], kind, name, cap).allowed
    assert evaluate([both], kind, name, cap).matched[0].rule == specific


@PROPS
@given(requests())
def test_default_deny_and_management_allows_everything(req):
    kind, name, cap = req
    assert not evaluate([], kind, name, cap).allowed
    assert not evaluate([Policy("other", (Rule(K.AUDIT, "*", Access.READ),))], kind, name, cap).allowed \
        or (kind is K.AUDIT and cap is C.READ)
    assert evaluate([MANAGEMENT], kind, name, cap).allowed


@PROPS
@given(policy_sets(), policies(name="extra"), requests())
def test_adding_a_policy_removes_an_allow_only_by_a_deny(pols, extra, req):
    kind, name, cap = req
    before = evaluate(pols, kind, name, cap).allowed
    after = evaluate([*pols, extra], kind, name, cap)
    if before and not after.allowed:
        assert after.decided_by is not None and after.decided_by.policy == "extra"
        assert after.decided_by.rule.access is Access.DENY
    if not any(r.access is Access.DENY for r in extra.rules):
        assert after.allowed >= before


@PROPS
@given(st.lists(st.tuples(st.sampled_from(["get", "put"]), st.sampled_from(["ca_a", "ca_b"]),
                          st.integers(1, 5), st.integers(0, 3), st.integers(0, 90_000)), max_size=60),
       st.integers(1, 6))
def test_the_cache_never_answers_for_an_older_policy_version(ops, size):
    cache = DecisionCache(max_entries=size, ttl_ms=60_000)
    newest = 0
    stored: dict[tuple, int] = {}
    now = 0
    for op, accessor, version, which, dt in ops:
        now += dt // 10
        key = (accessor, version, K.PACK, f"p{which}", C.SPAWN)
        if op == "put":
            # The decision records the version it was made under, in its token label.
            cache.put(key, Decision(True, C.SPAWN, K.PACK, f"p{which}", token=f"v{version}"), now)
            if version >= newest:
                newest, stored[key] = version, now
        else:
            got = cache.get(key, now)
            if got is not None:
                assert got.token == f"v{version}" and version >= newest
                assert 0 <= now - stored[key] < 60_000
        assert len(cache) <= size


# -- the CI example and the built-ins --------------------------------------------------------------


def docstring_example() -> dict:
    """The TOML example of the module docstring, as a user would paste it."""
    assert acl.__doc__
    return tomllib.loads(textwrap.dedent(acl.__doc__.split("::\n", 1)[1].split("\nBuilt-ins")[0]))


def test_the_documented_ci_policy_lets_runners_spawn_stop_and_log_only_ci_packs():
    ci = Policy.from_toml_dict(docstring_example())
    assert ci.name == "ci"
    for cap in (C.READ, C.SPAWN, C.STOP, C.LOGS):
        assert evaluate([ci], K.PACK, "ci-build-7", cap).allowed
    for cap in (C.DELETE, C.MIGRATE, C.EXEC_ENV, C.YIP_RECV):
        assert not evaluate([ci], K.PACK, "ci-build-7", cap).allowed
    for cap in CAPABILITIES[K.PACK]:
        assert not evaluate([ci], K.PACK, "web", cap).allowed
    assert evaluate([ci], K.NODE, "n1", C.READ).allowed
    assert not evaluate([ci], K.NODE, "n1", C.DRAIN).allowed
    assert not evaluate([ci, MANAGEMENT], K.OPERATOR, "", C.TOKENS).allowed  # its operator deny wins


def test_a_denial_names_the_missing_capability_and_the_rules_consulted():
    ci = Policy("ci", (Rule(K.PACK, "ci-*", Access.WRITE),))
    d = evaluate([ci], K.PACK, "web", C.STOP, token="ci-runner")
    assert d.explain() == ("denied: token ci-runner (policies ci) lacks 'stop' on pack 'web': "
                           "no rule matches pack 'web' (rules consulted: ci: pack 'ci-*' write)")
    err = d.to_error()
    assert isinstance(err, PermissionDenied) and err.http_status == 403
    assert err.details["capability"] == "stop" and err.details["rules_consulted"] == ["ci: pack 'ci-*' write"]
    with pytest.raises(PermissionDenied, match="lacks 'stop'"):
        d.require()
    narrow = Policy("ci", (Rule(K.PACK, "ci-*", None, (C.SPAWN,)),))
    assert "do not grant it" in evaluate([narrow], K.PACK, "ci-1", C.STOP).explain()
    ok = evaluate([ci], K.PACK, "ci-1", C.STOP, token="ci-runner")
    assert ok.explain() == "allowed: token ci-runner (policies ci) has 'stop' on pack 'ci-1': " \
                           "granted by ci: pack 'ci-*' write"


def test_long_rule_lists_are_shortened_in_explanations():
    many = Policy("many", tuple(Rule(K.PACK, f"x{i}-*", Access.WRITE) for i in range(20)))
    line = evaluate([many], K.PACK, "web", C.SPAWN).explain()
    assert line.endswith("and 12 more)") and line.count("many: pack") == 8


def test_read_grants_only_read_and_write_grants_the_whole_kind():
    r = Policy("r", (Rule(K.PACK, "*", Access.READ),))
    assert evaluate([r], K.PACK, "a", C.READ).allowed
    assert not evaluate([r], K.PACK, "a", C.LOGS).allowed and not evaluate([r], K.PACK, "a", C.EXEC_ENV).allowed
    w = Policy("w", (Rule(K.NODE, "n*", Access.WRITE),))
    assert all(evaluate([w], K.NODE, "n1", c).allowed for c in CAPABILITIES[K.NODE])
    assert not evaluate([w], K.PACK, "n1", C.READ).allowed


def test_exact_beats_prefix_and_longer_prefix_beats_shorter():
    p = Policy("p", (Rule(K.PACK, "*", Access.WRITE), Rule(K.PACK, "prod-*", Access.READ),
                     Rule(K.PACK, "prod-web", None, (C.LOGS,)), Rule(K.PACK, "prod-web*", Access.DENY)))
    assert evaluate([p], K.PACK, "dev", C.DELETE).allowed
    assert not evaluate([p], K.PACK, "prod-db", C.DELETE).allowed and evaluate([p], K.PACK, "prod-db", C.READ).allowed
    assert evaluate([p], K.PACK, "prod-web", C.LOGS).allowed and not evaluate([p], K.PACK, "prod-web", C.READ).allowed
    assert not evaluate([p], K.PACK, "prod-web2", C.READ).allowed


def test_read_only_reads_everything_but_no_logs_secrets_or_changes():
    for kind in ResourceKind:
        assert evaluate([READ_ONLY], kind, "x", C.READ).allowed
        for cap in CAPABILITIES[kind] - {C.READ}:
            assert not evaluate([READ_ONLY], kind, "x", cap).allowed


def test_pack_tokens_send_anywhere_and_receive_only_their_own_mail():
    p = pack_policy("web")
    assert evaluate([p], K.PACK, "db", C.YIP_SEND).allowed and evaluate([p], K.PACK, "web", C.YIP_SEND).allowed
    assert evaluate([p], K.PACK, "web", C.YIP_RECV).allowed and not evaluate([p], K.PACK, "db", C.YIP_RECV).allowed
    for cap in CAPABILITIES[K.PACK] - {C.YIP_SEND, C.YIP_RECV}:
        assert not evaluate([p], K.PACK, "web", cap).allowed
    tok = TokenRecord(format_accessor(bytes(16)), "0" * 64, "web-run-1", TokenKind.PACK, ("no-db",), pack="web")
    catalog = {"no-db": Policy("no-db", (Rule(K.PACK, "db", Access.DENY),))}
    assert not authorize(tok, catalog, K.PACK, "db", C.YIP_SEND).allowed  # the cluster's rules narrow it
    assert authorize(tok, catalog, K.PACK, "cache", C.YIP_SEND).allowed


def test_policy_resolution_by_token_kind():
    acc = format_accessor(bytes(range(16)))
    mgmt = TokenRecord(acc, "0" * 64, "root", TokenKind.MANAGEMENT, ("nothing",))
    assert resolve_policies(mgmt, {}) == ((MANAGEMENT,), ())
    client = TokenRecord(acc, "0" * 64, "alice", TokenKind.CLIENT, ("read-only", "gone", "ops"))
    ops = Policy("ops", (Rule(K.NODE, "*", Access.WRITE),))
    assert resolve_policies(client, {"ops": ops}) == ((READ_ONLY, ops), ("gone",))
    d = authorize(client, {"ops": ops}, K.PACK, "web", C.STOP)
    assert not d.allowed and "policies not found: gone" in d.explain() and d.token == "alice"


def test_kind_of_a_capability():
    assert kind_of(C.SPAWN) is K.PACK and kind_of(C.DRAIN) is K.NODE and kind_of(C.KEYS) is K.OPERATOR
    with pytest.raises(InvalidInput, match="name the kind"):
        kind_of(C.READ)
    with pytest.raises(InvalidInput, match="does not apply"):
        evaluate([MANAGEMENT], K.NODE, "n1", C.SPAWN)


# -- the TOML form ---------------------------------------------------------------------------------


@PROPS
@given(policies(name="pol"), st.text(max_size=20))
def test_policies_round_trip_through_toml(pol, description):
    assume(pol.rules)
    pol = Policy(pol.name, pol.rules, description)
    again = Policy.from_toml_dict(tomllib.loads(tomli_w.dumps(pol.to_dict())))
    assert again == pol


@pytest.mark.parametrize("doc, field", [
    ({"pack": {"a*": {"access": "read"}}}, "invalid policy name"),
    ({"name": "management", "pack": {"*": {"access": "read"}}}, "built in"),
    ({"name": "p", "packs": {}}, "unknown field 'packs'"),
    ({"name": "p"}, "no rules"),
    ({"name": "p", "pack": {"a*": {"access": "admin"}}}, r"pack\.'a\*'\.access: 'admin'"),
    ({"name": "p", "pack": {"a*": {"capabilities": ["fly"]}}}, r"pack\.'a\*'\.capabilities: unknown capability 'fly'"),
    ({"name": "p", "pack": {"a*": {"capabilities": "spawn"}}}, "must be a list"),
    ({"name": "p", "pack": {"a*": {"capabilities": ["cordon"]}}}, "'cordon' does not apply to pack"),
    ({"name": "p", "pack": {"a*": {"access": "deny", "capabilities": ["spawn"]}}}, "takes no capabilities"),
    ({"name": "p", "pack": {"a*": {}}}, "give an access"),
    ({"name": "p", "pack": {"a*": {"acces": "read"}}}, "unknown field 'acces'"),
    ({"name": "p", "pack": {"a*b": {"access": "read"}}}, "invalid pack rule name"),
    ({"name": "p", "pack": {"a**": {"access": "read"}}}, "one '\\*'"),
    ({"name": "p", "pack": "all"}, "pack must be a table"),
    ({"name": "p", "operator": {"*": {"access": "read"}}}, "unknown field"),
    ({"name": "p", "description": 3, "audit": {"access": "read"}}, "description must be a string"),
])
def test_bad_policies_are_refused_naming_the_field(doc, field):
    with pytest.raises(InvalidInput, match=field):
        Policy.from_toml_dict(doc)


def test_two_rules_for_the_same_resource_are_refused():
    with pytest.raises(InvalidInput, match="two rules for pack 'a\\*'"):
        Policy("p", (Rule(K.PACK, "a*", Access.READ), Rule(K.PACK, "a*", Access.WRITE)))
    with pytest.raises(InvalidInput, match="take no name"):
        Rule(K.OPERATOR, "x", Access.READ)


# -- tokens ----------------------------------------------------------------------------------------


@PROPS
@given(st.binary(min_size=32, max_size=32), st.binary(min_size=16, max_size=16), st.binary(max_size=40))
def test_secrets_are_stored_only_as_peppered_hashes(raw_secret, raw_acc, pepper):
    secret, accessor = format_secret(raw_secret), format_accessor(raw_acc)
    assert re.fullmatch(r"cs_[A-Za-z0-9_-]{43}", secret) and re.fullmatch(r"ca_[0-9a-f]{32}", accessor)
    h = hash_secret(secret, pepper)
    assert h == hash_secret(secret, pepper) and h != hash_secret(secret, pepper + b"x")
    rec = TokenRecord(accessor, h, "ci-runner", TokenKind.CLIENT, ("ci",), 1_000, 2_000)
    assert secret_matches(rec, secret, pepper) and not secret_matches(rec, secret + "x", pepper)
    assert secret not in repr(rec.to_dict()) and "secret_hash" not in rec.to_dict(with_hash=False)
    assert TokenRecord.from_dict(rec.to_dict()) == rec


def test_random_bytes_must_have_the_right_length():
    with pytest.raises(InvalidInput):
        format_secret(bytes(16))
    with pytest.raises(InvalidInput):
        format_accessor(bytes(32))
    with pytest.raises(InvalidInput):
        hash_secret("", b"p")


def test_check_token_refuses_expired_and_revoked_tokens():
    rec = TokenRecord(format_accessor(bytes(16)), "a" * 64, "ci-runner", TokenKind.CLIENT, ("ci",), 1_000, 61_000)
    check_token(rec, 60_999)
    with pytest.raises(NotAuthenticated, match="expired") as e:
        check_token(rec, 61_000)
    assert e.value.details["reason"] == "expired" and e.value.http_status == 401
    with pytest.raises(NotAuthenticated, match="revoked"):
        check_token(replace(rec, revoked=True), 2_000)
    check_token(replace(rec, expires_at_ms=None), 10**15)


@pytest.mark.parametrize("change, message", [
    ({"accessor": "abc"}, "invalid accessor"),
    ({"secret_hash": "xyz"}, "64 hex"),
    ({"kind": TokenKind.PACK}, "names its pack"),
    ({"pack": "web"}, "names its pack"),
    ({"expires_at_ms": 500}, "after created_at_ms"),
    ({"created_at_ms": -1}, "non-negative"),
    ({"policies": ("pack",)}, "invalid policy name"),
])
def test_token_records_are_validated(change, message):
    base = {"accessor": format_accessor(bytes(16)), "secret_hash": "a" * 64, "name": "t",
            "kind": TokenKind.CLIENT, "created_at_ms": 1_000}
    with pytest.raises(InvalidInput, match=message):
        TokenRecord(**{**base, **change})


# -- the cache -------------------------------------------------------------------------------------


def test_cache_entries_live_sixty_seconds_and_the_least_recent_goes_first():
    cache = DecisionCache(max_entries=2)
    d = Decision(True, C.SPAWN, K.PACK, "a")
    k1, k2, k3 = (("ca_x", 7, K.PACK, n, C.SPAWN) for n in "abc")
    cache.put(k1, d, 1_000)
    assert cache.get(k1, 60_999) is d
    assert cache.get(k1, 61_000) is None and len(cache) == 0
    cache.put(k1, d, 0)
    cache.put(k2, d, 0)
    assert cache.get(k1, 1) is d        # k1 is now the most recent
    cache.put(k3, d, 2)
    assert cache.get(k2, 3) is None and cache.get(k1, 3) is d and cache.get(k3, 3) is d
    assert cache.get(k1, -5) is None    # a clock that went back does not extend a life
    assert cache.hits == 4 and cache.misses == 3


def test_a_policy_change_makes_old_entries_unreachable():
    cache = DecisionCache()
    old = ("ca_x", 7, K.PACK, "a", C.SPAWN)
    new = ("ca_x", 8, K.PACK, "a", C.SPAWN)
    cache.put(old, Decision(True, C.SPAWN, K.PACK, "a"), 0)
    assert cache.get(new, 1) is None
    cache.put(new, Decision(False, C.SPAWN, K.PACK, "a"), 1)
    assert cache.get(old, 2) is None        # a lagging caller gets no stale answer either
    cache.put(old, Decision(True, C.SPAWN, K.PACK, "a"), 2)
    assert cache.get(old, 3) is None and cache.get(new, 3) is not None
    with pytest.raises(InvalidInput):
        DecisionCache(max_entries=0)
