"""Arguments and options shared by the commands of several nouns (one definition each)."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from canidae.cli.output import NODE_METAVAR, PACK_METAVAR, ZONE_METAVAR
from canidae.core.types import Driver, RestartPolicy


class SpreadLevel(str, Enum):
    ZONE = "zone"
    REGION = "region"
    CELL = "cell"


class KillSignal(str, Enum):
    TERM = "term"
    KILL = "kill"
    INT = "int"
    HUP = "hup"


class TopSort(str, Enum):
    CPU = "cpu"
    MEM = "mem"
    PACKS = "packs"
    RESTARTS = "restarts"
    YIPS = "yips"
    NAME = "name"


# Arguments and options repeated across verbs.
PackArg = Annotated[str, typer.Argument(metavar=PACK_METAVAR, help="Name of the pack.", show_default=False)]
NodeArg = Annotated[str, typer.Argument(metavar=NODE_METAVAR, help="Name of the node.", show_default=False)]
ZoneOpt = Annotated[str | None, typer.Option("--zone", metavar=ZONE_METAVAR, help="Only this zone.")]
NodeOpt = Annotated[str | None, typer.Option("--node", metavar=NODE_METAVAR, help="Only this node.")]
DataDirOpt = Annotated[
    Path | None, typer.Option("--data-dir", metavar="DIR", help="Where state, logs and events are kept.")
]

# What a pack is made of, shared by `pack create` and `pack spawn`.
NewPackArg = Annotated[str, typer.Argument(metavar="NAME", help="Name of the new pack.", show_default=False)]
CommandArg = Annotated[
    list[str] | None,
    typer.Argument(
        metavar="COMMAND", help="Member command and its arguments, after '--' (exec driver).", show_default=False
    ),
]
SpecFileOpt = Annotated[
    Path | None,
    typer.Option("--file", "-f", metavar="FILE",
                 help="Read the pack spec from a TOML file (fields: driver, command, members, cpu, mem, restart, "
                      "env, [constraints]); an option given on the command line overrides its field."),
]
# No defaults here: an option overrides a spec file only when it is given (defaults: see help).
DriverOpt = Annotated[Driver | None, typer.Option(
    "--driver", help="How members run: real processes or state only [default: exec with a COMMAND, else virtual].")]
CpuOpt = Annotated[int | None, typer.Option("--cpu", metavar="MILLICORES", min=0,
                                            help="CPU reserved per pack [default: 100].")]
MemOpt = Annotated[int | None, typer.Option("--mem", metavar="MIB", min=0,
                                            help="Memory reserved per pack, in MiB [default: 64].")]
MembersOpt = Annotated[
    int | None, typer.Option("--members", metavar="N", min=1, max=64,
                             help="Member processes running the command [default: 1].")
]
PinZoneOpt = Annotated[str | None, typer.Option("--zone", metavar=ZONE_METAVAR, help="Place only in this zone.")]
PinRegionOpt = Annotated[str | None, typer.Option("--region", help="Place only in this region.")]
PinCellOpt = Annotated[str | None, typer.Option("--cell", help="Place only in this cell.")]
PinNodeOpt = Annotated[
    str | None, typer.Option("--node", metavar=NODE_METAVAR, help="Place only on this node.")
]
SpreadOpt = Annotated[
    SpreadLevel | None, typer.Option("--spread", help="Spread packs of the same --group across this level.")
]
GroupOpt = Annotated[str | None, typer.Option("--group", help="Group of packs spread together.")]
RestartOpt = Annotated[RestartPolicy | None, typer.Option(
    "--restart", help="When a member that exits is restarted [default: on-failure].")]
EnvOpt = Annotated[
    list[str] | None, typer.Option("--env", "-e", metavar="KEY=VALUE",
                                   help="Environment of members, shown by 'pack show' (not secret); repeatable.")
]
SecretOpt = Annotated[
    list[str] | None, typer.Option("--secret", metavar="KEY=VALUE",
                                   help="A secret variable of members: encrypted at rest, shown as ***; repeatable. "
                                        "(A [secrets] table in a --file keeps it off the command line.)")
]


class Network(str, Enum):
    HOST = "host"
    NONE = "none"


NetworkOpt = Annotated[
    Network | None,
    typer.Option("--network", help="The host's network, or none: an empty network namespace (exec) [default: host].")
]

# How an agent sits in the fleet, shared by `agent init` and `agent run`.
ListenOpt = Annotated[str | None, typer.Option("--listen", metavar="HOST:PORT", help="Address of the agent API.")]
JoinOpt = Annotated[
    list[str] | None,
    typer.Option("--join", metavar="HOST:PORT", help="A server agent to join; repeatable."),
]
ServerOpt = Annotated[
    bool, typer.Option("--server/--client", help="Be a Raft voter holding cluster state, or only run packs.")
]
NodeNameOpt = Annotated[str | None, typer.Option("--name", help="Name of this node (default: the host name).")]
AgentZoneOpt = Annotated[str | None, typer.Option("--zone", metavar=ZONE_METAVAR, help="Zone of this node.")]
AgentRegionOpt = Annotated[str | None, typer.Option("--region", help="Region of this node, within its zone.")]
AgentCellOpt = Annotated[str | None, typer.Option("--cell", help="Cell of this node, within its region.")]
CapCpuOpt = Annotated[
    int | None, typer.Option("--cpu", metavar="MILLICORES", min=1, help="CPU offered to packs (default: all).")
]
CapMemOpt = Annotated[
    int | None, typer.Option("--mem", metavar="MIB", min=1, help="Memory offered to packs (default: all).")
]
AgentConfigOpt = Annotated[
    Path | None, typer.Option("--agent-config", metavar="FILE", help="Agent config written by 'agent init'.")
]


