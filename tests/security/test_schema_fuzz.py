"""Schemathesis against a real agent: every operation of the agent's OpenAPI document (as the agent
serves it at ``/v1/openapi.json``) is called with generated input, valid and invalid, the admin
token as the bearer, a bounded and derandomized number of examples each (every run sends the same
cases). No answer may be a server error (status 500 and up), and every answer must conform to the
document: a status code it lists, a content type it declares, a body matching its schema.

No operation is skipped: the document names no route that stops the cluster from answering
(drills, shutdown). Generated node and pack names are random strings, so state changes land on
nodes and packs that do not exist, or on packs the fuzzing itself created; the cluster is checked
to answer afterwards.

The cases are drawn from schemathesis's Hypothesis strategies directly (not its pytest plugin), so
one cluster serves every operation and the test runs the same under xdist.
"""

from __future__ import annotations

import time

import httpx
import pytest
import schemathesis
from harness import local_cluster
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.core.failures import FailureGroup
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from starlette.routing import Route

from canidae.agent.client.openapi import openapi_document
from canidae.agent.config import load_config
from canidae.agent.daemon import Agent

EXAMPLES = 8  # per operation and generation mode (about 60-80 s in all on 2 shared cores)
CONFORMANCE = [status_code_conformance, content_type_conformance, response_schema_conformance]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    # Plain HTTP: the fuzz is about the API's answers, not the transport (tests/security/test_tls.py).
    c = local_cluster(str(tmp_path_factory.mktemp("fuzz") / "cluster"), servers=1, clients=1, insecure_http=True)
    try:
        yield c
    finally:
        c.close()


def test_every_operation_answers_as_documented_and_never_errs(cluster):
    base = cluster.url(cluster.agents[0])
    auth = {"authorization": f"Bearer {cluster.token}"}
    served = httpx.get(f"{base}/v1/openapi.json", headers=auth, timeout=10).json()
    assert served == openapi_document()
    schema = schemathesis.openapi.from_url(f"{base}/v1/openapi.json", headers=auth, timeout=10)
    schema.config.update(base_url=base)

    cases: dict[str, int] = {}
    server_errors: list[str] = []
    mismatches: list[str] = []
    no_negative: list[str] = []
    spent: dict[str, float] = {}
    for result in schema.get_all_operations():
        operation = result.ok()
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

            @given(case=operation.as_strategy(generation_mode=mode))
            @settings(max_examples=EXAMPLES, derandomize=True, deadline=None, database=None,
                      suppress_health_check=list(HealthCheck))
            def fuzz(case):
                cases[case.operation.label] = cases.get(case.operation.label, 0) + 1
                if isinstance(case.query, dict) and "wait" in case.query:
                    case.query["wait"] = 0  # long-polls answer at once: the run stays bounded
                response = case.call(base_url=base, headers=auth, timeout=10)
                sent = f"{case.method} {response.request.url} body={case.body!r}"[:300]
                if response.status_code >= 500:
                    server_errors.append(f"{response.status_code} {sent}: {response.text[:200]}")
                try:
                    case.validate_response(response, checks=CONFORMANCE)
                except (AssertionError, FailureGroup) as e:  # one failure, or several of one response
                    mismatches.append(f"{sent}: {str(e).strip()[:400]}")

            started = time.monotonic()
            try:
                fuzz()
            except Unsatisfiable:  # no invalid input exists for it (no parameter, no body)
                assert mode is GenerationMode.NEGATIVE, operation.label
                no_negative.append(operation.label)
            spent[f"{mode.value} {operation.label}"] = round(time.monotonic() - started, 1)

    total = sum(cases.values())
    print(f"schema fuzz: {total} cases over {len(cases)} operations, {len(server_errors)} server errors, "
          f"{len(mismatches)} schema mismatches; no invalid input exists for {len(no_negative)} of them")
    print("slowest:", sorted(spent.items(), key=lambda kv: -kv[1])[:6], "no invalid input:", no_negative)
    # Schemathesis leaves out the document's own URL (fetched and compared above).
    operations = {f"{m.upper()} {p}" for p, ops in served["paths"].items() for m in ops} - {"GET /v1/openapi.json"}
    assert set(cases) == operations, sorted(operations ^ set(cases))
    assert not server_errors, "\n".join(server_errors[:20])
    assert not mismatches, "\n".join(mismatches[:20])
    # The cluster still answers, and answers writes.
    status = httpx.get(f"{base}/v1/status", headers=auth, timeout=10)
    assert status.status_code == 200, status.text
    spawned = httpx.post(f"{base}/v1/packs", headers=auth, timeout=10, json={"spec": {"name": "after-fuzz"}})
    assert spawned.status_code == 200, spawned.text


def test_every_route_the_agent_serves_is_in_the_document_and_no_other(cluster):
    """The app an agent builds (a client agent's and a server's: the same routes) and the operations
    of the document are the same set, so nothing served escapes the fuzzing above."""
    documented = {f"{m.upper()} {p}" for p, ops in openapi_document()["paths"].items() for m in ops}
    for agent in (cluster.agents[0], cluster.agents[-1]):
        app = Agent(load_config(agent["config"])).app()
        routes = [r for r in app.app.routes if isinstance(r, Route)]  # the app under the metrics middleware
        served = {f"{m} {r.path}" for r in routes for m in r.methods or () if m != "HEAD"}
        assert served == documented, sorted(served ^ documented)


def test_a_client_agent_passes_on_a_delete_with_its_body(cluster):
    """DELETE /v1/packs names the packs in its body: a client agent hands it on whole."""
    client = next(a for a in cluster.agents if a["role"] == "client")
    base, auth = f"http://{client['api']}", {"authorization": f"Bearer {cluster.token}"}
    created = httpx.post(f"{base}/v1/packs", headers=auth, timeout=10, json={"spec": {"name": "via-client"},
                                                                             "place": False})
    assert created.status_code == 200, created.text
    deleted = httpx.request("DELETE", f"{base}/v1/packs", headers=auth, timeout=10, json={"names": ["via-client"]})
    assert deleted.status_code == 200, deleted.text


def test_a_wrong_method_names_the_methods_the_path_takes(cluster):
    base = f"http://{cluster.agents[0]['api']}"
    r = httpx.put(f"{base}/v1/packs", headers={"authorization": f"Bearer {cluster.token}"}, timeout=10)
    assert r.status_code == 405 and r.json()["error"]["code"] == "method_not_allowed"
    assert r.headers["allow"] == "DELETE, GET, HEAD, POST"
