"""The keyrings on a server agent: their routes, their rotation, and the leader's background work.

Routes (``/v1/keys...``; API tokens need the operator ``keys`` capability to change, ``read`` to
look):

* ``GET /v1/keys``: every key's id, purpose, state and regions (never material);
* ``GET /v1/keys/status``: per purpose the key that signs, and for the ``secrets`` keyring how
  many sealed values are under it (the rewrap's n of m), and per retiring key what still needs it;
* ``POST /v1/keys/rotate`` ``{"purposes", "prepublish_s", "by_region"}``: starts a rotation in the
  background on this server and answers the new key ids at once (``keys status`` follows it);
* ``POST /v1/keys/retire`` ``{"id"}``: a retiring key is dropped, refused while anything needs it;
* ``GET /v1/keys/sealed``: the keyrings' replicated form, wrapped material included, for agents
  (client agents unwrap it with their key file) and the admin token only;
* ``POST /v1/acl/bootstrap`` ``{"hash"}``: the admin token's hash is replaced (bootstrap token
  rotation: the CLI makes the new token and sends only its hash); admin token only.

A rotation (``Rotation``) publishes one new key per purpose, prepublished, so every agent has it
and accepts what it signs; waits ``prepublish_s`` (at least ``MIN_PREPUBLISH_S``, two refresh
periods of the agents) and until every server applied it; then, with ``by_region``, activates it
region after region in name order (agents of a switched region sign with it, the others still
with the old key: both verify everywhere); then activates it everywhere, the old key becoming
retiring. A rotation left part way (its server stopped) is carried out by the next ``rotate``
of that purpose, on any server. ``KeyKeeper`` keeps this server's ``ClusterKeys`` in step with its replica and, on the
leader only, seeds the keyrings once and rewraps sealed pack secrets under the active key, a
batch per pass. Retiring keys are retired by an operator (``keys retire``), once nothing needs them.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.routing import Route

from canidae.agent.client import schema
from canidae.agent.httpedge import Edge, principal_of, read_body, request_id
from canidae.agent.keyring import new_record, seed_keys
from canidae.agent.server.acl_routes import in_force_everywhere
from canidae.core.acl import Capability, ResourceKind
from canidae.core.commands import KeyringOp
from canidae.core.errors import CanidaeError, InvalidInput, WrongState
from canidae.core.keyring import KEY_ID_RE, PURPOSES, KeyState, parse_op, sealed_key_id

if TYPE_CHECKING:
    from canidae.agent.server.control import ControlPlane

log = logging.getLogger("canidae.keys")

MIN_PREPUBLISH_S = 2.0      # agents refresh their keys every second: two periods and every one has the new key
MAX_PREPUBLISH_S = 86_400.0
REGION_STEP_S = 1.0         # between two regions of a --by region rollout
REWRAP_BATCH = 256          # packs per rewrap command
KEEPER_PERIOD_S = 0.2


def _uuid() -> str:
    import uuid
    return uuid.uuid4().hex


class KeyKeeper:
    """This server's keys kept in step with its replica; on the leader, seeding and rewrapping."""

    def __init__(self, plane: ControlPlane) -> None:
        self.plane = plane
        self.rotations: list[dict[str, Any]] = []  # rotations started on this server (status)
        self._last_pass = 0.0

    def refresh(self) -> None:
        plane = self.plane
        if plane.replica is None:
            return
        with plane.replica.lock:
            rings = plane.state.keyrings
            if rings.version == plane.keys.rings.version and plane.keys.updated:
                return
            doc = rings.to_dict()
        plane.keys.update(doc)

    async def run(self) -> None:
        while True:
            try:
                self.refresh()
                if self.plane.is_leader() and time.monotonic() - self._last_pass >= 1.0:
                    self._last_pass = time.monotonic()
                    await self._seed()
                    await self._rewrap()
            except asyncio.CancelledError:
                raise
            except CanidaeError as e:  # a leader change mid-way: the next pass tries again
                log.info("keyring housekeeping: %s", e.message)
            except Exception:  # never stop the loop: the next pass tries again
                log.exception("keyring housekeeping failed")
            await asyncio.sleep(KEEPER_PERIOD_S)

    async def _seed(self) -> None:
        plane = self.plane
        with plane.replica.lock:  # type: ignore[union-attr]
            missing = [p for p in PURPOSES if not plane.state.keyrings.initialized(p)]
        if not missing:
            return
        keys = [k for k in seed_keys(plane.keys.file, plane.cfg.cluster_password) if k.purpose in missing]
        await plane.propose(KeyringOp(id=_uuid(), **plane.stamp(), by="keyring",
                                      op={"op": "init", "keys": [k.to_dict() for k in keys]}))

    async def _rewrap(self) -> None:
        plane = self.plane
        batch: dict[str, dict[str, str]] = {}
        with plane.replica.lock:  # type: ignore[union-attr]
            rings = plane.state.keyrings
            active = rings.active("secrets")
            if active is None or active.id not in plane.keys.rings.keys:
                return
            # Only a key other than the active one can have sealed something: none, nothing to scan.
            if all(k.state in (KeyState.ACTIVE, KeyState.RETIRED) for k in rings.of("secrets")):
                return
            for name, rec in plane.state.packs.items():
                if rec.spec.secrets and any(sealed_key_id(v) != active.id for _, v in rec.spec.secrets):
                    batch[name] = dict(rec.spec.secrets)
                    if len(batch) >= REWRAP_BATCH:
                        break
        if not batch:
            return
        fresh = {name: {k: [v, plane.keys.reseal(k, v)] for k, v in sealed.items()} for name, sealed in batch.items()}
        out = await plane.propose(KeyringOp(id=_uuid(), **plane.stamp(), by="keyring",
                                            op={"op": "rewrap", "packs": fresh}))
        log.info("rewrapped the secrets of %s pack(s) under key %s", out.get("rewrapped"), active.id)

    # ------------------------------------------------------------------ rotation

    def running(self) -> set[str]:
        """Purposes whose rotation this server is carrying out now."""
        return {p for r in self.rotations if r["step"] not in ("active", "failed") for p in r["keys"]}

    async def rotate(self, purposes: list[str], prepublish_s: float, by_region: bool, by: str,
                     resume: dict[str, str] | None = None) -> dict[str, Any]:
        """Publish a new key per purpose (or take over the prepublished ones of ``resume``: a rotation
        whose server stopped part way) and carry the rotation out in the background."""
        plane = self.plane
        resume = resume or {}
        keys = [new_record(plane.keys.file, p, KeyState.PREPUBLISHED) for p in purposes if p not in resume]
        if keys:
            await plane.propose(KeyringOp(id=_uuid(), **plane.stamp(), by=by,
                                          op={"op": "publish", "keys": [k.to_dict() for k in keys]}))
        with plane.replica.lock:  # type: ignore[union-attr]
            regions = sorted({n.location.region for n in plane.state.nodes.values()}) if by_region else []
        ids = {**{k.purpose: k.id for k in keys}, **resume}
        rotation = {"keys": {p: ids[p] for p in purposes}, "by_region": by_region, "regions": regions,
                    "step": "prepublished", "regions_done": [], "started_at_ms": plane.stamp()["at"],
                    "resumed": sorted(resume), "error": None}
        self.rotations = (self.rotations + [rotation])[-10:]
        asyncio.get_running_loop().create_task(self._finish(rotation, max(prepublish_s, MIN_PREPUBLISH_S), by))
        return rotation

    async def _finish(self, rotation: dict[str, Any], wait_s: float, by: str) -> None:
        plane = self.plane
        try:
            await asyncio.sleep(wait_s)
            await in_force_everywhere(plane)
            for region in rotation["regions"]:
                for purpose, kid in rotation["keys"].items():
                    await plane.propose(KeyringOp(id=_uuid(), **plane.stamp(), by=by,
                                                  op={"op": "activate", "purpose": purpose, "id": kid,
                                                      "regions": [region]}))
                rotation["regions_done"].append(region)
                rotation["step"] = f"active in {', '.join(rotation['regions_done'])}"
                await asyncio.sleep(REGION_STEP_S)
            for purpose, kid in rotation["keys"].items():
                await plane.propose(KeyringOp(id=_uuid(), **plane.stamp(), by=by,
                                              op={"op": "activate", "purpose": purpose, "id": kid}))
            rotation["step"] = "active"
        except Exception as e:  # said in keys status; the keys stay prepublished: the next rotate carries them out
            log.exception("rotation %s failed", rotation["keys"])
            rotation["error"] = str(e)
            rotation["step"] = "failed"


def _status(plane: ControlPlane, keeper: KeyKeeper) -> dict[str, Any]:
    st = plane.state
    with plane.replica.lock:  # type: ignore[union-attr]
        rings = st.keyrings
        in_use = st.keys_in_use(int(time.time() * 1000))
        sealed_total = sum(len(r.spec.secrets) for r in st.packs.values())
        active_secrets = rings.active("secrets")
        under_active = in_use.get(active_secrets.id, 0) if active_secrets else 0
        purposes = {}
        for p in PURPOSES:
            act = rings.active(p)
            purposes[p] = {
                "active": act.id if act else None,
                "prepublished": [{"id": k.id, "regions": list(k.regions)} for k in rings.of(p)
                                 if k.state is KeyState.PREPUBLISHED],
                "retiring": [{"id": k.id, "in_use": in_use.get(k.id, 0)} for k in rings.of(p)
                             if k.state is KeyState.RETIRING],
            }
        out = {"purposes": purposes,
               "rewrap": {"sealed_values": sealed_total, "under_active_key": under_active,
                          "done": sealed_total == under_active},
               "admin_epoch": rings.admin_epoch, "version": rings.version}
    out["rotations"] = keeper.rotations
    return out


def keys_routes(plane: ControlPlane | None, edge: Edge, keeper: KeyKeeper | None) -> list[Route]:
    endpoint = edge.endpoint
    agent: Any = plane  # None on a client agent: the edge forwards before a handler runs

    async def list_keys(request: Request) -> Any:
        st = await agent.read_state(False)
        with agent.replica.lock:
            return {"keys": [k.to_dict(with_material=False) for k in st.keyrings.keys.values()]}

    async def status(request: Request) -> Any:
        await agent.read_state(False)
        return _status(agent, keeper)  # type: ignore[arg-type]

    async def rotate(request: Request) -> Any:
        body = await read_body(request, edge.limit, schema.KeysRotateIn)
        purposes = body.purposes or list(PURPOSES)
        if not isinstance(purposes, list) or not all(p in PURPOSES for p in purposes) or len(set(purposes)) != len(purposes):
            raise InvalidInput(f"purposes must be a list of distinct purposes: {', '.join(PURPOSES)}")
        pre = MIN_PREPUBLISH_S if body.prepublish_s is None else body.prepublish_s
        if not 0 <= pre <= MAX_PREPUBLISH_S:
            raise InvalidInput(f"prepublish_s must be a number of seconds 0..{int(MAX_PREPUBLISH_S)}")
        by_region = body.by_region
        await agent.read_state(False)
        assert keeper is not None
        with agent.replica.lock:
            rings = agent.state.keyrings
            # A prepublished key whose rotation no longer runs here (its server stopped part way) is
            # taken over and carried out; one this server is rotating now is refused.
            resume = {p: k.id for p in purposes for k in rings.of(p) if k.state is KeyState.PREPUBLISHED}
            unseeded = [p for p in purposes if not rings.initialized(p)]
        if unseeded:
            raise WrongState(f"the {unseeded[0]} keyring is not seeded yet (the leader does it at once): try again")
        busy = sorted(set(purposes) & keeper.running())
        if busy:
            raise WrongState(f"a rotation of the {busy[0]} keyring is under way: see 'canidae keys status'")
        rotation = await keeper.rotate(purposes, float(pre), by_region, principal_of(request).public_id or "admin",
                                       resume)
        return {"ok": True, "rotation": rotation}

    async def retire(request: Request) -> Any:
        body = await read_body(request, edge.limit, schema.KeyRetireIn)
        kid = body.id
        if not isinstance(kid, str) or not KEY_ID_RE.match(kid):
            raise InvalidInput("id must be a key id (8 hex digits)")
        st = await agent.read_state(False)
        with agent.replica.lock:
            rec = st.keyrings.keys.get(kid)
        if rec is None:
            from canidae.core.errors import NotFound
            raise NotFound(f"no key {kid}")
        answer = await agent.propose(KeyringOp(id=request_id(request, body.request_id), **agent.stamp(),
                                               by=principal_of(request).public_id or "admin",
                                               op={"op": "retire", "purpose": rec.purpose, "id": kid}))
        return {**answer, **await in_force_everywhere(agent)}

    async def sealed(request: Request) -> Any:
        st = await agent.read_state(True)
        with agent.replica.lock:
            return st.keyrings.to_dict()

    async def bootstrap(request: Request) -> Any:
        body = await read_body(request, edge.limit, schema.AdminHashIn)
        op = parse_op({"op": "admin", "hash": body.hash})  # refused here (400), never in the log
        answer = await agent.propose(KeyringOp(id=request_id(request, body.request_id), **agent.stamp(), by="admin",
                                               op=op))
        return {**answer, **await in_force_everywhere(agent)}

    read = (ResourceKind.OPERATOR, Capability.READ, None)
    keys = (ResourceKind.OPERATOR, Capability.KEYS, None)
    return [
        Route("/v1/keys", endpoint(list_keys, need=read), methods=["GET"]),
        Route("/v1/keys/status", endpoint(status, need=read), methods=["GET"]),
        Route("/v1/keys/rotate", endpoint(rotate, need=keys), methods=["POST"]),
        Route("/v1/keys/retire", endpoint(retire, need=keys), methods=["POST"]),
        Route("/v1/keys/sealed", endpoint(sealed, nodes="read"), methods=["GET"]),
        Route("/v1/acl/bootstrap", endpoint(bootstrap), methods=["POST"]),
    ]


__all__ = ["KeyKeeper", "keys_routes"]
