"""The event store on a real disk: recovery from torn and corrupt tails, sealing, the per-pack index,
retention, gaps, idempotent replays, and projections rebuilt from the log equal to the live state."""

from __future__ import annotations

import json
import os
import random
import threading
import uuid
from typing import Any

import pytest
from canidae.agent.server import eventstore
from canidae.agent.server.eventstore import EventStore, Projections, decode_record, encode_record
from canidae.core.commands import (
    CreatePacks,
    MigratePacks,
    PackReport,
    PlacePacks,
    RegisterNode,
    RemoveNode,
    ReportPacks,
    ReportState,
    SetNodeState,
    StopPacks,
)
from canidae.core.state import ClusterState
from canidae.core.types import Location, Node, NodeState, PackSpec, PackState, Resources

T0 = 1_760_000_000_000


def ev(seq: int, kind: str = "PackCreated", pack: str | None = "p", node: str | None = None,
       at: int | None = None, **detail: Any) -> dict[str, Any]:
    e: dict[str, Any] = {"seq": seq, "at": T0 + seq if at is None else at, "type": kind, "cause": f"c{seq}"}
    if pack is not None:
        e["pack"] = pack
    if node is not None:
        e["node"] = node
    if detail:
        e["detail"] = detail
    return e


def many(n: int, start: int = 1, packs: int = 50, at_step: int = 1) -> list[dict[str, Any]]:
    return [ev(s, "PackStarted" if s % 3 else "PackCreated", f"pack-{s % packs}", f"n{s % 7}",
               at=T0 + s * at_step, generation=s) for s in range(start, start + n)]


def open_store(path: Any, **kw: Any) -> EventStore:
    kw.setdefault("retention_every_s", 3600.0)
    return EventStore(str(path), **kw)


def fill(store: EventStore, events: list[dict[str, Any]], batch: int = 37) -> None:
    for i in range(0, len(events), batch):
        store.append(events[i:i + batch])
    assert store.settle(timeout=30)


def active_log(path: Any) -> str:
    logs = sorted(n for n in os.listdir(path) if n.endswith(".log"))
    assert logs
    return os.path.join(str(path), logs[-1])


def all_events(store: EventStore) -> list[dict[str, Any]]:
    return store.tail(after_seq=0, limit=10_000_000)


# ------------------------------------------------------------------------------- records and basics


def test_record_roundtrip_and_checks() -> None:
    rec = encode_record(ev(7, detail_key="x"))
    assert decode_record(rec, 0)[0]["seq"] == 7
    flipped = bytearray(rec)
    flipped[-3] ^= 0x01
    with pytest.raises(eventstore.CorruptRecord, match="checksum"):
        decode_record(bytes(flipped), 0)
    with pytest.raises(eventstore.CorruptRecord, match="torn"):
        decode_record(rec[:-1], 0)
    with pytest.raises(eventstore.CorruptRecord, match="torn header"):
        decode_record(rec[:5], 0)


def test_large_documents_are_encoded_in_slices_to_the_same_value() -> None:
    doc = {"version": 1, "seq": 9, "packs": [[f"p{i}", "running", f"n{i % 7}"] for i in range(5003)],
           "nodes": [], "idx": {f"p{i}": [i, i + 1] for i in range(4500, 0, -1)}, "small": {"b": 1, "a": [2]}}
    assert json.loads(eventstore.encode_big(doc)) == doc


def test_append_read_back_and_reopen(tmp_path) -> None:
    events = many(500)
    with open_store(tmp_path) as s:
        fill(s, events)
        assert s.last_seq() == 500
        assert all_events(s) == events
        assert s.pack_history("pack-3") == [e for e in events if e["pack"] == "pack-3"]
    with open_store(tmp_path) as s:
        assert s.last_seq() == 500
        assert all_events(s) == events
        assert s.pack_history("pack-3") == [e for e in events if e["pack"] == "pack-3"]


def test_replayed_events_are_ignored_before_and_after_a_restart(tmp_path) -> None:
    events = many(300)
    with open_store(tmp_path) as s:
        fill(s, events)
        assert s.append(events[:200]) == 0        # the journal replays from its last snapshot
        assert s.append(events[250:] + many(10, start=301)) == 10
        assert s.flush(timeout=10)
        assert s.last_seq() == 310
    with open_store(tmp_path) as s:
        assert s.append(events) == 0
        assert s.flush(timeout=10)
        assert [e["seq"] for e in all_events(s)] == list(range(1, 311))
        assert s.gaps() == []


def test_since_filters_a_pack_history_by_time(tmp_path) -> None:
    events = many(100)
    with open_store(tmp_path) as s:
        fill(s, events)
        cut = T0 + 60
        assert s.pack_history("pack-1", since_ms=cut) == [e for e in events
                                                         if e["pack"] == "pack-1" and e["at"] >= cut]
        assert s.pack_history("no-such-pack") == []
        assert not s.knows("no-such-pack") and s.knows("pack-1")


def test_tail_filters_last_and_after(tmp_path) -> None:
    events = many(400)
    events[100] = ev(101, "PackMigrating", "pack-x", "n9", source="n1", generation=2)
    with open_store(tmp_path, segment_bytes=8192) as s:
        fill(s, events)
        assert s.tail(after_seq=390) == events[390:]
        assert s.tail(after_seq=0, limit=5) == events[:5]
        assert s.tail(last=3) == events[-3:]
        assert s.tail(type="PackCreated", last=2) == [e for e in events if e["type"] == "PackCreated"][-2:]
        assert s.tail(pack="pack-4", after_seq=300) == [e for e in events if e.get("pack") == "pack-4"
                                                        and e["seq"] > 300]
        assert s.tail(pack="pack-4", last=2) == [e for e in events if e.get("pack") == "pack-4"][-2:]
        # A node filter also matches a move away from that node.
        assert events[100] in s.tail(node="n1")
        assert s.tail(type="PackMigrating,PackCreated", after_seq=95, limit=3) == \
            [e for e in events if e["type"] in ("PackMigrating", "PackCreated") and e["seq"] > 95][:3]


# ------------------------------------------------------------------------------- crash recovery


@pytest.mark.parametrize("cut", [1, 4, 8, 9, 20, -1])
def test_torn_tail_is_dropped_on_start_and_everything_before_it_kept(tmp_path, cut) -> None:
    events = many(200)
    with open_store(tmp_path) as s:
        fill(s, events)
    path = active_log(tmp_path)
    tail = encode_record(ev(201, pack="pack-torn"))
    with open(path, "ab") as f:  # a crash in the middle of a write: part of one record
        f.write(tail[:cut if cut > 0 else len(tail) - 1])
    size = os.path.getsize(path)
    with open_store(tmp_path) as s:
        assert s.last_seq() == 200
        assert s.open_stats["truncated_bytes"] == size - os.path.getsize(path) > 0
        assert all_events(s) == events
        # Raft replays the lost event; it is appended as if nothing happened.
        assert s.append([ev(201, pack="pack-torn")]) == 1
        assert s.flush(timeout=10)
    with open_store(tmp_path) as s:
        assert s.last_seq() == 201 and s.pack_history("pack-torn")[0]["seq"] == 201
        assert s.open_stats["truncated_bytes"] == 0


def test_corrupt_record_is_detected_and_cut_with_what_follows(tmp_path) -> None:
    events = many(100)
    with open_store(tmp_path) as s:
        fill(s, events)
    path = active_log(tmp_path)
    with open(path, "rb") as f:
        data = bytearray(f.read())
    offsets = [0]
    while offsets[-1] < len(data):
        offsets.append(decode_record(data, offsets[-1])[1])
    # Flip a bit inside the payload of the 91st record: its checksum no longer matches.
    data[offsets[90] + 12] ^= 0x20
    with open(path, "wb") as f:
        f.write(data)
    with open_store(tmp_path) as s:
        assert s.last_seq() == 90
        assert all_events(s) == events[:90]
        assert os.path.getsize(path) == offsets[90]
        assert s.append(events) == 10  # replayed by Raft
        assert s.flush(timeout=10)
        assert all_events(s) == events


def test_interrupted_seal_keeps_the_log_and_seals_again(tmp_path) -> None:
    events = many(600)
    with open_store(tmp_path, segment_bytes=8192) as s:
        fill(s, events)
        sealed = sorted(n for n in os.listdir(tmp_path) if n.endswith(".zst") and n.startswith("seg-"))
    assert len(sealed) >= 3
    # Recreate a crash between writing a seal's files and removing the .log: decompress one sealed
    # segment back into its .log (that is what it holds) and leave a half-written .zst beside it.
    first = os.path.join(str(tmp_path), sealed[0])
    import zstandard
    with open(first, "rb") as f:
        raw = zstandard.ZstdDecompressor().stream_reader(f, read_across_frames=True).read()
    with open(first[:-4] + ".log", "wb") as f:
        f.write(raw)
    with open(first, "r+b") as f:
        f.truncate(10)
    with open(os.path.join(str(tmp_path), "snap-x.zst.tmp"), "wb") as f:
        f.write(b"half")
    with open_store(tmp_path, segment_bytes=8192) as s:
        assert all_events(s) == events
        assert s.pack_history("pack-7") == [e for e in events if e["pack"] == "pack-7"]
    names = os.listdir(tmp_path)
    assert not any(n.endswith(".tmp") for n in names)
    assert sum(1 for n in names if n.endswith(".log")) == 1


def test_lost_segment_index_is_rebuilt_from_the_sealed_segment(tmp_path) -> None:
    events = many(600)
    with open_store(tmp_path, segment_bytes=8192) as s:
        fill(s, events)
        live = s.projections()["packs"]
    idx = sorted(n for n in os.listdir(tmp_path) if n.endswith(".idx"))
    os.unlink(os.path.join(str(tmp_path), idx[1]))
    with open_store(tmp_path, segment_bytes=8192) as s:
        assert all_events(s) == events
        assert s.pack_history("pack-11") == [e for e in events if e["pack"] == "pack-11"]
        assert s.verify(live, full=True) == []
    assert os.path.exists(os.path.join(str(tmp_path), idx[1]))


# ------------------------------------------------------------------------------- sealing and the index


def test_sealed_segments_are_compressed_and_found_through_the_index(tmp_path, monkeypatch) -> None:
    events = many(3000, packs=300)
    with open_store(tmp_path, segment_bytes=16384) as s:
        fill(s, events)
        st = s.stats()
        assert st["sealed"] >= 10 and st["events"] == 3000
        sealed = [g for g in st["segment_list"] if g["sealed"]]
        assert sum(g["raw_bytes"] for g in sealed) > 2 * sum(g["disk_bytes"] for g in sealed)
        # One pack's history comes from its index positions: scanning is not allowed here.
        def no_scan(*a: Any, **k: Any) -> None:
            pytest.fail("pack history scanned the log")
        monkeypatch.setattr(EventStore, "_scan", no_scan)
        monkeypatch.setattr(EventStore, "_scan_back", no_scan)
        for name in ("pack-0", "pack-123", "pack-299"):
            assert s.pack_history(name) == [e for e in events if e["pack"] == name]
            assert s.tail(pack=name, last=3) == [e for e in events if e["pack"] == name][-3:]


def test_a_segment_is_not_sealed_before_its_last_records_are_published(tmp_path) -> None:
    # The writer's steps driven by hand (its thread is idle): it has written a group that rolled
    # over to new segments but not yet indexed it when the maintenance thread looks for work.
    events = many(230)
    with open_store(tmp_path, segment_bytes=4096) as s:
        fill(s, events[:30])
        chunks = s._write(events[30:])
        assert len(chunks) > 2
        s._maintain()
        assert not any(seg.sealed for seg, _, _ in chunks)
        s._publish(events[30:], chunks)
        with s._cond:
            s.durable_seq = s._accepted = 230
        s._maintain()
        assert all(seg.sealed for seg, _, _ in chunks[:-1]) and not chunks[-1][0].sealed
        assert all(s.pack_history(f"pack-{i}") == [e for e in events if e["pack"] == f"pack-{i}"]
                   for i in range(50))
    with open_store(tmp_path, segment_bytes=4096) as s:
        assert all_events(s) == events


def test_segments_rolled_in_quick_succession_are_sealed_only_once_complete(tmp_path) -> None:
    # Small segments and many small groups: the maintenance thread seals while the writer rolls.
    events = many(6000, packs=97)
    with open_store(tmp_path, segment_bytes=4096) as s:
        fill(s, events, batch=7)
        st = s.stats()
        assert st["sealed"] >= 50
        expected = {f"pack-{i}": [e for e in events if e["pack"] == f"pack-{i}"] for i in range(97)}
        assert all(s.pack_history(name) == want for name, want in expected.items())
        assert s.verify_report(s.projections()["packs"], full=True)["ok"]
        live = s.projections()["packs"]
    with open_store(tmp_path, segment_bytes=4096) as s:
        assert all(s.pack_history(name) == want for name, want in expected.items())
        assert s.verify(live, full=True) == []


# ------------------------------------------------------------------------------- projections and replay


def _node(i: int) -> Node:
    return Node(id=f"n{i}", location=Location(f"z{i % 3}", f"r{i % 3}", f"c{i}"),
                capacity=Resources(2000, 4096, 20), address=f"127.0.0.1:{7000 + i}")


def drive_cluster(seed: int, steps: int) -> tuple[ClusterState, list[dict[str, Any]]]:
    """A random but deterministic life of a cluster: joins, spawns, reports, stops, failures,
    migrations, nodes going down, returning and being removed. Returns the state and its events."""
    rng = random.Random(seed)
    st = ClusterState()
    events: list[dict[str, Any]] = []
    at = T0

    def run(cmd: Any) -> None:
        st.apply(cmd)
        events.extend(st.drain_events())

    def rid() -> str:
        return uuid.UUID(int=rng.getrandbits(128)).hex

    for i in range(6):
        run(RegisterNode(id=rid(), at=at, node=_node(i)))
    k = 0
    for _ in range(steps):
        at += rng.randrange(1, 50)
        r = rng.random()
        packs = list(st.packs.values())
        if r < 0.3 or not packs:
            names = [f"w{k + j}" for j in range(rng.randrange(1, 4))]
            k += len(names)
            run(CreatePacks(id=rid(), at=at, by="api", place=rng.random() < 0.9,
                            specs=tuple(PackSpec(name=n, resources=Resources(rng.choice([100, 400]), 64, 1))
                                        for n in names)))
        elif r < 0.55:
            placed = [p for p in packs if p.state in (PackState.PLACED, PackState.RUNNING) and p.node]
            if placed:
                p = rng.choice(placed)
                state = rng.choice([PackState.RUNNING, PackState.RUNNING, PackState.FAILED,
                                    PackState.STOPPED])
                run(ReportPacks(id=rid(), at=at, by=f"agent:{p.node}", node_id=p.node,
                                reports=(PackReport(p.spec.name, p.generation, ReportState(state.value), "exit 1"),)))
        elif r < 0.65:
            run(StopPacks(id=rid(), at=at, by="api", names=(rng.choice(packs).spec.name,)))
        elif r < 0.72:
            idle = [p for p in packs if p.state in (PackState.CREATED, PackState.STOPPED, PackState.FAILED)]
            if idle:
                run(PlacePacks(id=rid(), at=at, by="api", names=(rng.choice(idle).spec.name,)))
        elif r < 0.8:
            moving = [p for p in packs if p.state in (PackState.PLACED, PackState.RUNNING)]
            if moving:
                run(MigratePacks(id=rid(), at=at, by="api", moves=((rng.choice(moving).spec.name, None),)))
        elif r < 0.88:
            nodes = list(st.nodes.values())
            n = rng.choice(nodes)
            run(SetNodeState(id=rid(), at=at, by="leader", node_id=n.id,
                             state=rng.choice([NodeState.DOWN, NodeState.DRAINING, NodeState.CORDONED,
                                               NodeState.READY])))
        elif r < 0.93:
            down = [n for n in st.nodes.values() if n.state is NodeState.DOWN]
            if down:
                n = rng.choice(down)
                run(RegisterNode(id=rid(), at=at, node=_node(int(n.id[1:]))))
        elif r < 0.95 and len(st.nodes) > 3:
            run(RemoveNode(id=rid(), at=at, by="operator", node_id=rng.choice(sorted(st.nodes))))
        elif r < 0.97:
            run(RegisterNode(id=rid(), at=at, node=_node(len(st.nodes) + rng.randrange(0, 20))))
    return st, events


def live_of(st: ClusterState) -> tuple[dict[str, dict[str, Any]], dict[str, str]]:
    return ({n: {"state": r.state.value, "node": r.node} for n, r in st.packs.items()},
            {n.id: n.state.value for n in st.nodes.values()})


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_replay_of_the_log_equals_the_live_state(tmp_path, seed) -> None:
    st, events = drive_cluster(seed, 1500)
    kinds = {e["type"] for e in events}
    assert {"PackMigrating", "PackMigrated", "PackFailed", "NodeDown", "PackPending", "PackStopped"} <= kinds
    live, nodes = live_of(st)
    with open_store(tmp_path, segment_bytes=16384, snapshot_every=700) as s:
        fill(s, events)
        view = s.projections()
        assert {n: v for n, v in view["packs"].items()} == live
        assert {n: v["state"] for n, v in view["nodes"].items() if v["state"]} == nodes
        per_node = {n: sorted(p for p, v in live.items() if v["node"] == n and v["state"] in
                              ("placed", "running", "stopping")) for n in st.nodes}
        assert {n: v["packs"] for n, v in view["nodes"].items() if n in st.nodes} == per_node
        assert s.verify(live, nodes) == []
        assert s.verify(live, nodes, full=True) == []
    # Restarted: projections come back from the newest snapshot plus the tail.
    with open_store(tmp_path, segment_bytes=16384, snapshot_every=700) as s:
        assert s.open_stats["snapshot_seq"] > 0
        assert s.projections()["packs"] == live
        report = s.verify_report(live, nodes)
        assert report["ok"] and report["base"].startswith("snapshot"), report
        assert s.verify_report(live, nodes, full=True)["base"] == "the first event"


def test_a_migration_ends_with_pack_migrated_once_the_target_runs_it() -> None:
    st = ClusterState()
    for i in range(3):
        st.apply(RegisterNode(id=f"join-{i}", at=T0, node=_node(i)))
    st.apply(CreatePacks(id="c", at=T0 + 1, by="api", specs=(PackSpec(name="web"),)))
    src = st.packs["web"].node
    assert src is not None
    st.apply(ReportPacks(id="r", at=T0 + 2, by=f"agent:{src}", node_id=src,
                         reports=(PackReport("web", 1, ReportState.RUNNING, ""),)))
    st.drain_events()
    st.apply(MigratePacks(id="m", at=T0 + 3, by="api", moves=(("web", None),), reason="migrate"))
    dest = st.packs["web"].node
    st.apply(ReportPacks(id="r2", at=T0 + 9, by=f"agent:{dest}", node_id=dest,
                         reports=(PackReport("web", 2, ReportState.RUNNING, ""),)))
    events = st.drain_events()
    assert [(e["type"], e["node"]) for e in events] == [
        ("PackMigrating", dest), ("PackStarted", dest), ("PackMigrated", dest)]
    assert events[0]["detail"]["source"] == src
    assert events[2]["detail"] == {"generation": 2, "reason": "migrate"}
    p = Projections()
    for e in events:
        p.apply(e)
    assert p.packs["web"] == ("running", dest)


def test_verify_reports_each_difference(tmp_path) -> None:
    st, events = drive_cluster(5, 300)
    live, nodes = live_of(st)
    name = sorted(live)[0]
    wrong = dict(live)
    wrong[name] = {"state": "running", "node": "elsewhere"}
    wrong["ghost"] = {"state": "running", "node": "n1"}
    nodes_wrong = {**nodes, "n0": "cordoned" if nodes.get("n0") != "cordoned" else "ready"}
    with open_store(tmp_path) as s:
        fill(s, events)
        diffs = s.verify(wrong, nodes_wrong)
        assert len(diffs) == 3, diffs
        assert any(d.startswith(f"pack {name}: history says") and "elsewhere" in d for d in diffs)
        assert any(d.startswith("pack ghost:") and "absent from the history" in d for d in diffs)
        assert any(d.startswith("node n0:") for d in diffs)
        assert s.verify(wrong, nodes_wrong, pack=name) == [d for d in diffs if d.startswith(f"pack {name}:")]


def test_verify_up_to_a_sequence_number(tmp_path) -> None:
    _, events = drive_cluster(6, 400)
    cut = events[len(events) // 2]["seq"]
    with open_store(tmp_path) as s:
        fill(s, events)
        # The live state as of ``cut``: replay the same events into projections by hand.
        p = Projections()
        for e in events:
            if e["seq"] <= cut:
                p.apply(e)
        live = {n: {"state": r[0], "node": r[1]} for n, r in p.packs.items()}
        assert s.verify(live, dict(p.nodes), upto_seq=cut) == []
        assert s.verify(live, dict(p.nodes)) != []


def test_verify_while_the_writer_appends_reports_nothing_false(tmp_path) -> None:
    events = many(12_000, packs=200)
    cut = 2000
    p = Projections()
    for e in events[:cut]:
        p.apply(e)
    live = {n: {"state": r[0], "node": r[1]} for n, r in p.packs.items()}
    with open_store(tmp_path, segment_bytes=16384) as s:
        fill(s, events[:cut])
        done = threading.Event()

        def writer() -> None:
            for i in range(cut, len(events), 25):
                s.append(events[i:i + 25])
            done.set()

        t = threading.Thread(target=writer)
        t.start()
        try:
            rounds = 0
            while not done.is_set() or rounds < 3:
                assert s.verify(live, upto_seq=cut) == []
                rounds += 1
        finally:
            t.join(timeout=30)
        assert s.flush(timeout=30) and s.last_seq() == len(events)


# ------------------------------------------------------------------------------- gaps


def test_a_jump_in_numbers_is_recorded_as_a_gap_and_projections_rebased(tmp_path) -> None:
    with open_store(tmp_path) as s:
        s.append([ev(1, pack="a"), ev(2, "PackPlaced", "a", "n1")])
        live = {"packs": {"a": {"state": "running", "node": "n1"}, "b": {"state": "placed", "node": "n2"}},
                "nodes": {"n1": "ready", "n2": "ready"}}
        # Events 3..9 were folded into a Raft snapshot this replica installed; 10 comes next.
        s.append([ev(10, "PackPlaced", "b", "n2")], live=lambda: live)
        assert s.flush(timeout=10)
        assert s.gaps() == [[3, 9]]
        assert [e["seq"] for e in all_events(s)] == [1, 2, 10]  # nothing invented
        assert s.projections()["packs"] == live["packs"]
        assert s.verify(live["packs"], live["nodes"]) == []
        report = s.verify_report(live["packs"], live["nodes"], full=True)
        assert report["gaps"] == [[3, 9]] and not report["ok"]  # a replay from 1 cannot know 3..9
    with open_store(tmp_path) as s:
        assert s.gaps() == [[3, 9]]
        assert s.projections()["packs"] == live["packs"]


def test_a_store_started_empty_behind_a_snapshot_records_the_gap_from_one(tmp_path) -> None:
    with open_store(tmp_path) as s:
        s.append([ev(41, pack="a")])
        assert s.flush(timeout=10)
        assert s.gaps() == [[1, 40]]
        assert s.last_seq() == 41


# ------------------------------------------------------------------------------- retention


def test_retention_by_age_removes_only_old_sealed_segments(tmp_path) -> None:
    day = 86_400_000
    old = many(600, at_step=1)                             # at about T0
    new = many(600, start=601, at_step=1)
    for e in new:
        e["at"] += 10 * day                                 # ten days later
    events = old + new
    with open_store(tmp_path, segment_bytes=8192, retain_ms=5 * day, retain_bytes=None) as s:
        fill(s, events)
        before = s.stats()["segment_list"]
        live = s.projections()["packs"]
        result = s.apply_retention(now_ms=T0 + 11 * day)
        after = s.stats()["segment_list"]
        gone = [g for g in before if g not in after]
        assert result["removed_segments"] == len(gone) > 0
        assert all(g["sealed"] and g["last_at"] < T0 + 6 * day for g in gone)
        assert all(g["last_at"] >= T0 + 6 * day or not g["sealed"] for g in after[:-1])
        assert not after[-1]["sealed"]                      # the active segment stays
        first = result["retained_from"]
        assert first == after[0]["first_seq"] and first <= 601
        assert all_events(s) == [e for e in events if e["seq"] >= first]
        assert s.pack_history("pack-5") == [e for e in events if e["pack"] == "pack-5" and e["seq"] >= first]
        assert s.projections()["packs"] == live             # projections do not forget
        assert s.verify({n: v for n, v in live.items()}) == []
        assert s.apply_retention(now_ms=T0 + 11 * day)["removed_segments"] == 0
    with open_store(tmp_path, segment_bytes=8192, retain_ms=5 * day, retain_bytes=None) as s:
        assert s.retained_from() == first
        assert all_events(s) == [e for e in events if e["seq"] >= first]
        assert s.projections()["packs"] == live
        assert s.verify(live) == []
        assert s.verify_report(live, full=True)["notes"][0].startswith(f"events before seq {first}")


def test_retention_by_size_keeps_the_newest_under_the_limit(tmp_path) -> None:
    events = many(3000)
    with open_store(tmp_path, segment_bytes=8192, retain_ms=None, retain_bytes=1 << 40) as s:
        fill(s, events)
        total = s.stats()["disk_bytes"]
        s.retain_bytes = total // 2
        s.apply_retention(now_ms=T0)
        st = s.stats()
        assert st["disk_bytes"] <= total // 2
        # Removing one more segment would not have been needed: the oldest kept one is required.
        kept = st["segment_list"]
        assert st["disk_bytes"] + kept[0]["disk_bytes"] > total // 2 or len(kept) == 1
        assert all_events(s)[-1]["seq"] == 3000 and all_events(s)[0]["seq"] == kept[0]["first_seq"]


# ------------------------------------------------------------------------------- misc


def test_flush_and_close_are_bounded_and_append_after_close_is_ignored(tmp_path) -> None:
    s = open_store(tmp_path)
    s.append(many(10))
    assert s.flush(timeout=10)
    s.close()
    assert s.append(many(5, start=11)) == 0
    assert not s.wait_durable(100, timeout=0.01)
