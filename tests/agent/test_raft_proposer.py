"""Group commit keeps entries small: a batch whose encoding exceeds the split bound becomes several
entries, every command still answered; a single command too large for any entry is refused
before anything is proposed (real replicas, the proposer on an asyncio loop)."""

from __future__ import annotations

import asyncio
import os

import pytest
from canidae.agent.config import RaftSettings
from canidae.agent.server.proposer import Proposer
from canidae.core.commands import CreatePacks
from canidae.core.errors import InvalidInput
from canidae.core.types import PackSpec
from raft_group import Group, wait_until

KiB = 1024


@pytest.fixture
def group(tmp_path):
    with Group(str(tmp_path), settings=RaftSettings(max_frame_bytes=1024 * KiB)) as g:
        yield g


def _spy_entries(rep) -> list[int]:
    """Record the size of every entry proposed through ``rep``."""
    sizes: list[int] = []
    propose = rep.apply_entry

    def spy(data: bytes, **kw):
        sizes.append(len(data))
        return propose(data, **kw)

    rep.apply_entry = spy
    return sizes


def _cmd(i: int, blob_bytes: int) -> CreatePacks:
    # Random text compresses by half at most: the encoded size is known within a factor of two.
    return CreatePacks(id=f"c{i}", at=1, specs=(PackSpec(f"p{i}", env=(("BLOB", os.urandom(blob_bytes).hex()),)),),
                       place=False)


def test_a_batch_over_the_split_bound_becomes_several_entries(group):
    lead = group.leader()
    sizes = _spy_entries(lead)
    cmds = [_cmd(i, 300) for i in range(400)]  # about 120 KiB encoded, in one flush

    async def run() -> tuple[Proposer, list[dict]]:
        p = Proposer(lead, asyncio.get_running_loop(), timeout_s=30)
        return p, await p.submit_many(cmds)

    proposer, results = asyncio.run(run())
    assert all(r.get("ok") for r in results), [r for r in results if not r.get("ok")][:3]
    assert sum(sizes) > 64 * KiB
    assert len(sizes) >= 2 and max(sizes) <= proposer.split_bytes, sizes
    assert proposer.batches == len(sizes) and proposer.commands == len(cmds)
    wait_until(lambda: all(len(r.state.packs) == len(cmds) for r in group.live()), 20, "every command applied")
    assert len({r.state.digest() for r in group.live()}) == 1


def test_a_single_command_too_large_for_an_entry_is_refused_and_the_rest_of_its_batch_commits(group):
    lead = group.leader()
    sizes = _spy_entries(lead)
    too_big = _cmd(0, 200 * KiB)  # over max_frame_bytes / 8 = 128 KiB once encoded
    alone = _cmd(1, 40 * KiB)  # over the split bound but fits an entry: goes alone
    small = [_cmd(i, 100) for i in range(2, 12)]

    async def run() -> list[object]:
        p = Proposer(lead, asyncio.get_running_loop(), timeout_s=30)
        return await asyncio.gather(*(p.submit(c) for c in [too_big, alone, *small]), return_exceptions=True)

    results = asyncio.run(run())
    assert isinstance(results[0], InvalidInput), results[0]
    assert "more than the" in str(results[0]) and "c0" in str(results[0])
    assert all(isinstance(r, dict) and r.get("ok") for r in results[1:]), results[1:]
    assert max(sizes) <= lead.max_entry_bytes
    wait_until(lambda: all(len(r.state.packs) == 11 for r in group.live()), 20, "the others applied")
    assert all("p0" not in r.state.packs for r in group.live())
