"""An agent's own metrics: what ``GET /v1/metrics`` exposes, in Prometheus text or JSON.

``Telemetry`` owns one ``prometheus_client`` registry per agent (never the global one, so two
agents in one process, as in tests, do not mix). It measures the API itself (``RequestMetrics``,
an ASGI middleware: requests by route template, method and code, and their latency) and, at each
scrape, reads the plain numbers the rooms of the agent already keep through *sources*: callables
the composition root registers that return ``Reading`` values (the Raft replica, the failure
detector, the node runtime). The rooms never import this module; their numbers stay plain data.

Names follow Prometheus's conventions: the ``canidae_`` prefix, base units (seconds, bytes),
``_total`` on counters, and no label whose values grow with the number of packs (a node label is
fine: nodes are few and named by the operator).

It also keeps, per heartbeat interval, a latency sketch of the API (``take_api_sketch``) for the
node's metrics summary (``canidae.core.metrics``). Long-polls are left out of that sketch: their
duration is how long nothing happened, not how slow the agent was.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from canidae.core.errors import InvalidInput
from canidae.core.sketch import Sketch

PROMETHEUS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# Latency buckets from 0.5 ms to 10 s: loopback writes take about a millisecond, long-polls seconds.
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


@dataclass(frozen=True, slots=True)
class Reading:
    """One sample a source reports at scrape time: a gauge or a counter total, with labels."""

    name: str  # without the canidae_ prefix, and without _total for a counter
    kind: str  # "gauge" or "counter"
    help: str
    value: float
    labels: dict[str, str] = field(default_factory=dict)


Source = Callable[[], Iterable[Reading]]


class _Sources(Collector):
    """Turns the readings of every source into metric families, one family per name."""

    def __init__(self, sources: list[Source]) -> None:
        self._sources = sources

    def collect(self) -> Iterator[Metric]:
        families: dict[str, GaugeMetricFamily | CounterMetricFamily] = {}
        for source in list(self._sources):
            for r in source():
                fam = families.get(r.name)
                if fam is None:
                    cls = CounterMetricFamily if r.kind == "counter" else GaugeMetricFamily
                    fam = families[r.name] = cls(f"canidae_{r.name}", r.help, labels=sorted(r.labels))
                fam.add_metric([r.labels[k] for k in sorted(r.labels)], r.value)
        yield from families.values()


class Telemetry:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.requests = Counter("canidae_api_requests", "API requests answered, by route template, method and "
                                "status code.", ["route", "method", "code"], registry=self.registry)
        self.latency = Histogram("canidae_api_request_duration_seconds", "Time to answer an API request, by "
                                 "route template.", ["route"], buckets=LATENCY_BUCKETS, registry=self.registry)
        # Observed from other threads too (pysyncobj's tick thread, the event store's writer):
        # prometheus_client's histograms take a lock.
        self.raft_commit = Histogram("canidae_raft_commit_seconds", "Time from proposing a group-commit log "
                                     "entry to its commit and apply on this leader.", buckets=LATENCY_BUCKETS,
                                     registry=self.registry)
        self.store_commit = Histogram("canidae_event_store_commit_seconds", "Time one group commit of the event "
                                      "store takes to write and fdatasync.", buckets=LATENCY_BUCKETS,
                                      registry=self.registry)
        self._sources: list[Source] = []
        self.registry.register(_Sources(self._sources))
        self._lock = threading.Lock()
        self._api_sketch = Sketch()
        self.api_requests = 0
        self.api_errors = 0  # answers with a 5xx status

    def add_source(self, source: Source) -> None:
        self._sources.append(source)

    def observe_request(self, route: str, method: str, code: int, seconds: float, long_poll: bool) -> None:
        self.requests.labels(route, method, str(code)).inc()
        self.latency.labels(route).observe(seconds)
        with self._lock:
            self.api_requests += 1
            if code >= 500:
                self.api_errors += 1
            if not long_poll:
                self._api_sketch.add(max(seconds * 1000.0, 0.001))

    def take_api_sketch(self) -> Sketch:
        """The API latencies (ms) since the last call, and a fresh sketch for the next interval."""
        with self._lock:
            s, self._api_sketch = self._api_sketch, Sketch()
        return s

    async def handle(self, request: Request) -> Response:
        """``GET /v1/metrics``: Prometheus text (default, or ``?format=prometheus``) or ``?format=json``."""
        fmt = request.query_params.get("format", "prometheus")
        if fmt == "json":
            return JSONResponse(self.as_json())
        if fmt != "prometheus":
            raise InvalidInput("format must be prometheus or json")
        return Response(self.prometheus(), media_type=PROMETHEUS_CONTENT_TYPE)

    def prometheus(self) -> bytes:
        return generate_latest(self.registry)

    def as_json(self) -> dict[str, Any]:
        """Every family with its type, help and samples: the form of ``?format=json``."""
        out: dict[str, Any] = {}
        for fam in self.registry.collect():
            out[fam.name] = {"type": fam.type, "help": fam.documentation,
                             "samples": [{"name": s.name, "labels": dict(s.labels), "value": s.value}
                                         for s in fam.samples]}
        return {"metrics": out}


class RequestMetrics:
    """ASGI middleware: counts and times every HTTP request by the route template it matched
    (``/v1/packs/{name}``, never the pack's name), or ``unmatched``."""

    def __init__(self, app: Any, telemetry: Telemetry) -> None:
        self.app = app
        self.telemetry = telemetry

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()
        status = 500  # an exception that escapes every handler ends as a 500

        async def send_status(message: Any) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)
        try:
            await self.app(scope, receive, send_status)
        finally:
            route = getattr(scope.get("route"), "path", None) or "unmatched"
            long_poll = b"wait=" in scope.get("query_string", b"")
            self.telemetry.observe_request(route, scope.get("method", ""), status, time.perf_counter() - t0,
                                           long_poll)


__all__ = ["PROMETHEUS_CONTENT_TYPE", "Reading", "RequestMetrics", "Source", "Telemetry"]
