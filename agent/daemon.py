"""The agent process: its composition root.

Every host runs the same process. ``Agent`` wires, from one ``AgentConfig``:

* the ``ServerLink`` (``canidae.agent.client.link``): the one way this agent reaches the servers;
* on a server, the ``ControlPlane`` (``canidae.agent.server.control``: Raft replica, group
  commit, event store) and its ``FailureDetector``;
* on every agent, the ``NodeRuntime`` (``canidae.agent.node.runtime``: reconcile loop, drivers,
  mailboxes, heartbeats);
* on every agent, its audit log (``canidae.agent.node.auditlog``), the ``Auditor`` the Edge
  records requests with and the ``Checkpointer`` that commits the log's signed head;
* the HTTP app: the cluster routes (answered by the control plane on a server, passed on to a
  server by a client agent), the event history routes, and the node's exec and yip routes, all
  behind one ``Edge`` (``canidae.agent.httpedge``).

``run_agent`` serves it with uvicorn until SIGTERM/SIGINT.
"""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import os
import signal
import sys
import time
from typing import Any

import uvicorn
from canidae import __version__
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from canidae.agent.admission import Admission, LoopLag, pressure_from_env
from canidae.agent.certs import server_ssl_options
from canidae.agent.client.link import ServerLink, idle_s
from canidae.agent.config import AgentConfig
from canidae.agent.datadir import make_private
from canidae.agent.httpedge import Edge, error_response, read_json
from canidae.agent.identity import Authenticator
from canidae.agent.keyring import ClusterKeys
from canidae.agent.node import audit_routes, exec_routes, status_routes, yips
from canidae.agent.node.auditing import Auditor, Checkpointer
from canidae.agent.node.auditlog import AuditLog
from canidae.agent.node.runtime import NodeRuntime
from canidae.agent.server import audit_routes as audit_heads_routes
from canidae.agent.server import history
from canidae.agent.server.access import TokenAccess
from canidae.agent.server.acl_routes import acl_routes
from canidae.agent.server.autoscale_routes import autoscale_routes
from canidae.agent.server.control import ControlPlane
from canidae.agent.server.failure import FailureDetector
from canidae.agent.server.keys import KeyKeeper, keys_routes
from canidae.agent.server.routes import DEFAULT_WAIT_S, INDEX_HEADER, cluster_routes
from canidae.agent.telemetry import RequestMetrics, Telemetry
from canidae.core.errors import CanidaeError, NotFound, Overloaded
from canidae.core.types import Role
from starlette.routing import Route
from starlette.types import ASGIApp

log = logging.getLogger("canidae.agent")
KEYS_FETCH_S = 1.0


class Agent:
    def __init__(self, cfg: AgentConfig) -> None:
        self.cfg = cfg
        self.started = time.monotonic()
        # Every agent of a cluster serves with the same keep-alive timeout, so this agent's pooled
        # connections to the others are dropped well before those close them.
        self.link = ServerLink(cfg.server_apis, cfg.token, timeout_s=cfg.request_timeout_s,
                               idle=idle_s(cfg.keep_alive_s), ca=cfg.peer_ca)
        self.plane: ControlPlane | None = ControlPlane(cfg, self.link) if cfg.role is Role.SERVER else None
        self.failure: FailureDetector | None = None
        # The cluster's keys: a server's follow its replica (KeyKeeper), a client agent's are fetched.
        self.keys = self.plane.keys if self.plane is not None else ClusterKeys(cfg.data_dir, cfg.region, cfg.token)
        self.keeper = KeyKeeper(self.plane) if self.plane is not None else None
        self.node = NodeRuntime(
            cfg, self.link,
            hop_idle_s=idle_s(cfg.keep_alive_s),
            local_assignments=self.plane.assignments if self.plane is not None else None,
            local_resync=self.plane.resync if self.plane is not None else None,
            locate_local=self.plane.locate_pack if self.plane is not None else None, keys=self.keys,
            local_reports=self.plane.report_packs if self.plane is not None else None,
            leads=self.plane.is_leader if self.plane is not None else None)
        plane = self.plane
        # Servers find API tokens in their replica; client agents pass them on to a server.
        self.access = None if plane is None else TokenAccess(lambda: plane.state, self.keys)
        revoked = plane.is_revoked if plane is not None else (lambda node: node in self.node.revoked_nodes)
        keys = self.keys
        admin_hash = ((lambda: plane.state.keyrings.admin_hash or keys.admin_hash) if plane is not None
                      else (lambda: keys.admin_hash))
        # CANIDAE_ADMISSION=off: every request is taken on (benchmarks compare; an operator's way out).
        self.admission = Admission(pressure_from_env(), enabled=os.environ.get("CANIDAE_ADMISSION") != "off")
        # Every agent audits what it is asked to change (and every refusal) in its own log, and
        # commits its signed head through the servers.
        self.audit_log = AuditLog(cfg.data_dir, cfg.node_id, cfg.audit.segment_bytes)
        self.auditor = Auditor(self.audit_log, cfg.node_id, cfg.audit)
        self.checkpointer = Checkpointer(
            self.auditor, lambda body: self.link.call("POST", "/v1/audit/checkpoints", json=body),
            cfg.audit.checkpoint_s)
        self.edge = Edge(Authenticator(cfg.admin_token_hash, cfg.identity_public_key,
                                       find_token=self.access.find_token if self.access else None,
                                       current_admin_hash=admin_hash, revoked=revoked),
                         cfg.max_body_bytes, forward=None if self.plane is not None else self.forward,
                         access=self.access, admission=self.admission, audit=self.auditor)
        self.tasks: list[asyncio.Task[Any]] = []
        self.telemetry = Telemetry()
        self.telemetry.add_source(self.admission.readings)
        self.telemetry.add_source(self.node.readings)
        self.node.summary_extras = self._summary_extras
        if self.plane is not None:
            self.plane.observe_commit = self.telemetry.raft_commit.observe
            self.plane.observe_store_commit = self.telemetry.store_commit.observe
            self.telemetry.add_source(self.plane.readings)
            self.telemetry.add_source(lambda: self.failure.readings() if self.failure is not None else [])

    def _summary_extras(self) -> tuple[dict[str, int], dict[str, Any]]:
        t = self.telemetry
        return ({"api_requests": t.api_requests, "api_errors": t.api_errors}, {"api_ms": t.take_api_sketch()})

    async def start(self) -> None:
        self.audit_log.open()
        self.tasks.append(asyncio.create_task(self.checkpointer.run()))
        if isinstance(self.admission.pressure, LoopLag):
            self.admission.pressure.start()
        if self.plane is not None:
            self.plane.start(asyncio.get_running_loop())
            self.failure = FailureDetector(self.plane)
            self.tasks.append(asyncio.create_task(self.failure.run()))
        if self.keeper is not None:
            self.tasks.append(asyncio.create_task(self.keeper.run()))
        else:
            self.tasks.append(asyncio.create_task(self._fetch_keys()))
        self.node.start()

    async def _fetch_keys(self) -> None:
        """A client agent's keys: the keyrings (wrapped) fetched from a server every second."""
        while True:
            try:
                self.keys.update(await self.link.call("GET", "/v1/keys/sealed", timeout=2.0))
            except asyncio.CancelledError:
                raise
            except Exception as e:  # servers unreachable or a damaged key: keep the keys held, try again
                log.debug("cannot refresh the cluster keys: %s", e)
            await asyncio.sleep(KEYS_FETCH_S)

    async def stop(self) -> None:
        if isinstance(self.admission.pressure, LoopLag):
            self.admission.pressure.stop()
        if self.failure is not None:
            self.failure.stopping = True
            self.failure.hops.close()
        await self.node.stop()
        for t in self.tasks:
            t.cancel()
        try:  # pin the head a last time, if the servers are still there to take it
            if self.audit_log.durable_seq != self.checkpointer.committed_seq and self.audit_log.durable_seq:
                await asyncio.wait_for(self.checkpointer.commit_now(), 2.0)
        except (CanidaeError, OSError, TimeoutError) as e:
            log.info("audit: no last checkpoint at stop: %s", e)
        self.audit_log.close()
        await self.link.close()
        if self.plane is not None:
            self.plane.stop()

    def health(self) -> dict[str, Any]:
        out: dict[str, Any] = {"ok": True, "node": self.cfg.node_id, "role": self.cfg.role.value, "version": __version__,
                               "api": self.cfg.api, "uptime_s": round(time.monotonic() - self.started, 3),
                               "pid": os.getpid(), "auth_failures": self.edge.failures.total,
                               "heartbeats": self.node.heartbeats, "admission": self.admission.summary()}
        if self.plane is not None:
            out.update(self.plane.raft_health())
        return out

    def _address_of(self, node: str) -> str | None:
        """Agent ``node``'s API address in this server's replica (None: no such node)."""
        assert self.plane is not None
        found = self.plane.state.nodes.get(node)
        return None if found is None else found.address

    async def forward(self, request: Request) -> Response:
        """A client agent passes cluster requests on to a server, unchanged, with the caller's own
        credential (never its own: the server decides what the caller may do)."""
        # DELETE /v1/packs has a body too (the names): pass on every body given.
        body = await read_json(request, self.cfg.max_body_bytes) if request.method in ("POST", "DELETE") else None
        try:
            status, content, index = await self.link.pass_on(
                request.method, request.url.path, params=dict(request.query_params), body=body,
                auth=request.headers.get("authorization", ""),
                timeout=_forward_timeout(request, self.cfg.request_timeout_s))
        except CanidaeError as e:
            return error_response(e)
        if status == Overloaded.http_status:  # the server's own refusal: keep its Retry-After
            try:
                return error_response(CanidaeError.from_wire(json.loads(content), status))
            except ValueError:
                pass
        return Response(content, status_code=status, media_type="application/json",
                        headers={INDEX_HEADER: index} if index is not None else None)

    def app(self) -> ASGIApp:
        routes = [Route("/v1/metrics", self.edge.endpoint(self.telemetry.handle, forward=False), methods=["GET"])]
        routes += cluster_routes(self.plane, self.edge, self.health)
        routes += acl_routes(self.plane, self.edge, self.access)
        routes += audit_heads_routes.routes(self.plane, self.edge)
        routes += audit_routes.routes(self.audit_log, self.checkpointer, self.edge, self.cfg.node_id, self.link,
                                      self.node.hops, self._address_of if self.plane is not None else None)
        routes += keys_routes(self.plane, self.edge, self.keeper)
        routes += autoscale_routes(self.plane, self.edge)
        routes += history.routes(self.plane, self.edge.endpoint)
        routes += exec_routes.routes(self.node, self.edge)
        routes += yips.routes(self.node, self.edge)
        routes += status_routes.routes(self.node, self.edge)

        async def not_found(request: Request, exc: Exception) -> Response:
            return error_response(NotFound(f"no route {request.method} {request.url.path}"))

        async def method_not_allowed(request: Request, exc: Exception) -> Response:
            # Every route on the path, not only the first one the router tried (GET and POST of
            # one path are separate routes).
            allowed = sorted({m for r in routes if r.methods and r.path_regex.match(request.url.path)
                              for m in r.methods})
            return JSONResponse({"error": {"code": "method_not_allowed",
                                           "message": f"{request.method} is not allowed on {request.url.path}"}},
                                status_code=405, headers={"Allow": ", ".join(allowed)})

        app = Starlette(routes=routes, exception_handlers={404: not_found, 405: method_not_allowed})
        return RequestMetrics(app, self.telemetry)


def _forward_timeout(request: Request, default: float) -> float:
    """Long-polls passed on wait for as long as they asked, and a little more (a blocking pack
    read with an ``index`` and no ``wait`` waits for the routes' default)."""
    wait = request.query_params.get("wait")
    if wait is None and "index" in request.query_params:
        return default + DEFAULT_WAIT_S
    try:
        return default + (float(wait) if wait else 0.0)
    except ValueError:
        return default


def _setup_logging(cfg: AgentConfig) -> None:
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if cfg.log_file:
        os.makedirs(os.path.dirname(os.path.abspath(cfg.log_file)), exist_ok=True)
        handlers.append(logging.FileHandler(cfg.log_file))
    logging.basicConfig(level=os.environ.get("CANIDAE_LOG_LEVEL", "INFO"), handlers=handlers, force=True,
                        format=f"%(asctime)s {cfg.node_id} %(levelname)s %(name)s: %(message)s")
    logging.getLogger("uvicorn.access").setLevel(logging.WARNING)
    logging.getLogger("httpx").setLevel(logging.WARNING)


class _Server(uvicorn.Server):
    """uvicorn's server, waking once a second instead of ten times.

    uvicorn's main loop sleeps 0.1 s between checks of ``should_exit`` and refreshes the Date
    header every tenth; on an idle agent those ten wake-ups a second were a third of the event
    loop's. Here the loop ticks once a second (the Date header still changes every second) and a
    stop sets an event that ends the wait at once, so stopping is no slower.
    """

    _exit: asyncio.Event | None = None
    _should_exit = False

    @property  # type: ignore[override]
    def should_exit(self) -> bool:
        return self._should_exit

    @should_exit.setter
    def should_exit(self, value: bool) -> None:
        self._should_exit = value
        if value and self._exit is not None:
            self._exit.set()

    async def main_loop(self) -> None:
        self._exit = asyncio.Event()
        counter = 0
        while not await self.on_tick(counter):
            counter = (counter + 10) % 864000  # a multiple of 10: the headers are refreshed every tick
            try:
                await asyncio.wait_for(self._exit.wait(), 1.0)
            except TimeoutError:
                pass


def run_agent(cfg: AgentConfig) -> int:
    """Run in the foreground until SIGTERM/SIGINT; returns the process exit code."""
    make_private(cfg.data_dir)  # before the log file, the journal or anything else is created
    _setup_logging(cfg)
    # The API's event loop and pysyncobj's tick thread share the GIL. With the default 5 ms switch
    # interval every hand-over between them can cost up to 5 ms of request latency; 0.5 ms keeps
    # the ping-pong cheap (measured: see the README's figures).
    sys.setswitchinterval(0.0005)
    # The replicated state is hundreds of thousands of long-lived objects; the default young-
    # generation threshold (700) makes the collector walk them far too often under load.
    gc.set_threshold(50_000, 20, 50)
    host, _, port = cfg.api.rpartition(":")
    # TLS with this agent's certificate, unless the cluster was made with --insecure-http (loopback only).
    tls = {} if cfg.insecure_http else server_ssl_options(cfg.tls_cert, cfg.tls_key)
    if cfg.insecure_http:
        log.warning("serving plain HTTP on %s (insecure_http): for a throwaway loopback cluster only", cfg.api)
    agent = Agent(cfg)

    async def main() -> None:
        server = _Server(uvicorn.Config(agent.app(), host=host, port=int(port), log_level="warning",
                                               access_log=False, lifespan="off", loop="asyncio",
                                               timeout_keep_alive=cfg.keep_alive_s,  # type: ignore[arg-type]
                                               timeout_graceful_shutdown=2, **tls))
        server.install_signal_handlers = lambda: None  # type: ignore[method-assign]
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await agent.start()
        serve = asyncio.create_task(server.serve())
        log.info("agent %s (%s) serving the API on %s://%s", cfg.node_id, cfg.role.value, cfg.scheme, cfg.api)
        done, _ = await asyncio.wait([serve, asyncio.create_task(stop.wait())],
                                     return_when=asyncio.FIRST_COMPLETED)
        if serve in done and serve.exception() is not None:
            raise serve.exception()  # type: ignore[misc]
        server.should_exit = True
        await agent.stop()
        await serve
        log.info("agent %s stopped", cfg.node_id)

    try:
        import uvloop
        uvloop.run(main())
    except ImportError:
        asyncio.run(main())
    return 0
