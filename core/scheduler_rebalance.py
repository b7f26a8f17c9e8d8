"""Rebalancing: the one thing that moves packs that are running fine, and only onto newcomers.

Stickiness is the rule everywhere else: ``Scheduler.place`` never moves a pack it did not get
in the call; when a node goes down, the caller releases that node's packs and places them again,
and nothing else moves because nothing else is asked. Nodes that join therefore start empty.
``plan`` fills them up to their fair share with the packs consistent hashing now hands them
(``scheduler_rank.natural``), so the moves are the minimal ones and never between two nodes
that were there before. Pure; the moves are applied to the scheduler's accounting as they are
decided, through the ``reserve`` and ``release`` the caller passes in.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

from canidae.core.errors import InvalidInput
from canidae.core.scheduler_feasible import ScopeKey, fits, scope, scope_key
from canidae.core.scheduler_rank import natural, rank
from canidae.core.scheduler_tree import Fleet, Group, hashes
from canidae.core.types import Migration, PackSpec, Resources

REASON_REBALANCE = "rebalance onto a new node"

Account = Callable[[str, Resources, PackSpec], None]


def plan(
    fleet: Fleet,
    assignment: Mapping[str, str],
    specs: Mapping[str, PackSpec],
    newcomers: Iterable[str] | None,
    reserve: Account,
    release: Account,
) -> list[Migration]:
    """Moves that fill newcomers up to their fair share; nothing moves between other nodes.

    See ``Scheduler.rebalance_plan``; ``fleet`` must be refreshed.
    """
    slots = fleet.slots
    if newcomers is None:
        held = set(assignment.values())
        new_ids = [k for k in sorted(slots) if slots[k].ready and k not in held]
    else:
        new_ids = sorted(set(newcomers))
        for nid in new_ids:
            fleet.slot(nid)
    new = {nid for nid in new_ids if slots[nid].ready}
    root = fleet.root
    if not new or root.wq == 0:
        return []
    total = sum(1 for nid in assignment.values() if nid in slots and slots[nid].ready)
    share = {nid: total * slots[nid].wq // root.wq for nid in sorted(new)}
    scopes: dict[ScopeKey, list[Group] | None] = {}
    moves: list[Migration] = []
    for name in sorted(assignment):
        source = assignment[name]
        if source in new:
            continue
        spec = specs.get(name)
        if spec is None:
            raise InvalidInput(f"rebalance: no spec for pack {name!r}")
        c = spec.constraints
        if c.node is not None:
            continue
        skey = scope_key(c)
        if skey not in scopes:
            scopes[skey] = scope(fleet, c)
        groups = scopes[skey]
        if groups is None:
            continue
        hs = hashes(name)
        target = natural(rank(groups, hs)[0], hs)
        if target is None or target.id not in new or target.used_packs >= share[target.id]:
            continue
        if not fits(target, spec.resources.cpu, spec.resources.mem, frozenset()):
            continue
        src = slots.get(source)
        if (
            c.spread is not None
            and src is not None
            and src.node.location.at(c.spread) != target.node.location.at(c.spread)
        ):
            continue
        if src is not None:
            release(source, spec.resources, spec)
        reserve(target.id, spec.resources, spec)
        moves.append(Migration(name, source, target.id, REASON_REBALANCE))
    return moves


__all__ = ["REASON_REBALANCE", "plan"]
