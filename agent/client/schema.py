"""The wire schema of the agent API: one typed struct per request body, response and view.

Every body a route takes is decoded into one of these structs (``msgspec.json.decode`` with
``type=``, in ``canidae.agent.httpedge.read_body``), so a request is validated once, here, and
every rule a field has (a name's pattern, a range, a count of items, a length) is written once,
in its annotation, where ``canidae.agent.client.openapi`` finds it for the OpenAPI document.
The defaults of a pack spec are the defaults of ``SpecIn``; ``SpecIn.to_core`` builds core's
``PackSpec`` from it.

Request structs refuse unknown fields. Response structs name what an answer always or may
carry; an answer may carry more (views grow), so they do not forbid other fields. Patterns are
written with ``\\Z`` (Python's "end of the string": ``$`` would also let "name\\n" through); the
document shows them with ``$``, which means the same in JSON Schema.

This module imports only core (the client room): the servers, the nodes, the CLI and tests
share it.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal, TypeVar

import msgspec
from msgspec import UNSET, Meta, Struct, UnsetType

from canidae.core.errors import InvalidInput
from canidae.core.types import (
    MAX_AMOUNT,
    NAME_RULE,
    Constraints,
    Driver,
    Level,
    PackSpec,
    Resources,
    RestartPolicy,
)

# ----------------------------------------------------------------------------- field types

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}\Z"  # core.types.NAME_RE, matched whole
ENV_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]{0,127}\Z"  # core.types.ENV_NAME_RE
ACCESSOR_PATTERN = r"^ca_[0-9a-f]{32}\Z"  # core.tokens.ACCESSOR_RE
PRINTABLE_PATTERN = r"^[ -~]+\Z"

MAX_SERIES = 100_000  # core.commands.MAX_SERIES: packs of one series, names of one delete
MAX_GENERATION = 2**62  # core.packtoken.MAX_GENERATION
MAX_SEQ = 2**62
MAX_COMMAND_ARGS = 4096
MAX_TEXT = 1 << 20

Name = Annotated[str, Meta(pattern=NAME_PATTERN, description="1-63 letters, digits, '.', '_' or '-', "
                                                             "starting with a letter or digit")]
EnvName = Annotated[str, Meta(pattern=ENV_PATTERN)]
Accessor = Annotated[str, Meta(pattern=ACCESSOR_PATTERN, description="ca_ and 32 hex digits")]
RequestId = Annotated[str, Meta(min_length=1, max_length=128, pattern=PRINTABLE_PATTERN,
                                description="makes a retried write safe: the same id is applied once")]
Amount = Annotated[int, Meta(ge=0, le=MAX_AMOUNT)]
Generation = Annotated[int, Meta(ge=0, le=MAX_GENERATION)]
Seq = Annotated[int, Meta(ge=0, le=MAX_SEQ)]
Members = Annotated[int, Meta(ge=1, le=64)]
Count = Annotated[int, Meta(ge=0, le=MAX_SERIES)]
Text = Annotated[str, Meta(max_length=MAX_TEXT)]

DriverName = Literal["virtual", "exec"]
RestartName = Literal["never", "on-failure", "always"]
NetworkName = Literal["host", "none"]
SpreadName = Literal["zone", "region", "cell"]
NodeStateName = Literal["ready", "cordoned", "draining", "down"]
PackStateName = Literal["created", "pending", "placed", "running", "stopping", "stopped", "failed"]
ReportStateName = Literal["running", "stopped", "exited", "failed", "crashloop"]
RoleName = Literal["server", "client"]


class Request(Struct, forbid_unknown_fields=True, omit_defaults=True, kw_only=True):
    """A request body: unknown fields are refused."""


class View(Struct, omit_defaults=True, kw_only=True):
    """An answer or a part of one: it may carry more than it names."""


# ----------------------------------------------------------------------------- errors

class ErrorDetail(View):
    code: str
    message: str
    details: dict[str, Any] | None = None


class Error(View):
    """Every refusal: ``{"error": {"code", "message"}}``."""
    error: ErrorDetail


# ----------------------------------------------------------------------------- packs

class ConstraintsIn(Request):
    zone: Name | None = None
    region: Name | None = None
    cell: Name | None = None
    node: Name | None = None
    spread: SpreadName | None = None
    group: Name | None = None


class SpecIn(Request):
    """A pack spec as a request gives it; its defaults are the defaults of every spec."""
    name: Name
    driver: DriverName = "virtual"
    command: Annotated[list[Annotated[str, Meta(max_length=MAX_TEXT)]], Meta(max_length=MAX_COMMAND_ARGS)] = []
    members: Members = 1
    cpu: Amount = 100
    mem: Amount = 64
    restart: RestartName = "on-failure"
    env: dict[EnvName, Text] = {}
    # Plain values in a request; sealed at once by the agent, shown as "***" in every answer.
    secrets: dict[EnvName, Text] = {}
    network: NetworkName = "host"
    constraints: ConstraintsIn | None = None

    def to_core(self, sealed: dict[str, str] | None = None) -> PackSpec:
        """Core's ``PackSpec`` of this spec, with ``sealed`` secrets (the plain ones sealed)."""
        c = self.constraints
        return PackSpec(
            name=self.name, driver=Driver(self.driver), command=tuple(self.command), members=self.members,
            resources=Resources(self.cpu, self.mem, 1),
            constraints=Constraints() if c is None else Constraints(
                zone=c.zone, region=c.region, cell=c.cell, node=c.node, group=c.group,
                spread=Level(c.spread) if c.spread else None),
            restart=RestartPolicy(self.restart), env=tuple(sorted(self.env.items())),
            secrets=tuple(sorted((sealed or {}).items())), network=self.network)


class CreatePacks(Request):
    """``spec`` (with ``count``: a series name-0 ... name-(count-1)) or ``specs``, exactly one."""
    spec: SpecIn | None = None
    specs: Annotated[list[SpecIn], Meta(min_length=1, max_length=MAX_SERIES)] | None = None
    count: Count = 0
    place: bool = True
    keep_pending: bool = True
    request_id: RequestId | None = None


class DeletePacks(Request):
    names: Annotated[list[Name], Meta(min_length=1, max_length=MAX_SERIES)]
    force: bool = False
    request_id: RequestId | None = None


class WriteIn(Request):
    """A write that takes nothing but its request id (``DELETE /v1/nodes/{node}``)."""
    request_id: RequestId | None = None


class RevokeNodeIn(Request):
    reason: Annotated[str, Meta(max_length=200)] = ""
    request_id: RequestId | None = None


class AuditCheckpointIn(Request):
    """An agent's signed audit chain head, committed through Raft (``canidae.core.audit.Checkpoint``)."""
    node: Name
    public_key: Annotated[str, Meta(max_length=256)]
    checkpoint: dict[str, Any]
    request_id: RequestId | None = None


class KeysRotateIn(Request):
    """Which keyrings to rotate (default: every purpose), how long the new key is published before
    it is used, and whether regions switch one at a time."""
    purposes: Annotated[list[str], Meta(max_length=16)] | None = None
    prepublish_s: Annotated[float, Meta(ge=0)] | None = None
    by_region: bool = False


class KeyRetireIn(Request):
    id: Annotated[str, Meta(pattern=r"^[0-9a-f]{8}\Z")]
    request_id: RequestId | None = None


class AdminHashIn(Request):
    """The hash of a new management token (the token itself never leaves the operator)."""
    hash: Annotated[str, Meta(max_length=256)]
    request_id: RequestId | None = None


class PackActionIn(Request):
    """``stop``: request_id; ``place``: and keep_pending (default true); ``migrate``: and to (a node)."""
    request_id: RequestId | None = None
    keep_pending: bool | None = None
    to: Name | None = None


class Rebalance(Request):
    plan: bool = False
    request_id: RequestId | None = None


class PackView(View):
    """A pack as the API shows it: its spec (secrets as "***") and where it is."""
    name: str
    driver: DriverName
    members: int
    cpu: int
    mem: int
    restart: RestartName
    state: PackStateName
    node: str | None
    generation: int
    command: list[str] | None = None
    env: dict[str, str] | None = None
    secrets: dict[str, str] | None = None
    network: NetworkName | None = None
    constraints: dict[str, str] | None = None
    reason: str | None = None
    crashlooping: bool | None = None


class PackList(View):
    packs: list[PackView]
    next: str | None = None
    total: int | None = None


class PackShow(View):
    pack: PackView


class WriteAnswer(View):
    """A write's answer: ``ok`` and what it did (placements, migrations, ...), or ``plan``."""
    ok: bool | None = None
    commit_ms: float | None = None
    plan: bool | None = None


class Event(View):
    seq: int
    type: str
    at: int
    pack: str | None = None
    node: str | None = None
    by: str | None = None
    cause: str | None = None
    detail: dict[str, Any] | None = None


class PackHistory(View):
    pack: str
    events: list[Event]


class RingView(View):
    nodes: list[dict[str, Any]]


class RingLookup(View):
    name: str
    ring_node: str | None = None
    preference: list[str] | None = None


# ----------------------------------------------------------------------------- nodes

class ResourcesIn(Request):
    cpu: Amount = 0
    mem: Amount = 0
    packs: Amount = 0


class NodeIn(Request):
    """A node as it registers: where it sits, what it has, where its API is."""
    id: Name
    zone: Name
    region: Name
    cell: Name
    capacity: ResourcesIn
    weight: Annotated[float, Meta(gt=0, le=1_000_000)] = 1.0
    state: NodeStateName = "ready"
    role: RoleName = "client"
    address: Annotated[str, Meta(max_length=255)] = ""


class RegisterNode(Request):
    node: NodeIn
    request_id: RequestId | None = None


class SetNodeState(Request):
    state: NodeStateName
    reason: Annotated[str, Meta(max_length=1024)] = ""
    plan: bool = False
    request_id: RequestId | None = None


class Heartbeat(Request):
    """What an agent runs (``running`` packs at its revision ``rev``, their ``digest``) and its
    metrics summary (checked whole by ``canidae.core.metrics.NodeSummary.from_wire``)."""
    rev: Seq | None = None
    running: Annotated[int, Meta(ge=0)] | None = None
    digest: Annotated[str, Meta(max_length=256)] | None = None
    corrected: Annotated[int, Meta(ge=0)] | None = None
    metrics: dict[str, Any] | None = None


class Resync(Request):
    """Every pack the agent runs: name -> generation."""
    running: Annotated[dict[Name, Generation], Meta(max_length=1_000_000)]


Report = tuple[Name, Generation, ReportStateName, Annotated[str, Meta(max_length=4096)]]


class Reports(Request):
    """Pack states an agent reports: [name, generation, state, reason] each."""
    reports: Annotated[list[Report], Meta(min_length=1, max_length=MAX_SERIES)]
    request_id: RequestId | None = None


class NodeView(View):
    id: str
    zone: str
    region: str
    cell: str
    capacity: dict[str, int]
    weight: float
    state: NodeStateName
    role: RoleName
    address: str


class NodeList(View):
    nodes: list[NodeView]


class NodeShow(View):
    node: NodeView


class HeartbeatAnswer(View):
    state: NodeStateName
    rev: int
    leader_api: str
    resync: bool
    sample_rate: float


class Assignment(View):
    name: str
    generation: int
    state: PackStateName
    driver: DriverName
    spec: dict[str, Any]


class Assignments(View):
    """What changed for a node since a revision, or ``resync`` (ask for everything)."""
    rev: int
    resync: bool
    node_state: NodeStateName
    packs: list[Assignment] | None = None
    gone: list[str] | None = None
    deleted: list[str] | None = None


# ----------------------------------------------------------------------------- cluster

class Health(View):
    ok: bool
    node: str | None = None
    role: RoleName | None = None
    version: str | None = None


class Status(View):
    node: str
    term: int
    commit_index: int
    last_applied: int


class Digest(View):
    node: str
    digest: str
    applied: int


class MetricsTree(View):
    by: str
    rows: list[dict[str, Any]]


class MetricSample(View):
    name: str
    labels: dict[str, str]
    value: float


class MetricFamily(View):
    type: str
    help: str
    samples: list[MetricSample]


class MetricsJson(View):
    """``GET /v1/metrics?format=json``: every family with its type, help and samples."""
    metrics: dict[str, MetricFamily]


class EventList(View):
    events: list[Event]
    next: int | None = None
    last_seq: int | None = None


class HistoryVerify(View):
    ok: bool
    differences: list[Any]


class HistoryStats(View):
    node: str
    last_seq: int


class Running(View):
    """``GET /v1/agent/running``: what this agent's node runtime runs."""
    node: str
    rev: int
    digest: str
    corrected: int
    running: dict[str, int]


# ----------------------------------------------------------------------------- ACL

class CreateToken(Request):
    name: Name
    policies: Annotated[list[Name], Meta(min_length=1, max_length=64)]
    ttl_s: Annotated[int, Meta(ge=1, le=10 * 365 * 86_400)] | None = None
    request_id: RequestId | None = None


class ApplyPolicy(Request):
    """A policy as its TOML file reads (checked whole by ``canidae.core.acl.Policy.from_toml_dict``)."""
    policy: dict[str, Any]
    request_id: RequestId | None = None


class TokenView(View):
    accessor: str
    name: str
    policies: list[str]
    revoked: bool
    expires_at_ms: int | None
    expired: bool | None = None


class TokenCreated(View):
    token: TokenView
    secret: str
    policies_not_found: list[str]


class TokenList(View):
    tokens: list[TokenView]


class TokenShow(View):
    token: TokenView


class InForce(View):
    """A revocation or policy change, and which servers were not seen applying it in time."""
    in_force_on_all_servers: bool
    not_confirmed: list[str]


class TokenSelf(View):
    kind: str
    name: str
    accessor: str
    token: TokenView | None = None
    decision: dict[str, Any] | None = None


class PolicyList(View):
    policies: list[dict[str, Any]]


class PolicyShow(View):
    policy: dict[str, Any]
    builtin: bool
    rules: list[str]
    tokens: list[str]


# ----------------------------------------------------------------------------- autoscale

DecisionId = Annotated[str, Meta(pattern=r"^[0-9]{1,12}\Z", description="a decision id")]


class AutoscalePolicyIn(Request):
    """The policy as its TOML file reads (checked whole by ``canidae.core.autoscale_policy``)."""
    policy: dict[str, Any]
    request_id: RequestId | None = None


class AutoscalePause(Request):
    reason: Annotated[str, Meta(max_length=1024)] = ""
    request_id: RequestId | None = None


class AutoscaleRecord(Request):
    decision: dict[str, Any]
    controller: Name
    request_id: RequestId | None = None


class AutoscaleOutcome(Request):
    status: Annotated[str, Meta(max_length=64)]
    nodes: Annotated[list[Name], Meta(max_length=MAX_SERIES)] = []
    error: Annotated[str, Meta(max_length=4096)] = ""
    request_id: RequestId | None = None


class DecisionList(View):
    records: list[dict[str, Any]]
    last_id: int


class DecisionShow(View):
    record: dict[str, Any] | None


# ----------------------------------------------------------------------------- exec and yips

SignalName = Annotated[str, Meta(pattern=r"^(SIG)?(TERM|KILL|INT|HUP|QUIT|USR1|USR2|STOP|CONT)\Z",
                                 description="a signal name, with or without SIG")]


class Kill(Request):
    signal: SignalName = "KILL"


class ExecInfo(View):
    node: str
    time_ms: float
    pid: int
    exec: dict[str, Any]


class ExecStatus(View):
    status: dict[str, Any]


class LogPart(View):
    member: int
    text: str


class ExecLogs(View):
    pack: str
    node: str
    members: list[LogPart]


YipId = Annotated[str, Meta(min_length=1, max_length=64, description="1-64 printable characters")]


class YipIn(Request):
    """One yip: exactly one of ``text`` or ``data`` (any JSON), and an optional ``id`` (a resend
    with the same id is queued once). ``from``: its sender, in a batch an agent hands on."""
    text: Text | UnsetType = UNSET
    data: Any | UnsetType = UNSET
    id: YipId | None = None
    sender: Annotated[str, Meta(min_length=1, max_length=64)] | None = msgspec.field(default=None, name="from")


class YipSend(YipIn):
    """One yip, or a batch of them (``yips``, 1..1000). ``relayed`` and ``groups`` (how many yips
    each send request holds) are for an agent handing on the yips of others."""
    yips: Annotated[list[YipIn], Meta(min_length=1, max_length=1000)] | None = None
    relayed: bool = False
    groups: Annotated[list[Annotated[int, Meta(ge=1, le=1000)]], Meta(max_length=1000)] | None = None


class YipAck(Request):
    through: Seq


class YipSent(View):
    pack: str
    node: str
    yips: list[dict[str, Any]]


class YipsReceived(View):
    pack: str
    node: str
    yips: list[dict[str, Any]]
    unread: int
    next: int


class YipAcked(View):
    pack: str
    node: str
    acknowledged: int
    unread: int


# ----------------------------------------------------------------------------- decoding

T = TypeVar("T")


def decode(raw: bytes, type: type[T]) -> T:
    """JSON ``raw`` as ``type``; ``InvalidInput`` naming the field when it is not one."""
    try:
        return msgspec.json.decode(raw, type=type)
    except msgspec.ValidationError as e:
        where, what = refusal(str(e))
        raise InvalidInput(f"{where or 'invalid body'}: {what}") from None
    except msgspec.DecodeError as e:
        raise InvalidInput(f"malformed JSON body: {e}") from None


def convert(value: Any, type: type[T], what: str) -> T:
    """A parsed document (a TOML file's tables) as ``type``; ``InvalidInput`` "{what}: field 'x' ..."."""
    try:
        return msgspec.convert(value, type=type)
    except msgspec.ValidationError as e:
        where, why = refusal(str(e))
        raise InvalidInput(f"{what}: field {where!r}: {why}" if where else f"{what}: {why}") from None


def refusal(text: str) -> tuple[str, str]:
    """msgspec's "Expected `int` >= 1 - at `$.spec.members`" as ("spec.members", "expected `int` >= 1");
    an unknown or missing field is named as the field itself."""
    what, sep, where = text.partition(" - at `")
    where = where.rstrip("`")
    if where.startswith("key` in `"):
        where, what = where[9:], "a key: " + what[:1].lower() + what[1:]
    path = where.removeprefix("$").removeprefix(".") if sep else ""
    for lead in ("Object contains unknown field `", "Object missing required field `"):
        if what.startswith(lead):
            name = what[len(lead):].rstrip("`")
            path = f"{path}.{name}" if path else name
            what = "is not a field" if "unknown" in lead else "is missing"
    m = re.search(r"[Ee]xpected `str` matching regex '(.*)'", what)
    if m:  # say the rule, not the regex
        pattern = m.group(1).replace("\\\\", "\\")
        shown = pattern.removesuffix("\\Z") + "$"
        rule = f"must be {NAME_RULE}" if pattern == NAME_PATTERN else f"must match {shown}"
        what = what[:m.start()] + rule + what[m.end():]
    return path, what[:1].lower() + what[1:]
