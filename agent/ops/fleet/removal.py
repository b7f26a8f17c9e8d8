"""``fleet remove``: take a client host out of the cluster for good.

In order, stopping at the first failure (each step is safe to repeat, so a re-run finishes the
job): refuse if any pack of the node would have nowhere to go (pinned to it, or no room
elsewhere); drain the node (``agent.ops.drain``: its packs run elsewhere first), stop its agent,
forget the node (``DELETE /v1/nodes/{node}``: it leaves ``node list``), and uninstall (the
systemd unit and the files bootstrap wrote; nothing else of the host is touched). The order
matters: a node forgotten while its agent still ran would register itself again.

Servers are refused: the Raft group's membership is fixed when it starts (pysyncobj's dynamic
membership is off), so a server cannot leave a running group. A server stopped for good still
counts in the group's size: the cluster would keep quorum only while every other server is up,
and every agent's config would still list it. Replace a server's machine instead (a new host at
the same address, then ``fleet bootstrap --limit NAME``).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

from canidae.agent.client.calls import Client, Target
from canidae.agent.ops.drain import drain_if_known, stranded
from canidae.agent.ops.fleet import remote
from canidae.agent.ops.fleet.bootstrap import Bootstrap, StepFailed, ca_file
from canidae.agent.ops.fleet.inventory import Host
from canidae.agent.ops.fleet.sshlink import HostKeyChanged, HostKeyUnknown, Link, Unreachable
from canidae.core.errors import CanidaeError, InvalidInput, NotFound, OperationFailed
from canidae.core.types import Role

DRAIN_TIMEOUT_S = 180.0


def refuse_server(h: Host) -> None:
    if h.role is Role.SERVER:
        raise InvalidInput(f"{h.name} is a server: the Raft group's membership is fixed when it starts, so a "
                           f"server cannot leave a running cluster (it would still count toward quorum); replace "
                           f"its machine instead (same name and address, then fleet bootstrap --limit {h.name})")


@dataclass
class Removal:
    boot: Bootstrap
    host: Host
    done: list[str] = field(default_factory=list)

    def _client(self) -> Client:
        return Client(Target(tuple(s.api for s in self.boot.inv.servers), self.boot.identity.admin_token,
                             ca=ca_file(self.boot.inv)),
                      timeout=5.0)

    async def run(self) -> dict[str, Any]:
        h = self.host
        refuse_server(h)
        t0 = time.monotonic()
        row: dict[str, Any] = {"host": h.name, "role": h.role.value, "address": h.address, "status": "removed",
                               "step": "", "error": "", "steps": self.done}
        try:
            link = await Link.open(h, self.boot.inv.known_hosts, self.boot.accept_new, self.boot.inv.connect_timeout_s)
        except (Unreachable, HostKeyChanged, HostKeyUnknown) as e:
            return {**row, "status": "unreachable" if isinstance(e, Unreachable) else "failed",
                    "step": "connect", "error": e.message}
        try:
            async with link:
                await self._steps(link, h)
        except StepFailed as e:
            row.update(status="failed", step=e.step, error=e.error)
        except Unreachable as e:
            row.update(status="unreachable", step="connect", error=e.message)
        row["seconds"] = round(time.monotonic() - t0, 3)
        return row

    async def _steps(self, link: Link, h: Host) -> None:
        await self.boot.sudo_step(link, h)
        probe = remote.parse_probe(await self.boot.sh(link, "probe", remote.helper(h, "probe"), 60))
        try:
            known = await asyncio.to_thread(self._drain, h.name, bool(probe["running"]))
        except CanidaeError as e:
            raise StepFailed("drain", e.message) from None
        if known:
            self.done.append("drain")
        await self.boot.sh(link, "stop", remote.helper(h, "stop", systemd=bool(probe["systemd"])), 60)
        self.done.append("stop")
        try:
            if await asyncio.to_thread(self._forget, h.name):
                self.done.append("forget")
        except CanidaeError as e:
            raise StepFailed("forget", e.message) from None
        await self.boot.sh(link, "uninstall", remote.uninstall(h), 120)
        self.done.append("uninstall")

    def _drain(self, node: str, running: bool) -> bool:
        with self._client() as c:
            try:
                left = stranded(c, node)
            except NotFound:
                return False
            if left:  # refused before anything is done: a removal must not leave packs running nowhere
                more = f" and {len(left) - 3} more" if len(left) > 3 else ""
                raise OperationFailed(f"{len(left)} pack(s) of {node} would have nowhere to go ({', '.join(left[:3])}"
                                      f"{more}: pinned to it, or no room elsewhere): move, stop or delete them first")
            return drain_if_known(c, node, running, DRAIN_TIMEOUT_S)

    def _forget(self, node: str) -> bool:
        with self._client() as c:
            try:
                c.remove_node(node)
            except NotFound:
                return False
        return True


__all__ = ["Removal", "refuse_server"]
