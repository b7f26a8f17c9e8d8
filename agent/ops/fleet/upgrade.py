"""``fleet upgrade``: a new canidae on every host of an inventory, rolling, with the cluster up.

Servers go one at a time, the current leader last (so the group elects once, not once per
server). Before a server that must change is stopped, every other server must answer as a Raft member and enough
of them that the group keeps quorum without it; once it is back, it must have rejoined (follower
or leader) and applied at least the log the leader had committed before it stopped, and the
group must have a leader with quorum again, before the next one. Then clients, ``batch`` at a
time: each is drained first (``agent.ops.drain``, as ``canidae node drain``: its packs run
elsewhere before its agent stops), upgraded, and made ready again.

The per-host work is ``Bootstrap.host``: a host whose agent already runs this exact config (its
hash covers the wheels) is ``unchanged`` and left alone, so a re-run, or a run after a failure,
only touches what is left. The first failure stops the run: the hosts not reached are
``skipped``, and the table says where it stopped and why.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import asdict, dataclass
from typing import Any


from canidae.agent.client.calls import Client, Target
from canidae.agent.ops.drain import drain_if_known
from canidae.agent.ops.fleet.bootstrap import Bootstrap, HostOutcome, StepFailed, ca_file, status
from canidae.agent.ops.fleet.inventory import Host
from canidae.core.errors import CanidaeError, OperationFailed
from canidae.core.types import Role

DRAIN_TIMEOUT_S = 180.0
REJOIN_TIMEOUT_S = 60.0


@dataclass
class Upgrade:
    boot: Bootstrap
    batch: int = 1   # clients upgraded at once

    @property
    def _token(self) -> str:
        return self.boot.identity.admin_token

    def _client(self) -> Client:
        return Client(Target(tuple(s.api for s in self.boot.inv.servers), self._token, ca=ca_file(self.boot.inv)),
                      timeout=5.0)

    async def run(self, hosts: list[Host]) -> dict[str, Any]:
        t0 = time.monotonic()
        inv = self.boot.inv
        before = {r["host"]: r.get("version") for r in await status(inv, self._token)}
        outcomes: dict[str, HostOutcome] = {}
        stopped = ""
        try:
            leader = await self.boot.wait_leader()
        except OperationFailed as e:
            leader, stopped = "", f"no leader before the upgrade: {e.message}"
        servers = sorted((h for h in hosts if h.role is Role.SERVER), key=lambda h: h.name == leader)
        clients = [h for h in hosts if h.role is Role.CLIENT]
        if not stopped:
            for h in servers:
                o = await self._server(h)
                outcomes[h.name] = o
                self._say(o)
                if o.status not in ("ok", "unchanged"):
                    stopped = f"{h.name} failed at {o.step}"
                    break
        if not stopped:
            for i in range(0, len(clients), self.batch):
                batch = clients[i:i + self.batch]
                done = await asyncio.gather(*(self._client_host(h) for h in batch))
                for o in done:
                    outcomes[o.host] = o
                    self._say(o)
                bad = [o.host for o in done if o.status not in ("ok", "unchanged")]
                if bad:
                    stopped = f"{', '.join(bad)} failed"
                    break
        for h in hosts:
            if h.name not in outcomes:
                outcomes[h.name] = HostOutcome(h.name, h.role.value, h.address, "skipped", "",
                                               f"not reached: {stopped}")
        after = {r["host"]: r.get("version") for r in await status(inv, self._token)}
        ordered = [outcomes[h.name] for h in servers + clients]
        rows = [{**asdict(o), "version_before": before.get(o.host), "version": after.get(o.host)} for o in ordered]
        return {"inventory": inv.path, "cluster": inv.name, "seconds": round(time.monotonic() - t0, 3),
                "target": {"wheels": self.boot.wheels.digest, "canidae": self.boot.wheels.canidae_wheel},
                "hosts": rows, "stopped": stopped,
                "upgraded": sum(o.status == "ok" for o in ordered),
                "unchanged": sum(o.status == "unchanged" for o in ordered),
                "failed": [o.host for o in ordered if o.status in ("failed", "unreachable")],
                "skipped": [o.host for o in ordered if o.status == "skipped"]}

    def _say(self, o: HostOutcome) -> None:
        self.boot.say(f"{o.host}: {o.status}" + (f" at {o.step}: {o.error}" if o.error else ""))

    # ------------------------------------------------------------------ servers

    async def _server(self, h: Host) -> HostOutcome:
        commit: list[int] = []

        async def gate(host: Host, running: bool) -> None:
            try:
                commit.append(await self._quorum_without(host))
            except OperationFailed as e:
                raise StepFailed("quorum", e.message) from None

        o = await self.boot.host(h, before_change=gate)
        if o.status == "ok" and commit:
            try:
                await self._rejoined(h, commit[0])
                await self.boot.wait_leader()
            except OperationFailed as e:
                o.status, o.step, o.error = "failed", "rejoin", e.message
        return o

    async def _quorum_without(self, h: Host) -> int:
        """Refuse (``OperationFailed``) unless the other servers keep quorum without ``h``; the
        commit index the leader has now."""
        servers = self.boot.inv.servers
        need = len(servers) // 2 + 1
        up: list[str] = []
        commit = 0
        async with self.boot.agent_http() as http:
            for s in servers:
                st = await self.boot.server_status(http, s.api)
                if st and st.get("raft_state") == "leader":
                    commit = int(st.get("commit_index") or 0)
                if s.name != h.name and st and st.get("raft_state") in ("leader", "follower"):
                    up.append(s.name)
        if len(servers) > 1 and len(up) < need:
            raise OperationFailed(f"stopping {h.name} would leave {len(up)} of {len(servers)} servers "
                                  f"({', '.join(up) or 'none'}) up; quorum needs {need}: bring the others up first")
        return commit

    async def _rejoined(self, h: Host, commit: int) -> None:
        """Wait until ``h`` is a Raft member again and has applied at least ``commit``."""
        deadline = time.monotonic() + REJOIN_TIMEOUT_S
        last: dict[str, Any] | None = None
        async with self.boot.agent_http() as http:
            while time.monotonic() < deadline:
                last = await self.boot.server_status(http, h.api)
                if last and last.get("raft_state") in ("leader", "follower") and \
                        int(last.get("last_applied") or 0) >= commit:
                    return
                await asyncio.sleep(0.1)
        seen = f"{last.get('raft_state')}, applied {last.get('last_applied')}" if last else "no answer"
        raise OperationFailed(f"{h.name} did not rejoin and apply index {commit} within {REJOIN_TIMEOUT_S:g} s "
                              f"(last: {seen})")

    # ------------------------------------------------------------------ clients

    async def _client_host(self, h: Host) -> HostOutcome:
        drained: list[bool] = []

        async def drain(host: Host, running: bool) -> None:
            try:
                drained.append(await asyncio.to_thread(self._drain, host.name, running))
            except CanidaeError as e:
                raise StepFailed("drain", e.message) from None

        o = await self.boot.host(h, before_change=drain)
        if any(drained):
            o.changed.insert(0, "drain")
            if o.status == "ok":
                try:
                    await asyncio.to_thread(self._ready, h.name)
                    o.changed.append("uncordon")
                except CanidaeError as e:
                    o.status, o.step, o.error = "failed", "uncordon", e.message
        return o

    def _drain(self, node: str, running: bool) -> bool:
        with self._client() as c:
            return drain_if_known(c, node, running, DRAIN_TIMEOUT_S)

    def _ready(self, node: str) -> None:
        with self._client() as c:
            c.set_node_state(node, "ready", reason="upgraded")


__all__ = ["Upgrade"]
