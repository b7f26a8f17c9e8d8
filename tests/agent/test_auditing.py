"""The edge's audit hook (canidae.agent.node.auditing.Auditor) over a real log and a real Edge, served
in-process: a change is recorded before its answer, with the request id it carried; a successful
read is not; a refusal is, within its budget, the rest counted; an answer whose record cannot be
written becomes a 503 with the error shape, saying the request was carried out."""

from __future__ import annotations

import json
import os
import resource
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.routing import Route
from starlette.testclient import TestClient

from canidae.agent.config import AuditSettings
from canidae.agent.httpedge import Edge
from canidae.agent.identity import Authenticator, Identity
from canidae.agent.node.auditing import Auditor
from canidae.agent.node.auditlog import AuditLog
from canidae.core.auditseg import check_log

IDENT = Identity.new()


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[TestClient, AuditLog, Auditor]]:
    alog = AuditLog(str(tmp_path), "n1", 1 << 20)
    alog.open()
    auditor = Auditor(alog, "n1", AuditSettings(denials_per_s=0.001, denial_burst=3))
    edge = Edge(Authenticator(IDENT.admin_hash, IDENT.public_key), 1 << 20, audit=auditor)

    async def change(request: Request) -> dict[str, bool]:
        from canidae.agent.httpedge import read_json, request_id
        request_id(request, await read_json(request, 1 << 20))
        return {"ok": True}

    async def look(request: Request) -> dict[str, bool]:
        return {"ok": True}
    app = Starlette(routes=[Route("/v1/packs/{name}/{action}", edge.endpoint(change), methods=["POST"]),
                            Route("/v1/things", edge.endpoint(look), methods=["GET"])])
    with TestClient(app) as client:
        yield client, alog, auditor
    alog.close()


ADMIN = {"authorization": f"Bearer {IDENT.admin_token}"}


def test_a_change_is_recorded_before_its_answer_and_a_read_is_not(served: tuple[TestClient, AuditLog, Auditor]) -> None:
    client, alog, _ = served
    r = client.post("/v1/packs/web/stop", json={"request_id": "rid-1", "secret": "x"}, headers=ADMIN)
    assert r.status_code == 200 and r.headers["x-request-id"] == "rid-1"
    assert client.get("/v1/things", headers=ADMIN).status_code == 200
    recs = alog.records()
    assert len(recs) == 1 and alog.durable_seq == 1
    rec = recs[0]
    assert (rec.action, rec.target, rec.outcome.value, rec.request_id, rec.agent) == ("pack.stop", "web", "ok",
                                                                                      "rid-1", "n1")
    assert rec.detail["body"]["secret"] == "***" and rec.detail["principal"] == "admin admin"


def test_refusals_are_recorded_within_their_budget_and_the_rest_counted(
        served: tuple[TestClient, AuditLog, Auditor]) -> None:
    client, alog, auditor = served
    for _ in range(10):
        assert client.get("/v1/things", headers={"authorization": "Bearer cs_" + "B" * 43}).status_code == 401
    denied = alog.records()
    assert len(denied) == 3 and all(r.outcome.value == "denied" and r.code == "unauthenticated" for r in denied)
    assert denied[0].detail["caller"].startswith("not identified here: ca_")
    assert auditor.denials.dropped == 7


def test_an_answer_that_cannot_be_audited_becomes_a_503(served: tuple[TestClient, AuditLog, Auditor]) -> None:
    client, alog, _ = served
    client.post("/v1/packs/web/stop", json={}, headers=ADMIN)
    old_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    old_limit = resource.getrlimit(resource.RLIMIT_FSIZE)
    try:  # the disk takes no more than a few bytes (a full disk, for the segment)
        resource.setrlimit(resource.RLIMIT_FSIZE, (alog.size + 10, old_limit[1]))
        r = client.post("/v1/packs/web/stop", json={"request_id": "rid-lost"}, headers=ADMIN)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, old_limit)
        signal.signal(signal.SIGXFSZ, old_handler)
    assert r.status_code == 503
    err = r.json()["error"]
    assert err["code"] == "audit_unavailable" and "carried out" in err["message"] and "rid-lost" in err["message"]
    assert [x.request_id for x in alog.records()] != ["rid-lost"] and alog.durable_seq == 1
    assert check_log(list(alog.raw())).ok
    assert os.path.isdir(alog.dir) and json.loads(client.post("/v1/packs/web/stop", json={},
                                                             headers=ADMIN).text) == {"ok": True}


def test_whatever_a_body_or_path_holds_the_record_is_written(served: tuple[TestClient, AuditLog, Auditor]) -> None:
    """NaN, a lone surrogate, a huge list, an action segment far over a field's limit: recorded
    (the request's own answer stands), never a failed audit."""
    client, alog, auditor = served
    body = b'{"x": NaN, "y": "\\ud800", "names": [' + b",".join(b'"n%d"' % i for i in range(5000)) + b"]}"
    r = client.post("/v1/packs/web/stop", content=body, headers={**ADMIN, "content-type": "application/json"})
    assert r.status_code == 200, r.text
    r = client.post("/v1/packs/web/" + "a" * 3000, json={}, headers=ADMIN)
    assert r.status_code == 200, r.text
    assert auditor.failed == 0 and alog.durable_seq == 2
    first = alog.records()[0]
    assert first.detail["body"]["x"] == "nan" and first.detail["body"]["names"][-1] == "... 5000 in all"
    assert len(alog.records()[1].action) == 128
    assert check_log(list(alog.raw())).ok


def test_a_request_id_no_header_can_carry_is_recorded_not_echoed(served: tuple[TestClient, AuditLog, Auditor]) -> None:
    """A body refused before its request id was checked may name any id: the record keeps it, the
    answer (a 400 here) goes out without the header rather than breaking the connection."""
    client, alog, _ = served
    r = client.post("/v1/packs/web/stop", json={"request_id": "\u001f\u00e9"}, headers=ADMIN)
    assert r.status_code == 400 and "x-request-id" not in r.headers
    assert alog.records()[-1].request_id == "\u001f\u00e9"
