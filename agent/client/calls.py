"""The typed HTTP client of the agent API: what the CLI, benchmarks and tests use.

It reuses connections, applies timeouts, fails over to the next agent when one is unreachable
or has no leader, and turns error answers back into the typed errors of ``canidae.core.errors``
(so the CLI exits with the documented code). Writes carry a request id that stays the same
across failover retries, which makes a retry after an unknown outcome safe.

An agent refusing a request for load answers 429 with ``Retry-After`` (``Overloaded``; nothing
was done, so repeating it is safe). The client waits that long plus up to half again at random
(``overload_wait``: the jitter keeps refused clients from coming back in step), at most
``overload_retries`` times, then raises the ``Overloaded`` (CLI exit 7).

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
import random
import ssl
import time
import tomllib
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple
from urllib.parse import quote

from canidae.agent.client.http11 import Answer, Connections, Untrusted
from canidae.agent.client.tls import client_context
from canidae.core.errors import CanidaeError, InvalidInput, NotAuthenticated, Overloaded, Timeout, Unavailable
from canidae.core.names import validate_name

DEFAULT_CONFIG = os.path.join("~", ".config", "canidae", "config.toml")
MAX_WAIT_S = 60  # the longest blocking read a server takes (``?index=N&wait=S``)


class Target(NamedTuple):
    addrs: tuple[str, ...]
    token: str
    ca: str = ""                # the cluster CA: a PEM file or PEM text ("": the system's store)
    insecure_http: bool = False  # plain HTTP (a loopback cluster made with --insecure-http)

    @property
    def scheme(self) -> str:
        return "http" if self.insecure_http else "https"

    def verify(self) -> ssl.SSLContext | bool:
        """What an httpx client verifies the agents' certificates with (True: plain HTTP)."""
        return True if self.insecure_http else client_context(self.ca)

    def tls(self) -> ssl.SSLContext | None:
        """The verifying context of the agents' TLS, or None for a plain-HTTP cluster."""
        return None if self.insecure_http else client_context(self.ca)

    def ca_name(self) -> str:
        """The cluster CA as an error message names it."""
        if not self.ca:
            return "none configured, the system's store"
        return "given as text" if self.ca.lstrip().startswith("-----BEGIN") else self.ca


def new_request_id() -> str:
    """A random request id (128 bits, as a uuid4 has; ``uuid`` itself is slow to import)."""
    return os.urandom(16).hex()


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


OVERLOAD_RETRIES = 3  # waits as told by Retry-After before an Overloaded is given up on
MAX_OVERLOAD_WAIT_S = 30.0


def overload_wait(err: Overloaded, rng: random.Random | None = None) -> float:
    """How long to wait before repeating a request refused for load: its ``Retry-After`` and up to
    half of it again at random, at most ``MAX_OVERLOAD_WAIT_S``."""
    base = min(err.retry_after_s, MAX_OVERLOAD_WAIT_S)
    return min(MAX_OVERLOAD_WAIT_S, base * (1.0 + 0.5 * (rng or random).random()))


def decode_answer(addr: str, r: Answer | Any) -> Any:
    """The JSON of an answer (``status_code`` and ``json()``: an ``Answer`` or an httpx response),
    or its typed error. ``Unavailable`` means: try another agent."""
    try:
        data = r.json()
    except ValueError:
        raise Unavailable(f"agent {addr} answered HTTP {r.status_code} without JSON") from None
    if r.status_code >= 400:
        err = CanidaeError.from_wire(data, r.status_code)
        if isinstance(err, Overloaded) and "retry_after_s" not in err.details:
            after = r.headers.get("retry-after", "")
            if after.isascii() and after.isdigit():
                err.details["retry_after_s"] = int(after)
        raise err
    return data


class Client:
    def __init__(self, target: Target, timeout: float = 10.0, overload_retries: int = OVERLOAD_RETRIES) -> None:
        self.target = target
        self.overload_retries = overload_retries
        self.addrs = list(target.addrs)
        self.scheme = target.scheme
        self.http = Connections({"authorization": f"Bearer {target.token}", "accept": "application/json"},
                                timeout=timeout, tls=target.tls(), ca_name=target.ca_name())

    def close(self) -> None:
        self.http.close()

    def url(self, addr: str, path: str) -> str:
        """The URL of ``path`` on agent ``addr`` (https, unless the cluster speaks plain HTTP)."""
        return f"{self.scheme}://{addr}{path}"

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def ask(self, addr: str, method: str, path: str, *, json: Any = None, params: dict[str, Any] | None = None,
            timeout: float | None = None) -> Any:
        """One request to the agent at ``addr`` only (no failover): its JSON or its typed error."""
        return decode_answer(addr, self.http.request(method, addr, path, json=json, params=params, timeout=timeout))

    def request(self, method: str, path: str, *, json: Any = None, params: dict[str, Any] | None = None,
                timeout: float | None = None, retry_for: float = 0.0) -> Any:
        """Send to the first agent that answers; on unreachable / no leader try the next ones.

        ``retry_for`` keeps cycling through the agents for that many seconds (used for writes, which
        carry a request id and so are safe to repeat). A 429 is waited out and repeated (see the
        module docstring), reads and writes alike: the agent did nothing with the request.
        """
        deadline = time.monotonic() + retry_for
        last: CanidaeError = Unavailable("no agent reachable")
        refused = 0
        untrusted: CanidaeError | None = None  # a TLS failure does not pass by waiting
        while True:
            for i, addr in enumerate(list(self.addrs)):
                try:
                    data = self.ask(addr, method, path, json=json, params=params, timeout=timeout)
                except Untrusted as e:
                    untrusted = last = e
                    continue
                except Unavailable as e:  # unreachable, no answer in time, no leader there
                    last = e
                    continue
                except Overloaded as e:
                    refused += 1
                    if refused > self.overload_retries:
                        raise Overloaded(f"{e.message} (refused {refused} times, "
                                         f"{self.overload_retries} retries)", e.details) from None
                    time.sleep(overload_wait(e))
                    deadline = max(deadline, time.monotonic() + 0.05)  # the wait is not the caller's retry budget
                    break
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
                            json={"state": state, "reason": reason, "request_id": new_request_id()},
                            retry_for=5.0)

    def revoke_node(self, node_id: str, reason: str = "") -> dict[str, Any]:
        """Refuse a client agent's node credential cluster-wide from the next request on."""
        return self.request("POST", f"/v1/nodes/{segment('node', node_id)}/revoke",  # type: ignore[no-any-return]
                            json={"reason": reason, "request_id": new_request_id()}, retry_for=5.0)

    def drain(self, node_id: str, plan: bool = False) -> dict[str, Any]:
        return self.request("POST", f"/v1/nodes/{segment('node', node_id)}/state",  # type: ignore[no-any-return]
                            json={"state": "draining", "reason": "drain", "plan": plan,
                                  "request_id": new_request_id()}, retry_for=5.0)

    def remove_node(self, node_id: str) -> dict[str, Any]:
        """Forget a drained (or down) node whose agent has stopped."""
        return self.request("DELETE", f"/v1/nodes/{segment('node', node_id)}",  # type: ignore[no-any-return]
                            json={"request_id": new_request_id()}, retry_for=5.0)

    def migrate(self, name: str, to: str | None = None) -> dict[str, Any]:
        return self.request("POST", f"/v1/packs/{segment('pack', name)}/migrate",  # type: ignore[no-any-return]
                            json={"to": to, "request_id": new_request_id()}, retry_for=5.0)

    def rebalance(self, plan: bool = False) -> dict[str, Any]:
        return self.request("POST", "/v1/rebalance",  # type: ignore[no-any-return]
                            json={"plan": plan, "request_id": new_request_id()}, retry_for=5.0)

    def create_packs(self, specs: list[dict[str, Any]], *, count: int = 0, place: bool = True,
                     request_id: str | None = None, retry_for: float = 5.0,
                     keep_pending: bool = True) -> dict[str, Any]:
        """Create (and place) packs. ``keep_pending=False``: if any fits nowhere, nothing is created
        (a ``NoCapacity`` error); else such packs wait, pending, until room appears."""
        body: dict[str, Any] = {"request_id": request_id or new_request_id(), "place": place}
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
              limit: int = 1000, stale: bool = False, total: bool = False, index: int | None = None,
              wait: float = 0.0) -> dict[str, Any]:
        """A page of packs and the list's modify ``index``. ``total``: also count every pack
        matching the filters (a walk over all packs when filtered: leave it off when polling).
        ``index``: a blocking read, answered once the list's index is above it (see ``watch``)."""
        params: dict[str, Any] = {"limit": limit, "total": 1 if total else 0}
        if node:
            params["node"] = node
        if state:
            params["state"] = state
        if after:
            params["after"] = after
        if stale:
            params["stale"] = 1
        return self._read("/v1/packs", params, index, wait)

    def iter_packs(self, **kw: Any) -> Iterator[dict[str, Any]]:
        after = None
        while True:
            page = self.packs(after=after, **kw)
            yield from page["packs"]
            after = page.get("next")
            if not after:
                return

    def pack(self, name: str, stale: bool = False) -> dict[str, Any]:
        return self.pack_read(name, stale=stale)["pack"]  # type: ignore[no-any-return]

    def pack_read(self, name: str, *, stale: bool = False, index: int | None = None, wait: float = 0.0
                  ) -> dict[str, Any]:
        """``{"pack", "index"}``: a pack and its modify index; with ``index``, a blocking read."""
        return self._read(f"/v1/packs/{segment('pack', name)}", {"stale": 1} if stale else {}, index, wait)

    def pack_action(self, name: str, action: str, *, keep_pending: bool = True) -> dict[str, Any]:
        body: dict[str, Any] = {"request_id": new_request_id()}
        if not keep_pending:
            body["keep_pending"] = False
        return self.request("POST", f"/v1/packs/{segment('pack', name)}/{quote(action, safe='')}",  # type: ignore[no-any-return]
                            json=body, retry_for=5.0)

    def delete_packs(self, names: list[str], *, force: bool = False) -> dict[str, Any]:
        """Remove packs from the state (their history stays); ``force`` also takes packs that still
        hold a node (their agent stops them)."""
        return self.request("DELETE", "/v1/packs",  # type: ignore[no-any-return]
                            json={"names": [validate_name("pack", n) for n in names], "force": force,
                                  "request_id": new_request_id()}, retry_for=5.0)

    def pack_history(self, name: str) -> dict[str, Any]:
        return self.request("GET", f"/v1/packs/{segment('pack', name)}/history")  # type: ignore[no-any-return]

    def ring(self, stale: bool = False) -> dict[str, Any]:
        return self.request("GET", "/v1/ring", params={"stale": 1} if stale else None)  # type: ignore[no-any-return]

    def ring_lookup(self, name: str) -> dict[str, Any]:
        return self.request("GET", f"/v1/ring/lookup/{segment('pack', name)}")  # type: ignore[no-any-return]

    def _read(self, path: str, params: dict[str, Any], index: int | None, wait: float) -> dict[str, Any]:
        if index is not None:
            # Whole seconds, at most what the server takes; the answer may take that long.
            wait_s = max(0, min(MAX_WAIT_S, int(wait)))
            params = {**params, "index": index, "wait": wait_s}
            return self.request("GET", path, params=params, timeout=wait_s + 10.0)  # type: ignore[no-any-return]
        return self.request("GET", path, params=params or None)  # type: ignore[no-any-return]

    def watch(self, read: Callable[[int | None, float], dict[str, Any]], done: Callable[[dict[str, Any]], bool],
              deadline: float) -> dict[str, Any] | None:
        """The one wait of the client on the cluster's state: blocking reads (``read(index, wait)``
        answers once the modify index is above ``index``, or after ``wait`` seconds) until
        ``done(answer)``; the answer, or None once ``deadline`` (monotonic) has passed.

        No polling: each read parks on the server until the state changes. An index that went
        backwards (another agent, a replica behind) starts over from a plain read. A cluster
        without a leader for a moment (an election) is waited out, up to ``deadline``.
        """
        def attempt(index: int | None, wait: float) -> dict[str, Any]:
            while True:
                try:
                    return read(index, wait)
                except Unavailable:
                    if time.monotonic() >= deadline:
                        raise
                    time.sleep(0.1)  # every agent refused: no leader yet, or none reachable

        answer = attempt(None, 0.0)
        while not done(answer):
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            index = answer["index"]
            # A blocking read of at least a second: whole seconds are what the server takes.
            nxt = attempt(index, max(1.0, min(left, MAX_WAIT_S)))
            answer = attempt(None, 0.0) if nxt["index"] < index else nxt
        return answer

    def wait_packs(self, names: list[str], done: Callable[[dict[str, Any]], bool], timeout: float,
                   what: str = "not running") -> dict[str, dict[str, Any]]:
        """Wait until ``done(pack)`` holds for every named pack (blocking reads, one pack at a time:
        the whole wait takes as long as the slowest pack). ``Timeout`` after ``timeout`` seconds;
        ``NotFound`` if a pack is deleted meanwhile."""
        deadline = time.monotonic() + timeout
        seen: dict[str, dict[str, Any]] = {}
        for i, name in enumerate(names):
            def read(index: int | None, wait: float, name: str = name) -> dict[str, Any]:
                return self.pack_read(name, index=index, wait=wait)
            got = self.watch(read, lambda a: done(a["pack"]), deadline)
            if got is None:
                left = len(names) - i
                raise Timeout(f"{left} pack(s) {what} after {timeout:g} s (e.g. {name})")
            seen[name] = got["pack"]
        return seen

    def wait_running(self, names: list[str], timeout: float,
                     generations: dict[str, int] | None = None) -> dict[str, dict[str, Any]]:
        """Wait until every named pack runs (or has failed or stopped), at its placement
        ``generation`` or a newer one when ``generations`` names it; ``Timeout`` at the deadline."""
        gens = generations or {}
        return self.wait_packs(names, lambda p: p["generation"] >= gens.get(p["name"], 0)
                               and p["state"] in ("running", "failed", "stopped"), timeout)

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
        body: dict[str, Any] = {"name": name, "policies": policies, "request_id": new_request_id()}
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
                            json={"policy": policy, "request_id": new_request_id()}, retry_for=5.0)

    def policies(self) -> list[dict[str, Any]]:
        return self.request("GET", "/v1/acl/policies")["policies"]  # type: ignore[no-any-return]

    def policy(self, name: str) -> dict[str, Any]:
        return self.request("GET", f"/v1/acl/policies/{segment('policy', name)}")  # type: ignore[no-any-return]

    # ------------------------------------------------------------ autoscale

    def autoscale_status(self, last: int = 10) -> dict[str, Any]:
        return self.request("GET", "/v1/autoscale", params={"last": last})  # type: ignore[no-any-return]

    def autoscale_records(self, since: int = 0) -> dict[str, Any]:
        """Whole recorded decisions after id ``since``, oldest first (``records``, ``last_id``)."""
        return self.request("GET", "/v1/autoscale/decisions", params={"since": since})  # type: ignore[no-any-return]

    def autoscale_decision(self, decision_id: int) -> dict[str, Any]:
        return self.request("GET", f"/v1/autoscale/decisions/{int(decision_id)}")["record"]  # type: ignore[no-any-return]

    def set_autoscale_policy(self, policy: dict[str, Any]) -> dict[str, Any]:
        return self.request("POST", "/v1/autoscale/policy",  # type: ignore[no-any-return]
                            json={"policy": policy, "request_id": new_request_id()}, retry_for=5.0)

    def set_autoscale_paused(self, paused: bool, reason: str = "") -> dict[str, Any]:
        return self.request("POST", "/v1/autoscale/pause" if paused else "/v1/autoscale/resume",  # type: ignore[no-any-return]
                            json={"reason": reason, "request_id": new_request_id()}, retry_for=5.0)

    def record_autoscale_decision(self, decision: dict[str, Any], controller: str) -> int:
        """Keep one evaluation in the cluster; returns its id."""
        answer = self.request("POST", "/v1/autoscale/decisions", retry_for=5.0,
                              json={"decision": decision, "controller": controller, "request_id": new_request_id()})
        return int(answer["id"])

    def set_autoscale_outcome(self, decision_id: int, status: str, nodes: list[str] | None = None,
                              error: str = "") -> dict[str, Any]:
        return self.request("POST", f"/v1/autoscale/decisions/{int(decision_id)}/outcome",  # type: ignore[no-any-return]
                            json={"status": status, "nodes": nodes or [], "error": error,
                                  "request_id": new_request_id()}, retry_for=5.0)

    def delete_policy(self, name: str) -> dict[str, Any]:
        return self.request("DELETE", f"/v1/acl/policies/{segment('policy', name)}")  # type: ignore[no-any-return]

    # ------------------------------------------------------------ keys

    def keys(self) -> list[dict[str, Any]]:
        return self.request("GET", "/v1/keys")["keys"]  # type: ignore[no-any-return]

    def keys_status(self) -> dict[str, Any]:
        return self.request("GET", "/v1/keys/status")  # type: ignore[no-any-return]

    def rotate_keys(self, purposes: list[str] | None = None, prepublish_s: float | None = None,
                    by_region: bool = False) -> dict[str, Any]:
        """Start a rotation (answered at once with the new key ids; ``keys_status`` follows it)."""
        body: dict[str, Any] = {"by_region": by_region}
        if purposes:
            body["purposes"] = purposes
        if prepublish_s is not None:
            body["prepublish_s"] = prepublish_s
        return self.request("POST", "/v1/keys/rotate", json=body)  # type: ignore[no-any-return]

    def retire_key(self, key_id: str) -> dict[str, Any]:
        return self.request("POST", "/v1/keys/retire",  # type: ignore[no-any-return]
                            json={"id": key_id, "request_id": new_request_id()}, retry_for=5.0)

    def rotate_admin_hash(self, new_hash: str) -> dict[str, Any]:
        return self.request("POST", "/v1/acl/bootstrap",  # type: ignore[no-any-return]
                            json={"hash": new_hash, "request_id": new_request_id()}, retry_for=5.0)

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
