"""Benchmark of the drill soak checker (canidae.core.history_check): how long the per-pack
linearizability search and the whole report take on histories the size a soak records.

Histories are made by running the sequential pack semantics at random linearization points inside
each operation's window, with concurrent client processes (so they are linearizable); a
"corrupted" variant then changes some reads to a state the pack never had there, which makes the
search exhaust every order of those packs before it answers. One thread; timings are the best of
``--repeat`` runs. Nothing here is a test: it reports figures, it never fails on a slow one.

    python bench/history_check.py [--json] [--repeat N] [--seed S]
"""

from __future__ import annotations

import argparse
import json
import random
import time
from typing import Any

from canidae.core.history_check import (
    FinalObservations,
    Op,
    OpKind,
    Outcome,
    PackView,
    check_history,
    linearize_keys,
)

LIVE = ("created", "pending", "placed", "running")
STOPPED = ("stopping", "stopped")


def make_history(
    rng: random.Random, ops: int, keys: int, processes: int, hot_keys: int = 0, hot_share: float = 0.0,
    info: float = 0.03, corrupt: float = 0.0,
) -> list[Op]:
    """``ops`` operations by ``processes`` closed-loop clients; ``hot_share`` of them on ``hot_keys``."""
    free = [0] * processes
    plan = []
    for i in range(ops):
        p = i % processes
        invoke = free[p] + rng.randint(0, 2)
        at = invoke + rng.randint(0, 20)
        complete = at + rng.randint(0, 20)
        free[p] = complete + 1
        hot = hot_keys and rng.random() < hot_share
        key = f"hot-{rng.randrange(hot_keys)}" if hot else f"pack-{rng.randrange(keys)}"
        kind = rng.choices([OpKind.SPAWN, OpKind.STOP, OpKind.READ, OpKind.STALE_READ], [25, 15, 50, 10])[0]
        fate = "ok" if rng.random() >= info else rng.choice(["lost", "dropped"])
        plan.append((at, p, key, kind, invoke, complete, fate))
    plan.sort(key=lambda x: x[0])
    state: dict[str, str] = {}
    out = []
    for _at, p, key, kind, invoke, complete, fate in plan:
        now = state.get(key, "absent")
        if fate == "dropped":
            out.append(Op(p, kind, key, Outcome.INFO, invoke, None, error="timeout"))
            continue
        outcome = Outcome.INFO if fate == "lost" else Outcome.OK
        end = None if fate == "lost" else complete
        if kind is OpKind.SPAWN:
            if now == "absent":
                state[key] = rng.choice(LIVE)
                out.append(Op(p, kind, key, outcome, invoke, end))
            else:
                out.append(Op(p, kind, key, outcome if fate == "lost" else Outcome.FAIL, invoke, end, error="exists"))
        elif kind is OpKind.STOP:
            if now == "absent":
                out.append(Op(p, kind, key, outcome if fate == "lost" else Outcome.FAIL, invoke, end,
                              error="not_found"))
            else:
                state[key] = rng.choice(STOPPED) if now not in STOPPED else now
                out.append(Op(p, kind, key, outcome, invoke, end))
        elif fate == "lost":
            out.append(Op(p, kind, key, Outcome.INFO, invoke, None))
        else:
            seen = now
            if corrupt and kind is OpKind.READ and rng.random() < corrupt:
                seen = "absent" if now != "absent" else "stopped"
            out.append(Op(p, kind, key, Outcome.OK, invoke, complete, output=seen))
    return out


def final_of(history: list[Op]) -> FinalObservations:
    """A final state that agrees with the history's acknowledged spawns (the runner's job, faked)."""
    acked = sorted({op.key for op in history if op.kind is OpKind.SPAWN and op.outcome is Outcome.OK})
    state = {k: PackView("running", f"n{i % 5}", 1) for i, k in enumerate(acked)}
    running: dict[str, dict[str, int]] = {f"n{i}": {} for i in range(5)}
    for k, v in state.items():
        assert v.node is not None
        running[v.node][k] = 1
    return FinalObservations(state, running, {"s1": "d", "s2": "d", "s3": "d"})


def best(fn: Any, repeat: int) -> tuple[float, Any]:
    times, result = [], None
    for _ in range(repeat):
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return min(times), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    parser.add_argument("--repeat", type=int, default=3, help="runs per case; the best is kept")
    parser.add_argument("--seed", type=int, default=1, help="seed of the generated histories")
    args = parser.parse_args()
    cases = [
        ("soak 20k ops / 2k packs", {"ops": 20_000, "keys": 2_000, "processes": 10}),
        ("soak 20k ops / 2k packs, 1% reads corrupted", {"ops": 20_000, "keys": 2_000, "processes": 10, "corrupt": 0.01}),
        ("20k ops, 20% on 10 hot packs", {"ops": 20_000, "keys": 2_000, "processes": 10, "hot_keys": 10, "hot_share": 0.2}),
        ("2k ops on 1 pack, 10 clients", {"ops": 2_000, "keys": 1, "processes": 10}),
        ("2k ops on 1 pack, 10 clients, corrupted", {"ops": 2_000, "keys": 1, "processes": 10, "corrupt": 0.01}),
        ("100k ops / 10k packs", {"ops": 100_000, "keys": 10_000, "processes": 20}),
    ]
    rows = []
    for name, kw in cases:
        history = make_history(random.Random(args.seed), **kw)  # type: ignore[arg-type]
        lin_s, results = best(lambda h=history: linearize_keys(h), args.repeat)
        all_s, report = best(lambda h=history: check_history(h, final_of(h)), args.repeat)
        rows.append({
            "case": name, "ops": len(history), "keys": len(results),
            "info_ops": sum(op.outcome is Outcome.INFO for op in history),
            "bad_keys": sum(r.valid is False for r in results),
            "steps": sum(r.explored for r in results), "max_steps_one_key": max(r.explored for r in results),
            "linearize_s": round(lin_s, 3), "report_s": round(all_s, 3), "report_ok": report.ok,
        })
    if args.json:
        print(json.dumps({"seed": args.seed, "repeat": args.repeat, "cases": rows}, indent=2))
        return
    head = ["case", "ops", "keys", "info_ops", "bad_keys", "steps", "max_steps_one_key", "linearize_s", "report_s"]
    widths = [max(len(h), *(len(str(r[h])) for r in rows)) for h in head]
    print("  ".join(h.ljust(w) for h, w in zip(head, widths, strict=True)))
    for r in rows:
        print("  ".join(str(r[h]).ljust(w) for h, w in zip(head, widths, strict=True)))


if __name__ == "__main__":
    main()
