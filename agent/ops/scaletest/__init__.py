"""Scale tests: the simulated run (timed around ``canidae.core.sim``) and the live run.

Both runs produce one JSON-able document (``run_sim``, ``run_live``) with the same outline:
the parameters, the seed's "Expected Performance at Scale" table next to a row of what was
measured (with a note saying what each measured cell is), latency percentiles over time, the
packs on every node at the end, and what the mode adds (the simulator's result and log; the
live run's phases). ``canidae scale-test run`` renders it; ``canidae scale-test report`` draws it.

The simulated run is deterministic: its ``sim`` section (counts, log, digest) depends only on
the parameters and the seed. Wall time, CPU time and memory are measured around it and kept
apart, under ``timing``.

The live run measures from outside, as a user would: latencies on the client side, memory and
CPU of every agent process from ``/proc``. Its phases, each timed:

1. start a throwaway cluster on loopback (servers plus client agents), or use one started by
   ``cluster up`` (``data_dir``: its ``cluster.json`` gives the pids);
2. idle: CPU and memory of every agent before any pack;
3. spawn: K virtual packs through the bulk API (``count=`` series, ``batch`` packs a request),
   paced to a rate when asked (a ramp), each request timed;
4. settle: until every pack runs; steady: CPU and memory with the packs running;
5. load: yips between random packs when the agents have a yip API; otherwise stale reads of
   random packs with ``wrk``, and the document says yip figures are not available;
6. chaos: SIGKILL client agents, time until each of their packs runs on another node, restart
   them, and check that no pack runs twice once they are back.

A throwaway cluster is always stopped and its directory removed, whatever happens.

The package, by job: ``plan`` (parameters), ``live`` (the live run) with its ``phases`` and
``wrk`` load, ``sim`` (the simulated run), ``usage`` (CPU and memory from ``/proc``) and
``report`` (the document and its formatting).
"""

from canidae.agent.ops.scaletest.live import run_live
from canidae.agent.ops.scaletest.plan import LivePlan
from canidae.agent.ops.scaletest.sim import run_sim
from canidae.agent.ops.scaletest.usage import Usage, measure_usage
from canidae.agent.ops.scaletest.wrk import run_wrk

__all__ = ["LivePlan", "Usage", "measure_usage", "run_live", "run_sim", "run_wrk"]
