"""The value types every part of canidae speaks: resources, locations, nodes, pack specs, plans.

All are frozen, slotted dataclasses validated when built (bad values raise ``InvalidInput``),
so a value that exists is a valid one. They carry no behaviour beyond arithmetic and
conversion to and from plain JSON-able dicts (``to_dict`` / ``from_dict``), which is the
canonical wire and snapshot form.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Mapping

from canidae.core.errors import InvalidInput
from canidae.core.names import NAME_RE, NAME_RULE, validate_name  # re-exported: the rule of names

ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
# Variables that make the dynamic loader or glibc load code or data from a path: a pack may not
# set them (its environment is applied only after the drop to its own user, and this refusal is a
# second wall in front of that one).
LOADER_VARS = frozenset({"GCONV_PATH", "GETCONF_DIR", "GLIBC_TUNABLES", "HOSTALIASES", "LOCALDOMAIN", "LOCPATH",
                         "MALLOC_TRACE", "NIS_PATH", "NLSPATH", "RESOLV_HOST_CONF", "RES_OPTIONS"})
# A secret's value in the replicated state: sealed (encrypted) by the agent that took the request.
SEALED_PREFIX = "sealed:"
NETWORKS = ("host", "none")


def validate_env_name(what: str, name: object) -> str:
    """An environment variable a spec may set (``env`` or ``secrets``): a shell name, no loader variable."""
    if not isinstance(name, str) or not ENV_NAME_RE.match(name):
        raise InvalidInput(f"{what} name {name!r} must be letters, digits and '_', not starting with a digit")
    if name.startswith("LD_") or name in LOADER_VARS:
        raise InvalidInput(f"{what} {name} is refused: it changes how programs are loaded "
                           f"(LD_*, {', '.join(sorted(LOADER_VARS))})")
    return name


def _non_negative_int(what: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InvalidInput(f"{what} must be a non-negative integer, got {value!r}")
    return value


# The largest amount of one resource a request may give (a pack's reservation, a node's
# capacity): far above any host, and small enough that sums over a whole fleet stay exact
# integers everywhere, JSON readers in other languages included.
MAX_AMOUNT = 2**40 - 1


def _amount(what: str, value: object) -> int:
    _non_negative_int(what, value)
    if value > MAX_AMOUNT:  # type: ignore[operator]
        raise InvalidInput(f"{what} must be at most {MAX_AMOUNT}, got {value!r}")
    return value  # type: ignore[return-value]


class Level(StrEnum):
    """A level of the hierarchy, from the widest to the narrowest."""

    ZONE = "zone"
    REGION = "region"
    CELL = "cell"
    NODE = "node"


class NodeState(StrEnum):
    READY = "ready"          # takes new packs
    CORDONED = "cordoned"    # keeps its packs, takes no new ones
    DRAINING = "draining"    # its packs are being moved away
    DOWN = "down"            # missed its heartbeats; its packs are rescheduled


class Role(StrEnum):
    SERVER = "server"  # a Raft voter that also runs packs
    CLIENT = "client"  # runs packs, heartbeats to the servers


class Driver(StrEnum):
    VIRTUAL = "virtual"  # no process: state only (tests, simulations, scale runs)
    EXEC = "exec"        # real member processes


class RestartPolicy(StrEnum):
    NEVER = "never"
    ON_FAILURE = "on-failure"
    ALWAYS = "always"


class PackState(StrEnum):
    CREATED = "created"    # known to the cluster, not asked to run yet (``pack create``)
    PENDING = "pending"    # asked to run, no node could take it yet (reason says why)
    PLACED = "placed"      # assigned to a node, not yet reported running
    RUNNING = "running"
    STOPPING = "stopping"
    STOPPED = "stopped"
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class Resources:
    """CPU in millicores, memory in MiB, and a count of packs.

    Used both for a node's capacity (``packs`` = max packs) and for usage and reservations.
    """

    cpu: int = 0
    mem: int = 0
    packs: int = 0

    def __post_init__(self) -> None:
        _non_negative_int("cpu (millicores)", self.cpu)
        _non_negative_int("memory (MiB)", self.mem)
        _non_negative_int("packs", self.packs)

    def __add__(self, other: Resources) -> Resources:
        return Resources(self.cpu + other.cpu, self.mem + other.mem, self.packs + other.packs)

    def __sub__(self, other: Resources) -> Resources:
        return Resources(
            max(0, self.cpu - other.cpu), max(0, self.mem - other.mem), max(0, self.packs - other.packs)
        )

    def fits_in(self, free: Resources) -> bool:
        return self.cpu <= free.cpu and self.mem <= free.mem and self.packs <= free.packs

    def to_dict(self) -> dict[str, int]:
        return {"cpu": self.cpu, "mem": self.mem, "packs": self.packs}

    @staticmethod
    def from_dict(d: Mapping[str, Any]) -> Resources:
        """Parse a request's or a record's resources, refusing amounts over ``MAX_AMOUNT``."""
        return Resources(_amount("cpu (millicores)", d.get("cpu", 0)), _amount("memory (MiB)", d.get("mem", 0)),
                         _amount("packs", d.get("packs", 0)))


@dataclass(frozen=True, slots=True)
class Location:
    """Where a node sits: zone > region > cell."""

    zone: str
    region: str
    cell: str

    def __post_init__(self) -> None:
        validate_name("zone", self.zone)
        validate_name("region", self.region)
        validate_name("cell", self.cell)

    def at(self, level: Level) -> str:
        """The id of this location's group at ``level`` (regions and cells are named within their parent)."""
        if level is Level.ZONE:
            return self.zone
        if level is Level.REGION:
            return f"{self.zone}/{self.region}"
        return f"{self.zone}/{self.region}/{self.cell}"

    def to_dict(self) -> dict[str, str]:
        return {"zone": self.zone, "region": self.region, "cell": self.cell}

    @staticmethod
    def from_dict(d: Mapping[str, Any]) -> Location:
        return Location(d.get("zone", ""), d.get("region", ""), d.get("cell", ""))


@dataclass(frozen=True, slots=True)
class Node:
    """A host running an agent, with its capacity and weight on the ring."""

    id: str
    location: Location
    capacity: Resources
    weight: float = 1.0
    state: NodeState = NodeState.READY
    role: Role = Role.CLIENT
    address: str = ""  # the agent's API address, host:port

    def __post_init__(self) -> None:
        validate_name("node", self.id)
        if self.capacity.cpu <= 0 or self.capacity.mem <= 0 or self.capacity.packs <= 0:
            raise InvalidInput(
                f"node {self.id}: capacity must be positive (cpu={self.capacity.cpu}, "
                f"mem={self.capacity.mem}, packs={self.capacity.packs})"
            )
        if isinstance(self.weight, bool) or not isinstance(self.weight, (int, float)) or not self.weight > 0:
            raise InvalidInput(f"node {self.id}: weight must be a positive number, got {self.weight!r}")

    @property
    def schedulable(self) -> bool:
        return self.state is NodeState.READY

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id, **self.location.to_dict(), "capacity": self.capacity.to_dict(),
            "weight": self.weight, "state": self.state.value, "role": self.role.value,
            "address": self.address,
        }

    @staticmethod
    def from_dict(d: Mapping[str, Any]) -> Node:
        return Node(
            id=d["id"], location=Location.from_dict(d), capacity=Resources.from_dict(d["capacity"]),
            weight=d.get("weight", 1.0), state=NodeState(d.get("state", "ready")),
            role=Role(d.get("role", "client")), address=d.get("address", ""),
        )


@dataclass(frozen=True, slots=True)
class Constraints:
    """Placement constraints of a pack.

    ``zone``/``region``/``cell`` pin the pack below that group (region and cell names are
    matched within the pinned parent when one is given, else anywhere). ``spread`` spreads
    packs of the same ``group`` evenly across groups of that level.
    """

    zone: str | None = None
    region: str | None = None
    cell: str | None = None
    node: str | None = None
    spread: Level | None = None
    group: str | None = None

    def __post_init__(self) -> None:
        for kind in ("zone", "region", "cell", "node", "group"):
            value = getattr(self, kind)
            if value is not None:
                validate_name(kind, value)
        if self.spread is not None and self.spread not in (Level.ZONE, Level.REGION, Level.CELL):
            raise InvalidInput(f"spread must be zone, region or cell, got {self.spread!r}")

    def to_dict(self) -> dict[str, Any]:
        return {k: (v.value if isinstance(v, Level) else v)
                for k in ("zone", "region", "cell", "node", "spread", "group")
                if (v := getattr(self, k)) is not None}

    @staticmethod
    def from_dict(d: Mapping[str, Any]) -> Constraints:
        spread = d.get("spread")
        if spread is not None and spread not in ("zone", "region", "cell"):
            raise InvalidInput(f"spread must be zone, region or cell, got {spread!r}")
        return Constraints(
            zone=d.get("zone"), region=d.get("region"), cell=d.get("cell"), node=d.get("node"),
            spread=Level(spread) if spread else None, group=d.get("group"),
        )


NO_CONSTRAINTS = Constraints()


@dataclass(frozen=True, slots=True)
class PackSpec:
    """What a user asks for: a named workload with members, a reservation and constraints."""

    name: str
    driver: Driver = Driver.VIRTUAL
    command: tuple[str, ...] = ()
    members: int = 1
    resources: Resources = field(default_factory=lambda: Resources(100, 64, 1))
    constraints: Constraints = NO_CONSTRAINTS
    restart: RestartPolicy = RestartPolicy.ON_FAILURE
    env: tuple[tuple[str, str], ...] = ()
    # Sealed values only (see SEALED_PREFIX): the agent seals them before they are proposed.
    secrets: tuple[tuple[str, str], ...] = ()
    network: str = "host"

    def __post_init__(self) -> None:
        validate_name("pack", self.name)
        for k, v in self.env:
            validate_env_name("env variable", k)
            if not isinstance(v, str):
                raise InvalidInput(f"pack {self.name}: env {k} must be a string")
        for k, v in self.secrets:
            validate_env_name("secret", k)
            if not isinstance(v, str) or not v.startswith(SEALED_PREFIX):
                raise InvalidInput(f"pack {self.name}: secret {k} is not sealed")
            if k in dict(self.env):
                raise InvalidInput(f"pack {self.name}: {k} is both in env and in secrets")
        if self.network not in NETWORKS:
            raise InvalidInput(f"pack {self.name}: network must be host or none, got {self.network!r}")
        if isinstance(self.members, bool) or not isinstance(self.members, int) or not 1 <= self.members <= 64:
            raise InvalidInput(f"pack {self.name}: members must be 1..64, got {self.members!r}")
        if self.driver is Driver.EXEC and not self.command:
            raise InvalidInput(f"pack {self.name}: the exec driver needs a command")
        if self.resources.packs != 1:
            raise InvalidInput(f"pack {self.name}: a pack reserves exactly one pack slot")

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"name": self.name, "driver": self.driver.value, "members": self.members,
                             "cpu": self.resources.cpu, "mem": self.resources.mem,
                             "restart": self.restart.value}
        if self.command:
            d["command"] = list(self.command)
        if self.constraints != NO_CONSTRAINTS:
            d["constraints"] = self.constraints.to_dict()
        if self.env:
            d["env"] = dict(self.env)
        if self.secrets:
            d["secrets"] = dict(self.secrets)
        if self.network != "host":
            d["network"] = self.network
        return d

    @staticmethod
    def from_dict(d: Mapping[str, Any]) -> PackSpec:
        try:
            return PackSpec(
                name=d["name"], driver=Driver(d.get("driver", "virtual")),
                command=tuple(d.get("command", ())), members=d.get("members", 1),
                resources=Resources(_amount("cpu (millicores)", d.get("cpu", 100)),
                                    _amount("memory (MiB)", d.get("mem", 64)), 1),
                constraints=Constraints.from_dict(d.get("constraints") or {}),
                restart=RestartPolicy(d.get("restart", "on-failure")),
                env=tuple(sorted((d.get("env") or {}).items())),
                secrets=tuple(sorted((d.get("secrets") or {}).items())),
                network=d.get("network", "host"),
            )
        except KeyError as e:
            raise InvalidInput(f"pack spec is missing {e.args[0]!r}") from None
        except (ValueError, TypeError) as e:
            raise InvalidInput(f"invalid pack spec: {e}") from None


@dataclass(frozen=True, slots=True)
class Placement:
    pack: str
    node: str


@dataclass(frozen=True, slots=True)
class Unplaced:
    """A pack that fits nowhere, with the reason at each level (``zone z2: 40 nodes lacked 512 MiB memory``)."""

    pack: str
    reasons: tuple[str, ...]

    @property
    def reason(self) -> str:
        return "; ".join(self.reasons)


@dataclass(frozen=True, slots=True)
class Migration:
    pack: str
    source: str
    target: str
    reason: str


@dataclass(frozen=True, slots=True)
class Plan:
    """The scheduler's answer: where each pack goes, which fit nowhere, and what moves."""

    placements: tuple[Placement, ...] = ()
    unplaced: tuple[Unplaced, ...] = ()
    migrations: tuple[Migration, ...] = ()


__all__ = [
    "NAME_RE", "NAME_RULE", "MAX_AMOUNT", "validate_name", "ENV_NAME_RE", "LOADER_VARS", "SEALED_PREFIX", "NETWORKS",
    "validate_env_name", "Level", "NodeState", "Role", "Driver", "RestartPolicy",
    "PackState", "Resources", "Location", "Node", "Constraints",
    "NO_CONSTRAINTS", "PackSpec",
    "Placement", "Unplaced", "Migration", "Plan",
]
