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

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.core.failures import FailureGroup
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from canidae.agent.server.openapi import openapi_document
from harness import local_cluster

EXAMPLES = 10  # per operation and generation mode (about 30 s in all on 2 cores)
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
    for result in schema.get_all_operations():
        operation = result.ok()
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

            @given(case=operation.as_strategy(generation_mode=mode))
            @settings(max_examples=EXAMPLES, derandomize=True, deadline=None, database=None,
                      suppress_health_check=list(HealthCheck))
            def fuzz(case):
                cases[case.operation.label] = cases.get(case.operation.label, 0) + 1
                response = case.call(base_url=base, headers=auth, timeout=10)
                sent = f"{case.method} {response.request.url} body={case.body!r}"[:300]
                if response.status_code >= 500:
                    server_errors.append(f"{response.status_code} {sent}: {response.text[:200]}")
                try:
                    case.validate_response(response, checks=CONFORMANCE)
                except (AssertionError, FailureGroup) as e:  # one failure, or several of one response
                    mismatches.append(f"{sent}: {str(e).strip()[:400]}")

            fuzz()

    total = sum(cases.values())
    print(f"schema fuzz: {total} cases over {len(cases)} operations, {len(server_errors)} server errors, "
          f"{len(mismatches)} schema mismatches")
    operations = {f"{m.upper()} {p}" for p, ops in served["paths"].items() for m in ops}
    assert set(cases) == operations, sorted(operations ^ set(cases))
    assert not server_errors, "\n".join(server_errors[:20])
    assert not mismatches, "\n".join(mismatches[:20])
    # The cluster still answers, and answers writes.
    status = httpx.get(f"{base}/v1/status", headers=auth, timeout=10)
    assert status.status_code == 200, status.text
    spawned = httpx.post(f"{base}/v1/packs", headers=auth, timeout=10, json={"spec": {"name": "after-fuzz"}})
    assert spawned.status_code == 200, spawned.text
