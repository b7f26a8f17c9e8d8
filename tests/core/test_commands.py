"""Commands: canonical encoding round-trips, malformed input is refused with InvalidInput."""

import pytest
from canidae.core.commands import (
    CreatePacks,
    Noop,
    PackReport,
    RegisterNode,
    ReportPacks,
    ReportState,
    SetNodeState,
    StopPacks,
    decode_batch,
    encode_batch,
)
from canidae.core.errors import InvalidInput
from canidae.core.types import Location, Node, NodeState, PackSpec, PackState, Resources


def _node(i: int = 1) -> Node:
    return Node(f"n{i}", Location("z1", "r1", "c1"), Resources(1000, 1024, 10))


def test_batch_round_trip_is_canonical():
    cmds = [
        Noop(id="a", at=1),
        RegisterNode(id="b", at=2, term=3, node=_node()),
        SetNodeState(id="c", at=3, term=3, node_id="n1", state=NodeState.DOWN, reason="x"),
        CreatePacks(id="d", at=4, specs=(PackSpec("web"),), count=3),
        StopPacks(id="e", at=5, names=("web-0",)),
        ReportPacks(id="f", at=6, node_id="n1", reports=(PackReport("web-1", 1, ReportState.RUNNING),)),
    ]
    data = encode_batch(cmds)
    back = decode_batch(data)
    assert back == cmds
    assert encode_batch(back) == data


def test_series_expands_names_in_order():
    cmd = CreatePacks(id="x", at=0, specs=(PackSpec("w"),), count=3)
    assert [s.name for s in cmd.expanded()] == ["w-0", "w-1", "w-2"]


@pytest.mark.parametrize("doc", [
    b'{"v":1,"cmds":[{"t":"Nope","id":"a","at":1}]}',
    b'{"v":1,"cmds":[{"t":"Noop","at":1}]}',
    b'{"v":1,"cmds":[{"t":"Noop","id":"a","at":"x"}]}',
    b'{"v":1,"cmds":[{"t":"CreatePacks","id":"a","at":1,"specs":[{"name":"../x"}]}]}',
    b'{"v":1,"cmds":[{"t":"CreatePacks","id":"a","at":1,"specs":[{"name":"a"},{"name":"b"}],"count":2}]}',
    b'{"v":1,"cmds":[{"t":"StopPacks","id":"a","at":1,"names":"abc"}]}',
    b'{"v":2,"cmds":[]}',
])
def test_malformed_commands_are_refused(doc):
    with pytest.raises(InvalidInput):
        decode_batch(doc)
