"""Benchmark of access control (canidae.core.acl) and the audit chain (canidae.core.audit).

A token with 20 policies of 50 rules each (pack prefixes of many lengths, exact pack names, node
and operator rules) asks for random capabilities on random pack names. Figures, per request, in
microseconds, best of several runs with the median alongside (the machine may be shared):

- uncached: ``PolicySet.evaluate`` over the token's 20 policies, compiled once per token and
  policy version (what a cache miss costs an agent); compiling them (``PolicySet.for_token``,
  once per token and version); and the one-off ``authorize`` (resolve, compile, evaluate);
- cached: ``DecisionCache.get`` on a hit, and the whole cached check an agent makes per request
  (``check_token``, the key, the lookup);
- audit: ``chain`` (redact, encode, hash) per record and ``verify_log`` per record.

Targets: a cached decision <= 5 us, an uncached one <= 100 us. Nothing here is a test.

    python bench/acl.py [--json] [--repeat N]
"""

from __future__ import annotations

import argparse
import gc
import json
import random
import statistics
import time
from collections.abc import Callable
from typing import Any

from canidae.core.acl import (
    CAPABILITIES,
    Access,
    DecisionCache,
    Policy,
    PolicySet,
    ResourceKind,
    Rule,
    TokenKind,
    TokenRecord,
    authorize,
    check_token,
    evaluate,
    format_accessor,
)
from canidae.core.audit import GENESIS_HASH, chain, encode_log, verify_log

POLICIES, RULES = 20, 50
REQUESTS = 20_000


def per_call_us(fn: Callable[[], int], repeat: int) -> tuple[float, float]:
    """(best, median) microseconds per call; ``fn`` runs a batch and returns its size."""
    times = []
    for _ in range(repeat):
        gc.collect()
        t = time.perf_counter()
        n = fn()
        times.append((time.perf_counter() - t) / n * 1e6)
    return min(times), statistics.median(times)


def make_policies(rng: random.Random, lengths: int) -> list[Policy]:
    """20 policies of 50 rules; pack prefixes drawn over ``lengths`` distinct lengths."""
    caps = sorted(CAPABILITIES[ResourceKind.PACK])
    out = []
    for p in range(POLICIES):
        rules: dict[tuple[ResourceKind, str], Rule] = {}
        rules[(ResourceKind.NODE, "*")] = Rule(ResourceKind.NODE, "*", Access.READ)
        rules[(ResourceKind.OPERATOR, "*")] = Rule(ResourceKind.OPERATOR, "*", Access.READ)
        while len(rules) < RULES:
            stem = "".join(rng.choice("abcd") for _ in range(1 + rng.randrange(lengths)))
            match = stem if rng.random() < 0.2 else stem + "*"
            access = rng.choice([None, Access.READ, Access.WRITE, Access.DENY] + [None] * 4)
            chosen = () if access is Access.DENY else tuple(rng.sample(caps, 0 if access else 2))
            rules[(ResourceKind.PACK, match)] = Rule(ResourceKind.PACK, match, access, chosen)
        out.append(Policy(f"team-{p}", tuple(rules.values())))
    return out


def run(repeat: int) -> dict[str, Any]:
    rng = random.Random(7)
    results: dict[str, Any] = {"policies": POLICIES, "rules_per_policy": RULES, "requests": REQUESTS}
    caps = sorted(CAPABILITIES[ResourceKind.PACK])
    names = ["".join(rng.choice("abcd") for _ in range(rng.randrange(3, 16))) for _ in range(REQUESTS)]
    reqs = [(n, rng.choice(caps)) for n in names]
    for label, lengths in (("typical", 6), ("many prefix lengths", 14)):
        pols = make_policies(rng, lengths)
        catalog = {p.name: p for p in pols}
        token = TokenRecord(format_accessor(bytes(16)), "0" * 64, "bench", TokenKind.CLIENT,
                            tuple(catalog), 0, None)
        compiled = PolicySet.for_token(token, catalog)
        allowed = sum(compiled.evaluate(ResourceKind.PACK, n, c).allowed for n, c in reqs)
        assert all(compiled.evaluate(ResourceKind.PACK, n, c) == evaluate(pols, ResourceKind.PACK, n, c,
                                                                           token="bench")
                   for n, c in reqs[:200])

        def uncached(compiled: PolicySet = compiled) -> int:
            for n, c in reqs:
                compiled.evaluate(ResourceKind.PACK, n, c)
            return len(reqs)

        def compiles(token: TokenRecord = token, catalog: dict[str, Policy] = catalog) -> int:
            for _ in range(200):
                PolicySet.for_token(token, catalog)
            return 200

        def one_off(token: TokenRecord = token, catalog: dict[str, Policy] = catalog) -> int:
            for n, c in reqs[:200]:
                authorize(token, catalog, ResourceKind.PACK, n, c)
            return 200

        results[label] = {"allowed_share": round(allowed / len(reqs), 3),
                          "evaluate_us": per_call_us(uncached, repeat),
                          "compile_us": per_call_us(compiles, repeat),
                          "authorize_us": per_call_us(one_off, repeat)}

    cache = DecisionCache(max_entries=100_000)
    compiled = PolicySet(make_policies(rng, 6))
    token = TokenRecord(format_accessor(bytes(16)), "0" * 64, "bench", TokenKind.CLIENT, (), 0, 10**15)
    keys = [(token.accessor, 42, ResourceKind.PACK, n, c) for n, c in reqs]
    for key in keys:
        cache.put(key, compiled.evaluate(ResourceKind.PACK, key[3], key[4]), 1_000)

    def hits() -> int:
        for key in keys:
            cache.get(key, 2_000)
        return len(keys)

    def cached_check() -> int:
        for n, c in reqs:
            check_token(token, 2_000)
            d = cache.get((token.accessor, 42, ResourceKind.PACK, n, c), 2_000)
            assert d is not None
        return len(reqs)

    results["cache_hit_us"] = per_call_us(hits, repeat)
    results["cached_check_us"] = per_call_us(cached_check, repeat)

    fields = [{"seq": i + 1, "at_ms": 1_700_000_000_000 + i, "accessor": token.accessor, "agent": "n1",
               "remote": "10.0.0.7:51234", "action": "pack.spawn", "target": f"web-{i}", "outcome": "ok",
               "request_id": f"req-{i:08d}", "detail": {"cpu": 500, "mem": 256}} for i in range(5_000)]
    log: list[Any] = []

    def chained() -> int:
        log.clear()
        prev = GENESIS_HASH
        for f in fields:
            log.append(chain(prev, f))
            prev = log[-1].hash
        return len(fields)

    results["audit_chain_us"] = per_call_us(chained, repeat)
    data = encode_log(log)
    results["audit_verify_log_us"] = per_call_us(lambda: verify_log(data).checked, repeat)
    return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", action="store_true", help="print one JSON document")
    ap.add_argument("--repeat", type=int, default=5, help="runs per figure (best and median are shown)")
    args = ap.parse_args()
    r = run(args.repeat)
    if args.json:
        print(json.dumps(r, indent=2))
        return
    print(f"{r['policies']} policies x {r['rules_per_policy']} rules, {r['requests']} requests; "
          "microseconds per call, best / median")
    for label in ("typical", "many prefix lengths"):
        s = r[label]
        print(f"  uncached PolicySet.evaluate ({label}, {s['allowed_share']:.0%} allowed): "
              f"{s['evaluate_us'][0]:.1f} / {s['evaluate_us'][1]:.1f}")
        print(f"  compile the token's policies ({label}): {s['compile_us'][0]:.0f} / {s['compile_us'][1]:.0f}")
        print(f"  one-off authorize ({label}): {s['authorize_us'][0]:.0f} / {s['authorize_us'][1]:.0f}")
    print(f"  cache hit (get): {r['cache_hit_us'][0]:.2f} / {r['cache_hit_us'][1]:.2f}")
    print(f"  cached check (check_token + key + get): {r['cached_check_us'][0]:.2f} / {r['cached_check_us'][1]:.2f}")
    print(f"  audit chain per record: {r['audit_chain_us'][0]:.1f} / {r['audit_chain_us'][1]:.1f}")
    print(f"  audit verify_log per record: {r['audit_verify_log_us'][0]:.1f} / {r['audit_verify_log_us'][1]:.1f}")


if __name__ == "__main__":
    main()
