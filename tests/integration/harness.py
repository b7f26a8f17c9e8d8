"""Real agents on loopback for integration tests: ``local_cluster`` starts a
``canidae.agent.ops.localcluster.LocalCluster`` on ports of this xdist worker's own; the test
closes it (or uses it as a context manager). Waits go through ``canidae.agent.ops.waiting``."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from canidae.agent.config import AgentConfig
from canidae.agent.ops import localcluster
from canidae.agent.ops.localcluster import ClusterLayout, LocalCluster
from canidae.agent.ops.waiting import wait_until
from canidae.core.types import Resources

__all__ = ["LocalCluster", "for_the_cli", "local_cluster", "pick_base_port", "wait_until"]


def pick_base_port(servers: int, clients: int) -> int:
    """Free ports for a layout, in a range of this xdist worker's own so workers never race."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
    slot = int(worker[2:]) if worker[2:].isdigit() else 0
    return localcluster.find_base_port(servers, clients, lo=20_000 + slot * 1_500, hi=21_500 + slot * 1_500)


def local_cluster(data_dir: str, servers: int = 3, clients: int = 0, *,
                  capacity: Resources = Resources(1_000_000, 1_048_576, 50_000), env: dict[str, str] | None = None,
                  configure: Callable[[AgentConfig], AgentConfig] | None = None,
                  namespaces: bool = False, insecure_http: bool = False) -> LocalCluster:
    """A cluster speaking TLS, as every cluster does unless made with ``insecure_http`` (loopback
    only): raw requests take their URL from ``cluster.url`` and ``verify=cluster.verify``."""
    layout = ClusterLayout(servers=servers, clients=clients, base_port=pick_base_port(servers, clients),
                           capacity=capacity)
    return LocalCluster.start(layout, data_dir, timeout=30, env=env, configure=configure, namespaces=namespaces,
                              insecure_http=insecure_http)


@contextmanager
def for_the_cli(cluster: LocalCluster) -> Iterator[LocalCluster]:
    """``cluster`` as the target of in-process CLI runs (CANIDAE_CONFIG) for the block; the
    variable is put back and the cluster closed after it."""
    old = os.environ.get("CANIDAE_CONFIG")
    os.environ["CANIDAE_CONFIG"] = os.path.join(cluster.data_dir, "cli.toml")
    try:
        yield cluster
    finally:
        if old is None:
            os.environ.pop("CANIDAE_CONFIG", None)
        else:
            os.environ["CANIDAE_CONFIG"] = old
        cluster.close()
