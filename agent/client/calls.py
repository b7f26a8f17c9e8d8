"""The typed HTTP client of the agent API: what the CLI, benchmarks and tests use.

It reuses connections, applies timeouts, fails over to the next agent when one is unreachable
or has no leader, and turns error answers back into the typed errors of ``canidae.core.errors``
(so the CLI exits with the documented code). Writes carry a request id that stays the same
across failover retries, which makes a retry after an unknown outcome safe.

Where to connect is resolved once, in ``resolve_target``: flags > ``CANIDAE_ADDR`` /
``CANIDAE_TOKEN`` / ``CANIDAE_CA`` > ``~/.config/canidae/config.toml`` (written by ``cluster up``).
Agents speak HTTPS, verified against the cluster CA named by the config (``ca``) or
``CANIDAE_CA`` (a file) or ``CANIDAE_CA_PEM`` (its text: what pack members get); plain HTTP only
for a cluster whose config says ``insecure_http = true`` (or ``CANIDAE_INSECURE_HTTP=1``, or
addresses written ``http://host:port``). An agent whose certificate the CA did not sign is
refused: ``Unavailable`` saying so, exit code 3.
"""

from __future__ import annotations

import os
import ssl
import time
import tomllib
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import httpx

from canidae.agent.client.tls import client_context, tls_problem
from canidae.core.errors import CanidaeError, InvalidInput, NotAuthenticated, NotFound, Timeout, Unavailable
from canidae.core.types import validate_name

DEFAULT_CONFIG = os.path.join("~", ".config", "canidae", "config.toml")


@dataclass(frozen=True)
class Target:
    addrs: tuple[str, ...]
    token: str
    ca: str = ""                # the cluster CA: a PEM file or PEM text ("": the system's store)
    insecure_http: bool = False  # plain HTTP (a loopback cluster made with --insecure-http)

    @property
    def scheme(self) -> str:
        return "http" if self.insecure_http else "https"

    def verify(self) -> ssl.SSLContext | bool:
        """What httpx verifies the agents' certificates with."""
        return True if self.insecure_http else client_context(self.ca)


def config_path(explicit: str | None = None) -> str:
    return os.path.expanduser(explicit or os.environ.get("CANIDAE_CONFIG") or DEFAULT_CONFIG)


def read_cli_config(path: str) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        return {}
    except tomllib.TOMLDecodeError as e:
        raise InvalidInput(f"{path} is not valid TOML: {e}") from None


def resolve_target(addr: str | None = None, token: str | None = None, config: str | None = None) -> Target:
    cfg = read_cli_config(config_path(config))
    raw = addr or os.environ.get("CANIDAE_ADDR") or ",".join(cfg.get("addr", []) if isinstance(
        cfg.get("addr"), list) else [cfg.get("addr", "")])
    given = [a.strip() for a in raw.split(",") if a.strip()]
    addrs = tuple(a.removeprefix("http://").removeprefix("https://") for a in given)
    tok = token or os.environ.get("CANIDAE_TOKEN") or cfg.get("token", "")
    if not addrs:
        raise Unavailable("no cluster configured: run 'canidae cluster up', or set CANIDAE_ADDR / --addr")
    if not tok:
        raise NotAuthenticated("no token: set CANIDAE_TOKEN or --token (cluster up writes one to the config)")
    schemes = {a.partition("://")[0] for a in given if "://" in a}
    if len(schemes) > 1:
        raise InvalidInput("the agent addresses mix http:// and https://: a cluster speaks one of them")
    env_insecure = os.environ.get("CANIDAE_INSECURE_HTTP", "").lower() in ("1", "true", "yes")
    insecure = schemes == {"http"} or (not schemes and (env_insecure or cfg.get("insecure_http") is True))
    ca = os.environ.get("CANIDAE_CA") or os.environ.get("CANIDAE_CA_PEM") or str(cfg.get("ca", ""))
    return Target(addrs, str(tok), ca=ca, insecure_http=insecure)


def segment(kind: str, name: str) -> str:
    """A pack or node name as one path segment: refused (``InvalidInput``, nothing sent) unless it
    follows the name rules, and escaped all the same, so that no name can reach another route
    (``node cordon ../nodes/c1`` once cordoned c1; ``a?b=1`` looked up ``a``)."""
    return quote(validate_name(kind, name), safe="")


def decode_answer(addr: str, r: httpx.Response) -> Any:
    """The JSON of an answer, or its typed error. ``Unavailable`` means: try another agent."""
    try:
        data = r.json()
    except ValueError:
        raise Unavailable(f"agent {addr} answered HTTP {r.status_code} without JSON") from None
    if r.status_code >= 400:
        raise CanidaeError.from_wire(data, r.status_code)
    return data


class Client:
    def __init__(self, target: Target, timeout: float = 10.0) -> None:
        self.target = target
        self.addrs = list(target.addrs)
        self.scheme = target.scheme
        self.http = httpx.Client(timeout=httpx.Timeout(timeout, connect=2.0), verify=target.verify(),
                                 headers={"authorization": f"Bearer {target.token}"},
                                 limits=httpx.Limits(max_keepalive_connections=8))

    def close(self) -> None:
        self.http.close()

    def _ca_name(self) -> str:
        ca = self.target.ca
        if not ca:
            return "none configured, the system's store"
        return "given as text" if ca.lstrip().startswith("-----BEGIN") else ca

    def url(self, addr: str, path: str) -> str:
        """The URL of ``path`` on agent ``addr`` (https, unless the cluster speaks plain HTTP)."""
        return f"{self.scheme}://{addr}{path}"

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def request(self, method: str, path: str, *, json: Any = None, params: dict[str, Any] | None = None,
                timeout: float | None = None, retry_for: float = 0.0) -> Any:
        """Send to the first agent that answers; on unreachable / no leader try the next ones.

        ``retry_for`` keeps cycling through the agents for that many seconds (used for writes, which
        carry a request id and so are safe to repeat).
        """
        deadline = time.monotonic() + retry_for
        last: CanidaeError = Unavailable("no agent reachable")
        untrusted: CanidaeError | None = None  # a TLS failure does not pass by waiting
        while True:
            for i, addr in enumerate(list(self.addrs)):
                try:
                    r = self.http.request(method, f"{self.scheme}://{addr}{path}", json=json, params=params,
                                          timeout=timeout if timeout is not None else httpx.USE_CLIENT_DEFAULT)
                except httpx.TimeoutException:
                    last = Timeout(f"agent {addr} did not answer in time")
                    continue
                except httpx.HTTPError as e:
                    problem = tls_problem(e)
                    if problem:
                        untrusted = last = Unavailable(f"agent {addr}: {problem} (the cluster CA: {self._ca_name()})")
                        continue
                    last = Unavailable(f"agent {addr} unreachable ({type(e).__name__})")
                    continue
                try:
                    data = decode_answer(addr, r)
                except Unavailable as e:
                    last = e
                    continue
                if i:  # remember who answered
                    self.addrs.insert(0, self.addrs.pop(i))
                return data
            if untrusted is not None:
                raise untrusted
            if time.monotonic() >= deadline:
                raise last
            time.sleep(0.05)

    # ------------------------------------------------------------ typed calls

    def health(self) -> dict[str, Any]:
        return self.request("GET", "/v1/health")  # type: ignore[no-any-return]

    def status(self) -> dict[str, Any]:
        return self.request("GET", "/v1/status")  # type: ignore[no-any-return]

    def nodes(self, stale: bool = False) -> list[dict[str, Any]]:
        return self.request("GET", "/v1/nodes", params={"stale": 1} if stale else None)["nodes"]  # type: ignore[no-any-return]

    def node(self, node_id: str, stale: bool = False) -> dict[str, Any]:
        return self.request("GET", f"/v1/nodes/{segment('node', node_id)}", params={"stale": 1} if stale else None)["node"]  # type: ignore[no-any-return]

    def set_node_state(self, node_id: str, state: str, reason: str = "") -> dict[str, Any]:
        return self.request("POST", f"/v1/nodes/{segment('node', node_id)}/state",  # type: ignore[no-any-return]
                            json={"state": state, "reason": reason, "request_id": uuid.uuid4().hex},
                            retry_for=5.0)

    def revoke_node(self, node_id: str, reason: str = "") -> dict[str, Any]:
        """Refuse a client agent's node credential cluster-wide from the next request on."""
        return self.request("POST", f"/v1/nodes/{segment('node', node_id)}/revoke",  # type: ignore[no-any-return]
                            json={"reason": reason, "request_id": uuid.uuid4().hex}, retry_for=5.0)

    def drain(self, node_id: str, plan: bool = False) -> dict[str, Any]:
        return self.request("POST", f"/v1/nodes/{segment('node', node_id)}/state",  # type: ignore[no-any-return]
                            json={"state": "draining", "reason": "drain", "plan": plan,
                                  "request_id": uuid.uuid4().hex}, retry_for=5.0)

    def migrate(self, name: str, to: str | None = None) -> dict[str, Any]:
        return self.request("POST", f"/v1/packs/{segment('pack', name)}/migrate",  # type: ignore[no-any-return]
                            json={"to": to, "request_id": uuid.uuid4().hex}, retry_for=5.0)

    def rebalance(self, plan: bool = False) -> dict[str, Any]:
        return self.request("POST", "/v1/rebalance",  # type: ignore[no-any-return]
                            json={"plan": plan, "request_id": uuid.uuid4().hex}, retry_for=5.0)

    def create_packs(self, specs: list[dict[str, Any]], *, count: int = 0, place: bool = True,
                     request_id: str | None = None, retry_for: float = 5.0,
                     keep_pending: bool = True) -> dict[str, Any]:
        """Create (and place) packs. ``keep_pending=False``: if any fits nowhere, nothing is created
        (a ``NoCapacity`` error); else such packs wait, pending, until room appears."""
        body: dict[str, Any] = {"request_id": request_id or uuid.uuid4().hex, "place": place}
        if not keep_pending:
            body["keep_pending"] = False
        if len(specs) == 1 and not count:
            body["spec"] = specs[0]
        else:
            body["specs"] = specs
        if count:
            body["count"] = count
        return self.request("POST", "/v1/packs", json=body, retry_for=retry_for)  # type: ignore[no-any-return]

    def packs(self, *, node: str | None = None, state: str | None = None, after: str | None = None,
              limit: int = 1000, stale: bool = False, total: bool = False) -> dict[str, Any]:
        """A page of packs. ``total``: also count every pack matching the filters (a walk over all
        packs when filtered: leave it off when polling)."""
        params: dict[str, Any] = {"limit": limit, "total": 1 if total else 0}
        if node:
            params["node"] = node
        if state:
            params["state"] = state
        if after:
            params["after"] = after
        if stale:
            params["stale"] = 1
        return self.request("GET", "/v1/packs", params=params)  # type: ignore[no-any-return]

    def iter_packs(self, **kw: Any) -> Iterator[dict[str, Any]]:
        after = None
        while True:
            page = self.packs(after=after, **kw)
            yield from page["packs"]
            after = page.get("next")
            if not after:
                return

    def pack(self, name: str, stale: bool = False) -> dict[str, Any]:
        return self.request("GET", f"/v1/packs/{segment('pack', name)}", params={"stale": 1} if stale else None)["pack"]  # type: ignore[no-any-return]

    def pack_action(self, name: str, action: str, *, keep_pending: bool = True) -> dict[str, Any]:
        body: dict[str, Any] = {"request_id": uuid.uuid4().hex}
        if not keep_pending:
            body["keep_pending"] = False
        return self.request("POST", f"/v1/packs/{segment('pack', name)}/{quote(action, safe='')}",  # type: ignore[no-any-return]
                            json=body, retry_for=5.0)

    def delete_packs(self, names: list[str], *, force: bool = False) -> dict[str, Any]:
        """Remove packs from the state (their history stays); ``force`` also takes packs that still
        hold a node (their agent stops them)."""
        return self.request("DELETE", "/v1/packs",  # type: ignore[no-any-return]
                            json={"names": [validate_name("pack", n) for n in names], "force": force,
                                  "request_id": uuid.uuid4().hex}, retry_for=5.0)

    def pack_history(self, name: str) -> dict[str, Any]:
        return self.request("GET", f"/v1/packs/{segment('pack', name)}/history")  # type: ignore[no-any-return]

    def ring(self, stale: bool = False) -> dict[str, Any]:
        return self.request("GET", "/v1/ring", params={"stale": 1} if stale else None)  # type: ignore[no-any-return]

    def ring_lookup(self, name: str) -> dict[str, Any]:
        return self.request("GET", f"/v1/ring/lookup/{segment('pack', name)}")  # type: ignore[no-any-return]

    def wait_running(self, names: list[str], timeout: float,
                     generations: dict[str, int] | None = None) -> dict[str, dict[str, Any]]:
        """Poll until every named pack runs (or fails); Timeout when the deadline passes.

        Reads are cheap local reads of whichever agent answers, which may lag the leader by a
        moment: a pack not there yet, or still at an older placement ``generation``, is waited for.
        """
        deadline = time.monotonic() + timeout
        left = set(names)
        seen: dict[str, dict[str, Any]] = {}
        while left:
            for name in sorted(left):
                try:
                    p = self.pack(name, stale=True)
                except NotFound:
                    continue
                if generations and p["generation"] < generations.get(name, 0):
                    continue
                if p["state"] in ("running", "failed", "stopped"):
                    seen[name] = p
                    left.discard(name)
            if not left:
                break
            if time.monotonic() >= deadline:
                raise Timeout(f"{len(left)} pack(s) not running after {timeout:g} s (e.g. {sorted(left)[0]})")
            time.sleep(0.01)
        return seen

    # ------------------------------------------------------------ metrics

    def metrics_cluster(self, by: str = "cell", *, zone: str | None = None, cell: str | None = None,
                        packs: int = 0, sort: str = "cpu") -> dict[str, Any]:
        """The leader's merged tree of the nodes' metrics summaries, down to ``by``; with ``packs``,
        that many sampled packs (each with its weight) in ``sort`` order."""
        params: dict[str, Any] = {"by": by, "packs": packs, "sort": sort}
        for key, v in (("zone", zone), ("cell", cell)):
            if v:
                params[key] = v
        return self.request("GET", "/v1/metrics/cluster", params=params)  # type: ignore[no-any-return]

    # ------------------------------------------------------------ access control

    def create_token(self, name: str, policies: list[str], ttl_s: int | None = None) -> dict[str, Any]:
        """A new API token; the answer holds its secret, shown this once."""
        body: dict[str, Any] = {"name": name, "policies": policies, "request_id": uuid.uuid4().hex}
        if ttl_s is not None:
            body["ttl_s"] = ttl_s
        return self.request("POST", "/v1/acl/tokens", json=body, retry_for=5.0)  # type: ignore[no-any-return]

    def tokens(self) -> list[dict[str, Any]]:
        return self.request("GET", "/v1/acl/tokens")["tokens"]  # type: ignore[no-any-return]

    def token(self, accessor: str) -> dict[str, Any]:
        return self.request("GET", f"/v1/acl/tokens/{segment('accessor', accessor)}")["token"]  # type: ignore[no-any-return]

    def revoke_token(self, accessor: str) -> dict[str, Any]:
        return self.request("DELETE", f"/v1/acl/tokens/{segment('accessor', accessor)}")  # type: ignore[no-any-return]

    def token_self(self, can: str | None = None, kind: str | None = None, name: str | None = None) -> dict[str, Any]:
        params = {k: v for k, v in (("can", can), ("kind", kind), ("name", name)) if v is not None}
        return self.request("GET", "/v1/acl/token/self", params=params or None)  # type: ignore[no-any-return]

    def apply_policy(self, policy: dict[str, Any]) -> dict[str, Any]:
        return self.request("POST", "/v1/acl/policies",  # type: ignore[no-any-return]
                            json={"policy": policy, "request_id": uuid.uuid4().hex}, retry_for=5.0)

    def policies(self) -> list[dict[str, Any]]:
        return self.request("GET", "/v1/acl/policies")["policies"]  # type: ignore[no-any-return]

    def policy(self, name: str) -> dict[str, Any]:
        return self.request("GET", f"/v1/acl/policies/{segment('policy', name)}")  # type: ignore[no-any-return]

    def delete_policy(self, name: str) -> dict[str, Any]:
        return self.request("DELETE", f"/v1/acl/policies/{segment('policy', name)}")  # type: ignore[no-any-return]

    # ------------------------------------------------------------ event history

    def pack_events(self, name: str, since_ms: int | None = None) -> dict[str, Any]:
        """A pack's history from the contacted server's event store (``since_ms``: from that time)."""
        return self.request("GET", f"/v1/packs/{segment('pack', name)}/history",  # type: ignore[no-any-return]
                            params={"since": since_ms} if since_ms else None)

    def events(self, *, after: int = 0, last: int | None = None, pack: str | None = None,
               node: str | None = None, type: str | None = None, limit: int = 1000,
               wait: float = 0.0) -> dict[str, Any]:
        """Durable events after ``after`` (or the ``last`` N) matching the filters; ``wait`` long-polls."""
        params: dict[str, Any] = {"after": after, "limit": limit}
        for key, value in (("last", last), ("pack", pack), ("node", node), ("type", type)):
            if value is not None:
                params[key] = value
        if wait:
            params["wait"] = wait
        return self.request("GET", "/v1/events", params=params,  # type: ignore[no-any-return]
                            timeout=wait + 10.0 if wait else None)

    def history_verify(self, *, full: bool = False, pack: str | None = None) -> dict[str, Any]:
        """Rebuild the contacted server's projections from its event log and compare them with the state."""
        params: dict[str, Any] = {"full": 1} if full else {}
        if pack:
            params["pack"] = pack
        return self.request("GET", "/v1/history/verify", params=params, timeout=120.0)  # type: ignore[no-any-return]
