"""canidae.core: pure, deterministic decisions.

No I/O, no clocks, no threads, no sockets and no global random live here: time arrives as
millisecond timestamps and randomness as seeds, both passed in by the caller. That is what lets
a single process simulate 100,000 packs on 2,000 nodes and lets every Raft replica apply the same
log to the same state.
"""
